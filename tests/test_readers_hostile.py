"""Hostile input to the readers of finished runs (`report`, `plot`, runs.read_run) and to the
Python API: a damaged metrics.jsonl costs what is damaged, said in a note; runs of different data
averaged together are noted; the API takes one path as one run, refuses one string of overrides
and checks every argument's type with one line naming the parameter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import concutmix_cli as cc
from concutmix_cli.errors import BadValue
from tests.conftest import one_epoch_run, one_error_line, tree


def _row(epoch: int) -> dict:
    top1 = 0.1 * epoch
    return {"epoch": epoch, "lr": 0.1, "loss": 2.0 / epoch, "train_acc": 0.2, "test_top1": top1,
            "test_many": 0.3, "test_medium": 0.2, "test_few": 0.1, "test_ece": 0.4,
            "test_balanced_accuracy": top1}


ROWS = "".join(json.dumps(_row(e)) + "\n" for e in (1, 2))
"""Two finished epochs: the smoke preset's whole budget."""


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory) -> Path:
    """A run folder as train leaves it after its last epoch (the weights are untrained)."""
    run = one_epoch_run(tmp_path_factory.mktemp("runs") / "finished", tiny_data)
    (run / "metrics.jsonl").write_text(ROWS)
    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder of two classes of six small images (a valid `prepare("folder")` root)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for i in range(6):
            Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    return root


def _copy(run: Path, where: Path, metrics: str | None = None) -> Path:
    copy = shutil.copytree(run, where)
    if metrics is not None:
        (copy / "metrics.jsonl").write_text(metrics)
    return copy


def _report(cli, *args) -> dict:
    code, out, err = cli("report", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# ----------------------------------------------------------------------------- 20: metrics.jsonl


ROW2 = json.dumps(_row(2))
HOSTILE_METRICS = {
    "cut last line": (ROWS + ROW2[:25], 2, 0.2, [
        "metrics.jsonl line 3 is not JSON (cut short, as by a crash?); read the 2 row(s) before "
        "it"]),
    "bare NaN": (json.dumps(_row(1)) + "\n" + ROW2.replace('"test_top1": 0.2', '"test_top1": NaN')
                 + "\n", 1, 0.1, [
        "metrics.jsonl line 2 is not JSON (NaN is not JSON); read the 1 row(s) before it",
        "unfinished: 1 of 2 epochs"]),
    "a list, then a row": (json.dumps(_row(1)) + "\n[1, 2]\n" + ROW2 + "\n", 1, 0.1, [
        "metrics.jsonl line 2 is not a JSON object (a list); read the 1 row(s) before it, not "
        "the 1 line(s) after it", "unfinished: 1 of 2 epochs"]),
    "no epoch": (json.dumps(_row(1)) + "\n" + json.dumps({**_row(2), "epoch": None}) + "\n", 1,
                 0.1, ["metrics.jsonl row 2 has no epoch number (epoch: None); read the 1 row(s) "
                       "before it", "unfinished: 1 of 2 epochs"]),
    "text for numbers": (json.dumps(_row(1)) + "\n" + json.dumps(
        {**_row(2), "test_top1": "0.2", "test_few": [0.1]}) + "\n", 2, None, [
        "metrics.jsonl values that are not numbers, taken as missing: test_top1 (1 row(s)), "
        "test_few (1 row(s))"]),
}


@pytest.mark.parametrize("case", HOSTILE_METRICS)
def test_report_reads_the_rows_before_damage_and_notes_it(cli, finished, tmp_path, case):
    """Before: a cut last line refused the whole run (train and the reproduction table read the
    rows before it); NaN or text where numbers belong was an internal error (exit 1); a row that
    was a list was skipped and one without an epoch reported as "epoch 0", silently."""
    metrics, epoch, top1, notes = HOSTILE_METRICS[case]
    run = _copy(finished, tmp_path / "run", metrics)
    before = tree(run)
    report = _report(cli, run)
    assert report["runs"][0]["epoch"] == epoch and report["runs"][0]["top1"] == top1
    assert report["runs"][0]["notes"] == notes
    code, _, err = cli("report", run)  # the table: the notes on stderr
    assert code == 0 and f"note: run: {notes[0]}" in " ".join(err.split())
    assert tree(run) == before  # a reader never repairs or rewrites a run


def test_report_notes_a_gap_in_the_epochs(cli, finished, tmp_path):
    """Before: epochs 1, 2, 4 were reported as a run at epoch 4 without a word on epoch 3."""
    config = json.loads((finished / "config.json").read_text())
    config["optim"]["epochs"] = 4
    run = _copy(finished, tmp_path / "run", "".join(json.dumps(_row(e)) + "\n" for e in (1, 2, 4)))
    (run / "config.json").write_text(json.dumps(config))
    report = _report(cli, run)
    assert report["runs"][0]["epoch"] == 4
    assert report["runs"][0]["notes"] == [
        "metrics.jsonl epochs go 1, 2, 4 (epoch(s) 3 missing); the last row is epoch 4"]


def test_plot_draws_the_rows_before_a_cut_last_line(cli, finished, tmp_path):
    """Before: `plot` refused the run ("line 3 is not JSON") that train would resume."""
    pytest.importorskip("matplotlib")
    run = _copy(finished, tmp_path / "run", ROWS + ROW2[:25])
    before = tree(run)
    code, out, err = cli("plot", run, "--out", tmp_path / "pics", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "pics" / "curves.png").is_file() and "learning curves" in out
    from concutmix_cli.runs import read_run

    record = read_run(run)  # what plot drew, and the note for the command to show
    assert [r["epoch"] for r in record.rows] == [1, 2]
    assert record.notes == ["metrics.jsonl line 3 is not JSON (cut short, as by a crash?); read "
                            "the 2 row(s) before it"]
    assert tree(run) == before


def test_plot_refuses_rows_without_epochs_with_one_line(cli, finished, tmp_path):
    """Before: a metrics.jsonl whose rows had no `epoch` was an internal KeyError (exit 1)."""
    pytest.importorskip("matplotlib")
    run = _copy(finished, tmp_path / "run", json.dumps({"loss": 1.0}) + "\n")
    code, _, err = cli("plot", run, "--out", tmp_path / "pics", "--device", "cpu")
    assert code == 2
    one_error_line(err, "no finished epoch yet: metrics.jsonl row 1 has no epoch number")
    assert not (tmp_path / "pics").exists()


# ----------------------------------------------------------------------------- 22: other data


def test_a_group_of_runs_on_different_data_is_noted_in_every_format(cli, finished, tmp_path):
    """Before: --group-by averaged runs of different datasets without a word (plot refused
    them). Two preparations of the same data (another creation time, so another checksum) are
    the same data."""
    same = _copy(finished, tmp_path / "same")
    manifest = json.loads((same / "manifest.json").read_text())
    (same / "manifest.json").write_text(json.dumps(
        {**manifest, "created": "2001-01-01T00:00:00+00:00", "checksum": "0" * 64}))
    other = _copy(finished, tmp_path / "other")
    (other / "manifest.json").write_text(json.dumps(
        {**manifest, "imbalance": 5.0, "train_counts": manifest["train_counts"][::-1]}))
    note = ("trained on different data (imbalance, train_counts differ: finished, same / other); "
            "the mean mixes datasets")
    assert _report(cli, finished, same, "--group-by", "method")["groups"][0]["notes"] == []
    args = (finished, same, other, "--group-by", "method")
    assert _report(cli, *args)["groups"][0]["notes"] == [note]
    code, out, _ = cli("report", *args, "--markdown")
    assert code == 0 and out.splitlines()[-1].endswith(f"| {note} |")
    code, out, _ = cli("report", *args, "--csv")
    assert code == 0 and [line.endswith(f'"{note}"') for line in out.splitlines()] == [
        False] * 4 + [True] * 2  # header, 3 runs; the group's mean and std rows
    code, out, err = cli("report", *args)
    assert code == 0 and "trained on different data" in out


def test_group_by_a_section_is_refused_with_one_line(cli, finished, tmp_path):
    """Before: `--group-by optim` grouped by the text of the whole [optim] table."""
    code, _, err = cli("report", finished, "--group-by", "optim")
    assert code == 2
    one_error_line(err, "--group-by optim: a section of settings, not one setting")
    code, _, err = cli("report", finished, "--group-by", "")
    assert code == 2  # before: ignored, no groups
    one_error_line(err, "--group-by needs a setting")


# ----------------------------------------------------------------------------- 25, 26: the API


def test_the_api_takes_one_path_as_one_run(finished, tmp_path):
    """Before: report("runs/x") took each character as a run, report(Path) was a TypeError."""
    for given in (str(finished), finished):
        result = cc.report(given)
        assert [r.path for r in result.runs] == [str(finished)]
    pytest.importorskip("matplotlib")
    written = cc.plot(str(finished), tmp_path / "pics", device="cpu")
    assert written["learning curves"].is_file()


def test_one_string_of_overrides_is_refused_with_one_line(tiny_data, tmp_path):
    """Before: "optim.epochs=1" was read character by character ("o", "p", ...)."""
    with pytest.raises(BadValue) as caught:
        cc.train("smoke", tmp_path / "run", data=tiny_data, overrides="optim.epochs=1")
    assert str(caught.value) == ('overrides must be a list of "section.key=value" strings (got '
                                 "the single string 'optim.epochs=1'; pass a list, "
                                 "['optim.epochs=1'])")
    assert caught.value.param == "overrides" and not (tmp_path / "run").exists()


WRONG_TYPES = {
    "prepare image_size": (lambda run, tmp, photos: cc.prepare(
        "folder", tmp / "data", root=photos, image_size=32.5), "image_size",
        "image_size must be an integer (got 32.5)"),
    "prepare unknown option": (lambda run, tmp, photos: cc.prepare(
        "synthetic-lt", tmp / "data", n_maxx=10), "n_maxx", "n_maxx is not an option of prepare()"),
    "prepare imbalance as text": (lambda run, tmp, photos: cc.prepare(
        "synthetic-lt", tmp / "data", imbalance="10"), "imbalance",
        "imbalance must be a number (got '10')"),
    "evaluate split": (lambda run, tmp, photos: cc.evaluate(run, split=3), "split",
                       "split must be a string (got 3)"),
    "predict top_k as text": (lambda run, tmp, photos: cc.predict(run, [tmp], top_k="5"), "top_k",
                              "top_k must be an integer (got '5')"),
    "inspect num": (lambda run, tmp, photos: cc.inspect_labels(run, num=2.5), "num",
                    "num must be an integer (got 2.5)"),
    "inspect omega as text": (lambda run, tmp, photos: cc.inspect_labels(run, omega="0.1"),
                              "omega", "omega must be a number (got '0.1')"),
    "export format": (lambda run, tmp, photos: cc.export(run, 3, tmp / "model.pt"), "format",
                      "format must be a string (got 3)"),
    "report evaluate": (lambda run, tmp, photos: cc.report([run], evaluate="no"), "evaluate",
                        "evaluate must be True or False (got 'no')"),
    "train callbacks": (lambda run, tmp, photos: cc.train("smoke", tmp / "run", callbacks=3),
                        "callbacks",
                        "callbacks must be a callable or a list of callables (got 3)"),
    "plot runs": (lambda run, tmp, photos: cc.plot([run, 3], tmp / "pics"), "runs",
                  "runs must be a path or a list of paths (got ["),
}


@pytest.mark.parametrize("case", WRONG_TYPES)
def test_wrong_argument_types_are_one_line_naming_the_parameter(finished, photos, tmp_path,
                                                               case):
    """Before: internal TypeErrors from deep inside (prepare's image_size=32.5: "Size should be
    int"), other errors about other things, or calls that went on with the wrong value."""
    call, param, message = WRONG_TYPES[case]
    before = tree(finished), tree(photos)
    with pytest.raises(BadValue) as caught:
        call(finished, tmp_path, photos)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert caught.value.param == param and isinstance(caught.value, ValueError)
    assert (tree(finished), tree(photos)) == before and sorted(tmp_path.iterdir()) == []

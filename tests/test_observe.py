"""Seeing what happened (issue 16): the quick-start preset learns, progress output in a log,
tables at their content's width, pictures, the report across runs and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path

import pytest

from tests.conftest import one_error_line

TINY_RUN = ["optim.epochs=2", "optim.batch_size=16", "runtime.max_steps_per_epoch=3",
            "model.arch='resnet8'", "runtime.device='cpu'", "data.num_workers=0"]


def tiny_run(folder: Path, data: Path, method: str, seed: int, *extra: str, callbacks=None):
    import concutmix_cli as cc

    return cc.train("smoke", folder, data=data, callbacks=callbacks, overrides=[
        *TINY_RUN, f"method.name='{method}'", f"runtime.seed={seed}", *extra])


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> list[Path]:
    """Two seeds of ce and one of concutmix, two short epochs each."""
    root = tmp_path_factory.mktemp("runs")
    return [tiny_run(root / f"{m}-s{s}", tiny_data, m, s).run_dir
            for m, s in (("ce", 0), ("ce", 1), ("concutmix", 0))]


def last_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# ----------------------------------------------------------------------------- the quick start


def test_quickstart_preset_learns_well_above_chance(tmp_path):
    """A shortened copy of `make run`'s CE run (6 of 12 epochs) on the data `make run` prepares:
    chance on its 10 balanced held-out test classes is 10%."""
    import concutmix_cli as cc
    from concutmix_cli.data.prepare import prepare

    data = prepare("synthetic-lt", out=tmp_path / "data").out  # make run's defaults
    result = cc.train("quickstart", tmp_path / "run", data=data, overrides=[
        "method.name='ce'", "optim.epochs=6", "runtime.device='cpu'"])
    last = result.rows[-1]
    assert last["epoch"] == 6
    assert last["test_top1"] >= 0.4, last
    assert last["test_many"] >= 0.9, last


# ----------------------------------------------------------------------------- progress and tables


def test_log_output_keeps_to_its_width_with_a_line_per_epoch(tiny_data, tmp_path):
    from rich.console import Console

    from concutmix_cli.events import StopFlag
    from concutmix_cli.progress import TrainView

    buffer = io.StringIO()
    console = Console(file=buffer, width=50)  # not a terminal: a log file
    view = TrainView(console, StopFlag(), ("steps", 1))
    try:
        tiny_run(tmp_path / "run", tiny_data, "concutmix", 0, callbacks=view)
    finally:
        view.close()
    lines = buffer.getvalue().splitlines()
    # only a word longer than the width (the run folder's path) may stand out, whole
    assert lines and all(len(line) <= 50 or " " not in line.strip() for line in lines), lines
    assert f"    {tmp_path / 'run'}" in lines, lines
    records: list[str] = []  # a record continues on lines indented by four spaces
    for line in lines:
        if line.startswith("    ") and records:
            records[-1] += " " + line.strip()
        else:
            records.append(line)
    epochs = [r for r in records if r.startswith("epoch ") and " step " not in r]
    steps = [r for r in records if r.startswith("epoch ") and " step " in r]
    assert [r.split()[1] for r in epochs] == ["1/2", "2/2"]
    assert all("test " in r and "few " in r for r in epochs)
    assert [r.split()[3] for r in steps] == ["1/3", "1/3"]  # --log-every 1; step 3 ends the epoch
    assert all(" eta 0:" in r and " img/s " in r for r in steps)


def test_log_every_is_checked(cli, tiny_data, tmp_path):
    code, _, err = cli("train", "--data", tiny_data, "--out", tmp_path / "r", "--log-every", "0s")
    assert code == 2
    one_error_line(err, "--log-every")
    assert not (tmp_path / "r").exists()


def test_tables_are_not_squeezed_into_80_columns(cli, runs, monkeypatch):
    deep = runs[0]
    code, out, _ = cli("eval", deep)
    assert code == 0
    assert str(deep / "last.safetensors") in out  # the path whole, on one line
    code, out, _ = cli("inspect-labels", runs[2], "--num", "3")
    assert code == 0
    assert "max |rect-area|" in out and "mean L1 |rect-area|" in out  # headers whole


def test_evaluation_reports_progress_as_events_and_draws_nothing(runs, capsys):
    import concutmix_cli as cc
    from concutmix_cli.events import WorkProgress

    events = []
    cc.evaluate(runs[0], callbacks=events.append)
    progress = [e for e in events if isinstance(e, WorkProgress)]
    assert [e.done for e in progress] == list(range(progress[0].total + 1))
    assert progress[-1].done == progress[-1].total >= 1
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------- pictures


def png_pixels(path: Path):
    import numpy as np
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_plot_writes_valid_pictures_that_follow_the_data(cli, runs, tmp_path):
    code, out, err = cli("plot", *runs, "--out", tmp_path / "pics")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert names == ["confusion-ce-s0.png", "confusion-ce-s1.png", "confusion-concutmix-s0.png",
                     "curves.png", "per_class.png"]
    for name in names:
        pixels = png_pixels(tmp_path / "pics" / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert len({tuple(p) for p in pixels.reshape(-1, 3)[::7]}) > 20  # not blank
    code, _, err = cli("plot", runs[0], "--out", tmp_path / "pics")  # exists: refused
    assert code == 2
    one_error_line(err, "already exists", "--force")


def test_per_class_picture_changes_with_the_accuracies(tmp_path):
    from concutmix_cli.plots import RunPicture, write_pictures

    def draw(per_class, folder):
        pic = RunPicture("run", [], [50, 20, 5], ["a", "b", "c"],
                         {"many": [], "medium": [0, 1], "few": [2]}, per_class,
                         __import__("torch").eye(3, dtype=__import__("torch").long))
        return write_pictures([pic], tmp_path / folder)["per-class accuracy"]

    first, same, other = draw([0.9, 0.5, 0.1], "a"), draw([0.9, 0.5, 0.1], "b"), draw(
        [0.2, 0.6, 1.0], "c")
    assert first.read_bytes() == same.read_bytes()  # deterministic
    a, c = png_pixels(first), png_pixels(other)
    assert a.shape == c.shape and (a != c).any(axis=2).sum() > 100


def test_svg_and_pdf_on_request(cli, runs, tmp_path):
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        code, _, err = cli("eval", runs[2], "--plot", tmp_path / fmt, "--format", fmt)
        assert code == 0, err
        files = sorted((tmp_path / fmt).iterdir())
        assert [p.suffix for p in files] == [f".{fmt}"] * 3  # per-class, curves, confusion
        assert all(p.read_bytes().startswith(magic) for p in files)


def test_missing_plot_extra_is_one_line_naming_it(cli, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = cli("plot", runs[0], "--out", tmp_path / "pics")
    assert code == 2
    one_error_line(err, "concutmix[plot]")
    assert not (tmp_path / "pics").exists()


# ----------------------------------------------------------------------------- report


def test_report_mean_and_std_match_the_runs_own_metrics(cli, runs):
    code, out, err = cli("report", *runs, "--group-by", "method", "--json")
    assert code == 0, err
    report = json.loads(out)
    import concutmix_cli as cc

    assert cc.report(runs, group_by="method").as_dict() == report  # the library, the same data
    rows = {m: [last_row(r) for r in runs if r.name.startswith(m)] for m in ("ce", "concutmix")}
    groups = {g["group"]: g for g in report["groups"]}
    assert sorted(groups) == ["ce", "concutmix"] and groups["ce"]["n"] == 2
    for key, metric in (("test_top1", "top1"), ("test_few", "few"), ("test_ece", "ece")):
        values = [row[key] for row in rows["ce"]]
        assert groups["ce"][metric]["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert groups["ce"][metric]["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert groups["concutmix"][metric] == {"mean": pytest.approx(rows["concutmix"][0][key]),
                                               "std": None}
    # equal test classes: balanced accuracy is top-1
    assert [r["balanced"] for r in report["runs"]] == pytest.approx(
        [last_row(r)["test_top1"] for r in runs], abs=1e-12)
    assert [r["balanced"] for r in report["runs"]] == [
        last_row(r)["test_balanced_accuracy"] for r in runs]  # read from the metrics row

    code, out, _ = cli("report", *runs, "--group-by", "method", "--csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["kind"] for r in table] == ["run", "run", "run", "mean", "std", "mean", "std"]
    assert float(table[3]["top1"]) == pytest.approx(groups["ce"]["top1"]["mean"])
    code, out, _ = cli("report", *runs, "--group-by", "method", "--markdown")
    ce_mean, ce_std = groups["ce"]["top1"]["mean"], groups["ce"]["top1"]["std"]
    assert f"| ce | 2 | {100 * ce_mean:.2f} ± {100 * ce_std:.2f} |" in out


def test_report_evaluates_balanced_accuracy_when_test_classes_differ(cli, runs, tmp_path):
    import shutil

    import concutmix_cli as cc

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["test_counts"] = [50] * (len(manifest["test_counts"]) - 1) + [49]
    (run / "manifest.json").write_text(json.dumps(manifest))
    per_class = cc.evaluate(run)["per_class"]
    code, out, err = cli("report", run, "--json")
    assert code == 0, err
    assert json.loads(out)["runs"][0]["balanced"] == pytest.approx(
        sum(per_class) / len(per_class))


def test_report_refuses_what_is_not_a_finished_run(cli, runs, tmp_path):
    code, _, err = cli("report", tmp_path)
    assert code == 2
    one_error_line(err, "not a run folder")
    code, _, err = cli("report", runs[0], runs[0])
    assert code == 2
    one_error_line(err, "given twice")
    code, _, err = cli("report", runs[0], "--group-by", "model.nothing")
    assert code == 2
    one_error_line(err, "--group-by model.nothing")


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_have_the_metrics_tags_and_values(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tiny_run(tmp_path / "run", tiny_data, "concutmix", 0, "runtime.tensorboard=true").run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_cls", "train/loss_bcl", "train/lr", "train/train_acc",
            "test/top1", "test/medium", "test/few", "test/ece", "rectify/omega_rho",
            "speed/samples_per_s", "speed/eval_seconds", "step/loss"} <= tags
    assert "test/many" not in tags  # the tiny data has no many-shot class: None is not logged
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    top1 = [(s.step, s.value) for s in events.Scalars("test/top1")]
    assert top1 == [(r["epoch"], pytest.approx(r["test_top1"], abs=1e-6)) for r in rows]


def test_missing_tensorboard_extra_is_one_line_and_leaves_no_run(cli, tiny_data, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = cli("train", "--data", tiny_data, "--out", tmp_path / "r",
                       "--set", "runtime.tensorboard=true")
    assert code == 2
    one_error_line(err, "concutmix[tensorboard]")
    assert not (tmp_path / "r").exists()

"""Hostile input to benchmarks/reproduce.py: damaged run folders, archives that are not whole,
outputs that would overwrite what they should not. Every user error is one `error:` line and
exit 2, checked before anything is written; a bug is one line and exit 1; a metrics line cut by a
kill costs that row only, with a note."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import one_error_line, tree
from tests.test_reproduce import table  # noqa: F401 - loads benchmarks/ as test_reproduce does
from tests.test_reproduce import reproduce


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """r01 of the --tiny plan, finished (2 epochs), and its archive (--archive)."""
    root = tmp_path_factory.mktemp("tiny")
    out, data = root / "out", root / "data"
    common = ["--tiny", "--only", "r01", "--out", str(out), "--data-root", str(data)]
    assert reproduce.main(common) == reproduce.EXIT_DONE
    assert reproduce.main(["--table-only", *common, "--archive", str(root / "arch")]) == 0
    shutil.rmtree(out / "logs")
    return {"out": out, "data": data, "archive": root / "arch" / "r01.tgz"}


def _call(capsys, mode: str, out: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = reproduce.main([mode, "--tiny", "--only", "r01", "--out", str(out), "--data-root",
                           str(data), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _edit_json(name: str, change):
    def corrupt(run: Path) -> None:
        path = run / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def _edit_rows(change):
    def corrupt(run: Path) -> None:
        path = run / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(change(r)) + "\n" for r in rows))
    return corrupt


def _write(name: str, text: str):
    return lambda run: (run / name).write_text(text)


DAMAGE = {
    "config is a list": (_write("config.json", "[1, 2]"), "config.json: not a JSON object"),
    "config method is text": (_edit_json("config.json", lambda c: {**c, "method": "concutmix"}),
                              "config.json: bad value for 'method'"),
    "config runtime is a list": (_edit_json("config.json", lambda c: {**c, "runtime": [0]}),
                                 "config.json: bad value for 'runtime'"),
    "metrics text for a number": (_edit_rows(lambda r: {**r, "test_many": "0.5"}),
                                  "metrics.jsonl: row 1's test_many is '0.5', not a number"),
    "metrics gap": (_edit_rows(lambda r: {**r, "epoch": 2 * r["epoch"]}),
                    "metrics.jsonl: row 1's epoch is 2, not 1 (a row is missing or repeated)"),
    "manifest is a list": (_write("manifest.json", "[1]"), "manifest.json: not a JSON object"),
    "manifest dataset is an object": (_edit_json("manifest.json", lambda m: {**m, "dataset": {}}),
                                      "manifest.json: 'dataset' is {}, not a string"),
    "sidecar is a list": (_write(table.SIDECAR, "[1]"), "reproduce.json: not a JSON object"),
    "sidecar session is text": (_edit_json(table.SIDECAR, lambda s: {**s, "sessions": ["x"]}),
                                "reproduce.json: session 1 is 'x', not an object"),
    "sidecar wall time is text": (
        _edit_json(table.SIDECAR, lambda s: {**s, "sessions": [{"wall_s": "9 s", "card": "CPU"}]}),
        "reproduce.json: session 1 'wall_s' is '9 s', not a number"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_folder_is_one_line_and_exit_2_in_every_mode(capsys, tiny, tmp_path, case):
    """Before: --table-only on these folders ended in a traceback (AttributeError, TypeError,
    ValueError from a format code), and --dry-run planned them as if they were whole."""
    corrupt, fragment = DAMAGE[case]
    out = shutil.copytree(tiny["out"], tmp_path / "out")
    corrupt(out / "r01")
    before = tree(out)
    for mode in ("--table-only", "--dry-run"):
        code, stdout, err = _call(capsys, mode, out, tiny["data"])
        assert (code, stdout) == (reproduce.EXIT_USAGE, ""), (mode, err)
        one_error_line(err, str(out / "r01"), fragment)
        assert tree(out) == before  # no table rewritten, nothing repaired


CUT = {
    "cut last line": (lambda text: text[:-40], 1, "line 2 is not JSON (cut short, as by a "
                      "crash?); read the 1 row(s) before it"),
    "bare NaN": (lambda text: text.replace('"test_top1": ', '"test_top1": NaN, "x": ', 1), 0,
                 "line 1 is not JSON (NaN is not JSON); no row before it, not the 1 line(s) after "
                 "it"),
    "a number for a row": (lambda text: text.splitlines()[0] + "\n3\n", 1,
                           "line 2 is not a JSON object (a number); read the 1 row(s) before it"),
}


@pytest.mark.parametrize("case", CUT)
def test_the_table_reads_the_rows_before_a_bad_metrics_line_and_says_so(capsys, tiny, tmp_path,
                                                                         case):
    """Before: a line that is not a JSON object (a number, a bare NaN) was a traceback; a cut
    line was dropped without a word."""
    cut, rows, why = CUT[case]
    out = shutil.copytree(tiny["out"], tmp_path / "out")
    metrics = out / "r01" / "metrics.jsonl"
    metrics.write_text(cut(metrics.read_text()))
    run_files = tree(out / "r01")
    code, stdout, err = _call(capsys, "--table-only", out, tiny["data"])
    assert code == 0, err
    assert f"r01: note: metrics.jsonl {why}" in err.splitlines()
    cells = [c.strip() for c in next(line for line in stdout.splitlines()
                                     if line.startswith("| r01 |")).strip("|").split(" | ")]
    assert cells[5] == f"{rows} / 2 **unfinished**"
    saved = json.loads((out / "table.json").read_text())["runs"][0]
    assert saved["epochs_done"] == rows and saved["notes"] == [f"metrics.jsonl {why}"]
    assert tree(out / "r01") == run_files
    code, stdout, _ = _call(capsys, "--dry-run", out, tiny["data"])
    assert code == 0 and f"[resume at epoch {rows + 1}/2]" in stdout


ARCHIVES = {
    "not an archive": (lambda good: b"r01 results\n", "not a gzip tar archive"),
    "cut in half": (lambda good: good[: len(good) // 2], "r01.tgz: cut short"),
    "cut after its header": (lambda good: good[:100], "r01.tgz: cut short"),
}


@pytest.mark.parametrize("existing", [False, True], ids=["fresh out", "out with the run"])
@pytest.mark.parametrize("case", ARCHIVES)
def test_an_archive_that_is_not_whole_is_one_line_and_restores_nothing(capsys, tiny, tmp_path,
                                                                       case, existing):
    """Before: a .tgz cut short was a traceback (EOFError, not a TarError), and a file that is
    no archive gave tarfile's five-line "could not be opened successfully" message."""
    damage, fragment = ARCHIVES[case]
    source = tmp_path / "from"
    source.mkdir()
    (source / "r01.tgz").write_bytes(damage(tiny["archive"].read_bytes()))
    out = tmp_path / "out"
    if existing:
        shutil.copytree(tiny["out"], out)
    before = tree(out) if existing else None
    code, stdout, err = _call(capsys, "--table-only", out, tiny["data"], "--restore", str(source))
    assert (code, stdout) == (reproduce.EXIT_USAGE, "")
    one_error_line(err, str(source / "r01.tgz"), fragment)
    assert (tree(out) if existing else out.exists()) == (before if existing else False)


def test_one_bad_archive_restores_none_of_the_runs(capsys, tiny, tmp_path):
    """Before: r01 was restored, then r10's archive failed: a half-done restore."""
    source = tmp_path / "from"
    source.mkdir()
    shutil.copyfile(tiny["archive"], source / "r01.tgz")
    (source / "r10.tgz").write_text("not an archive\n")
    out = tmp_path / "out"
    capsys.readouterr()
    code = reproduce.main(["--table-only", "--tiny", "--only", "r01,r10", "--out", str(out),
                           "--data-root", str(tiny["data"]), "--restore", str(source)])
    assert code == reproduce.EXIT_USAGE
    one_error_line(capsys.readouterr().err, "r10.tgz: not a gzip tar archive")
    assert not out.exists()


def test_an_archive_of_a_damaged_run_is_refused_before_it_replaces_anything(capsys, tiny,
                                                                             tmp_path):
    """Before: it was unpacked into OUT, and the table then failed with a traceback."""
    import tarfile

    damaged = shutil.copytree(tiny["out"] / "r01", tmp_path / "damaged" / "r01")
    (damaged / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_top1": "high"}) + "\n")
    source = tmp_path / "from"
    source.mkdir()
    with tarfile.open(source / "r01.tgz", "w:gz") as tar:
        tar.add(damaged, arcname="r01")
    code, _, err = _call(capsys, "--table-only", tmp_path / "out", tiny["data"], "--restore",
                         str(source))
    assert code == reproduce.EXIT_USAGE
    one_error_line(err, "r01.tgz: r01/metrics.jsonl: row 1's test_top1 is 'high', not a number; "
                        "nothing was restored")
    assert not (tmp_path / "out").exists()


def test_outputs_never_land_on_a_run_the_doc_or_each_other(capsys, tiny, tmp_path):
    """Before: --json onto the run's config.json replaced it (exit 0); --json and --doc on one
    file wrote the JSON over the document, then failed with a traceback; --archive into the run
    folder wrote archives inside the run it was archiving; --json onto a folder was a
    traceback."""
    out = shutil.copytree(tiny["out"], tmp_path / "out")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# results\n{table.BEGIN}\nold\n{table.END}\n")
    before = tree(tmp_path)
    cases = [
        (["--json", str(out / "r01" / "config.json")], "--json", "is inside"),
        (["--json", str(out / "r01" / table.SIDECAR)], "--json", "is inside"),
        (["--doc", str(doc), "--json", str(doc)], "--doc and --json name the same file", ""),
        (["--json", str(out / "table.md")], "--json and table.md name the same file", ""),
        (["--json", str(tmp_path)], "is a folder", ""),
        (["--json", str(out / "table.md" / "t.json")], "table.md is a file, not a folder", ""),
        (["--archive", str(out / "r01")], "--archive", "inside a run folder"),
        (["--archive", str(out)], "--archive", "is --out"),
        (["--archive", str(doc)], "--archive", "is a file; give a folder"),
    ]
    for extra, *fragments in cases:
        code, stdout, err = _call(capsys, "--table-only", out, tiny["data"], *extra)
        assert (code, stdout) == (reproduce.EXIT_USAGE, ""), (extra, err)
        one_error_line(err, *fragments)
        assert tree(tmp_path) == before, extra


@pytest.mark.parametrize("argv, fragment", [
    (["--only", ""], "--only names no run (got '')"),
    (["--only", " , "], "--only names no run"),
    (["--out", "FILE"], "is a file; give a folder"),
    (["--data-root", "FILE"], "is a file; give a folder"),
], ids=["empty --only", "only a comma", "--out a file", "--data-root a file"])
def test_bad_paths_and_selections_are_one_line_and_exit_2(capsys, tmp_path, argv, fragment):
    """Before: an empty --only (an unset shell variable) selected the whole plan, and an --out
    or --data-root that is a file was accepted (a real call then failed half way)."""
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    for mode in ("--dry-run", "--table-only"):
        capsys.readouterr()
        code = reproduce.main([mode, *(["--out", str(tmp_path / "o")] if "--out" not in argv
                                       else []), *argv])
        assert code == reproduce.EXIT_USAGE, mode
        one_error_line(capsys.readouterr().err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_only_takes_ids_with_spaces_and_a_trailing_comma(capsys, tmp_path):
    """Before: "--only 'r01, r10,'" was refused: unknown run " r10" and ""."""
    assert reproduce.main(["--dry-run", "--only", "r10, r01,", "--out", str(tmp_path / "o"),
                           "--data-root", str(tmp_path)]) == 0
    heads = [line.split()[0] for line in capsys.readouterr().out.splitlines()
             if line.startswith("r")]
    assert heads == ["r01", "r10"]


def test_an_unexpected_error_is_one_line_and_exit_1(capsys, monkeypatch, tiny, tmp_path):
    """Before: a bug in the table code was a traceback."""
    out = shutil.copytree(tiny["out"], tmp_path / "out")

    def broken(opts):
        raise KeyError("a bug")

    monkeypatch.setattr(reproduce, "build_table", broken)
    code, stdout, err = _call(capsys, "--table-only", out, tiny["data"])
    assert (code, stdout) == (reproduce.EXIT_FAILED, "")
    one_error_line(err, "internal error: KeyError: 'a bug'")


def test_the_script_prints_no_traceback_on_a_damaged_folder(tiny, tmp_path):
    """The script as a GPU session runs it (python benchmarks/reproduce.py): before, a config
    that is JSON but not an object was a traceback."""
    import subprocess

    from tests.test_reproduce import BENCH, ENV

    out = shutil.copytree(tiny["out"], tmp_path / "out")
    (out / "r01" / "config.json").write_text("[]")
    done = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--table-only", "--tiny",
                           "--only", "r01", "--out", str(out), "--data-root", str(tiny["data"])],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert (done.returncode, done.stdout) == (2, "")
    one_error_line(done.stderr, "config.json: not a JSON object")

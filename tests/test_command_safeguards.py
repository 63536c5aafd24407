"""The commands' safeguards against failures and misuse (issue 12), one section per class of
the issue: no hang when a DataLoader worker fails, no command writing over its inputs or a
run's files, `prepare --force` only on prepared datasets, one writer per run folder, a lost
checkpoint index rebuilt or refused, every bad number refused, bounded inspect-labels, paths that
find a run's data again, and the smaller ones (usage errors, help text, resume notes,
permissions, image sizes).

docs/reliability.md lists each promise with the test here that checks it. Subprocesses are used
only where the behaviour is at process level (a hang at exit, a second process, the console
script); everything else runs the real entry point in-process (`cli` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST_CLI, one_epoch_run, tiny_synthetic
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import tree as _tree

FAST = FAST_CLI
SCRIPT = Path(sys.executable).parent / "concutmix"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


pytestmark = pytest.mark.usefixtures("wide")  # conftest: long paths stay on one line


@pytest.fixture(scope="module")
def run4(data4, tmp_path_factory) -> Path:
    """A finished one-epoch run (optim.epochs = 1)."""
    return one_epoch_run(tmp_path_factory.mktemp("r2") / "run4", data4, "optim.epochs=1")


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ----------------------------------------------------------------------------- 1. worker failure


def _list_dataset(root: Path) -> Path:
    """A 3-class list dataset whose first training image is an empty .png."""
    from PIL import Image

    from concutmix_cli.data.prepare import prepare

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for c in range(3):
        for i in range(6):
            rel = f"img/c{c}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / rel)
            lines.append(f"{rel} {c}\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "test.txt").write_text("".join(lines))
    prepare("imagenet-lt", out=root / "data", root=root, train_list=root / "train.txt",
            test_list=root / "test.txt")
    (root / "img" / "c0_0.png").write_bytes(b"")  # damaged after prepare checked it exists
    return root / "data"


BUG_IN_WORKER = r"""
import sys
from concutmix_cli.data import lists

def broken(self, index):
    raise ZeroDivisionError("a bug in the worker")

lists.ListImageDataset.__getitem__ = broken  # inherited by the forked workers
from concutmix_cli.cli import main
sys.argv = ["concutmix", *sys.argv[1:]]
main()
"""


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in session `sid` (the child and anything it started)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
            alive.append(int(stat.parent.name))
    return alive


def test_a_failing_dataloader_worker_ends_the_run_with_one_line_and_no_process_left(tmp_path):
    """Real worker processes (data.num_workers=2): an undecodable image (exit 2, the file named)
    and a bug in the worker (exit 1, "internal error"), each ends within the timeout, with one
    stderr line and no process of its session left. Before: a multi-line traceback, then the
    main process waited for its workers forever."""
    data = _list_dataset(tmp_path)
    args = ["train", "--data", data, "--batch-size", "4", "--device", "cpu", "--epochs", "1",
            "--method", "ce", "--set", "data.num_workers=2"]
    procs = {
        "bad image": subprocess.Popen(
            [str(SCRIPT), *map(str, args), "--out", tmp_path / "r1"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True),
        "bug": subprocess.Popen(
            [sys.executable, "-c", BUG_IN_WORKER, *map(str, args), "--out", tmp_path / "r2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            start_new_session=True),
    }
    results = {}
    try:
        for name, proc in procs.items():
            results[name] = (proc.communicate(timeout=240), proc.returncode)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    (out, err), code = results["bad image"]
    assert code == 2, err
    _one_error_line(err, f"image {tmp_path / 'img' / 'c0_0.png'}", "cannot be decoded")
    (out, err), code = results["bug"]
    assert code == 1, err
    _one_error_line(err, "internal error: ZeroDivisionError", "in a data loader worker",
                    "a bug in the worker")
    for proc in procs.values():
        assert _session_processes(proc.pid) == []


def test_worker_error_messages_are_one_line_of_the_right_kind():
    from concutmix_cli.data.workers import one_line_error
    from concutmix_cli.errors import UserError

    caught = ("Caught OSError in DataLoader worker process 1.\nOriginal Traceback (most recent "
              "call last):\n  File \"x.py\", line 3, in f\n    open(p)\n"
              "PermissionError: [Errno 13] Permission denied: '/img/a.png'\n")
    err = one_line_error(PermissionError(caught))
    assert isinstance(err, UserError)
    assert str(err) == "data loader worker: [Errno 13] Permission denied: '/img/a.png'"
    died = one_line_error(RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly"))
    assert isinstance(died, UserError) and "num_workers" in str(died)


# ----------------------------------------------------------------------------- 2. outputs


@pytest.mark.parametrize("command, option, target", [
    ("eval", "--out", "RUN/last.safetensors"),
    ("eval", "--out", "RUN/checkpoints.json"),
    ("eval", "--out", "LONE"),
    ("eval", "--out", "DATA/manifest.json"),
    ("inspect-labels", "--out", "RUN/checkpoints/epoch-0001.safetensors"),
    ("inspect-labels", "--image", "RUN/config.json"),
    ("inspect-labels", "--csv", "RUN/metrics.jsonl"),
    ("inspect-labels", "--csv", "DATA/train.safetensors"),
    ("inspect-labels", "--out", "LONE"),
])
def test_no_command_writes_over_its_inputs_or_a_run_or_dataset_file(cli, run4, data4, tmp_path,
                                                                    command, option, target):
    run = _copy(run4, tmp_path / "run")
    data = _copy(data4, tmp_path / "data")
    lone = tmp_path / "lone.safetensors"
    shutil.copyfile(run / "last.safetensors", lone)
    source = lone if target == "LONE" else run
    path = {"RUN": str(run), "DATA": str(data), "LONE": str(lone)}
    target = Path(target.replace(target.split("/")[0], path[target.split("/")[0]], 1))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = {"run": _tree(run), "data": _tree(data), "lone": lone.read_bytes()}
    code, out, err = cli(command, source, "--data", data, "--device", "cpu", option, target)
    assert code == 2
    _one_error_line(err, f"{option} {target}")
    assert {"run": _tree(run), "data": _tree(data), "lone": lone.read_bytes()} == before


def test_two_outputs_onto_one_file_are_refused(cli, run4, tmp_path):
    target = tmp_path / "x.out"
    code, out, err = cli("inspect-labels", run4, "--device", "cpu", "--out", target,
                         "--csv", target)
    assert code == 2
    _one_error_line(err, "--csv and --out name the same file")
    assert not target.exists()


# ----------------------------------------------------------------------------- 3. prepare --force


def test_force_refuses_a_folder_that_is_not_a_prepared_dataset(cli, data4, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    code, out, err = cli("prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10",
                         "--out", docs, "--force")
    assert code == 2
    _one_error_line(err, "is not a prepared dataset", "--force only replaces folders written by")
    assert _tree(docs) == {"thesis.txt": b"years of work"}
    mixed = _copy(data4, tmp_path / "mixed")  # a prepared dataset with a user's file added
    (mixed / "notes.txt").write_text("mine")
    before = _tree(mixed)
    code, out, err = cli("prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10",
                         "--out", mixed, "--force")
    assert code == 2
    _one_error_line(err, "holds 1 file(s) that prepare did not write (notes.txt)")
    assert _tree(mixed) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "mixed"]  # no debris


def test_force_on_dot_replaces_the_dataset_and_leaves_no_debris(cli, tmp_path, monkeypatch):
    ds = tiny_synthetic(tmp_path / "ds")
    monkeypatch.chdir(ds)
    code, out, err = cli("prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10",
                         "--seed", "3", "--out", ".", "--force")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .old-* / .tmp-* left
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["seed"] == 3


def test_a_failed_swap_puts_the_old_dataset_back(cli, tmp_path, monkeypatch):
    ds = tiny_synthetic(tmp_path / "ds")
    before = _tree(ds)
    real_replace = os.replace
    calls = []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 2:  # old folder moved aside, the new one cannot be put in place
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    code, out, err = cli("prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10",
                         "--out", ds, "--force")
    assert code == 2
    _one_error_line(err, "No space left on device")
    assert _tree(ds) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ----------------------------------------------------------------------------- 4. one writer


HOLD_LOCK = r"""
import sys
from concutmix_cli.engine.runlock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holder_is_taken_over(
        cli, run4, tmp_path):
    run = _copy(run4, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _tree(run)
        code, out, err = cli("train", "--resume", run, "--epochs", "1")
        assert code == 2
        _one_error_line(err, f"is being written by process {holder.pid} on ",
                        "one writer at a time")
        assert _tree(run) == before
        holder.kill()  # SIGKILL: the kernel releases the lock; its file stays behind
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdin.close()
        holder.stdout.close()
    code, out, err = cli("train", "--resume", run, "--epochs", "1")
    assert code == 0, err
    assert f"took over the lock of process {holder.pid}" in out
    assert not (run / ".concutmix.lock").exists()  # released on exit


def test_new_runs_on_one_folder_are_refused_while_locked(cli, data4, tmp_path):
    from concutmix_cli.engine.runlock import RunLock

    run = tmp_path / "r"
    run.mkdir()
    with RunLock(run):
        code, out, err = cli("train", "--data", data4, "--out", run, *FAST)
    assert code == 2
    _one_error_line(err, f"is being written by process {os.getpid()}")
    assert list(run.iterdir()) == []


# ----------------------------------------------------------------------------- 5. lost index


def test_a_deleted_index_is_rebuilt_from_verified_checkpoints(cli, run4, tmp_path):
    run = _copy(run4, tmp_path / "run")
    index = json.loads((run / "checkpoints.json").read_text())
    checkpoints = _tree(run / "checkpoints")
    (run / "checkpoints.json").unlink()
    code, out, err = cli("train", "--resume", run, "--epochs", "1")
    assert code == 0, err
    assert "checkpoints.json was missing: rebuilt it from 1 checkpoint(s)" in out
    assert "already finished its 1 epoch(s)" in out
    assert _tree(run / "checkpoints") == checkpoints  # nothing overwritten
    assert json.loads((run / "checkpoints.json").read_text())["checkpoints"] == \
        index["checkpoints"]


def test_a_deleted_index_with_unverifiable_checkpoints_is_refused(cli, run4, tmp_path):
    from concutmix_cli.engine.checkpoint import read_weights, weights_bytes

    run = _copy(run4, tmp_path / "run")
    weights = run / "checkpoints" / "epoch-0001.safetensors"
    tensors, meta = read_weights(weights)  # as an older version wrote it: no integrity record
    weights.write_bytes(weights_bytes(tensors, meta))
    (run / "checkpoints.json").unlink()
    before = _tree(run)
    code, out, err = cli("train", "--resume", run)
    assert code == 2
    _one_error_line(err, "has checkpoints but no checkpoints.json", "nothing was changed")
    assert _tree(run) == before


# ----------------------------------------------------------------------------- 6. numbers


@pytest.fixture(scope="module")
def npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    np.save(path, np.zeros((4, 4)))
    return path


PREPARE = ["prepare", "synthetic-lt", "--n-max", "20"]


@pytest.mark.parametrize("args, fragment", [
    (PREPARE + ["--imbalance", "nan"], "--imbalance must be a finite number (got nan)"),
    (PREPARE + ["--imbalance", "inf"], "--imbalance must be a finite number (got inf)"),
    (PREPARE + ["--imbalance", "1e300"], "leaves class 1 with no training image"),
    (PREPARE + ["--imbalance", "100"], "leaves class 6 with no training image"),
    (PREPARE + ["--seed", "-1"], "--seed must be between 0 and 4294967295 (got -1)"),
    (PREPARE + ["--seed", str(2**40)], "--seed must be between 0 and 4294967295"),
    (["prepare", "synthetic-lt", "--n-max", "-5"], "--n-max must be at least 1 (got -5)"),
    (PREPARE + ["--classes", "100000"], "--classes must be between 2 and 1000"),
    (["prepare", "cifar10-lt", "--source", "NPY"], "a single array (.npy), not an .npz"),
    (["prepare", "cifar10-lt", "--source", "NPY", "--n-max", "9000"],
     "--n-max 9000: cifar10-lt has 5000 training images per class"),
    (["prepare", "synthetic-lt", "--imbalance", "abc"], "Invalid value for '--imbalance'"),
    (["train", "--set", "optim.lr=inf"], "bad value for 'optim.lr' (inf)"),
    (["train", "--set", "optim.lr=nan"], "bad value for 'optim.lr' (nan)"),
    (["train", "--lr", "inf"], "bad value for 'optim.lr' (inf)"),
    (["train", "--set", "method.omega=inf"], "bad value for 'method.omega' (inf)"),
    (["train", "--seed", "-1"], "bad value for 'runtime.seed' (-1)"),
    (["train", "--seed", str(10**30)], "bad value for 'runtime.seed'"),
    (["train", "--set", "data.num_workers=100000"], "bad value for 'data.num_workers'"),
    (["train", "--epochs", str(10**12)], "bad value for 'optim.epochs'"),
    (["train", "--preset", "OPTIM3"], "'optim' must be a table ([optim] with keys), got 3"),
    (["inspect-labels", "RUN", "--num", "100000000"], "--num 100,000,000 is more than the 4,096"),
    (["inspect-labels", "RUN", "--num", "300", "--image", "x.png"], "--image draws at most 256"),
    (["inspect-labels", "RUN", "--seed", "-3"], "--seed must be between 0 and"),
    (["inspect-labels", "RUN", "--omega", "inf"], "--omega must be a finite number >= 0"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numbers_are_refused_where_they_enter(cli, npy, run4, data4, tmp_path, args, fragment):
    preset = tmp_path / "optim3.toml"
    preset.write_text("optim = 3\n")
    args = [str(npy) if a == "NPY" else str(run4) if a == "RUN" else str(preset)
            if a == "OPTIM3" else a for a in args]
    if args[0] == "prepare":
        args += ["--out", str(tmp_path / "out")]
    if args[0] == "train":  # the case's own values last: they win over FAST
        args = ["train", "--data", str(data4), "--out", str(tmp_path / "out"), *FAST, *args[1:]]
    code, out, err = cli(*args)
    assert code == 2
    _one_error_line(err, fragment)
    assert not (tmp_path / "out").exists()


def test_no_json_is_written_with_nan_or_infinity(tmp_path):
    from concutmix_cli.engine.checkpoint import RunFolder
    from concutmix_cli.fileio import json_text

    with pytest.raises(ValueError, match="non-finite number .* at 'test_ece'"):
        json_text({"epoch": 1, "test_ece": float("nan")})
    run = RunFolder(tmp_path / "r")
    run.create()
    run.append_metrics({"epoch": 1, "loss": 1.0})
    before = run.metrics_path.read_bytes()
    with pytest.raises(ValueError, match="'loss'"):
        run.append_metrics({"epoch": 2, "loss": float("inf")})
    assert run.metrics_path.read_bytes() == before


def test_a_non_finite_loss_before_any_checkpoint_does_not_claim_one(cli, data4, tmp_path):
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, "--epochs", "1", "--batch-size",
                         "16", "--device", "cpu", "--set", "runtime.max_steps_per_epoch=3",
                         "--set", "data.num_workers=0", "--set", "optim.lr=1e30")
    assert code == 2
    _one_error_line(err, "non-finite", "no checkpoint was saved yet")
    assert "last good checkpoint" not in err
    assert not (run / "checkpoints.json").exists()


# ----------------------------------------------------------------------------- 8. paths


def test_a_relative_data_path_is_found_from_another_directory(cli, tmp_path, monkeypatch):
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(started)
    tiny_synthetic(Path("d"), classes=4)
    code, out, err = cli("train", "--data", "d", "--out", "r", "--epochs", "1", *FAST)
    assert code == 0, err
    assert json.loads((started / "r" / "config.json").read_text())["data"]["path"] == \
        str(started / "d")
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("eval", started / "r", "--json")
    assert code == 0, err
    assert json.loads(out)["data"] == str(started / "d")
    (started / "d").rename(started / "moved")  # the data moved: say so, not "run prepare"
    code, out, err = cli("eval", started / "r")
    assert code == 2
    _one_error_line(err, f"the data this run trained on, {started / 'd'}", "is not there any more",
                    "pass --data FOLDER")
    assert "concutmix prepare" not in err
    code, out, err = cli("eval", started / "r", "--data", started / "moved", "--json")
    assert code == 0, err


@pytest.mark.parametrize("line, fragment", [
    ("../../etc/passwd 0", "'../../etc/passwd' points outside the image root"),
    ("img/../../x.png 0", "points outside the image root"),
    ("img/a.png 1", "line 3: 'img/a.png' is already listed on line 1 (1 duplicate line(s)"),
])
def test_list_entries_outside_the_root_and_duplicates_are_refused(cli, tmp_path, line, fragment):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    (tmp_path / "train.txt").write_text(f"img/a.png 0\nimg/b.png 1\n{line}\n")
    code, out, err = cli("prepare", "imagenet-lt", "--root", tmp_path, "--train-list",
                         tmp_path / "train.txt", "--out", tmp_path / "out")
    assert code == 2
    _one_error_line(err, fragment)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 9. smaller


def test_usage_errors_are_one_error_line_with_exit_2():
    cases = [["prepare", "synthetic-lt", "--imbalance", "abc"], ["frobnicate"],
             ["train", "--no-such-option"]]
    procs = [subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for args in cases]
    for args, proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        _one_error_line(err, "--help`)")
        assert "╭" not in err and "─" not in err


def test_help_shows_bracketed_defaults(cli):
    code, out, err = cli("train", "--help")
    assert code == 0
    assert "[default: smoke]" in out and "[default: runs/<preset>-<time>]" in out


def test_resume_says_when_it_changes_settings_or_has_nothing_to_do(cli, run4, tmp_path):
    run = _copy(run4, tmp_path / "run")
    code, out, err = cli("train", "--resume", run, "--set", "optim.lr=0.01")
    assert code == 0, err
    assert "resuming with changed settings (optim.lr: 0.05 -> 0.01)" in out
    assert "already finished its 1 epoch(s): nothing to train" in out


def test_prepared_folders_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        out = tiny_synthetic(tmp_path / "shared")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o775
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o664}


def test_a_test_split_of_another_image_size_is_refused(cli, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "odd.npz", train_x=rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8),
             train_y=np.repeat(np.arange(10), 10), test_x=np.zeros((10, 28, 28, 3), np.uint8),
             test_y=np.arange(10))
    code, out, err = cli("prepare", "cifar10-lt", "--source", tmp_path / "odd.npz", "--n-max",
                         "10", "--imbalance", "2", "--out", tmp_path / "out")
    assert code == 2
    _one_error_line(err, "test images are 28x28 but training images are 32x32")
    assert not (tmp_path / "out").exists()

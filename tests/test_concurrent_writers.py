"""Writers and readers of one folder at the same time, and writers that are killed: `prepare`
takes one writer per --out (a lock beside it), cleans what a killed prepare left, turns SIGTERM /
SIGHUP into a clean stop; a reader of a run in training never mistakes a checkpoint being
written for a damaged file.

Processes are real where the behaviour is at process level (a signal, a second writer, a kill);
the child is `python -c CHILD`, which patches one library function to pause or signal itself at
the moment under test (the toolkit has no test hooks). Each test fails on the code before
(docs/reliability.md, "One writer per dataset folder", "Reading a run in training").
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, one_epoch_run, one_error_line, tiny_synthetic, tree

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
PREPARE = ["prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10"]

CHILD = r"""
import os, signal, sys, time
from pathlib import Path
from concutmix_cli.data import staging

action, flag = sys.argv[1], Path(sys.argv[2])
real_stage, real_replace = staging.stage_arrays, os.replace
# a process started from a terminal, whatever the test runner's own (under nohup SIGHUP is ignored
# and inherited); "nohup" asks for nohup's
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_DFL)
if action == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

def stage(staging, *args, **kwargs):
    fields = real_stage(staging, *args, **kwargs)  # the split files are in the staging folder
    flag.write_text(str(os.getpid()))
    if action == "wait":  # hold the dataset's --out until the test says go
        while not flag.with_suffix(".go").exists():
            time.sleep(0.05)
    elif action in ("TERM", "HUP", "KILL"):
        os.kill(os.getpid(), getattr(signal, "SIG" + action))
        time.sleep(30)
    elif action == "nohup":  # the terminal closed
        os.kill(os.getpid(), signal.SIGHUP)
    return fields

def replace(src, dst):  # "swap": killed after the old dataset was moved aside
    real_replace(src, dst)
    if action == "swap" and Path(dst).name == "old":
        os.kill(os.getpid(), signal.SIGKILL)

staging.stage_arrays = stage
os.replace = replace
from concutmix_cli.cli import main
sys.argv = ["concutmix", *sys.argv[3:]]
main()
"""


def _child(action: str, flag: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, action, str(flag), *map(str, args)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never reached the staging step"
        time.sleep(0.05)


def _debris(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ----------------------------------------------------------------------------- signals, kills


@pytest.mark.parametrize("sig", ["TERM", "HUP"])
def test_sigterm_or_sighup_during_prepare_leaves_no_staging_folder(tmp_path, sig):
    """SIGTERM or SIGHUP while prepare staged its folder killed the process and left
    `.OUT.tmp-*` behind for good. Now the staging folder is removed and the exit code says
    which signal (128 + its number)."""
    out = tmp_path / "data"
    proc = _child(sig, tmp_path / "staged", *PREPARE, "--out", out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + getattr(signal, "SIG" + sig), err
    assert f"interrupted (SIG{sig})" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staged"]


def test_sighup_under_nohup_is_ignored_by_prepare(tmp_path):
    """Under nohup (SIGHUP ignored) the terminal closing does not stop prepare: it finishes, exit
    0, the dataset in place and nothing staged left beside it."""
    out = tmp_path / "data"
    proc = _child("nohup", tmp_path / "staged", *PREPARE, "--out", out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "staged"]


def test_what_a_killed_prepare_left_is_removed_by_the_next_one(cli, tmp_path):
    """SIGKILL (nothing can catch it) left the staging folder, and nothing ever removed it.
    Now the next prepare into the same --out removes it, and says so."""
    out = tmp_path / "data"
    proc = _child("KILL", tmp_path / "staged", *PREPARE, "--out", out)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert [n for n in _debris(tmp_path, "data") if ".tmp-" in n]  # the killed one's staging
    code, stdout, err = cli(*PREPARE, "--out", out)
    assert code == 0, err
    assert "left by a prepare that was killed" in err
    assert _debris(tmp_path, "data") == [] and (out / "manifest.json").is_file()


def test_a_dataset_moved_aside_by_a_killed_prepare_is_put_back(cli, tmp_path):
    """A kill between the two renames of `--force` (old dataset moved aside, new one not yet in
    place) lost the old dataset: it stayed in `.OUT.old-*` and the next prepare of another
    --out, or `rm -rf` of hidden folders, lost it. Now the next prepare puts it back first."""
    out = tiny_synthetic(tmp_path / "data")
    before = tree(out)
    proc = _child("swap", tmp_path / "staged", *PREPARE, "--seed", "3", "--out", out, "--force")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    code, stdout, err = cli(*PREPARE, "--seed", "3", "--out", out)  # no --force: it exists again
    assert code == 2
    one_error_line(err, f"{out} already exists and is not empty")
    assert tree(out) == before and _debris(tmp_path, "data") == []


# ----------------------------------------------------------------------------- two writers


def test_two_prepares_into_one_out_are_one_at_a_time(cli, tmp_path):
    """Two `prepare --out D` at once both exited 0 and one dataset silently replaced the other.
    Now the second is refused at once, naming the first's process; the first finishes."""
    out = tmp_path / "data"
    flag = tmp_path / "staged"
    first = _child("wait", flag, *PREPARE, "--seed", "1", "--out", out)
    try:
        _wait_for(flag, first)
        code, stdout, err = cli(*PREPARE, "--seed", "2", "--out", out, "--force")
        assert code == 2
        one_error_line(err, f"--out {out} is being written by process {first.pid}")
    finally:
        flag.with_suffix(".go").write_text("")
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    import json

    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert _debris(tmp_path, "data") == []  # no lock file, no staging folder left


# ----------------------------------------------------------------------------- reading a run


def test_a_reader_of_a_run_in_training_waits_for_the_checkpoint_being_written(tmp_path):
    """`train` replaces last.safetensors, then checkpoints.json. A reader (eval, predict,
    export, inspect-labels) in between got "checksum mismatch ... the file was damaged" (about
    1 read in 200 in a tight loop). Here the run is held by a live writer and caught between
    the two renames; the reader now waits for the index and reads the new weights."""
    from concutmix_cli.engine.checkpoint import RunFolder, read_weights
    from concutmix_cli.engine.runlock import RunLock

    data = tiny_synthetic(tmp_path / "data", classes=4)
    run = one_epoch_run(tmp_path / "run", data, "optim.epochs=2")
    ahead = shutil.copytree(run, tmp_path / "ahead")  # the same run one checkpoint later
    tensors, meta = read_weights(ahead / "last.safetensors")
    from concutmix_cli.engine.checkpoint import weights_bytes

    newer = {k: v + 1 if v.is_floating_point() else v for k, v in tensors.items()}
    RunFolder(ahead).save_checkpoint(2, 0, weights_bytes(newer, {**meta, "epoch": 2}),
                                     (ahead / "checkpoints" / "epoch-0001.state.pt").read_bytes(),
                                     keep=1)
    with RunLock(run):  # the writer (this process) is alive and holds the run
        shutil.copytree(ahead / "checkpoints", run / "checkpoints", dirs_exist_ok=True)
        os.replace(shutil.copy(ahead / "last.safetensors", run / ".new"), run / "last.safetensors")
        index = threading.Timer(0.5, lambda: os.replace(
            shutil.copy(ahead / "checkpoints.json", run / ".index"), run / "checkpoints.json"))
        index.start()
        try:
            got, got_meta = read_weights(run / "last.safetensors")
        finally:
            index.join()
    assert got_meta["epoch"] == 2
    assert all(bool((got[k] == v).all()) for k, v in newer.items())

"""A run folder across its life: a new run that fails before its first checkpoint leaves nothing
(the same command runs again), `--resume` never rewrites what the run was trained with, never
writes elsewhere than the run, and says when its metrics have a gap it cannot fill.

Each test fails on the code before (docs/reliability.md, "A run's life").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, one_error_line, tree

FAST = FAST_CLI


pytestmark = pytest.mark.usefixtures("wide")  # conftest: long paths stay on one line


@pytest.fixture(scope="module")
def two_epochs(data4, tmp_path_factory) -> Path:
    """A finished two-epoch run (one step an epoch)."""
    from concutmix_cli.cli import main
    import sys

    run = tmp_path_factory.mktemp("life") / "run2"
    saved = sys.argv
    sys.argv = ["concutmix", "train", "--data", str(data4), "--out", str(run), "--epochs", "2",
                *FAST]
    try:
        main()
    finally:
        sys.argv = saved
    return run


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(cli, data4, tmp_path):
    """A non-finite loss in the first epoch stopped the run with "no checkpoint was saved yet"
    but left config.json and manifest.json behind, so the same command was then refused ("run
    folder ... already exists"). Now the folder is removed and the command can be run again."""
    run = tmp_path / "run"
    for _ in range(2):
        code, out, err = cli("train", "--data", data4, "--out", run, "--batch-size", "8",
                             "--device", "cpu", "--set", "data.num_workers=0",
                             "--set", "optim.lr=1e30")
        assert code == 2
        one_error_line(err, "non-finite", "the new run folder", "is removed")
        assert not run.exists()


def test_a_resume_to_fewer_epochs_than_trained_is_refused_and_changes_nothing(cli, two_epochs,
                                                                             tmp_path):
    """`train --resume RUN --epochs 1` on a finished 2-epoch run rewrote config.json with
    epochs = 1; `report` then read "2 of 1 epochs". Now refused, the run byte for byte as it
    was."""
    run = shutil.copytree(two_epochs, tmp_path / "run")
    before = tree(run)
    code, out, err = cli("train", "--resume", run, "--epochs", "1")
    assert code == 2
    one_error_line(err, "has trained 2 epoch(s)", "optim.epochs = 1", "nothing was changed")
    assert tree(run) == before


def test_a_resume_with_nothing_to_train_rewrites_nothing(cli, two_epochs, tmp_path):
    """`train --resume RUN --set optim.lr=...` on a finished run trained nothing but rewrote
    config.json with the new lr, so the run then claimed a setting it was never trained with."""
    run = shutil.copytree(two_epochs, tmp_path / "run")
    before = tree(run)
    code, out, err = cli("train", "--resume", run, "--set", "optim.lr=0.01")
    assert code == 0, err
    assert "already finished its 2 epoch(s): nothing to train" in out
    assert tree(run) == before


def test_resume_with_another_out_is_refused(cli, two_epochs, tmp_path):
    """`train --resume RUN --out OTHER` ignored --out without a word (and trained into RUN)."""
    run = shutil.copytree(two_epochs, tmp_path / "run")
    before = tree(run)
    other = tmp_path / "other"
    code, out, err = cli("train", "--resume", run, "--out", other, "--epochs", "3")
    assert code == 2
    one_error_line(err, f"--out {other} with --resume {run}", "drop --out")
    assert tree(run) == before and not other.exists()
    code, out, err = cli("train", "--resume", run, "--out", run)  # the same folder is fine
    assert code == 0, err


def test_a_resume_over_a_cut_metrics_line_says_which_epochs_have_no_row(cli, two_epochs,
                                                                      tmp_path):
    """metrics.jsonl's last line cut in the middle (epoch 2's row), the checkpoint of epoch 2
    intact: resume dropped the cut row and went on at epoch 3, leaving a gap in the epochs
    without a word. Now it says so."""
    run = shutil.copytree(two_epochs, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    code, out, err = cli("train", "--resume", run, "--epochs", "3")
    assert code == 0, err
    assert "has no row for epoch(s) 2 (a line was lost or cut)" in " ".join(out.split())
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 3]


def test_a_new_run_onto_a_file_says_it_is_a_file(cli, data4, tmp_path):
    """`train --out FILE` said "run folder FILE already exists and is not empty; use --resume
    FILE" (resuming a file cannot work). Now it says what FILE is; the file is untouched."""
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, out, err = cli("train", "--data", data4, "--out", target, *FAST)
    assert code == 2
    one_error_line(err, f"--out {target} is a file, not a folder")
    assert target.read_text() == "mine"

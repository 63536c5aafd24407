"""Bad input, every command (issue 7): one line on stderr naming what, where and what to do, exit
code 2, nothing half-written left behind, never a traceback (unless --debug).

Most cases run the real entry point in-process (`cli` fixture, conftest.py); `test_console_script`
runs a representative subset through the installed console script in parallel subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, one_epoch_run, tiny_synthetic
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import tree as _tree

FAST = FAST_CLI


def _no_temporaries(folder: Path) -> None:
    assert [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name] == []


@pytest.fixture(scope="module")
def data3(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("bad") / "d3", classes=3)


@pytest.fixture(scope="module")
def run4(data4, tmp_path_factory) -> Path:
    """A run folder as `train` leaves it after one epoch (weights untrained: not needed here)."""
    return one_epoch_run(tmp_path_factory.mktemp("bad") / "run4", data4)


def _edited_copy(data: Path, dest: Path, edit) -> Path:
    shutil.copytree(data, dest)
    body = json.loads((dest / "manifest.json").read_text())
    edit(body)
    (dest / "manifest.json").write_text(json.dumps(body))
    return dest


# ----------------------------------------------------------------------------- prepare


def test_prepare_imbalance_below_one(cli, tmp_path):
    code, out, err = cli("prepare", "synthetic-lt", "--imbalance", "0.5", "--out", tmp_path / "o")
    assert code == 2
    _one_error_line(err, "--imbalance must be at least 1 (got 0.5)")
    assert list(tmp_path.iterdir()) == []


def test_prepare_missing_source(cli, tmp_path):
    code, out, err = cli("prepare", "cifar10-lt", "--source", tmp_path / "nope.npz",
                         "--out", tmp_path / "o")
    assert code == 2
    _one_error_line(err, f"--source {tmp_path / 'nope.npz'}: file not found")
    assert list(tmp_path.iterdir()) == []


def test_prepare_full_disk(cli, tmp_path, monkeypatch):
    """The disk fills while train.safetensors is written (fsync is where a full disk shows on
    delayed-allocation filesystems; safetensors' own writer reported it as an internal error)."""
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "train.safetensors" in \
                os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = cli("prepare", "synthetic-lt", "--n-max", "20", "--imbalance", "10",
                         "--out", tmp_path / "o")
    assert code == 2
    _one_error_line(err, "No space left on device: ", "train.safetensors",
                    "(free some space and run again)")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


# ----------------------------------------------------------------------------- train


def test_train_missing_data_folder(cli, tmp_path):
    code, out, err = cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "r", *FAST)
    assert code == 2
    _one_error_line(err, f"prepared data folder not found: {tmp_path / 'nowhere'}",
                    "run `concutmix prepare` first")
    assert not (tmp_path / "r").exists()


def test_train_data_path_is_a_file(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    code, out, err = cli("train", "--data", tmp_path / "f", "--out", tmp_path / "r", *FAST)
    assert code == 2
    _one_error_line(err, "is a file, not a prepared data folder")
    assert not (tmp_path / "r").exists()


def test_train_manifest_from_another_version(cli, data4, tmp_path):
    def future(body):
        body["format"], body["toolkit_version"] = "concutmix-prepared/2", "9.0"

    data = _edited_copy(data4, tmp_path / "d", future)
    code, out, err = cli("train", "--data", data, "--out", tmp_path / "r", *FAST)
    assert code == 2
    _one_error_line(err, "written by another concutmix version", "'concutmix-prepared/2'",
                    "prepare the data again with this version")
    assert not (tmp_path / "r").exists()


def test_train_manifest_from_another_toolkit(cli, data4, tmp_path):
    data = _edited_copy(data4, tmp_path / "d", lambda body: body.update(format="other/1"))
    code, out, err = cli("train", "--data", data, "--out", tmp_path / "r", *FAST)
    assert code == 2
    _one_error_line(err, "not a concutmix manifest (format 'other/1')", "concutmix prepare")
    assert not (tmp_path / "r").exists()


def test_train_manifest_edited_by_hand(cli, data4, tmp_path):
    def edit(body):
        body["train_counts"][0] -= 1

    data = _edited_copy(data4, tmp_path / "d", edit)
    code, out, err = cli("train", "--data", data, "--out", tmp_path / "r", *FAST)
    assert code == 2
    _one_error_line(err, f"{data / 'manifest.json'}: checksum mismatch",
                    "prepare the data again")
    assert not (tmp_path / "r").exists()


def test_train_preset_with_unknown_key(cli, data4, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text("[optim]\nepochs = 2\nlearning_rate = 0.1\n")
    code, out, err = cli("train", "--preset", preset, "--data", data4, "--out", tmp_path / "r")
    assert code == 2
    _one_error_line(err, f"preset {preset}: unknown key 'optim.learning_rate'",
                    "known keys here: epochs, batch_size, lr")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--set", "method.omega=-0.5"],
     ["--set method.omega=-0.5: bad value for 'method.omega' (-0.5)", "greater than or equal to 0"]),
    (["--set", "method.top_k=5"],
     ["method.top_k = 5 exceeds the 4 classes of", "set method.top_k to 4 or less"]),
    (["--batch-size", "1", "--method", "bcl"],
     ["optim.batch_size must be at least 2 for the contrastive loss of bcl (got 1)",
      "use --batch-size 2 or more"]),
    (["--keep", "0"], ["bad value for 'runtime.keep' (0)", "greater than or equal to 1"]),
    (["--batch-size", "500"], ["optim.batch_size 500 is larger than the 70 training images"]),
], ids=["omega<0", "top_k>classes", "batch<2-contrastive", "keep<1", "batch>images"])
def test_train_out_of_range_numbers(cli, data4, tmp_path, args, fragments):
    code, out, err = cli("train", "--data", data4, "--out", tmp_path / "r", *FAST, *args)
    assert code == 2
    _one_error_line(err, *fragments)
    assert not (tmp_path / "r").exists()  # not even an empty run folder


def _copy_run(run4: Path, dest: Path) -> Path:
    shutil.copytree(run4, dest)
    return dest


def test_resume_with_data_of_another_class_count(cli, run4, data3, tmp_path):
    run = _copy_run(run4, tmp_path / "run")
    before = _tree(run)
    code, out, err = cli("train", "--resume", run, "--data", data3)
    assert code == 2
    _one_error_line(err, "a resnet32 with 4 classes cannot continue as a resnet32 on",
                    "(3 classes)", "resume with the run's own model and data")
    assert _tree(run) == before  # config.json and manifest.json untouched


def test_resume_with_another_architecture(cli, run4, tmp_path):
    run = _copy_run(run4, tmp_path / "run")
    before = _tree(run)
    code, out, err = cli("train", "--resume", run, "--set", "model.proj_dim=64")
    assert code == 2
    _one_error_line(err, "does not fit the configured model", "resume with the run's own config")
    assert _tree(run) == before
    code, out, err = cli("train", "--resume", run, "--set", "model.arch='resnet50'")
    assert code == 2
    _one_error_line(err, "a resnet32 with 4 classes cannot continue as a resnet50")
    assert _tree(run) == before


def test_resume_missing_or_not_a_run(cli, tmp_path):
    code, out, err = cli("train", "--resume", tmp_path / "gone")
    assert code == 2
    _one_error_line(err, f"--resume {tmp_path / 'gone'}: no config.json there; not a run folder")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_bytes(b"\xff\xfe garbage")
    code, out, err = cli("train", "--resume", tmp_path / "odd")
    assert code == 2
    _one_error_line(err, "config.json: unreadable", "not a run's config")


def test_train_full_disk_at_the_first_checkpoint(cli, data4, tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full_in_checkpoints(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "/checkpoints/" in target and target.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_in_checkpoints)
    run = tmp_path / "r"
    code, out, err = cli("train", "--data", data4, "--out", run, "--epochs", "1", *FAST)
    assert code == 2
    _one_error_line(err, f"No space left on device: {run / 'checkpoints' / 'epoch-0001.safetensors'}",
                    "(free some space and run again)")
    _no_temporaries(run)
    assert not (run / "checkpoints.json").exists() and list((run / "checkpoints").iterdir()) == []
    for name in ("config.json", "manifest.json"):  # what was written is whole
        json.loads((run / name).read_text())


# ----------------------------------------------------------------------------- eval


def test_eval_missing_path(cli, tmp_path):
    code, out, err = cli("eval", tmp_path / "nothing")
    assert code == 2
    _one_error_line(err, f"not found: {tmp_path / 'nothing'}", "give a run folder or a .safetensors")


def test_eval_weights_whose_class_count_does_not_match_the_data(cli, run4, data3):
    code, out, err = cli("eval", run4, "--data", data3)
    assert code == 2
    _one_error_line(err, "the weights have 4 classes but", "has 3",
                    "pass the --data the model was trained on")


def test_eval_truncated_or_tampered_weights(cli, run4, tmp_path):
    lone = tmp_path / "lone.safetensors"  # outside a run folder: no checksum to check
    lone.write_bytes((run4 / "last.safetensors").read_bytes()[:5000])
    code, out, err = cli("eval", lone)
    assert code == 2
    _one_error_line(err, f"{lone}: not a readable safetensors file")
    run = _copy_run(run4, tmp_path / "run")
    last = run / "last.safetensors"
    blob = bytearray(last.read_bytes())
    blob[-1] ^= 1
    last.write_bytes(bytes(blob))
    code, out, err = cli("eval", run)
    assert code == 2
    _one_error_line(err, f"{last}: checksum mismatch with {run / 'checkpoints.json'}",
                    "use an intact checkpoint from")


def test_eval_pickle_instead_of_weights(cli, tmp_path):
    import pickle

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    code, out, err = cli("eval", fake)
    assert code == 2
    _one_error_line(err, f"{fake}: not a readable safetensors file")


def test_eval_bad_split(cli, run4):
    code, out, err = cli("eval", run4, "--split", "train")
    assert code == 2
    _one_error_line(err, "--split must be test or val (got 'train')")


def test_eval_full_disk_writing_the_report(cli, run4, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    report = tmp_path / "report.json"
    code, out, err = cli("eval", run4, "--out", report)
    assert code == 2
    _one_error_line(err, f"No space left on device: {report} (free some space and run again)")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- inspect-labels


@pytest.mark.parametrize("args, fragments", [
    (["--omega", "-1"], ["--omega must be a finite number >= 0 (got -1"]),
    (["--top-k", "9"], ["--top-k must be between 1 and the 4 classes (got 9)"]),
])
def test_inspect_out_of_range_numbers(cli, run4, tmp_path, args, fragments):
    code, out, err = cli("inspect-labels", run4, "--device", "cpu", "--out",
                         tmp_path / "dump.safetensors", *args)
    assert code == 2
    _one_error_line(err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_inspect_class_count_mismatch_and_missing_run(cli, run4, data3,
                                                      tmp_path):
    code, out, err = cli("inspect-labels", run4, "--data", data3, "--device", "cpu")
    assert code == 2
    _one_error_line(err, "4 classes", "3")
    code, out, err = cli("inspect-labels", tmp_path / "gone", "--device", "cpu")
    assert code == 2
    _one_error_line(err, str(tmp_path / "gone"))


# ----------------------------------------------------------------------------- console script


def test_console_script_one_line_and_no_traceback(run4, data3, data4, tmp_path):
    """The installed `concutmix` script, one bad input per command, in parallel: exit 2, exactly
    one stderr line starting with 'error:', no traceback."""
    script = Path(sys.executable).parent / "concutmix"
    cases = {
        "train": (["train", "--data", data4, "--out", tmp_path / "r", "--set", "method.omega=-1"],
                  "bad value for 'method.omega'"),
        "eval": (["eval", run4, "--data", data3], "the weights have 4 classes"),
        "prepare": (["prepare", "synthetic-lt", "--imbalance", "0", "--out", tmp_path / "p"],
                    "--imbalance must be at least 1"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    procs = {name: subprocess.Popen([str(script), *map(str, args)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert cases[name][1] in err and "Traceback" not in err + out, (name, err)
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(run4, data3, monkeypatch):
    from concutmix_cli.cli import main
    from concutmix_cli.errors import UserError

    monkeypatch.setattr(sys, "argv", ["concutmix", "--debug", "eval", str(run4), "--data",
                                      str(data3)])
    with pytest.raises(UserError, match="the weights have 4 classes"):
        main()  # re-raised, so Python prints the traceback

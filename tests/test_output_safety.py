"""Where commands and the library may write (outputs.check_outputs), and what they print on any
terminal: an output never replaces an input (also one a folder, a .txt list or the run's prepared
list names), a special file, a file of a run or a dataset (also through the Python API), nor an
existing file without --force, the same rule for every command; class and file names print on a
terminal that cannot show them.

Each test fails on the code before the rule (docs/reliability.md, "Outputs").
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import one_epoch_run, one_error_line, tree

CLASSES = ("café", "niño", "日本")


pytestmark = pytest.mark.usefixtures("wide")  # conftest: long paths stay on one line


def _images(root: Path, side: int = 16, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """Non-ASCII class names, stored as arrays, and a one-epoch run on them."""
    from concutmix_cli.data.prepare import prepare

    base = tmp_path_factory.mktemp("outputs")
    images = _images(base / "photos")
    data = prepare("folder", out=base / "data", root=images, image_size=16,
                   test_fraction=0.34).out
    run = one_epoch_run(base / "run", data, "optim.epochs=1", "optim.batch_size=4")
    return {"images": images, "data": data, "run": run}


def _predict_args(run: Path, *inputs) -> list:
    return ["predict", run, *inputs, "--device", "cpu"]


# ----------------------------------------------------------------------------- inputs


def test_predict_never_writes_over_an_image_it_reads(cli, own, tmp_path):
    """`predict RUN imgs/ --out imgs/0.png` replaced the input image with the JSON report
    (the check compared --out with the folder, not with the images in it); so did a .txt list."""
    images = shutil.copytree(own["images"], tmp_path / "imgs")
    listed = tmp_path / "some.txt"
    listed.write_text(f"imgs/{CLASSES[1]}/3.png\n")
    before = tree(images)
    for inputs, target in (([images], images / CLASSES[0] / "0.png"),
                           ([listed], images / CLASSES[1] / "3.png")):
        for force in ([], ["--force"]):
            code, out, err = cli(*_predict_args(own["run"], *inputs), "--out", target, *force)
            assert code == 2
            one_error_line(err, f"--out {target}", "which this command reads")
    assert tree(images) == before


@pytest.fixture(scope="module")
def listed_run(tmp_path_factory) -> dict[str, Path]:
    """A dataset that keeps image files (--image-size above 64: split lists) and a run on it."""
    from concutmix_cli.data.prepare import prepare

    base = tmp_path_factory.mktemp("listed")
    images = _images(base / "photos", side=72, per_class=4)
    data = prepare("folder", out=base / "data", root=images, image_size=72,
                   test_fraction=0.25).out
    run = one_epoch_run(base / "run", data, "optim.epochs=1", "data.views='imagenet'",
                        "optim.batch_size=4")
    return {"images": images, "data": data, "run": run}


def test_eval_and_inspect_never_write_over_an_image_the_runs_data_lists(cli, listed_run):
    """`eval RUN --out IMG`, IMG an image that the run's prepared split list names (under the
    image root, not in the prepared folder), replaced the image with the JSON report."""
    image = listed_run["images"] / CLASSES[2] / "1.png"
    before = tree(listed_run["images"])
    for command, option in (("eval", "--out"), ("inspect-labels", "--csv")):
        code, out, err = cli(command, listed_run["run"], "--device", "cpu", option, image,
                             "--force")
        assert code == 2
        one_error_line(err, f"{option} {image}", "is an image of the dataset this command reads")
    assert tree(listed_run["images"]) == before


# ----------------------------------------------------------------------------- special files


def _special_files(tmp_path: Path) -> list[tuple[Path, str]]:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    link = tmp_path / "stdout.json"
    link.symlink_to("/proc/self/fd/1")
    found = [(fifo, "FIFO"), (link, "")]
    device = tmp_path / "null.json"
    try:  # a private /dev/null: as root in CI; elsewhere the FIFO and the link cover the rule
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        found.append((device, "character device"))
    except (PermissionError, OSError):
        pass
    return found


def _kind(path: Path) -> int:
    return os.lstat(path).st_mode & 0o170000


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_special_files_are_never_replaced(cli, own, tmp_path, command):
    """--out onto a FIFO, a character device or a symlink to /proc/self/fd/1 replaced the node
    with a regular file (the atomic temp-and-rename); as root, --out /dev/null would have
    replaced the system's node. Now refused, the node untouched."""
    args = {"predict": _predict_args(own["run"], own["images"] / CLASSES[0] / "0.png"),
            "eval": ["eval", own["run"], "--device", "cpu"],
            "export": ["export", own["run"], "--format", "torchscript"]}[command]
    for path, kind in _special_files(tmp_path):
        before = _kind(path)
        code, out, err = cli(*args, "--out", path)
        assert code == 2, (path, err)
        one_error_line(err, f"--out {path}", kind)
        assert _kind(path) == before, path
        if path.is_symlink():
            assert os.readlink(path) == "/proc/self/fd/1"


def test_a_symlink_to_a_regular_file_is_written_through(cli, own, tmp_path):
    """The link stays a link and the file it names gets the output (as shell redirection)."""
    target = tmp_path / "reports" / "eval.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    code, out, err = cli("eval", own["run"], "--device", "cpu", "--out", link, "--force")
    assert code == 0, err
    assert link.is_symlink() and '"overall"' in target.read_text()


# ----------------------------------------------------------------------------- the library


def test_the_api_export_never_writes_over_a_run_or_dataset_file(own, tmp_path):
    """`api.export()` wrote over the run's own weights, checkpoints.json or a dataset's files:
    the output checks were in the CLI only."""
    from concutmix_cli import api
    from concutmix_cli.errors import UserError

    run = shutil.copytree(own["run"], tmp_path / "run")
    data = shutil.copytree(own["data"], tmp_path / "data")
    before = {"run": tree(run), "data": tree(data)}
    for target in (run / "last.safetensors", run / "checkpoints.json",
                   run / "checkpoints" / "epoch-0001.safetensors", data / "manifest.json",
                   data / "train.safetensors"):
        with pytest.raises(UserError, match="(belongs to the (run folder|prepared dataset)|"
                                            "which this command reads)"):
            api.export(run, "torchscript", target)
    assert {"run": tree(run), "data": tree(data)} == before


# ----------------------------------------------------------------------------- --force


COMMANDS = {
    "eval": lambda run, images: ["eval", run, "--device", "cpu"],
    "predict": lambda run, images: _predict_args(run, images / CLASSES[0] / "0.png"),
    "export": lambda run, images: ["export", run, "--format", "torchscript"],
    "inspect-labels": lambda run, images: ["inspect-labels", run, "--num", "2", "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_existing_file_is_replaced_only_with_force(cli, own, tmp_path, command):
    """`export --out` (and eval, predict, inspect-labels --out) replaced an existing unrelated
    file without a word; `plot` asked for --force. Now one rule for every command."""
    target = tmp_path / "thesis.txt"
    target.write_text("years of work")
    args = COMMANDS[command](own["run"], own["images"])
    code, out, err = cli(*args, "--out", target)
    assert code == 2
    one_error_line(err, f"--out {target} already exists", "--force")
    assert target.read_bytes() == b"years of work"
    code, out, err = cli(*args, "--out", target, "--force")
    assert code == 0, err
    assert target.read_bytes() != b"years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.txt"]  # no temporary left


# ----------------------------------------------------------------------------- any terminal


@pytest.mark.parametrize("command", ["eval", "predict", "inspect-labels"])
def test_non_ascii_class_names_print_on_an_ascii_terminal(own, command):
    """With a terminal that cannot encode the class names (LC_ALL=C with PYTHONUTF8=0, or
    PYTHONIOENCODING=ascii), eval, predict and inspect-labels ended with exit 1 ("internal error:
    UnicodeEncodeError"). Now the names are written escaped."""
    args = {"eval": ["eval", own["run"]],
            "predict": ["predict", own["run"], own["images"] / CLASSES[0]],
            "inspect-labels": ["inspect-labels", own["run"], "--num", "2"]}[command]
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii",
           "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "concutmix_cli", *map(str, args), "--device",
                           "cpu"], capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"caf\\xe9" in done.stdout or b"\\xe9" in done.stderr + done.stdout

"""Hostile input on the own-data, split-list and predict surfaces (data/own.py, data/lists.py,
data/images.py, inference.py): FIFOs, link loops, links between splits, overlapping folders,
16-bit images, names a split list cannot hold, names that are not UTF-8, huge and zero-padded
class indices. Each case: one `error:` line and exit 2 (or the promised result), no hang, no
image counted twice, nothing half-written."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_epoch_run, one_error_line, tree

REPO = Path(__file__).resolve().parent.parent


class _Hung(BaseException):
    """Raised by the alarm: not an Exception, so the CLI's own handlers do not swallow it."""


@contextmanager
def _deadline(seconds: int = 30):
    """Fail (instead of hanging forever) when the body blocks, e.g. in open() of a FIFO."""
    def ring(signum, frame):
        raise _Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(path: Path | bytes, value: int = 0, size: int = 8) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def _folder(root: Path, counts: dict[str, int] | None = None) -> Path:
    """ImageFolder layout, distinct 8x8 PNGs named 0.png, 1.png, ... per class."""
    for c, (name, n) in enumerate((counts or {"cat": 3, "dog": 3}).items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            _png(root / name / f"{i}.png", 40 * c + 10 * i)
    return root


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _listed(data: Path, split: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in
            (data / f"{split}.txt").read_text(encoding="utf-8").splitlines()]


def _subprocess(*args, limit_bytes: int | None = None, timeout: int = 120):
    """The real command in a child process (cwd and import path: this checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "concutmix_cli", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder after one (untrained) epoch on tiny synthetic data, for predict."""
    from conftest import tiny_synthetic

    base = tmp_path_factory.mktemp("hostile")
    return one_epoch_run(base / "run", tiny_synthetic(base / "data", classes=4))


# ----------------------------------------------------------------------------- 4: numbers


def test_a_huge_csv_class_index_is_refused_naming_its_line_without_eating_memory(tmp_path):
    """Before: set(range(99999999999)) grew the process until the kernel killed it (23 GB);
    under the 4 GB address-space limit here: MemoryError, exit 1."""
    root = _folder(tmp_path / "img")
    (tmp_path / "t.csv").write_text("path,label\ncat/0.png,0\ncat/1.png,0\ndog/0.png,1\n"
                                    "dog/1.png,99999999999\n")
    done = _subprocess("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                       "--image-size", "16", "--out", tmp_path / "d", limit_bytes=4 * 2**30)
    assert done.returncode == 2, done.stderr[-2000:]
    one_error_line(done.stderr, "t.csv line 5: 99999999999 cannot be a class index",
                   "the file has 4, so C is at most 4")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("train, val, fragments", [
    (["a.png 0", "b.png 99999999999999999999999"], None,
     ["train list", "line 2: label 99999999999999999999999 is too large to be a class index"]),
    (["a.png 0", "b.png " + "9" * 5000], None, ["line 2: label 999", "is too large"]),
    (["a.png 0", "b.png 1"], ["a.png 0", "b.png 99999999999999999999999"],
     ["val list", "line 2: label 99999999999999999999999 is too large"]),
    (["a.png 0", "b.png 1", "c.png 7"], None,
     ["train list", "line 3: class 7 cannot be a class index", "the list has 3, so C is at most 3"]),
])
def test_list_labels_that_cannot_be_class_indices_are_one_line_naming_the_line(
        cli, tmp_path, train, val, fragments):
    """Before: a label beyond int64 was an internal error (OverflowError, exit 1), a label of
    5000 digits too (int() refuses them), and a too large label was not traced to its line."""
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    args = ["prepare", "places-lt", "--root", tmp_path, "--train-list", tmp_path / "train.txt"]
    if val is not None:
        (tmp_path / "val.txt").write_text("\n".join(val) + "\n")
        args += ["--val-list", tmp_path / "val.txt"]
    code, _, err = cli(*args, "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, *fragments)
    assert not (tmp_path / "d").exists()


def test_a_csv_label_of_thousands_of_digits_is_one_line(cli, tmp_path):
    """Before: int() of a 5000-digit label raised ValueError: internal error, exit 1."""
    root = _folder(tmp_path / "img")
    (tmp_path / "t.csv").write_text(f"path,label\ncat/0.png,0\ndog/0.png,{'1' * 5000}\n")
    code, _, err = cli("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                       "--image-size", "16", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "t.csv line 3: 111", "cannot be a class index")


def test_an_npz_declaring_a_huge_array_is_refused_as_damaged(cli, tmp_path):
    """Before: numpy allocated the declared 30 TB before reading: MemoryError, exit 1."""
    import re
    import zipfile

    def npy(array, shape=None) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
        if shape is None:
            return data
        size = int.from_bytes(data[8:10], "little")
        header = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", data[10:10 + size].decode())
        header = header.rstrip() + " " * (-(10 + len(header.rstrip()) + 1) % 64) + "\n"
        return data[:8] + len(header).to_bytes(2, "little") + header.encode() + data[10 + size:]

    x, y = np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("train_x.npy", npy(x, (10**7, 1000, 1000, 3)))
        for name, array in (("train_y", y), ("test_x", x), ("test_y", y)):
            archive.writestr(f"{name}.npy", npy(array))
    code, _, err = cli("prepare", "cifar10-lt", "--source", tmp_path / "huge.npz", "--out",
                       tmp_path / "d")
    assert code == 2
    one_error_line(err, "train_x.npy declares shape [10000000, 1000, 1000, 3]",
                   "holds 12,288 bytes", "damaged")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- 5: FIFOs


def test_a_fifo_in_a_class_folder_is_reported_not_opened(cli, tmp_path):
    """Before: open() of the FIFO blocked `prepare folder` forever."""
    root = _folder(tmp_path / "img")
    os.mkfifo(root / "cat" / "x.png")
    with _deadline():
        code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "16",
                           "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "1 of 7 files are not readable images", "cat/x.png",
                   "not a regular file (a FIFO)")
    assert not (tmp_path / "d").exists()
    with _deadline():
        code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "72",
                           "--skip-bad", "--out", tmp_path / "d")
    assert code == 0, err
    manifest = _manifest(tmp_path / "d")
    assert manifest["train_counts"] == [3, 3]
    assert manifest["skipped"] == [{"path": "cat/x.png", "split": "train",
                                    "reason": "not a regular file (a FIFO)"}]


def test_a_csv_row_naming_a_fifo_is_reported_not_opened(cli, tmp_path):
    """Before: decoding the row's file blocked in open() forever."""
    root = _folder(tmp_path / "img")
    os.mkfifo(root / "dog" / "pipe.jpg")
    (tmp_path / "t.csv").write_text("path,label\ncat/0.png,cat\ndog/0.png,dog\ndog/pipe.jpg,dog\n")
    with _deadline():
        code, _, err = cli("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                           "--image-size", "16", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "1 of 3 files", "dog/pipe.jpg", "not a regular file (a FIFO)")


def test_a_split_list_that_is_a_fifo_is_refused_not_opened(cli, tmp_path):
    """Before: reading the list blocked in open() forever."""
    os.mkfifo(tmp_path / "train.txt")
    with _deadline():
        code, _, err = cli("prepare", "imagenet-lt", "--root", tmp_path, "--train-list",
                           tmp_path / "train.txt", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "train.txt: cannot read (not a regular file (a FIFO))")


def test_training_time_reads_never_open_a_fifo(tmp_path):
    """Before: ListImageDataset opened whatever the list named: a FIFO blocked forever."""
    from concutmix_cli.data.lists import ListImageDataset
    from concutmix_cli.errors import UserError

    os.mkfifo(tmp_path / "x.png")
    with _deadline(), pytest.raises(UserError, match=r"x\.png .*not a regular file \(a FIFO\)"):
        ListImageDataset(tmp_path, [("x.png", 0)])[0]


def test_predict_reports_a_fifo_in_a_folder_or_given_itself(cli, run, tmp_path):
    """Before: a folder holding a FIFO blocked predict forever; the FIFO itself was 'not found'."""
    images = _folder(tmp_path / "img", {"cat": 2})
    os.mkfifo(images / "cat" / "z.png")
    with _deadline():
        code, _, err = cli("predict", run, images, "--json", "--device", "cpu")
    assert code == 2
    one_error_line(err, "1 of 3 images are not readable", "z.png", "not a regular file (a FIFO)")
    with _deadline():
        code, out, err = cli("predict", run, images / "cat" / "z.png", images, "--json",
                             "--skip-bad", "--device", "cpu")
    assert code == 0, err
    report = json.loads(out)
    assert [Path(r["path"]).name for r in report["predictions"]] == ["0.png", "1.png"]
    assert report["skipped"] == [{"path": str(images / "cat" / "z.png"),
                                  "reason": "not a regular file (a FIFO)"}]


# ----------------------------------------------------------------------------- 6: links


def test_a_link_loop_in_a_class_folder_counts_each_image_once(cli, tmp_path):
    """Before: os.walk(followlinks=True) went round `loop -> .` until the path was too long:
    each image counted ~40 times, and the same image landed in train and in test."""
    root = _folder(tmp_path / "img", {"cat": 4, "dog": 4})
    os.symlink(".", root / "cat" / "loop")
    os.link(root / "dog" / "0.png", root / "dog" / "again.png")  # a hard link: the same image
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "72",
                       "--test-fraction", "0.5", "--out", tmp_path / "d")
    assert code == 0, err
    manifest = _manifest(tmp_path / "d")
    assert manifest["train_counts"] == [2, 2] and manifest["test_counts"] == [2, 2]
    train, test = (_listed(tmp_path / "d", s) for s in ("train", "test"))
    real = {s: {os.path.realpath(root / p) for p in paths} for s, paths in
            (("train", train), ("test", test))}
    assert len(real["train"]) == 4 and len(real["test"]) == 4 and not real["train"] & real["test"]


def test_a_link_up_the_tree_into_another_class_is_refused_naming_both_paths(cli, tmp_path):
    """Before: `cat/up -> ..` made every dog image a cat image too (many times over)."""
    root = _folder(tmp_path / "img")
    os.symlink("..", root / "cat" / "up")
    before = tree(root)
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "72",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "'cat/up/dog/0.png' (train, class 'cat')",
                   "'dog/0.png' (train, class 'dog') are the same file")
    assert tree(root) == before and sorted(p.name for p in tmp_path.iterdir()) == ["img"]


@pytest.mark.parametrize("link", ["file", "class folder"])
def test_a_test_folder_linking_training_images_is_refused(cli, tmp_path, link):
    """Before: a --test folder whose image (or class folder) is a link to training images was
    accepted: the model was tested on images it trained on."""
    root = _folder(tmp_path / "img")
    (tmp_path / "held").mkdir()
    if link == "file":
        (tmp_path / "held" / "cat").mkdir()
        _png(tmp_path / "held" / "cat" / "new.png", 200)
        os.symlink(root / "cat" / "1.png", tmp_path / "held" / "cat" / "x.png")
        fragments = ["'img/cat/1.png' (train, class 'cat')", "'held/cat/x.png' (test"]
    else:
        os.symlink(root / "dog", tmp_path / "held" / "dog")
        fragments = ["'img/dog/0.png' (train, class 'dog')", "'held/dog/0.png' (test"]
    code, _, err = cli("prepare", "folder", "--root", root, "--test", tmp_path / "held",
                       "--image-size", "16", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, *fragments, "same file")


def test_a_class_folder_linking_another_class_is_refused(cli, tmp_path):
    """Before: `kitten -> cat` was accepted: every cat image was also labelled kitten."""
    root = _folder(tmp_path / "img")
    os.symlink("cat", root / "kitten")
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "16",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "'cat/0.png' (train, class 'cat')", "'kitten/0.png' (train, class "
                   "'kitten') are the same file")


def test_two_csv_rows_naming_a_file_and_a_link_to_it_are_refused(cli, tmp_path):
    """Before: accepted: the same image in the training and the test split."""
    root = _folder(tmp_path / "img")
    os.symlink("0.png", root / "cat" / "alias.png")
    (tmp_path / "t.csv").write_text("path,label\ncat/0.png,cat\ncat/1.png,cat\ndog/0.png,dog\n")
    (tmp_path / "s.csv").write_text("path,label\ncat/alias.png,cat\n")
    code, _, err = cli("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                       "--test", tmp_path / "s.csv", "--image-size", "16", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "s.csv line 2: 'cat/alias.png' is the same file as 'cat/0.png'",
                   "t.csv line 2")


def test_predict_counts_each_image_once_through_a_link_loop(cli, run, tmp_path):
    """Before: `loop -> .` multiplied the predictions (one per path round the loop)."""
    images = _folder(tmp_path / "img", {"cat": 3})
    os.symlink(".", images / "cat" / "loop")
    os.symlink(images / "cat" / "2.png", tmp_path / "alias.png")
    code, out, err = cli("predict", run, images, tmp_path / "alias.png", "--json",
                         "--device", "cpu")
    assert code == 0, err
    assert [Path(r["path"]).name for r in json.loads(out)["predictions"]] == [
        "0.png", "1.png", "2.png"]


# ----------------------------------------------------------------------------- 7: overlap


@pytest.mark.parametrize("given, fragment", [
    (["--test", "{root}"], "--test {root} is the same folder as --root {root}"),
    (["--val", "{root}"], "--val {root} is the same folder as --root {root}"),
    (["--test", "{root}/cat"], "--test {root}/cat is inside --root {root}"),
    (["--val", "{held}", "--test", "{held}"], "--test {held} is the same folder as --val {held}"),
    (["--test", "{above}"], "--test {above} holds --root {root}"),
])
def test_overlapping_split_folders_are_refused(cli, tmp_path, given, fragment):
    """Before: accepted: every test (or validation) image was a training image as well."""
    above = tmp_path / "above"
    root = _folder(above / "cat", {"cat": 2, "dog": 2})  # --root: a class folder of `above`
    (above / "dog").mkdir()
    held = _folder(tmp_path / "held", {"cat": 1})
    names = {"root": root, "held": held, "above": above}
    code, _, err = cli("prepare", "folder", "--root", root, *[g.format(**names) for g in given],
                       "--image-size", "16", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, fragment.format(**names), "give separate folders")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- 8: 16-bit


def _gradient16() -> np.ndarray:
    """16x16 values over the whole 16-bit range (not multiples of 257: rounding matters)."""
    return np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)


def _expected8(values: np.ndarray) -> np.ndarray:
    """The 8-bit RGB image of 16-bit greyscale values, written plainly: scaled and rounded."""
    grey = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@pytest.fixture()
def deep(tmp_path) -> Path:
    """cat: a 16-bit greyscale PNG and TIFF and a 32-bit integer TIFF holding 16-bit values;
    dog: 8-bit PNGs."""
    root = _folder(tmp_path / "deep", {"cat": 0, "dog": 2})
    g = _gradient16()
    Image.fromarray(g).save(root / "cat" / "a.png")
    Image.fromarray(65535 - g).save(root / "cat" / "b.tif")
    Image.fromarray(g.astype(np.int32)).save(root / "cat" / "c.tif")
    modes = []
    for name in ("a.png", "b.tif", "c.tif"):
        with Image.open(root / "cat" / name) as image:
            modes.append(image.mode)
    assert modes == ["I;16", "I;16", "I"]
    return root


def test_16_bit_images_are_scaled_to_8_bits_not_saturated(cli, deep, tmp_path):
    """Before: convert("RGB") clipped 16-bit values to 255: nearly white images."""
    from safetensors.numpy import load_file

    code, _, err = cli("prepare", "folder", "--root", deep, "--image-size", "16",
                       "--out", tmp_path / "d")
    assert code == 0, err
    stored = load_file(str(tmp_path / "d" / "train.safetensors"))["images"]
    g = _gradient16()
    for k, values in enumerate((g, 65535 - g, g)):  # cat/a.png, cat/b.tif, cat/c.tif
        assert np.array_equal(stored[k], _expected8(values)), k


def test_16_bit_images_are_scaled_at_training_time_and_in_predict(deep):
    """Before: ListImageDataset (split lists) and predict's reader saturated them as well."""
    from concutmix_cli.data.lists import ListImageDataset
    from concutmix_cli.inference import _Images

    g = _gradient16()
    image, _ = ListImageDataset(deep, [("cat/a.png", 0)])[0]
    assert np.array_equal(np.asarray(image), _expected8(g))
    x, _, error = _Images([deep / "cat" / "b.tif"], lambda im: np.asarray(im), 16)[0]
    assert error == "" and np.array_equal(x, _expected8(65535 - g))


@pytest.mark.parametrize("name, array, fragment", [
    ("f.tif", np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "mode F"),
    ("i.tif", np.full((8, 8), 70000, dtype=np.int32), "outside 0..65535 (found 70000..70000)"),
])
def test_pixels_without_a_faithful_8_bit_mapping_are_refused(cli, tmp_path, name, array, fragment):
    """Before: float images became black and 32-bit values were clipped, without a word."""
    root = _folder(tmp_path / "img")
    Image.fromarray(array).save(root / "cat" / name)
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "16",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "1 of 7 files are not readable images", f"cat/{name}", fragment)


# ----------------------------------------------------------------------------- 9: list names


@pytest.mark.parametrize("folder, name, shown", [
    ("cat", "new\nline.png", r"'cat/new\nline.png' holds a line break"),
    ("cat", "trail.png ", "'cat/trail.png ' starts or ends with a space"),
    (" cat", "0.png", "' cat/0.png' starts or ends with a space"),
])
def test_a_name_a_split_list_cannot_hold_is_refused_when_preparing(cli, tmp_path, folder, name,
                                                                   shown):
    """Before: written into train.txt as it was; training then read another path (or a line
    without a label) and failed, or trained on the wrong files."""
    root = _folder(tmp_path / "img")
    (root / folder).mkdir(exist_ok=True)
    _png(root / folder / name, 99)
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "72",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, shown, "--image-size 64 or less")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_a_split_list_is_only_written_when_it_reads_back_the_same(tmp_path):
    """Before: the list writer wrote any entry, so the list named other files than it was given."""
    from concutmix_cli.data.lists import read_split_list, write_split_list
    from concutmix_cli.errors import UserError

    with pytest.raises(UserError, match=r"'b\.png\\r' starts or ends with a space .*line 2 of t\.txt"):
        write_split_list(tmp_path / "t.txt", [("a b/ok.png", 0), ("b.png\r", 1)])
    assert list(tmp_path.iterdir()) == []  # neither the list nor a .tmp
    entries = [("\ufeffbom.png", 0), ("sp ace/ lead.png", 12), ("tab\there.png", 3)]
    with pytest.raises(UserError, match="line 1 of"):
        write_split_list(tmp_path / "t.txt", entries)  # the reader drops a BOM on line 1
    write_split_list(tmp_path / "t.txt", entries[1:] + entries[:1])
    assert read_split_list(tmp_path / "t.txt") == entries[1:] + entries[:1]


def test_a_failed_list_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Before: a failure between writing t.txt.tmp and renaming it left the .tmp behind."""
    from concutmix_cli.data.lists import write_split_list

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_split_list(tmp_path / "t.txt", [("a.png", 0)])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 11: not UTF-8


@pytest.mark.parametrize("size", ["16", "72"])
def test_a_file_name_that_is_not_utf8_is_an_unreadable_file(cli, tmp_path, size):
    """Before: exit 1 (internal error: UnicodeEncodeError) writing the split list, or the image
    went in silently under a name no manifest or message could hold."""
    root = _folder(tmp_path / "img")
    _png(os.fsencode(root / "cat") + b"/caf\xe9.png", 77)
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", size,
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "1 of 7 files", r"'cat/caf\xe9.png'", "file name is not valid UTF-8")
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", size, "--skip-bad",
                       "--out", tmp_path / "d")
    assert code == 0, err
    manifest = _manifest(tmp_path / "d")
    assert manifest["train_counts"] == [3, 3]
    assert manifest["skipped"] == [{"path": r"cat/caf\xe9.png", "split": "train",
                                    "reason": "file name is not valid UTF-8"}]


def test_a_class_folder_name_that_is_not_utf8_is_refused(cli, tmp_path):
    """Before: accepted as a class name that the manifest could only keep as a surrogate."""
    root = _folder(tmp_path / "img")
    os.mkdir(os.fsencode(root) + b"/\xe9t\xe9")
    _png(os.fsencode(root) + b"/\xe9t\xe9/0.png")
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "16",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, r"class folder name(s) '\xe9t\xe9' are not valid UTF-8", "rename them")


def test_an_unreadable_file_under_a_root_that_is_not_utf8_is_one_line(cli, tmp_path):
    """Before: the reason quoted the undecodable path: exit 1 writing the manifest."""
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9"))
    _folder(root)
    (root / "dog" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "t.csv").write_text("path,label\ncat/0.png,cat\ndog/0.png,dog\ndog/bad.png,dog\n")
    code, _, err = cli("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                       "--image-size", "72", "--skip-bad", "--out", tmp_path / "d")
    assert code == 0, err
    assert _manifest(tmp_path / "d")["skipped"] == [
        {"path": "dog/bad.png", "split": "train",
         "reason": "cannot identify image file (not an image format Pillow reads)"}]


def test_predict_writes_a_name_that_is_not_utf8_escaped(cli, run, tmp_path):
    """Before: the JSON / CSV output held a lone surrogate: exit 1 (UnicodeEncodeError)."""
    images = _folder(tmp_path / "img", {"cat": 1})
    _png(os.fsencode(images / "cat") + b"/caf\xe9.png", 77)
    with open(os.fsencode(images / "cat") + b"/bad\xe9.png", "wb") as f:
        f.write(b"junk")
    code, out, err = cli("predict", run, images, "--csv", "--skip-bad", "--device", "cpu",
                         "--out", tmp_path / "p.csv")
    assert code == 0, err
    rows = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(images / "cat" / "0.png"),
                                                   str(images / "cat") + r"/caf\xe9.png"]
    assert out.splitlines() == rows
    assert r"bad\xe9.png (cannot identify image file" in err


# ----------------------------------------------------------------------------- 13: indices


def test_csv_index_labels_are_matched_by_value(cli, tmp_path):
    """Before: '00' and '01' were looked up as strings in an index keyed '0', '1': refused with
    "class '00' has no training row"."""
    root = _folder(tmp_path / "img")
    (tmp_path / "t.csv").write_text("path,label\ncat/0.png,0\ncat/1.png,00\ndog/0.png,01\n"
                                    "dog/1.png,1\n")
    (tmp_path / "v.csv").write_text("path,label\ncat/2.png,000\ndog/2.png,0001\n")
    code, _, err = cli("prepare", "csv", "--root", root, "--train", tmp_path / "t.csv",
                       "--val", tmp_path / "v.csv", "--image-size", "16", "--out", tmp_path / "d")
    assert code == 0, err
    manifest = _manifest(tmp_path / "d")
    assert manifest["classes"] == ["0", "1"]
    assert manifest["train_counts"] == [2, 2] and manifest["val_counts"] == [1, 1]


# ----------------------------------------------------------------------------- extra cases


def test_an_image_above_pillows_pixel_limit_is_refused_not_decoded(cli, tmp_path, monkeypatch):
    """Before: between Image.MAX_IMAGE_PIXELS and twice that Pillow only warned (two more lines
    on stderr) and decoded it (up to ~180 million pixels, 0.5 GB as RGB). The limit is lowered
    here so that a 40x40 image is in that range."""
    root = _folder(tmp_path / "img")
    _png(root / "cat" / "big.png", 5, size=40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, _, err = cli("prepare", "folder", "--root", root, "--image-size", "16",
                       "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "1 of 7 files", "cat/big.png", "too large to decode safely",
                   "exceeds limit of 1000 pixels")


def test_a_csv_that_is_a_fifo_or_a_folder_is_named_as_such(cli, tmp_path):
    """Before: both were reported as 'file not found', which sends the user looking for a file
    that is there."""
    root = _folder(tmp_path / "img")
    os.mkfifo(tmp_path / "t.csv")
    for train, kind in ((tmp_path / "t.csv", "a FIFO"), (root, "a folder")):
        with _deadline():
            code, _, err = cli("prepare", "csv", "--root", root, "--train", train,
                               "--image-size", "16", "--out", tmp_path / "d")
        assert code == 2
        one_error_line(err, f"--train {train}: cannot read (not a regular file ({kind}))")


def test_an_npz_of_images_without_pixels_is_one_line(cli, tmp_path):
    """Before: [N, 0, 0, 3] images passed the checks; the channel mean was NaN and writing the
    manifest failed: internal error, exit 1."""
    x, y = np.zeros((500, 0, 0, 3), np.uint8), np.arange(500) % 10
    np.savez(tmp_path / "zero.npz", train_x=x, train_y=y, test_x=x[:10], test_y=y[:10])
    code, _, err = cli("prepare", "cifar10-lt", "--source", tmp_path / "zero.npz", "--n-max",
                       "40", "--imbalance", "10", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "train images are 0x0: they hold no pixels")
    assert not (tmp_path / "d").exists()

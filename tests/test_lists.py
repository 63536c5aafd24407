"""Split-list data sources (ImageNet-LT / Places-LT / iNat2018): parsing, staging, loading."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concutmix_cli.data.lists import (
    ListImageDataset,
    read_split_list,
    sha256_file,
    stage_list_dataset,
)
from concutmix_cli.errors import UserError

SPLITS_DIR = Path("/work/shared/data/splits")


def _real_list(name: str) -> Path:
    path = SPLITS_DIR / name
    if not path.is_file():
        pytest.skip(f"real split file {path} not available")
    return path


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def tiny(tmp_path):
    """3 classes with 5 / 3 / 1 training images of 8x8 pixels, plus val and test images."""
    root = tmp_path / "images"
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    train, val, test = [], [], []
    for c, n in enumerate((5, 3, 1)):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), colors[c]).save(d / f"{i}.png")
            train.append(f"train/class{c}/{i}.png {c}")
        d = root / "val" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * c).save(d / f"{i}.png")  # grayscale: loader converts
            (val if i == 0 else test).append(f"val/class{c}/{i}.png {c}")
    lists = tmp_path / "lists"
    lists.mkdir()
    # Messy but valid spacing, a blank line and CRLF endings in the train list.
    raw = "\r\n".join(line.replace(" ", "\t  ") for line in train[:4]) + "\r\n\r\n" + \
        "\n".join(train[4:]) + "\n"
    (lists / "train.txt").write_bytes(raw.encode())
    return {
        "root": root,
        "train": lists / "train.txt",
        "val": _write(lists / "val.txt", val),
        "test": _write(lists / "test.txt", test),
        "train_lines": train,
    }


def test_stage_tiny_tree(tiny, tmp_path):
    stage = tmp_path / "staged"
    m = stage_list_dataset(stage, "places-lt", tiny["root"], tiny["train"], tiny["val"], tiny["test"])
    assert m["kind"] == "lists"
    assert m["root"] == str(tiny["root"].resolve())
    assert m["num_classes"] == 3
    assert m["classes"] == ["0", "1", "2"]
    assert m["train_counts"] == [5, 3, 1]
    assert m["val_counts"] == [1, 1, 1]
    assert m["test_counts"] == [1, 1, 1]
    assert m["train_indices"] == list(range(9))
    assert m["imbalance"] == 5.0 and isinstance(m["imbalance"], float)
    assert m["image_size"] is None
    assert m["splits"] == {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    # The copies are normalized to 'path label\n'.
    assert (stage / "train.txt").read_text() == "".join(line + "\n" for line in tiny["train_lines"])
    assert read_split_list(stage / "val.txt") == read_split_list(tiny["val"])
    src = m["source"]
    assert src["type"] == "lists" and src["root"] == m["root"]
    for split in ("train", "val", "test"):
        info = src["lists"][split]
        assert info["sha256"] == hashlib.sha256(tiny[split].read_bytes()).hexdigest()
        assert info["path"] == str(tiny[split].resolve())
    assert src["lists"]["train"]["lines"] == 9 and src["lists"]["test"]["lines"] == 3
    json.dumps(m)  # the manifest must be JSON-serializable

    ds = ListImageDataset(tiny["root"], read_split_list(tiny["train"]))
    assert len(ds) == 9
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0] * 5 + [1] * 3 + [2]
    image, label = ds[5]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 1
    assert image.getpixel((0, 0)) == (0, 255, 0)

    # Round trip through a prepared folder, with a transform and a moved image root.
    (stage / "manifest.json").write_text(json.dumps(m))
    val = ListImageDataset.from_prepared(stage, "val", transform=lambda im: im.size)
    assert len(val) == 3 and val[2] == ((8, 8), 2)
    moved = tmp_path / "moved"
    tiny["root"].rename(moved)
    with pytest.raises(UserError, match="not a directory"):
        ListImageDataset.from_prepared(stage, "train")
    train = ListImageDataset.from_prepared(stage, "train", root_override=moved)
    assert train[8][1] == 2 and train.labels.tolist() == ds.labels.tolist()


def test_optional_splits_and_no_file_check(tiny, tmp_path):
    m = stage_list_dataset(tmp_path / "s", "inat2018", tmp_path / "nowhere", tiny["train"], None, None,
                           check_files=False)
    assert m["val_counts"] is None and m["test_counts"] is None
    assert m["splits"] == {"train": "train.txt", "val": None, "test": None}
    assert m["source"]["lists"]["val"] is None
    assert not (tmp_path / "s" / "val.txt").exists()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="no val split"):
        ListImageDataset.from_prepared(tmp_path / "s", "val", root_override=tiny["root"])


def test_paths_with_spaces(tmp_path):
    f = _write(tmp_path / "l.txt", ["my dir/a b.jpg 3", "", "  x.jpg\t12  "])
    assert read_split_list(f) == [("my dir/a b.jpg", 3), ("x.jpg", 12)]
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa.jpg 0\r\nb.jpg 1\r\n")  # BOM and CRLF, as Windows editors save
    assert read_split_list(bom) == [("a.jpg", 0), ("b.jpg", 1)]


def test_sha256_file(tmp_path):
    f = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 17)
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_missing_files_one_error(tiny, tmp_path):
    (tiny["root"] / "train" / "class0" / "3.png").unlink()
    (tiny["root"] / "train" / "class2" / "0.png").unlink()
    (tiny["root"] / "val" / "class1" / "0.png").unlink()
    with pytest.raises(UserError) as info:
        stage_list_dataset(tmp_path / "s", "imagenet-lt", tiny["root"], tiny["train"], tiny["val"], None)
    msg = str(info.value)
    assert "\n" not in msg
    assert "3 listed image(s) missing" in msg
    assert "train/class0/3.png" in msg and "val/class1/0.png" in msg
    assert str(tiny["train"]) in msg and str(tiny["val"]) in msg
    assert not (tmp_path / "s" / "train.txt").exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a/b.jpg", "no label"),
        ("a/b.jpg x7", "not an integer"),
        ("a/b.jpg 1.5", "not an integer"),
        ("a/b.jpg -3", "negative label -3"),
        ("/abs/b.jpg 1", "absolute path"),
    ],
)
def test_malformed_lines(tmp_path, line, expected):
    f = _write(tmp_path / "bad.txt", ["ok/a.jpg 0", "", line, "ok/c.jpg 1"])
    with pytest.raises(UserError) as info:
        read_split_list(f)
    msg = str(info.value)
    assert expected in msg and str(f) in msg and "line 3" in msg


def test_unreadable_list(tmp_path):
    with pytest.raises(UserError, match=r"nope\.txt: cannot read"):
        read_split_list(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="cannot read"):
        read_split_list(tmp_path)  # a directory
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"ok.jpg 0\ncaf\xe9.jpg 1\n")
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        read_split_list(f)
    with pytest.raises(UserError, match=r"val list .*nope\.txt: cannot read"):
        stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, _write(tmp_path / "t.txt", ["a 0"]),
                           tmp_path / "nope.txt", None, check_files=False)


def test_class_bookkeeping_errors(tmp_path):
    train = _write(tmp_path / "train.txt", ["a 0", "b 1", "c 2"])
    val = _write(tmp_path / "val.txt", ["a 0", "", "b 2", "c 3", "d 7"])
    with pytest.raises(UserError) as info:
        stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, train, val, None, check_files=False)
    msg = str(info.value)
    assert str(val) in msg and "line 4" in msg and "class 3" in msg and "0..2" in msg
    assert "2 line(s)" in msg

    gappy = _write(tmp_path / "gappy.txt", ["a 0", "b 2", "c 5"])
    with pytest.raises(UserError) as info:
        stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, gappy, None, None, check_files=False)
    msg = str(info.value)
    assert "3 of the 6 classes" in msg and "class 1, 3, 4" in msg and str(gappy) in msg

    # A huge label must not allocate a huge array before failing.
    huge = _write(tmp_path / "huge.txt", ["a 0", "b 99999999999"])
    with pytest.raises(UserError, match="class 1, 2, 3, 4, 5, ..."):
        stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, huge, None, None, check_files=False)

    empty = _write(tmp_path / "empty.txt", ["", "  "])
    with pytest.raises(UserError, match="no entries"):
        stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, empty, None, None, check_files=False)


def test_corrupt_image_at_training_time(tiny):
    entries = read_split_list(tiny["train"])
    (tiny["root"] / "train" / "class1" / "0.png").write_bytes(b"not a png")
    (tiny["root"] / "train" / "class1" / "1.png").unlink()
    ds = ListImageDataset(tiny["root"], entries)
    with pytest.raises(UserError, match=r"class1/0\.png .*cannot be decoded"):
        ds[5]
    with pytest.raises(UserError, match=r"class1/1\.png .*not found"):
        ds[6]


# ---------------------------------------------------------------------------------------------
# Real split files (read-only, /work/shared/data/splits)


def _counts(entries):
    return np.bincount(np.array([lab for _, lab in entries], dtype=np.int64))


def test_real_places_lt_train(tmp_path):
    path = _real_list("Places_LT_train.txt")
    entries = read_split_list(path)
    assert len(entries) == 62_500
    m = stage_list_dataset(tmp_path / "s", "places-lt", tmp_path, path, _real_list("Places_LT_val.txt"),
                           None, check_files=False)
    assert m["num_classes"] == 365
    assert max(m["train_counts"]) == 4980 and min(m["train_counts"]) == 5
    assert m["imbalance"] == 996.0
    assert sum(m["val_counts"]) == 7300
    assert (tmp_path / "s" / "train.txt").read_bytes() == path.read_bytes()


def test_real_imagenet_lt_val_and_inat_val():
    counts = _counts(read_split_list(_real_list("ImageNet_LT_val.txt")))
    assert counts.sum() == 20_000 and len(counts) == 1000 and (counts == 20).all()
    entries = read_split_list(_real_list("iNaturalist18_val.txt"))
    assert len(entries) == 24_426 and len(_counts(entries)) == 8142


def test_real_scale_existence_check(tmp_path):
    val_list = _real_list("ImageNet_LT_val.txt")
    entries = read_split_list(val_list)
    root = tmp_path / "images"
    made: set[str] = set()
    for rel, _ in entries:
        d = os.path.dirname(rel)
        if d not in made:
            os.makedirs(root / d, exist_ok=True)
            made.add(d)
        open(root / rel, "wb").close()
    first_per_class: dict[int, str] = {}
    for rel, lab in entries:
        first_per_class.setdefault(lab, rel)
    train_list = _write(tmp_path / "train.txt", [f"{rel} {lab}" for lab, rel in sorted(first_per_class.items())])

    m = stage_list_dataset(tmp_path / "s", "imagenet-lt", root, train_list, val_list, None)
    assert m["num_classes"] == 1000 and m["val_counts"] == [20] * 1000 and m["imbalance"] == 1.0

    gone = [entries[123][0], entries[19_999][0]]
    for rel in gone:
        os.remove(root / rel)
    with pytest.raises(UserError) as info:
        stage_list_dataset(tmp_path / "s2", "imagenet-lt", root, train_list, val_list, None)
    msg = str(info.value)
    assert "2 listed image(s) missing" in msg and "val list" in msg and "train list" not in msg
    assert gone[0] in msg and gone[1] in msg

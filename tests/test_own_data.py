"""A user's own images: prepare folder / csv -> train -> eval -> predict -> export, end to end,
plus the exact split counts, the shot thresholds and the CSV rules (data/own.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_error_line, tree

CLASSES = {"red fox": 13, "Ölbaum": 6, "café crème": 3}  # sorted: 'café crème', 'red fox', 'Ölbaum'
FAST = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--set", "method.top_k=2",
        "--set", "method.rectify_after_epoch=-1", "--set", "runtime.max_steps_per_epoch=2",
        "--set", "data.num_workers=0"]


def _image(rng, c: int) -> Image.Image:
    """A noisy image whose colour says its class (so even 2 steps see signal)."""
    base = np.zeros((20, 26, 3), dtype=np.float64)
    base[..., c % 3] = 200
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture()
def photos(tmp_path) -> Path:
    """ImageFolder layout: PNG and JPEG files, names with spaces and non-ASCII letters, a
    nested sub-folder, a hidden file (ignored) and one unreadable file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, (name, n) in enumerate(CLASSES.items()):
        (root / name / "more").mkdir(parents=True)
        for i in range(n):
            where = root / name / ("more" if i == 0 else "") / f"img {i}.{'png' if i % 2 else 'jpg'}"
            _image(rng, c).save(where)
    (root / "red fox" / ".DS_Store").write_bytes(b"\0\0")
    (root / "Ölbaum" / "notes.jpg").write_text("not an image")
    return root


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_unreadable_file_is_named_and_nothing_is_written(cli, photos, tmp_path):
    code, _, err = cli("prepare", "folder", "--root", photos, "--image-size", "32",
                       "--out", tmp_path / "data")
    assert code == 2
    one_error_line(err, "1 of 23 files are not readable images", "Ölbaum/notes.jpg", "--skip-bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no folder, no debris


def test_split_fractions_are_exact_per_class(photos, tmp_path):
    from concutmix_cli.data.prepare import prepare

    manifest = prepare("folder", out=tmp_path / "data", root=photos, image_size=72,
                       val_fraction=0.2, test_fraction=0.25, seed=3, skip_bad=True).manifest
    assert manifest["classes"] == sorted(CLASSES)
    assert manifest["kind"] == "lists" and manifest["image_size"] == 72
    assert manifest["skipped"][0]["path"] == "Ölbaum/notes.jpg"
    for c, name in enumerate(manifest["classes"]):
        n = CLASSES[name]
        # written out plainly: round half up, at least one where asked, one left for training
        val = max(1, math.floor(0.2 * n + 0.5))
        test = max(1, math.floor(0.25 * n + 0.5))
        if n - val - test < 1:
            val = max(0, n - 1 - test)
        assert (manifest["train_counts"][c], manifest["val_counts"][c],
                manifest["test_counts"][c]) == (n - val - test, val, test), name
    assert manifest["train_counts"] == [1, 7, 3] and manifest["val_counts"] == [1, 3, 1]
    lines = {s: (tmp_path / "data" / f"{s}.txt").read_text(encoding="utf-8").splitlines()
             for s in ("train", "val", "test")}
    paths = [line.rsplit(" ", 1)[0] for split in lines.values() for line in split]
    found = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*")
                   if p.name not in (".DS_Store", "notes.jpg"))
    assert sorted(paths) == found  # every readable image exactly once, in one split
    again = prepare("folder", out=tmp_path / "again", root=photos, image_size=72,
                    val_fraction=0.2, test_fraction=0.25, seed=3, skip_bad=True).manifest
    assert (tmp_path / "again" / "test.txt").read_text() == "\n".join(lines["test"]) + "\n"
    assert again["test_counts"] == manifest["test_counts"]


def test_a_class_too_small_for_its_share_is_said_plainly(tmp_path):
    from concutmix_cli.data.prepare import prepare

    rng = np.random.default_rng(1)
    for name, n in (("big", 6), ("single", 1)):
        (tmp_path / "p" / name).mkdir(parents=True)
        for i in range(n):
            _image(rng, i).save(tmp_path / "p" / name / f"{i}.png")
    manifest = prepare("folder", out=tmp_path / "d", root=tmp_path / "p", image_size=16,
                       test_fraction=0.5).manifest
    assert manifest["train_counts"] == [3, 1] and manifest["test_counts"] == [3, 0]
    assert manifest["notes"] == ["class 'single' has only 1 image(s): 1 kept for training, none "
                                 "for test"]


def _as_csv(photos: Path, path: Path) -> Path:
    """The photos as a labelling tool's CSV: every file (the unreadable one too), names quoted
    where the csv module quotes them."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for file in sorted(photos.rglob("*.*")):
            if file.name != ".DS_Store":
                writer.writerow([str(file.relative_to(photos)), file.relative_to(photos).parts[0]])
    return path


@pytest.mark.parametrize("route", ["folder", "csv"])
def test_prepare_train_eval_predict_export_round_trip(cli, photos, tmp_path, route):
    data, run = tmp_path / "data", tmp_path / "run"
    given = ["--root", photos] if route == "folder" else [
        "--root", photos, "--train", _as_csv(photos, tmp_path / "labels.csv")]
    code, out, err = cli("prepare", route, *given, "--image-size", "32",
                         "--test-fraction", "0.3", "--skip-bad", "--out", data)
    assert code == 0, err
    assert "thirds of the classes by count" in out and "Ölbaum" in out and "café crème" in out
    manifest = _manifest(data)
    assert manifest["kind"] == "arrays" and manifest["shot_thresholds"]["rule"] == "thirds"
    assert manifest["shot_groups"] == {"many": [1], "medium": [2], "few": [0]}

    code, out, err = cli("train", "--preset", "own-small", "--data", data, "--out", run, *FAST)
    assert code == 0, err
    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == sorted(CLASSES)
    recalls = [r for r in report["per_class_recall"] if r is not None]
    assert report["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert 0 <= report["macro_f1"] <= 1 and len(report["per_class_precision"]) == 3
    code, out, _ = cli("eval", run)
    assert "balanced accuracy" in out and "macro-F1" in out and "red fox" in out
    code, out, _ = cli("inspect-labels", run, "--num", "4", "--csv", tmp_path / "mixed.csv")
    assert code == 0
    import csv

    with open(tmp_path / "mixed.csv", newline="", encoding="utf-8") as f:
        mixed = list(csv.DictReader(f))
    assert len(mixed) == 4 and {r[k] for r in mixed for k in ("class_a", "class_b")} <= set(CLASSES)

    code, out, err = cli("predict", run, photos / "red fox", photos / "Ölbaum", "--csv",
                         "--top-k", "2", "--skip-bad")
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0] == "path,class_1,probability_1,class_2,probability_2"
    assert len(rows) == 1 + 13 + 6  # notes.jpg is no image: named on stderr
    assert "notes.jpg" in err and "skipped" in err
    first = rows[1].split(",")
    assert first[1] in CLASSES and float(first[2]) >= float(first[4])

    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.data.views import input_transform
    from concutmix_cli.engine.evaluate import load_trained_model

    # predict = the model on the image resized as prepare stored it (input_transform)
    model, _, meta = load_trained_model(run / "last.safetensors", torch.device("cpu"))
    x = input_transform(meta["preprocess"])(Image.open(photos / "red fox" / "img 1.png").convert("RGB"))
    with torch.no_grad():
        want = model.eval()(x[None], project=False).logits.softmax(1)[0]
    code, out, _ = cli("predict", run, photos / "red fox" / "img 1.png", "--json", "--top-k", "3")
    top = json.loads(out)["predictions"][0]["top"]
    assert [t["class"] for t in top] == [sorted(CLASSES)[i] for i in want.argsort(descending=True)]
    assert top[0]["probability"] == pytest.approx(float(want.max()), abs=1e-6)
    assert load_prepared(data).classes == sorted(CLASSES)

    code, out, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert code == 0, err
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    images = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        original = model(((images - mean) / std), project=False).logits
        assert (loaded(images) - original).abs().max() <= 1e-4 * max(1, original.abs().max())


def test_onnx_export_runs_back_in_onnxruntime(tiny_data, tmp_path, cli):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from conftest import one_epoch_run

    from concutmix_cli.engine.evaluate import load_trained_model

    run = one_epoch_run(tmp_path / "run", tiny_data)
    code, out, err = cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert "onnxruntime" in out
    model, _, meta = load_trained_model(run / "last.safetensors", torch.device("cpu"))
    images = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": images.numpy()})[0])
    with torch.no_grad():
        want = model.eval()((images - mean) / std, project=False).logits
    assert (got - want).abs().max() <= 1e-4 * max(1, want.abs().max())  # logits in the 100s


def test_onnx_without_onnxruntime_says_so(monkeypatch):
    import builtins

    from concutmix_cli.exporter import _check

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    difference, checker, note = _check("onnx", b"", torch.nn.Identity(), 8)
    assert (difference, checker) == (None, None)
    assert note.startswith("not checked: onnxruntime is not installed") and "concutmix[onnx]" in note


def test_export_refuses_an_unknown_format_and_a_run_file(cli, tiny_data, tmp_path):
    from conftest import one_epoch_run

    run = one_epoch_run(tmp_path / "run", tiny_data)
    before = tree(run)
    code, _, err = cli("export", run, "--format", "tflite", "--out", tmp_path / "m")
    assert code == 2
    one_error_line(err, "--format must be one of torchscript, onnx")
    code, _, err = cli("export", run, "--format", "torchscript", "--out", run / "last.safetensors")
    assert code == 2
    one_error_line(err, "belongs to the run folder")
    assert tree(run) == before


# ----------------------------------------------------------------------------- csv


def _csv_images(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    root = tmp_path / "img"
    (root / "a, b").mkdir(parents=True)
    for i in range(6):
        _image(rng, i % 2).save(root / "a, b" / f"{i}.png")
    return root


def test_csv_with_names_quoting_and_a_test_file(tmp_path):
    from concutmix_cli.data.prepare import prepare

    root = _csv_images(tmp_path)
    (tmp_path / "train.csv").write_text(
        'label,path,annotator\n"sea, calm","a, b/0.png",x\n"sea, calm","a, b/1.png",x\n'
        'sky,"a, b/2.png",y\nsky,"a, b/3.png",y\n\n', encoding="utf-8")
    (tmp_path / "test.csv").write_text('path,label\n"a, b/4.png",sky\n"a, b/5.png","sea, calm"\n',
                                       encoding="utf-8")
    manifest = prepare("csv", out=tmp_path / "d", root=root, train=tmp_path / "train.csv",
                       test=tmp_path / "test.csv", image_size=16).manifest
    assert manifest["classes"] == ["sea, calm", "sky"]
    assert manifest["train_counts"] == [2, 2] and manifest["test_counts"] == [1, 1]
    assert manifest["source"]["type"] == "csv" and set(manifest["source"]["files"]) == {"train", "test"}


def test_csv_integer_labels_are_indices(tmp_path):
    from concutmix_cli.data.prepare import prepare

    root = _csv_images(tmp_path)
    rows = "".join(f'"a, b/{i}.png",{i % 3}\n' for i in range(6))
    (tmp_path / "train.csv").write_text("path,label\n" + rows)
    manifest = prepare("csv", out=tmp_path / "d", root=root, train=tmp_path / "train.csv",
                       image_size=80).manifest
    assert manifest["classes"] == ["0", "1", "2"] and manifest["train_counts"] == [2, 2, 2]
    assert (tmp_path / "d" / "train.txt").read_text().splitlines()[1] == "a, b/1.png 1"


@pytest.mark.parametrize("train, test, fragments", [
    ("file,class\nx.png,a\n", None, ["--train", "line 1: the header row must name the columns "
                                     "path and label (found: file, class)"]),
    ('path,label\n"a, b/0.png",sea\n', 'path,label\n"a, b/1.png",land\n',
     ["--test", "line 2: class 'land' has no training row"]),
    ('path,label\n"a, b/0.png",sea\n"a, b/0.png",sky\n', None,
     ["line 3: 'a, b/0.png' is already listed", "line 2"]),
    ('path,label\n../outside.png,sea\n', None, ["points outside --root"]),
    ('path,label\n"a, b/0.png",0\n"a, b/1.png",2\n', None, ["class(es) 1 have no training row"]),
])
def test_csv_mistakes_are_one_line(cli, tmp_path, train, test, fragments):
    root = _csv_images(tmp_path)
    (tmp_path / "train.csv").write_text(train)
    args = ["prepare", "csv", "--root", root, "--train", tmp_path / "train.csv", "--out",
            tmp_path / "d", "--image-size", "16"]
    if test is not None:
        (tmp_path / "test.csv").write_text(test)
        args += ["--test", tmp_path / "test.csv"]
    code, _, err = cli(*args)
    assert code == 2
    one_error_line(err, *fragments)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--image-size", "4"], "--image-size must be between 8 and 1024 (got 4)"),
    (["--test-fraction", "0.6", "--val-fraction", "0.4"], "their sum must be below 1"),
    (["--test-fraction", "1"], "--test-fraction must be at least 0 and below 1 (got 1)"),
    (["--test", "."], None),  # filled in below: --test with --test-fraction
])
def test_prepare_options_are_checked(cli, photos, tmp_path, args, fragment):
    if fragment is None:
        args, fragment = [*args, "--test-fraction", "0.2"], "--test and --test-fraction"
    code, _, err = cli("prepare", "folder", "--root", photos, "--out", tmp_path / "d", *args)
    assert code == 2
    one_error_line(err, fragment)


def test_own_options_do_not_apply_to_benchmarks(cli, tmp_path):
    code, _, err = cli("prepare", "synthetic-lt", "--image-size", "32", "--out", tmp_path / "d")
    assert code == 2
    one_error_line(err, "--image-size is an option of prepare folder and prepare csv")


def test_out_inside_the_image_folder_is_refused(cli, photos):
    code, _, err = cli("prepare", "folder", "--root", photos, "--out", photos / "prepared")
    assert code == 2
    one_error_line(err, "would become a class folder")


# ----------------------------------------------------------------------------- large images


def test_large_images_stay_files_and_train_with_imagenet_views(cli, photos, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    code, _, err = cli("prepare", "folder", "--root", photos, "--image-size", "72", "--skip-bad",
                       "--test-fraction", "0.3", "--out", data)
    assert code == 0, err
    code, _, err = cli("train", "--data", data, "--out", run, "--set", "data.views='imagenet'",
                       *FAST)
    assert code == 0, err
    from concutmix_cli.engine.checkpoint import read_weights

    _, meta = read_weights(run / "last.safetensors")
    assert meta["preprocess"]["kind"] == "lists" and meta["preprocess"]["side"] == 72
    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.data.loader import EvalBatches

    batch = next(iter(EvalBatches(load_prepared(data), "test", "imagenet", 2, torch.device("cpu"),
                                  num_workers=0)))
    assert batch[0].shape == (2, 3, 72, 72)
    code, out, err = cli("predict", run, photos / "café crème", "--json")
    assert code == 0, err
    assert [p["top"][0]["class"] in CLASSES for p in json.loads(out)["predictions"]] == [True] * 3


def test_small_arrays_of_another_side_train_on_the_device_path(photos, tmp_path):
    import concutmix_cli as cc

    manifest = cc.prepare("folder", tmp_path / "data", root=photos, image_size=48, skip_bad=True)
    assert manifest["image_size"] == 48
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "data" / "train.safetensors"))["images"].shape == (22, 48, 48, 3)
    result = cc.train("own-small", tmp_path / "run", data=tmp_path / "data", overrides=[
        "optim.epochs=1", "optim.batch_size=4", "runtime.max_steps_per_epoch=2",
        "runtime.device='cpu'", "method.top_k=2", "data.augment_on='device'"])
    assert result.rows[0]["steps"] == 2

    listing = tmp_path / "few.txt"  # a list file: paths relative to its folder
    listing.write_text("photos/red fox/img 1.png\nphotos/Ölbaum/img 2.jpg\n", encoding="utf-8")
    found = cc.predict(result.run_dir, listing, top_k=1, device="cpu")
    assert [Path(r["path"]).name for r in found.rows] == ["img 1.png", "img 2.jpg"]
    assert all(r["top"][0]["class"] in CLASSES for r in found.rows)


def test_predict_never_writes_over_an_image(cli, tiny_data, photos, tmp_path):
    from conftest import one_epoch_run

    run = one_epoch_run(tmp_path / "run", tiny_data)
    image = photos / "red fox" / "img 1.png"
    before = image.read_bytes()
    code, _, err = cli("predict", run, image, "--out", image)
    assert code == 2
    one_error_line(err, "which this command reads")
    assert image.read_bytes() == before

import json
import pickle
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
from safetensors.numpy import load_file

from concutmix_cli.data.longtail import read_manifest
from concutmix_cli.data.prepared import load_prepared


def _leftovers(folder):
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_prepare_cifar100_lt_from_the_real_archive(cli, cifar100_npz, tmp_path):
    out = tmp_path / "c100"
    code, stdout, err = cli("prepare", "cifar100-lt", "--imbalance", "100", "--source", cifar100_npz,
                            "--out", out)
    assert code == 0, err
    assert "10,847" in stdout and "few-shot classes" in stdout
    manifest = read_manifest(out)
    assert manifest["dataset"] == "cifar100-lt" and manifest["seed"] == 0
    assert sum(manifest["train_counts"]) == 10847 and manifest["test_counts"] == [100] * 100
    assert len(manifest["train_indices"]) == 10847
    assert manifest["classes"][:3] == ["apple", "aquarium_fish", "baby"]
    assert manifest["source"]["sha256"] == (
        "2194706fab732297d6f6c6741c654a4e0858249669b24a4c43cd75b284aa07ca")
    assert [len(manifest["shot_groups"][k]) for k in ("many", "medium", "few")] == [35, 35, 30]
    # the stored images are exactly the archive's images at train_indices
    archive = np.load(cifar100_npz)
    train = load_file(out / "train.safetensors")
    idx = np.array(manifest["train_indices"])
    assert np.array_equal(train["images"], archive["train_x"][idx])
    assert np.array_equal(train["labels"], archive["train_y"][idx])
    assert manifest["mean"] == pytest.approx([0.5071, 0.4865, 0.4409], abs=1e-4)
    assert _leftovers(out) == []


def test_prepared_folder_is_self_contained(tiny_data):
    data = load_prepared(tiny_data)
    assert data.train.images.shape == (sum(data.train_counts), 32, 32, 3)
    assert data.train.images.dtype.is_floating_point is False
    assert np.bincount(data.train.labels, minlength=10).tolist() == data.train_counts
    assert len(data.test) == 500


def test_synthetic_is_deterministic_and_long_tailed(tmp_path):
    from tests.conftest import tiny_synthetic

    a = load_prepared(tiny_synthetic(tmp_path / "a"))
    b = load_prepared(tiny_synthetic(tmp_path / "b"))
    c = load_prepared(tiny_synthetic(tmp_path / "c", seed=1))
    assert a.train_counts == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # int(40 * 0.1 ** (c / 9))
    assert bool((a.train.images == b.train.images).all())
    assert not bool((a.train.images == c.train.images).all())


def test_synthetic_classes_are_learnable(tmp_path):
    """A nearest-class-mean classifier on raw pixels must beat chance by far."""
    from tests.conftest import tiny_synthetic

    data = load_prepared(tiny_synthetic(tmp_path / "s", n_max=60, imbalance=1.0))
    x = data.train.images.reshape(len(data.train), -1).float().numpy()
    means = np.stack([x[data.train.labels == c].mean(0) for c in range(10)])
    test = data.test.images.reshape(len(data.test), -1).float().numpy()
    pred = ((test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == data.test.labels).mean() > 0.5


def _fake_cifar100(root, per_class=6, classes=100):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        labels = np.repeat(np.arange(classes), n)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * len(labels)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"name{c}" for c in range(classes)]}, f)


def test_torchvision_path_with_a_fake_cifar_folder(cli, tmp_path, monkeypatch):
    from torchvision import datasets

    import hashlib

    _fake_cifar100(tmp_path / "root")
    folder = tmp_path / "root" / "cifar-100-python"
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    # point torchvision's integrity table at the fake files (the real loader code runs unchanged)
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(datasets.CIFAR100, "meta",
                        {"filename": "meta", "key": "fine_label_names", "md5": md5["meta"]})
    out = tmp_path / "out"
    code, stdout, err = cli("prepare", "cifar100-lt", "--root", tmp_path / "root", "--no-download",
                            "--n-max", "6", "--imbalance", "6", "--out", out)
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["source"]["type"] == "torchvision"
    assert manifest["train_counts"] == [int(6 * (1 / 6) ** (c / 99)) for c in range(100)]
    assert manifest["classes"][5] == "name5" and sum(manifest["test_counts"]) == 200


def test_failed_download_names_the_way_out(cli, tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    out = tmp_path / "never"
    code, stdout, err = cli("prepare", "cifar10-lt", "--root", tmp_path / "dl", "--out", out)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:")
    assert "--source" in err and "--root" in err
    assert not out.exists() and _leftovers(out) == []


def _write_npz(path, **overrides):
    arrays = {
        "train_x": np.zeros((20, 32, 32, 3), np.uint8), "train_y": np.repeat(np.arange(10), 2),
        "test_x": np.zeros((10, 32, 32, 3), np.uint8), "test_y": np.arange(10),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["cifar100-lt", "--imbalance", "0.5"], "--imbalance must be at least 1"),
        (["mnist-lt"], "unknown dataset 'mnist-lt'"),
        (["cifar10-lt", "--source", "missing.npz"], "file not found"),
        (["cifar10-lt", "--source", "garbage.npz"], "not a readable .npz archive"),
        (["cifar10-lt", "--source", "nokeys.npz"], "missing keys train_y"),
        (["cifar10-lt", "--source", "badlabels.npz"], "train labels out of range 0..9"),
        (["places-lt", "--root", "."], "needs --root (the images) and --train-list"),
        (["places-lt", "--root", ".", "--train-list", "unreadable.txt"], "unreadable.txt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    _write_npz(tmp_path / "nokeys.npz", train_y=None)
    _write_npz(tmp_path / "badlabels.npz", train_y=np.repeat(np.arange(10), 2) + 5)
    code, stdout, err = cli("prepare", *args, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err + stdout
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []


def test_existing_output_needs_force(cli, tmp_path):
    from tests.conftest import tiny_synthetic

    out = tiny_synthetic(tmp_path / "d")
    code, _, err = cli("prepare", "synthetic-lt", "--out", out)
    assert code == 2 and "--force" in err
    code, _, err = cli("prepare", "synthetic-lt", "--out", out, "--force", "--n-max", "30",
                       "--imbalance", "10")
    assert code == 0, err
    assert read_manifest(out)["train_counts"][0] == 30 and _leftovers(out) == []


def test_console_script_and_module_entry_points():
    for cmd in (["-m", "concutmix_cli", "--help"],):
        done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0
        for command in ("prepare", "train", "eval", "inspect-labels"):
            assert command in done.stdout


def test_manifest_edits_are_detected(tiny_data, tmp_path):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(tiny_data, copy)
    body = json.loads((copy / "manifest.json").read_text())
    body["train_counts"][0] += 1
    (copy / "manifest.json").write_text(json.dumps(body))
    from concutmix_cli.errors import UserError

    with pytest.raises(UserError, match="checksum mismatch"):
        load_prepared(copy)

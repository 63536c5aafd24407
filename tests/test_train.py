"""End to end through the CLI on tiny synthetic data: every method trains, evaluates, resumes."""

import json

import numpy as np
import pytest
import torch

from concutmix_cli.methods import METHODS
from concutmix_cli.mixing import CutMix

from concutmix_cli.config import build_config, read_by_method
from concutmix_cli.data.sampling import ClassBalancedSampler, EpochPlanner, counter_rng
from concutmix_cli.engine.loop import lr_at

FAST = ["--set", "optim.batch_size=16", "--set", "runtime.max_steps_per_epoch=2",
        "--set", "data.num_workers=0", "--set", "method.top_k=3"]


def method_sets(method: str, *overrides: str) -> list[str]:
    """`--set` for the overrides the method reads (any other is refused), so one command line
    serves every method."""
    return [arg for o in read_by_method(method, list(overrides)) for arg in ("--set", o)]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_evaluates_and_resumes(cli, tiny_data, tmp_path, method):
    row = METHODS[method]
    run = tmp_path / f"run-{method}"
    code, out, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", run,
                         "--method", method, "--epochs", "1", "--seed", "3",
                         *method_sets(method, "method.cutmix_prob=1.0", "method.rectify_after_epoch=0",
                                     "method.top_k=3"),
                         *FAST[:-2])
    assert code == 0, err
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1]
    assert rows[0]["steps"] == 2
    assert rows[0]["eval_seconds"] > 0  # the evaluation's wall time, beside the training's
    correct = rows[0]["test_top1"] * 500  # a count of the 500 test images (and eval's, below)
    assert correct == pytest.approx(round(correct), abs=1e-9)
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"]["name"] == method and saved["runtime"]["seed"] == 3
    assert (run / "manifest.json").is_file() and (run / "last.safetensors").is_file()

    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) >= {"overall", "many", "medium", "few", "ece", "per_class"}
    assert report["overall"] == pytest.approx(rows[0]["test_top1"], abs=1e-12)
    assert len(report["per_class"]) == 10

    # resume with a larger --epochs extends the run; epoch 2 uses the rectified labels
    code, out, err = cli("train", "--resume", run, "--epochs", "2")
    assert code == 0, err
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "config.json").read_text())["optim"]["epochs"] == 2
    if row.rectifies:
        assert rows[0]["rect_weight"] is None and rows[1]["rect_weight"] > 0
    else:
        assert rows[1]["rect_weight"] is None
    assert rows[1]["mixed_steps"] == (2 if row.mixes else 0)
    if row.contrast:
        assert rows[1]["loss_bcl"] > 0
    else:
        assert rows[1]["loss_bcl"] is None and rows[1]["loss"] == rows[1]["loss_cls"]


def test_a_preset_setting_the_method_ignores_is_said_once_and_a_given_one_refused(cli, tiny_data,
                                                                                   tmp_path, wide):
    code, out, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", tmp_path / "ce",
                         "--method", "ce", "--epochs", "1", *FAST[:-2])
    assert code == 0, err
    note = "preset smoke sets method.rectify_after_epoch, method.top_k, ignored by method ce"
    assert (out + err).count(note) == 1, out + err
    code, out, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", tmp_path / "bs",
                         "--method", "balanced-softmax", "--set", "method.tau=0.5", *FAST[:-2])
    assert code == 2 and not (tmp_path / "bs").exists()
    assert err.startswith("error: --set method.tau=0.5: method balanced-softmax does not use "
                          "method.tau (it has no settings of its own)") and err.count("\n") == 1


def test_existing_run_folder_is_refused(cli, tiny_data, tmp_path):
    run = tmp_path / "taken"
    run.mkdir()
    (run / "something").write_text("x")
    code, out, err = cli("train", "--data", tiny_data, "--out", run, *FAST)
    assert code == 2 and "--resume" in err and err.count("\n") == 1


def test_eval_table_and_written_report(cli, tiny_data, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "--data", tiny_data, "--out", run, "--epochs", "1", *FAST)[0] == 0
    code, out, err = cli("eval", run / "last.safetensors", "--out", tmp_path / "report.json")
    assert code == 0, err
    assert "top-1 overall" in out and "ECE" in out
    assert json.loads((tmp_path / "report.json").read_text())["num_samples"] == 500


def test_lr_schedule_warmup_step_and_cosine():
    cfg = build_config(preset="cifar100-lt-if100")
    assert [round(lr_at(e, cfg), 6) for e in range(6)] == [0.03, 0.06, 0.09, 0.12, 0.15, 0.15]
    assert lr_at(159, cfg) == 0.15
    assert lr_at(160, cfg) == pytest.approx(0.015) and lr_at(180, cfg) == pytest.approx(0.0015)
    # the reference's cosine, lr * 0.5 * (1 + cos(pi * (e - w + 1) / (E - w + 1))), no warm-up:
    # epoch 0 of the 90-epoch ImageNet-LT run trains at 0.09997, not at 0.1 (nor 0.02)
    cos = build_config(preset="imagenet-lt-resnext50")
    assert cos.optim.warmup_epochs == 0
    assert lr_at(0, cos) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi / 91)), rel=1e-12)
    assert round(lr_at(0, cos), 5) == 0.09997
    assert lr_at(44, cos) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 45 / 91)), rel=1e-12)
    assert lr_at(89, cos) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 90 / 91)), rel=1e-12) and lr_at(89, cos) > 0
    warm = build_config(preset="imagenet-lt-resnext50", overrides=["optim.warmup_epochs=5"])
    assert lr_at(4, warm) == pytest.approx(0.1) and lr_at(5, warm) == pytest.approx(
        0.1 * 0.5 * (1 + np.cos(np.pi * 1 / 86)), rel=1e-12)


def test_class_balanced_foreground_sampler_is_balanced():
    labels = np.repeat(np.arange(5), [500, 100, 20, 5, 1])
    sampler = ClassBalancedSampler(labels)
    draws = sampler.draw(20000, counter_rng(0, 1))
    per_class = np.bincount(labels[draws], minlength=5)
    expected = 20000 / 5
    chi2 = ((per_class - expected) ** 2 / expected).sum()
    assert chi2 < 18.47  # chi-square, 4 degrees of freedom, p = 0.001
    # within a class the images are uniform too: class 1 has 100 images, ~40 draws each
    within = np.bincount(draws[labels[draws] == 1] - 500, minlength=100)
    assert within.min() > 10 and within.max() < 80
    # instance-balanced sampling would be dominated by class 0: the balanced one is not
    assert per_class[0] < 0.25 * 20000


def test_planner_splits_global_batches_across_processes():
    labels = np.repeat(np.arange(4), 25)
    single = EpochPlanner(labels, seed=5, batch_size=8, cutmix=CutMix(1.0, 1.0, "balanced", 32))
    ranks = [EpochPlanner(labels, seed=5, batch_size=8, cutmix=CutMix(1.0, 1.0, "balanced", 32),
                          rank=r, world_size=2) for r in range(2)]
    assert single.steps_per_epoch() == 13  # 12 full batches of 8 and the last partial one of 4
    assert [single.global_batch_size(s) for s in (0, 11, 12)] == [8, 8, 4]
    seen = []
    for step in range(single.steps_per_epoch()):
        whole = single.plan(1, step)
        parts = [p.plan(1, step) for p in ranks]
        assert np.array_equal(np.concatenate([p.indices for p in parts]), whole.indices)
        assert np.array_equal(np.concatenate([p.foreground for p in parts]), whole.foreground)
        assert all(p.lam == whole.lam and torch.equal(p.box, whole.box) for p in parts)
        seen.extend(whole.indices)
    assert len(seen) == len(set(seen)) == 100  # the whole epoch, each image once
    assert [len(p.plan(1, 12).indices) for p in ranks] == [2, 2]
    assert not np.array_equal(single.plan(0, 0).indices, single.plan(1, 0).indices)


def test_steps_per_epoch_keep_the_last_partial_batch_like_the_published_runs():
    labels = np.repeat(np.arange(100), 1)[np.arange(10847) % 100]  # CIFAR-100-LT IF 100's size
    planner = EpochPlanner(labels, seed=0, batch_size=256, cutmix=None)
    assert planner.steps_per_epoch() == 43  # as in the authors' logs ([i/43])
    last = planner.plan(0, 42)
    assert len(last.indices) == len(last.sample_seeds) == 10847 - 42 * 256 == 95
    everything = np.concatenate([planner.plan(0, s).indices for s in range(43)])
    assert np.array_equal(np.sort(everything), np.arange(10847))
    dropped = EpochPlanner(labels, seed=0, batch_size=256, cutmix=None,
                           drop_last=True)
    assert dropped.steps_per_epoch() == 42
    # full batches are planned identically either way
    assert np.array_equal(dropped.plan(0, 41).indices, planner.plan(0, 41).indices)
    # under 3 processes (global batch 255) the last 137 images are trimmed to 135, 45 each
    ranks = [EpochPlanner(labels, seed=0, batch_size=255, cutmix=CutMix(1.0, 1.0, "balanced", 32),
                          rank=r, world_size=3) for r in range(3)]
    assert ranks[0].steps_per_epoch() == 43 and ranks[0].global_batch_size(42) == 10847 - 42 * 255 - 2
    assert [len(r.plan(0, 42).indices) for r in ranks] == [45, 45, 45]
    assert [len(r.plan(0, 42).foreground) for r in ranks] == [45, 45, 45]


def test_loader_views_depend_only_on_the_sample_seed(tiny_data):
    from concutmix_cli.data.loader import StepDataset
    from concutmix_cli.data.prepared import load_prepared

    dataset = StepDataset(load_prepared(tiny_data), "cifar", contrast=True)
    a = dataset._sample(3, 7, 1234)
    torch.manual_seed(99)  # global RNG state must not matter
    b = dataset._sample(3, 7, 1234)
    c = dataset._sample(3, 7, 1235)
    for x, y in zip(a, b):  # view 0, view 1, view 2, view 0 of the foreground
        assert torch.equal(x, y)
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[1], a[2])  # two independent contrastive views
    assert len(a) == 4 and a[0].shape == (3, 32, 32)
    assert len(dataset._sample(3, -1, 1)) == 3  # no foreground: no view of it

"""The device path's batches: one batched pass per kind of view, and prefetching in a thread,
both give exactly the pixels of making every view separately, step by step."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from concutmix_cli.data.loader import DeviceBatches
from concutmix_cli.data.prepared import load_prepared
from concutmix_cli.data.sampling import EpochPlanner


def _batches(tiny_data, contrast=True, mix_prob=1.0, prefetch=False, batch_size=16):
    data = load_prepared(tiny_data)
    planner = EpochPlanner(data.train.labels, seed=5, batch_size=batch_size, foreground="balanced",
                           mix_prob=mix_prob, mix_beta=1.0)
    return DeviceBatches(data, planner, contrast, torch.device("cpu"), prefetch=prefetch)


def _views(batch) -> dict[str, torch.Tensor]:
    """A `Batch`'s image and label tensors by name (its box is tested in test_batch.py)."""
    return {k: v for k, v in batch.tensors().items() if k != "box"}


def _separately(db: DeviceBatches, epoch: int, step: int) -> dict[str, torch.Tensor]:
    """The reference: each view made on its own, drawing from the generator in the documented
    order (view 0, view 1, view 2, foreground view)."""
    plan = db.planner.plan(epoch, step)
    gen = torch.Generator().manual_seed(plan.device_seed)
    images = db.images[torch.from_numpy(plan.indices)]
    out = {"view0": db.views.classify(images, gen), "labels": db.labels[torch.from_numpy(plan.indices)]}
    if db.contrast:
        out["view1"] = db.views.contrast(images, gen)
        out["view2"] = db.views.contrast(images, gen)
    if plan.mix:
        fg = torch.from_numpy(plan.foreground)
        out["fg_view0"] = db.views.classify(db.images[fg], gen)
        out["fg_labels"] = db.labels[fg]
    return out


@pytest.mark.parametrize("contrast,mix_prob", [(True, 1.0), (True, 0.0), (False, 1.0)])
def test_one_pass_per_view_kind_equals_separate_views(tiny_data, contrast, mix_prob):
    db = _batches(tiny_data, contrast=contrast, mix_prob=mix_prob)
    for step in range(2):
        got, want = _views(db.batch(1, step)), _separately(db, 1, step)
        assert set(got) == set(want)
        assert ("fg_view0" in got) == (mix_prob == 1.0) and ("view1" in got) == contrast
        for key in want:
            assert torch.equal(got[key], want[key]), (step, key)


def test_prefetch_yields_the_same_batches_and_stops_cleanly(tiny_data):
    plain = [_views(b) | {"step": b.step} for b in _batches(tiny_data).epoch(2, start_step=1)]
    fetched = _batches(tiny_data, prefetch=True)
    ahead = [_views(b) | {"step": b.step} for b in fetched.epoch(2, start_step=1)]
    steps = fetched.planner.steps_per_epoch()
    assert [b["step"] for b in ahead] == [b["step"] for b in plain] == list(range(1, steps))
    for a, b in zip(ahead, plain):
        assert a.keys() == b.keys() and all(a[k] == b[k] if k == "step" else torch.equal(a[k], b[k]) for k in a)

    # a consumer that stops early (a signal, an error) leaves no thread behind
    stream = fetched.epoch(0)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("concutmix-views")]


def test_prefetch_errors_reach_the_training_thread(tiny_data):
    db = _batches(tiny_data, prefetch=True)
    db.images = db.images[:, :1]  # not RGB: the views refuse it inside the worker thread
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        list(db.epoch(0))


def test_training_with_prefetch_equals_training_without(cli, tiny_data, tmp_path):
    weights = {}
    for prefetch in ("true", "false"):
        run = tmp_path / prefetch
        code, _, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", run,
                           "--method", "concutmix", "--epochs", "1", "--deterministic",
                           "--set", 'data.augment_on="device"', "--set", f"data.prefetch={prefetch}",
                           "--set", "method.cutmix_prob=1.0")
        assert code == 0, err
        assert json.loads((run / "config.json").read_text())["data"]["prefetch"] is (prefetch == "true")
        weights[prefetch] = load_file(run / "last.safetensors")
    assert weights["true"].keys() == weights["false"].keys()
    assert all(torch.equal(weights["true"][k], weights["false"][k]) for k in weights["true"])

"""The device path's batches: one batched pass per kind of view (per step or per chunk of steps),
and prefetching in a thread, all give exactly the pixels of making every view separately, step by
step."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from concutmix_cli.mixing import CutMix

from concutmix_cli.data.loader import DeviceBatches
from concutmix_cli.data.prepared import load_prepared
from concutmix_cli.data.sampling import EpochPlanner


def _batches(tiny_data, contrast=True, mix_prob=1.0, prefetch=False, batch_size=16, epoch_views="off"):
    data = load_prepared(tiny_data)
    planner = EpochPlanner(data.train.labels, seed=5, batch_size=batch_size, 
                           cutmix=CutMix(mix_prob, 1.0, "balanced", 32))
    return DeviceBatches(data, planner, contrast, torch.device("cpu"), prefetch=prefetch,
                         epoch_views=epoch_views)


def _views(batch) -> dict[str, torch.Tensor]:
    """A `Batch`'s image and label tensors by name (its box and lambda: below)."""
    return {k: v for k, v in batch.tensors().items() if k not in ("box", "lam")}


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


def test_training_with_prefetch_or_epoch_views_equals_training_without(cli, tiny_data, tmp_path):
    weights = {}
    for prefetch, epoch_views in (("true", '"off"'), ("false", '"off"'), ("false", '"epoch"')):
        run = tmp_path / f"{prefetch}-{epoch_views[1:-1]}"
        code, _, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", run,
                           "--method", "concutmix", "--epochs", "1", "--deterministic",
                           "--set", 'data.augment_on="device"', "--set", f"data.prefetch={prefetch}",
                           "--set", f"data.epoch_views={epoch_views}", "--set", "method.cutmix_prob=1.0")
        assert code == 0, err
        saved = json.loads((run / "config.json").read_text())["data"]
        assert (saved["prefetch"], saved["epoch_views"]) == (prefetch == "true", epoch_views[1:-1])
        weights[run.name] = load_file(run / "last.safetensors")
    reference = weights.pop("false-off")
    for name, other in weights.items():
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[k], reference[k]) for k in reference), name


@pytest.mark.parametrize("contrast", [True, False], ids=["concutmix", "ce"])
@pytest.mark.parametrize("epoch_views,prefetch", [(1, False), (3, False), ("epoch", False), (3, True)])
@pytest.mark.parametrize("start_step", [0, 2])
def test_epoch_views_equal_separate_views_bit_for_bit(tiny_data, contrast, epoch_views, prefetch, start_step):
    db = _batches(tiny_data, contrast=contrast, mix_prob=0.5, prefetch=prefetch, epoch_views=epoch_views)
    steps = db.planner.steps_per_epoch()
    assert db.chunk_steps == (steps if epoch_views == "epoch" else epoch_views)
    got = list(db.epoch(1, start_step=start_step))
    assert [b.step for b in got] == list(range(start_step, steps))
    assert {b.mixed for b in got} == {True, False}  # mixed and unmixed steps both compared
    assert got[-1].size < got[0].size  # and the last partial batch
    for batch in got:
        plan = db.planner.plan(1, batch.step)
        want = _separately(db, 1, batch.step) | ({"box": plan.box} if plan.mix else {})
        want |= {"lam": torch.tensor(plan.lam, dtype=torch.float32)} if plan.mix else {}
        assert (batch.mixed, batch.epoch) == (plan.mix, 1)
        assert batch.tensors().keys() == want.keys()
        for key in want:
            assert torch.equal(batch.tensors()[key], want[key]), (batch.step, key)


def test_a_chunk_is_one_pass_and_its_steps_are_slices(tiny_data):
    db = _batches(tiny_data, mix_prob=0.5, epoch_views=4)
    batches = db.chunk(0, range(0, 4))
    mixed = [b for b in batches if b.mixed]
    assert mixed and len(mixed) < 4
    storage = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    for key in ("view0", "labels", "view1"):  # one pass over the chunk, each step a slice of it
        assert len({storage(getattr(b, key)) for b in batches}) == 1, key
    assert storage(mixed[0].fg_view0) == storage(batches[0].view0)  # view 0 of A and B together
    # the indices and the boxes travel together: one staged tensor for the chunk
    assert len({storage(b.box) for b in mixed}) == 1
    assert [b.box.tolist() for b in mixed] == [db.planner.plan(0, b.step).box.tolist() for b in mixed]


def test_epoch_views_resolve_to_steps_per_chunk(monkeypatch):
    from concutmix_cli.data.loader import resolve_epoch_views

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_epoch_views("off", cuda, 43, 256, 32, True) == 1
    assert resolve_epoch_views("epoch", cpu, 43, 256, 32, True) == 43
    assert resolve_epoch_views(5, cpu, 43, 256, 32, True) == 5
    assert resolve_epoch_views(500, cpu, 43, 256, 32, True) == 43
    assert resolve_epoch_views("auto", cpu, 43, 256, 32, True) == 1  # no gain on a CPU
    # CUDA: as many steps as fit a quarter of the free memory; a step of 256 images of 32x32 with
    # four views costs 256 images x 12288 bytes x (4 views + 16 working copies)
    step_bytes = 256 * 3 * 32 * 32 * 4 * (4 + 16)
    for free, want in ((4 * step_bytes * 7 + 1, 7), (step_bytes, 1), (1 << 50, 43)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        assert resolve_epoch_views("auto", cuda, 43, 256, 32, True) == want


@pytest.mark.parametrize("value", ["0", '"all"', "1.5"])
def test_bad_epoch_views_is_one_line(cli, tiny_data, tmp_path, value):
    code, _, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", tmp_path / "run",
                       "--set", f"data.epoch_views={value}")
    assert code == 2 and "data.epoch_views" in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()

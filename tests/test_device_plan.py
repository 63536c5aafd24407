"""The device path's plan (data/device/plan.py, shipping.py, constants.py): every sample gets
exactly the ops its parameters name, the plan travels whole, constants are made once."""

from __future__ import annotations

import pytest
import torch

from concutmix_cli.data.device import DeviceViews
from concutmix_cli.data.device import stages as S
from concutmix_cli.data.device.autoaugment import AA_OPS, WARP_MODE, resampling
from concutmix_cli.data.device.constants import device_constant
from concutmix_cli.data.device.plan import plan_classify, plan_contrast
from concutmix_cli.data.device import shipping
from concutmix_cli.data.device.shipping import ship

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_classify_plan_gives_each_applied_op_to_exactly_its_samples():
    dv = DeviceViews(MEAN, STD)
    n = 400
    p = dv.sample_classify(n, 32, 32, _gen(0))
    plan = plan_classify(p, dv.variants, dv.recipe)
    # every sample is in one stage per applied slot, none for Identity or a skipped slot
    has_kernel = (p.aa_op >= 0) & (p.aa_op != AA_OPS.index("Identity"))
    seen = torch.bincount(torch.cat([s.index for s in plan.stages]), minlength=n)
    assert torch.equal(seen, has_kernel.sum(1))
    geometric = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
    for stage in plan.stages:
        names = {AA_OPS[int(o)] for o in p.aa_op[stage.index].flatten() if o >= 0}
        if isinstance(stage, S.Warp):  # its resampling is the one its ops name: shears bicubic
            assert stage.mode in {resampling(name) for name in names & set(geometric)}
            assert stage.mode in WARP_MODE.values()
        else:
            assert not names <= set(geometric)
    assert {s.mode for s in plan.stages if isinstance(s, S.Warp)} == {"nearest", "bicubic"}


def test_contrast_plan_stages_touch_exactly_the_drawn_samples():
    dv = DeviceViews(MEAN, STD)
    n = 300
    p = dv.sample_contrast(n, 32, 32, _gen(1))
    plan = plan_contrast(p, dv.recipe)
    by_kind = {}
    for stage in plan.stages:
        by_kind.setdefault(type(stage), []).append(stage.index)
    assert torch.equal(by_kind[S.HueShift][0], p.jitter.nonzero().squeeze(1))
    assert torch.equal(by_kind[S.Gray][0], p.gray.nonzero().squeeze(1))
    assert torch.equal(by_kind[S.Blur][0], p.blur.nonzero().squeeze(1))
    # brightness, contrast and saturation: three blend rounds for every jittered sample, none otherwise
    rounds = torch.bincount(torch.cat(by_kind[S.Blend]), minlength=n)
    assert torch.equal(rounds, 3 * p.jitter.to(torch.int64))
    kinds = [type(s) for s in plan.stages]
    assert kinds.index(S.HueShift) < kinds.index(S.Gray) < kinds.index(S.Blur) == len(kinds) - 1


def test_ship_moves_every_tensor_field_and_keeps_the_rest():
    dv = DeviceViews(MEAN, STD)
    plan = plan_contrast(dv.sample_contrast(64, 32, 32, _gen(2)), dv.recipe)
    moved = plan.ship(torch.device("meta"))
    assert len(moved.stages) == len(plan.stages) and type(moved.crop) is type(plan.crop)
    for before, after in zip([plan.crop, *plan.stages], [moved.crop, *moved.stages]):
        assert type(before) is type(after)
        for name, t in before.tensor_fields().items():
            u = getattr(after, name)
            assert u.device.type == "meta" and u.dtype == t.dtype and u.shape == t.shape, name
        if isinstance(before, S.Blend):
            assert (after.gray, after.mean) == (before.gray, before.mean)
    assert ship([plan.crop], torch.device("cpu"))[0] is plan.crop  # on the CPU nothing is copied


def test_ship_stages_one_flat_copy_per_dtype(monkeypatch):
    dv = DeviceViews(MEAN, STD)
    plan = plan_contrast(dv.sample_contrast(64, 32, 32, _gen(2)), dv.recipe)
    tensors = [t for item in (plan.crop, *plan.stages) for t in item.tensor_fields().values()]
    staged = []

    def record(host, device):
        staged.append(host)
        return host.to(device)

    monkeypatch.setattr(shipping, "stage", record)
    moved = plan.ship(torch.device("meta"))
    dtypes = list(dict.fromkeys(t.dtype for t in tensors))
    assert [h.dtype for h in staged] == dtypes  # every copy goes through `stage`, one per dtype
    assert [h.numel() for h in staged] == [sum(t.numel() for t in tensors if t.dtype == d)
                                           for d in dtypes]
    assert all(t.device.type == "meta" for item in (moved.crop, *moved.stages)
               for t in item.tensor_fields().values())


def test_stage_on_the_cpu_copies_nothing():
    host = torch.arange(5)
    assert shipping.stage(host, torch.device("cpu")) is host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stage_on_cuda_goes_through_pinned_memory(monkeypatch):
    pinned = []
    original = torch.Tensor.pin_memory

    def pin(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    host = torch.arange(1000, dtype=torch.int64)
    moved = shipping.stage(host, torch.device("cuda"))
    assert pinned == [True] and moved.is_cuda and torch.equal(moved.cpu(), host)


def test_device_constant_is_made_once_per_key_and_device():
    made = []

    def make(device):
        made.append(device)
        return torch.zeros(2, device=device)

    first = device_constant(("test-constant", 2), "cpu", make)
    assert device_constant(("test-constant", 2), torch.device("cpu"), make) is first
    device_constant(("test-constant", 3), "cpu", make)
    device_constant(("test-constant", 2), "meta", make)
    assert [d.type for d in made] == ["cpu", "cpu", "meta"]

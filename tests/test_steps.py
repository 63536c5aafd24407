"""The step modes (engine/steps.py): the sync-free step, run eagerly on CPU where CUDA graphs do not exist:
same weights as the eager step, no host-syncing op, the same ops every step of a variant, stable
storage, the learning rate as one device tensor updated in place, bad steps skipped on the device.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from concutmix_cli.config import build_config
from concutmix_cli.engine.checkpoint import RunFolder
from concutmix_cli.engine.steps import StepTotals, resolve_step_mode
from concutmix_cli.engine.loop import NonFiniteLoss, Trainer, lr_at
from concutmix_cli.errors import UserError
from tests.conftest import one_error_line

STEPS = 8

SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal",
            "lift_fresh", "lift_fresh_copy"}
"""Ops that make the host wait for the device, or carry host data into a step (on CUDA these
are a sync or a host-to-device copy; on CPU they are the same op calls, so we can see them)."""


def make_trainer(tmp_path, data, step: str, *overrides: str) -> Trainer:
    cfg = build_config(preset="smoke", overrides=[
        f"data.path='{data}'", "optim.batch_size=16", "data.num_workers=0", "runtime.device='cpu'",
        "method.name='concutmix'", "method.cutmix_prob=0.5", "method.rectify_after_epoch=-1",
        "method.top_k=3", f"runtime.step='{step}'", *overrides])
    return Trainer(cfg, RunFolder(tmp_path / step))


def batches(trainer: Trainer, count: int = STEPS):
    out = []
    epoch = 0
    while len(out) < count:
        out += list(trainer.batches.epoch(epoch, 0))
        epoch += 1
    return out[:count]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_sync_free_step_trains_the_same_weights_as_the_eager_step(tmp_path, tiny_data):
    eager = make_trainer(tmp_path, tiny_data, "eager", "runtime.max_bad_steps=3")
    fast = make_trainer(tmp_path, tiny_data, "sync_free", "runtime.max_bad_steps=3")
    assert weights(eager).keys() == weights(fast).keys()
    assert all(torch.equal(a, b) for a, b in zip(weights(eager).values(), weights(fast).values()))
    stream = batches(eager)
    assert {b.mixed for b in stream} == {True, False}, "the test needs both step variants"
    for trainer in (eager, fast):
        trainer.train_model.train()
        inner = trainer.step.step_fn

        def poisoned(model, batch, epoch, inner=inner):
            result = inner(model, batch, epoch)
            if batch.step == 2:  # a non-finite loss from finite inputs: both must drop this step
                result.loss = result.loss * float("inf")
            return result

        trainer.step.step_fn = poisoned
        for batch in stream:
            trainer.step(batch)
    for name, a in weights(eager).items():
        assert torch.equal(a, weights(fast)[name]), name
    a, b = eager.totals.read(), fast.totals.read()
    assert a.pop("bad") == 0 and b.pop("bad") == 1
    assert a == b and a["steps"] == STEPS - 1 and a["samples"] == 16 * (STEPS - 1)
    assert eager.bad_steps == 1  # eager counts at once; sync-free at its next read:
    fast._bad_seen = 0
    fast._check_device_bad_steps(0, STEPS - 1)
    assert fast.bad_steps == 1


@pytest.mark.parametrize("rectify_after", [-1, 5], ids=["rectified", "mixed-ce"])
def test_sync_free_step_issues_no_host_sync_and_the_same_ops_each_step(tmp_path, tiny_data,
                                                                         rectify_after):
    trainer = make_trainer(tmp_path, tiny_data, "sync_free",
                           f"method.rectify_after_epoch={rectify_after}")
    trainer.train_model.train()
    stream = batches(trainer, 12)
    for batch in stream[:2]:  # first steps create the momentum buffers
        trainer.step(batch)
    ops_of = defaultdict(list)
    storage = None
    for batch in stream[2:]:
        with OpRecorder() as recorder:
            trainer.step(batch)
        assert not SYNC_OPS & set(recorder.ops), sorted(SYNC_OPS & set(recorder.ops))
        ops_of[batch.mixed].append(recorder.ops)
        now = ([p.data_ptr() for p in trainer.model.parameters()]
               + [trainer.optimizer.state[p]["momentum_buffer"].data_ptr()
                  for p in trainer.model.parameters()]
               + [trainer.lr.data_ptr()] + [t.data_ptr() for t in trainer.totals.sums.values()])
        assert storage is None or now == storage, "parameters, momentum, lr or sums moved"
        storage = now
    assert set(ops_of) == {True, False}
    for variant, sequences in ops_of.items():
        assert all(seq == sequences[0] for seq in sequences), f"mixed={variant}: ops differ"
    assert ops_of[True][0] != ops_of[False][0]


def test_eager_step_is_what_the_recorder_catches(tmp_path, tiny_data):
    """The recorder above can fail: the eager step's host check of the loss is a sync."""
    trainer = make_trainer(tmp_path, tiny_data, "eager")
    trainer.train_model.train()
    with OpRecorder() as recorder:
        trainer.step(batches(trainer, 1)[0])
    assert "_local_scalar_dense" in recorder.ops or "is_nonzero" in recorder.ops


def test_learning_rate_is_one_device_tensor_updated_in_place(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, "sync_free", "optim.epochs=3",
                           "optim.warmup_epochs=3", "runtime.max_steps_per_epoch=2")
    lr = trainer.lr
    address = lr.data_ptr()
    seen = []
    for epoch in range(3):
        trainer.train_epoch(epoch)
        group = trainer.optimizer.param_groups[0]
        assert group["lr"] is lr and lr.data_ptr() == address and group["fused"]
        seen.append(float(lr))
    assert seen == pytest.approx([lr_at(e, trainer.cfg) for e in range(3)], rel=1e-6)
    assert len(set(seen)) == 3  # the warm-up changed it every epoch


def test_sync_free_run_stops_at_the_read_after_too_many_bad_steps(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, tiny_data, "sync_free", "runtime.max_steps_per_epoch=6")
    inner = trainer.step.step_fn

    def poisoned(model, batch, epoch):
        result = inner(model, batch, epoch)
        if batch.step == 1:
            result.loss = result.loss * float("nan")
        return result

    trainer.step.step_fn = poisoned
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, by step 6: 1 non-finite loss\(es\) skipped"):
        trainer.train_epoch(0)  # read at step 5 (0-based), the epoch's last step here


def test_step_totals_continue_a_restored_state_exactly():
    restored = {"loss": 12.345678, "samples": 48, "bad": 2, "seconds": 3.0}
    totals = StepTotals(torch.device("cpu"), restored)
    read = totals.read()
    assert read["samples"] == 48 and read["bad"] == 2 and read["steps"] == 0
    assert read["loss"] == float(torch.tensor(12.345678))  # the float32 the run summed in
    totals.reset()
    assert set(totals.read().values()) == {0.0}


@pytest.mark.parametrize("choice, device, distributed, accumulate, scaler, fragment", [
    ("graphed", "cpu", False, 1, False, "a CUDA device"),
    ("sync_free", "cpu", True, 1, False, "a single process"),
    ("sync_free", "cpu", False, 2, False, "optim.accumulate = 1"),
    ("graphed", "cuda", False, 1, True, "no fp16 grad scaler"),
])
def test_step_modes_are_refused_where_they_cannot_run(choice, device, distributed, accumulate,
                                                      scaler, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_step_mode(choice, torch.device(device), distributed, accumulate, scaler)
    assert resolve_step_mode("auto", torch.device(device), distributed, accumulate, scaler) == "eager"
    assert resolve_step_mode("sync_free", torch.device("cpu"), False, 1, False) == "sync_free"


def test_cli_refuses_graphed_on_cpu_in_one_line(cli, tmp_path, tiny_data):
    code, _, err = cli("train", "--preset", "smoke", "--data", tiny_data, "--out", tmp_path / "run",
                       "--device", "cpu", "--set", "runtime.step='graphed'")
    assert code == 2
    one_error_line(err, "runtime.step = graphed needs a CUDA device")
    assert not (tmp_path / "run").exists()


def test_resume_of_an_unfused_optimizer_state_stays_fused(tmp_path, tiny_data):
    """A state saved by unfused SGD (a float lr, as runs from before the fused step hold)
    resumes into fused SGD with the lr tensor."""
    trainer = make_trainer(tmp_path, tiny_data, "sync_free", "optim.epochs=2",
                           "runtime.max_steps_per_epoch=2")
    old = torch.optim.SGD(trainer.model.parameters(), lr=0.1, momentum=0.9)
    trainer.optimizer.load_state_dict(old.state_dict())  # what such a run saved, loaded as restore does
    assert not trainer.optimizer.param_groups[0]["fused"]
    trainer.run.create()
    trainer.save_checkpoint(1)  # an epoch-1 checkpoint holding the unfused state
    resumed = make_trainer(tmp_path, tiny_data, "sync_free", "optim.epochs=2",
                           "runtime.max_steps_per_epoch=2")
    resumed.run = trainer.run
    resumed.restore()
    group = resumed.optimizer.param_groups[0]
    assert group["fused"] and resumed.start_epoch == 1
    resumed.train_epoch(1)
    assert resumed.optimizer.param_groups[0]["lr"] is resumed.lr

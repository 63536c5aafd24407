"""Distributed training on CPU with gloo, two processes (issue 6).

- One spawned 2-process job computes, for every method, the first step's loss and gradients under
  DDP and the sharded evaluation; the test process computes the same in a single process and
  compares (loss and gradients to 1e-5, evaluation exactly).
- `torchrun --nproc-per-node 2 -m concutmix_cli train` on the smoke preset: one run folder,
  `eval` on it, then a resume under torchrun.

Backbone and projection-head BatchNorm layers are put in eval mode for the equivalence: their
batch statistics are per process unless model.sync_batchnorm is on, and torch's SyncBatchNorm
does not run on CPU. The prototype head normalizes over the C class rows, the same on every rank,
so it stays in train mode.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed/gloo"
)

WORLD = 2
GLOBAL_BATCH = 16
TOL = 1e-5
# name -> (method, foreground of the planner, CutMix probability, step epoch, steps)
CASES = {
    "ce": ("ce", None, 0.0, 0, 2),  # two steps: DDP must cope with the unused heads
    "cutmix": ("cutmix", "batch", 1.0, 0, 1),
    "concutmix_plain": ("concutmix", None, 0.0, 0, 1),
    "concutmix_rectified": ("concutmix", "balanced", 1.0, 1, 1),  # E_r = 1: rectified
}
# (split, eval batch size): 159 train images (odd) in 10 batches of 16 (last 15); 500 test images
# in 11 batches of 48 (the ranks get 6 and 5); one batch of 159 (rank 1 gets none).
EVALS = [("train", 16), ("test", 48), ("train", 200)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


# ----------------------------------------------------------------------------- step + eval worker


def _freeze_batch_norms(model) -> None:
    model.train()
    for part in (model.backbone, model.projector):
        for module in part.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class _Float64Backbone(torch.nn.Module):
    """conv -> BN -> ReLU -> pool, computed in float64 and returned as float32.

    In float32 the weight gradient of a conv summed over 48 images x 256 positions carries
    summation-order noise of about 1e-5 of its largest entry (measured: 1.5e-4 on entries up to
    12), as big as the tolerance; float64 here leaves only the distributed computation to test.
    The heads, the losses and the collectives stay in float32, as in training."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            torch.nn.BatchNorm2d(width), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        ).double()

    def forward(self, x):
        return self.net(x.double()).float()


def _small_model(num_classes: int):
    """The ConCutMix network on a one-block backbone (ResNet-32 runs in the torchrun test)."""
    from concutmix_cli.models.build import ConCutMixNet

    return ConCutMixNet(_Float64Backbone(16), 16, num_classes, proj_hidden=32, proj_dim=16)


def _compute(data_path: str, ctx) -> dict:
    """Every case's (global) loss and averaged gradients, and the sharded predictions."""
    from concutmix_cli.config import MethodConfig
    from concutmix_cli.data.loader import EvalBatches, LoaderBatches
    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.data.sampling import EpochPlanner
    from concutmix_cli.engine.distributed import all_reduce_sum, wrap_model
    from concutmix_cli.engine.evaluate import predict_sharded
    from concutmix_cli.engine.step import MethodStep
    from concutmix_cli.methods import method as method_of
    from concutmix_cli.mixing import CutMix

    torch.set_num_threads(1)
    device = torch.device("cpu")
    data = load_prepared(Path(data_path))
    counts = torch.tensor(data.train_counts, dtype=torch.float32)
    out: dict = {"cases": {}, "eval": {}}
    for name, (method, foreground, mix_prob, epoch, steps) in CASES.items():
        cfg = MethodConfig(name=method, top_k=3, rectify_after_epoch=0, cutmix_prob=mix_prob)
        contrast = method_of(method).contrast
        torch.manual_seed(0)
        model = _small_model(data.num_classes)
        model, train_model = wrap_model(model, ctx, device, find_unused_parameters=not contrast)
        _freeze_batch_norms(model)
        cutmix = CutMix.of_method(method_of(method), cfg, 32)
        planner = EpochPlanner(data.train.labels, seed=3, batch_size=GLOBAL_BATCH, cutmix=cutmix,
                               rank=ctx.rank, world_size=ctx.world_size)
        batches = LoaderBatches(data, planner, "cifar", contrast, 0, device).epoch(epoch)
        step_fn = MethodStep(cfg, counts, ctx, None, False)
        for _, batch in zip(range(steps), batches):
            model.zero_grad(set_to_none=True)
            result = step_fn(train_model, batch, epoch)
            result.loss.backward()
        loss = all_reduce_sum(result.loss.detach().double().reshape(1), ctx) / ctx.world_size
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
                 if p.grad is not None}
        out["cases"][name] = {"loss": float(loss), "grads": grads, "mixed": batch.mixed,
                              "rectified": result.rect_weight is not None}
    model.eval()
    for split, size in EVALS:
        batches = EvalBatches(data, split, "cifar", size, device, num_workers=0)
        out["eval"][f"{split}-{size}"] = predict_sharded(model, batches, device, ctx)
    return out


def _worker(rank: int, init_file: str, data_path: str, result_path: str) -> None:
    from concutmix_cli.engine.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        result = _compute(data_path, DistContext(rank=rank, world_size=WORLD, local_rank=rank))
        torch.save(result, f"{result_path}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def both_runs(tiny_data, tmp_path_factory):
    """(single-process result, [rank 0 result, rank 1 result]) of `_compute`."""
    import torch.multiprocessing as mp

    from concutmix_cli.engine.distributed import DistContext

    folder = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(str(folder / "init"), str(tiny_data), str(folder / "result")),
        nprocs=WORLD, join=False, start_method="spawn",
    )
    single = _compute(str(tiny_data), DistContext())  # overlaps with the workers' start-up
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process job did not finish in 240 s (a collective hung?)")
    ranks = [torch.load(folder / f"result.{r}", weights_only=False) for r in range(WORLD)]
    return single, ranks


@pytest.mark.parametrize("case", list(CASES))
def test_first_step_loss_and_gradients_match_one_process(both_runs, case):
    single, ranks = both_runs
    ref = single["cases"][case]
    for got in (r["cases"][case] for r in ranks):
        assert got["mixed"] == ref["mixed"] and got["rectified"] == ref["rectified"]
        assert abs(got["loss"] - ref["loss"]) <= TOL * max(1.0, abs(ref["loss"]))
        assert got["grads"].keys() == ref["grads"].keys()
        for key, grad in ref["grads"].items():
            torch.testing.assert_close(got["grads"][key], grad, atol=TOL, rtol=TOL,
                                       msg=lambda m, k=key: f"{case} {k}: {m}")
    if case == "concutmix_rectified":
        assert ref["mixed"] and ref["rectified"]
    if CASES[case][0] in ("bcl", "concutmix"):  # the prototype head got its (averaged) gradient
        assert any(k.startswith("prototype_head.") for k in ref["grads"])


@pytest.mark.parametrize("which", [f"{s}-{b}" for s, b in EVALS])
def test_sharded_evaluation_is_exactly_single_process(both_runs, tiny_data, which):
    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.engine.evaluate import accuracy_report

    single, ranks = both_runs
    probs, labels = single["eval"][which]
    groups = load_prepared(tiny_data).manifest["shot_groups"]
    expected = accuracy_report(probs, labels, groups)
    for got_probs, got_labels in (r["eval"][which] for r in ranks):
        assert got_probs.shape == probs.shape and torch.equal(got_labels, labels)
        assert torch.equal(got_probs, probs)
        assert accuracy_report(got_probs, got_labels, groups) == expected


# ----------------------------------------------------------------------------- torchrun CLI


def _torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "concutmix_cli", "train", *args]
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_torchrun_smoke_train_eval_and_resume(tiny_data, tmp_path):
    common = ["--preset", "smoke", "--data", str(tiny_data), "--device", "cpu",
              "--batch-size", str(GLOBAL_BATCH), "--set", "runtime.max_steps_per_epoch=2",
              "--set", "data.eval_batch_size=128"]  # 4 test batches: 2 per rank
    first = _torchrun(common, tmp_path)  # no --out: every rank must use rank 0's timestamped name
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1, folders
    run = folders[0]
    assert first.stdout.count("epoch 2/2") == 1, first.stdout  # only rank 0 prints
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["steps"] == 2 for r in rows)
    assert (run / "last.safetensors").is_file() and (run / "config.json").is_file()
    assert json.loads((run / "config.json").read_text())["optim"]["batch_size"] == GLOBAL_BATCH

    from typer.testing import CliRunner

    from concutmix_cli.cli import app

    evaluated = CliRunner().invoke(app, ["eval", str(run), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["epoch"] == 2 and report["num_samples"] == 500
    # eval runs without channels_last: allow one flipped prediction of the 500
    assert report["overall"] == pytest.approx(rows[-1]["test_top1"], abs=1 / 500 + 1e-9)

    resumed = _torchrun(["--resume", str(run), "--epochs", "3"], tmp_path)
    assert "resuming" in resumed.stdout and "epoch 3" in resumed.stdout
    assert resumed.stdout.count("epoch 3/3") == 1
    assert list((tmp_path / "runs").iterdir()) == [run]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    index = json.loads((run / "checkpoints.json").read_text())["checkpoints"]
    assert index[-1]["epoch"] == 3

"""The throughput benchmark runs end to end (numbers are recorded in docs/benchmarks.md, not here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_json_on_synthetic_data():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--synthetic", "--steps", "3",
         "--warmup", "1", "--profile-steps", "1", "--batch-size", "16", "--num-workers", "0",
         "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"samples_per_s", "ceiling_samples_per_s", "ratio", "device"} <= set(result)
    assert result["samples"] == 3 * 16 and result["device"].startswith("cpu")
    # 3 timed steps of each alternate in 3 rounds of one (4 asked, at most one a step)
    assert result["rounds"] == 3 and len(result["round_ratios"]) == 3
    assert all(r > 0 for r in result["round_ratios"])
    assert set(result["profile_s_per_step"]) == {"data", "forward_and_loss", "backward", "optimizer"}


def test_views_overhead_benchmark_counts_ops_of_both_kinds_of_step(tiny_data):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "views_overhead.py"), "--data", str(tiny_data),
         "--batch-size", "4", "--steps", "6", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["batch_size"] == 4 and result["device"] == "cpu"
    mixed, unmixed = result["ops_per_step"]["mixed"], result["ops_per_step"]["unmixed"]
    # a mixed step also makes the foreground view: strictly more work than an unmixed one
    assert mixed["non_view_ops"] > unmixed["non_view_ops"] > 0
    assert mixed["ops"] >= mixed["non_view_ops"]
    # the device views never read a value computed from the images back to the host
    assert mixed["host_syncs"] == unmixed["host_syncs"] == 0


def test_views_overhead_compares_epoch_views_with_per_step_views(tiny_data):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "views_overhead.py"), "--data", str(tiny_data),
         "--batch-size", "4", "--steps", "5", "--epoch-views", "epoch", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["steps"], result["epoch_views"], result["identical"]) == (5, "epoch", True)
    ops = result["ops_per_step"]
    # one pass per kind of view for the 5 steps: fewer launches on the images per step
    assert 0 < ops["chunked"]["pixel_ops"] < ops["per_step"]["pixel_ops"] / 2


def test_op_counter_finds_the_host_syncs_on_pixel_data_only():
    CountOps = load_benchmark("views_overhead").CountOps
    import torch

    images = torch.arange(48, dtype=torch.uint8).view(1, 3, 4, 4)
    params = torch.tensor([0.2, 0.9])
    with CountOps([images]) as counter:
        mask = params > 0.5
        params[mask].sum().item()  # CPU-side parameters: no sync
        if bool((params > 0.1).any()):
            pass
        x = images.float().mul(2)  # derived from the images: tainted
        x.mean().item()  # a sync
        x[x > 10]  # boolean-mask indexing: a sync
        x.nonzero()  # a sync
        x.view(-1)  # a view: no kernel
    summary = counter.summary()
    assert summary["host_syncs"] == 3, summary
    assert summary["sync_ops"] == {"_local_scalar_dense": 1, "index": 1, "nonzero": 1}
    assert summary["ops"] - summary["non_view_ops"] == 1
    # on the images: float, mul, mean, item, gt, index, nonzero (the view is no kernel)
    assert summary["pixel_ops"] == 7


def test_autoaugment_strength_measures_every_implementation(tiny_data):
    strength = load_benchmark("autoaugment_strength")
    result = strength.main(["--data", str(tiny_data), "--images", "6", "--seeds", "2"])
    assert result["images"] == 6 and len(result["rows"]) == 8
    for row in result["rows"].values():
        assert len(row["values"]) == 2 and all(0 <= v <= 255 for v in row["values"])
        assert row["mean"] == sum(row["values"]) / 2


def test_the_authors_policy_semantics_are_the_described_ones():
    """The reference semantics of autoaugment_strength.py: Rotate always by +magnitude, translate
    by a fractional number of pixels unless truncated; the other ops as PIL makes them."""
    import random

    import numpy as np
    from PIL import Image

    AuthorsPolicy = load_benchmark("autoaugment_strength").AuthorsPolicy
    ramp = Image.fromarray(np.tile(np.arange(1, 256, 8, dtype=np.uint8), (32, 1))[..., None].repeat(3, 2))
    policy, signed = AuthorsPolicy(), AuthorsPolicy(signed_rotate=True)
    turns = set()
    for seed in range(16):
        random.seed(seed)
        turns.add(np.asarray(policy.apply(ramp, "Rotate", 20.0)).tobytes())
    assert len(turns) == 1  # never the other way
    turns = set()
    for seed in range(16):
        random.seed(seed)
        turns.add(np.asarray(signed.apply(ramp, "Rotate", 20.0)).tobytes())
    assert len(turns) == 2
    random.seed(0)
    fractional = np.asarray(policy.apply(ramp, "TranslateX", 14.5 / 32))
    random.seed(0)
    whole = np.asarray(AuthorsPolicy(truncate_translate=True).apply(ramp, "TranslateX", 14.5 / 32))
    assert not np.array_equal(fractional, whole)
    # the grey fill covers the uncovered columns: 14 of them after a whole-pixel shift
    grey = (whole == 128).all(axis=(0, 2))
    assert grey.sum() == 14

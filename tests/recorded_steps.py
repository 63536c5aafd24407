"""Records what training does, step by step, so that a refactor can be shown to change nothing.

For each method and each augmentation path, a 2-epoch run of the smoke preset on the tiny
synthetic data (3 steps of 16 images per epoch, CutMix with probability 0.5, rectified from epoch 2)
is trained through `engine.train.run`, the path `concutmix train` takes, and summarised:
every batch the step received (classes, the mix decision, sums of each view), every loss, the
metrics rows and every weight tensor after the 2 epochs. `tests/test_recorded_steps.py` trains
again and compares with `tests/data/recorded_steps.json`, which this module wrote
(`python -m tests.recorded_steps`, from the code before the architecture change, 2026-12-04).

Floats are compared exactly on the machine that recorded them (same CPU model, torch version
and CPU capability); elsewhere other kernels may round differently, so within a tolerance.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

RECORDING = Path(__file__).resolve().parent / "data" / "recorded_steps.json"
METHODS = ("ce", "cutmix", "bcl", "concutmix")
PATHS = ("loader", "device")
THREADS = 2
"""torch's CPU threads while recording (the recording machine's 2 cores; another test may
have left the process at 1, which splits reductions, and so rounds, differently)."""


def machine() -> str:
    """What decides the floating-point results: the CPU model, torch and its kernel level."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} | torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()}"


def _sums(tensor: torch.Tensor) -> list[float]:
    t = tensor.detach().double()
    return [float(t.sum()), float((t * t).sum())]


def _batch_summary(batch, result) -> dict:
    lam = batch.lam
    return {
        "epoch": batch.epoch, "step": batch.step,
        "labels": batch.labels.tolist(),
        "fg_labels": None if batch.fg_labels is None else batch.fg_labels.tolist(),
        "mixed": bool(batch.mixed),
        "lam": 1.0 if lam is None else float(lam),
        "box": None if batch.box is None else batch.box.tolist(),
        "views": {name: _sums(getattr(batch, name)) for name in ("view0", "view1", "view2", "fg_view0")
                  if getattr(batch, name) is not None},
        "loss": float(result.loss.detach()),
        "terms": {k: float(v) for k, v in sorted(result.terms.items())},
    }


def record_one(method: str, augment_on: str, data: Path, out: Path) -> dict:
    """Train one 2-epoch run and summarise it (see the module docstring)."""
    from safetensors.torch import load_file

    from concutmix_cli.config import build_config
    from concutmix_cli.engine import step as step_module
    from concutmix_cli.engine.checkpoint import RunFolder
    from concutmix_cli.engine.train import run

    from concutmix_cli.config import read_by_method

    cfg = build_config(preset="smoke", overrides=read_by_method(method, [
        f"data.path='{data}'", f"method.name='{method}'", f"data.augment_on='{augment_on}'",
        "runtime.device='cpu'", "optim.batch_size=16", "runtime.max_steps_per_epoch=3",
        "data.num_workers=0", "method.top_k=3",
        "method.rectify_after_epoch=0", "runtime.seed=5", "runtime.step='eager'",
    ]))
    steps: list[dict] = []
    original = step_module.MethodStep.__call__

    def recording(self, model, batch, *args, **kwargs):
        result = original(self, model, batch, *args, **kwargs)
        steps.append(_batch_summary(batch, result))
        return result

    step_module.MethodStep.__call__ = recording
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # the split of a reduction changes its rounding
    try:
        result = run(cfg, RunFolder(out), False)
        weights = load_file(str(out / "last.safetensors"))
        summed = {k: _sums(v) for k, v in sorted(weights.items())}
    finally:
        step_module.MethodStep.__call__ = original
        torch.set_num_threads(threads)
    rows = [{k: row[k] for k in ("epoch", "loss", "loss_cls", "train_acc", "test_top1",
                                 "mixed_steps", "rect_weight")} for row in result.rows]
    return {"steps": steps, "rows": rows, "weights": summed}


def record_all(workdir: Path) -> dict:
    from tests.conftest import tiny_synthetic

    data = tiny_synthetic(workdir / "data")
    runs = {f"{m}/{p}": record_one(m, p, data, workdir / f"run-{m}-{p}")
            for m in METHODS for p in PATHS}
    return {"machine": machine(), "runs": runs}


if __name__ == "__main__":  # python -m tests.recorded_steps [OUT]
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else RECORDING
    with tempfile.TemporaryDirectory() as tmp:
        recorded = record_all(Path(tmp))
    target.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")

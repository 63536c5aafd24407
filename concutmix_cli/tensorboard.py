"""Optional TensorBoard scalars of a run (`runtime.tensorboard = true`), written beside
metrics.jsonl with torch's own SummaryWriter; the `tensorboard` package is the optional extra.

A listener of the training events like any other: the loop does not know it is there.
"""

from __future__ import annotations

from pathlib import Path

from concutmix_cli.errors import UserError
from concutmix_cli.events import EpochDone, StepDone

LOG_DIR = "tensorboard"
"""Inside the run folder."""
NOT_SCALARS = {"epoch", "steps", "mixed_steps", "skipped_steps", "bad_steps"}


def require_summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("runtime.tensorboard needs the tensorboard package, which is not "
                        "installed: pip install 'concutmix[tensorboard]'") from None
    return SummaryWriter


def tag_of(key: str) -> str:
    """metrics.jsonl key -> TensorBoard tag: test_top1 -> test/top1, loss_cls -> train/loss_cls."""
    for split in ("test", "val"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return {"rect_weight": "rectify/omega_rho", "samples_per_s": "speed/samples_per_s",
            "seconds": "speed/epoch_seconds", "eval_seconds": "speed/eval_seconds"}.get(key, f"train/{key}")


class TensorBoardLog:
    """Each epoch's metrics row as scalars at step = epoch (1-based, as in metrics.jsonl), and
    the running loss of the steps at step = global optimizer step."""

    def __init__(self, run_dir: Path):
        self.log_dir = Path(run_dir) / LOG_DIR
        self.summary_writer = require_summary_writer()
        self.writer = None  # made at the first step: a run that fails to start leaves no files

    def __call__(self, event) -> None:
        if not isinstance(event, (StepDone, EpochDone)):
            return
        if self.writer is None:
            self.writer = self.summary_writer(log_dir=str(self.log_dir))
        if isinstance(event, StepDone):
            self.writer.add_scalar("step/loss", event.loss, event.epoch * event.steps + event.step + 1)
        elif isinstance(event, EpochDone):
            for key, value in event.row.items():
                if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(
                        value, bool):
                    self.writer.add_scalar(tag_of(key), value, event.row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

"""One training step's data, with its plan: what every batch path produces and `MethodStep` reads.

The planner (data/sampling.py) decides everything random about a step (which images, and, asking
`mixing.CutMix`, whether it is mixed, lambda and the box); the data layer makes the views;
`MethodStep` pastes the box and computes the losses. The decision travels inside the batch, as
tensors, so no consumer plans again and a captured step never freezes a step's value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Batch:
    """Views [b, 3, H, W] float32 (normalized) and classes [b] int64 of one process's share of
    a global batch, and the step's mixing decision (shared by all processes)."""

    epoch: int
    step: int
    view0: torch.Tensor
    """Classification view of the background images A."""
    labels: torch.Tensor
    """Their classes."""
    view1: torch.Tensor | None = None
    """Contrastive views of A (methods with `contrast` only)."""
    view2: torch.Tensor | None = None
    fg_view0: torch.Tensor | None = None
    """Classification view of the foreground images B (mixed steps only)."""
    fg_labels: torch.Tensor | None = None
    mixed: bool = False
    """Whether view 0 gets B's box pasted in this step."""
    lam: torch.Tensor | None = None
    """float32 [] (mixed steps only): the step's Beta draw (the exact per-sample lambda is
    recounted from the box). A tensor, like every per-step value in a batch: a captured CUDA
    graph copies it in at each replay, where a Python number would be frozen at capture."""
    box: torch.Tensor | None = None
    """int64 [4] (y0, y1, x0, x1), half-open, one box for the whole batch (mixed steps only)."""

    def __post_init__(self) -> None:
        if self.mixed and (self.fg_view0 is None or self.fg_labels is None or self.box is None
                           or self.lam is None):
            raise ValueError("a mixed batch needs fg_view0, fg_labels, box and lam")

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields that are present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return replace(self, **{k: v.to(device, non_blocking=non_blocking)
                                for k, v in self.tensors().items()})

    def pin_memory(self) -> "Batch":
        """Called by DataLoader's pin-memory thread (`pin_memory=True`)."""
        return replace(self, **{k: v.pin_memory() for k, v in self.tensors().items()})

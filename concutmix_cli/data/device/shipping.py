"""Moving a step's CPU-made parameters to the images' device: one transfer per dtype.

Every random parameter is drawn and derived on the CPU; what the kernels read (indices, tables,
matrices) travels in a few flat copies, queued without a host synchronization: each is staged
through pinned memory (`stage`), because for a copy from pageable memory the CUDA driver may sync
with the stream to stage it, which would stop the CPU from running ahead of the GPU every step.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Sequence, TypeVar

import torch

S = TypeVar("S", bound="Shippable")


class Shippable:
    """A dataclass whose tensor fields are moved together by `ship` (other fields stay as they are)."""

    def tensor_fields(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def ship(self: S, device: torch.device) -> S:
        return ship([self], device)[0]


def stage(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` (a CPU tensor) on `device`, queued without waiting for the GPU: on CUDA the bytes go
    through a pinned buffer of torch's caching host allocator, which keeps the buffer until the
    copy is done, so the caller may drop or reuse `host` at once."""
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def ship(items: Sequence[S], device: torch.device) -> list[S]:
    """`items` with every tensor field on `device`, moved in one copy per dtype."""
    if device.type == "cpu":
        return list(items)
    parts = [(i, name, t) for i, item in enumerate(items) for name, t in item.tensor_fields().items()]
    moved: list[dict[str, torch.Tensor]] = [{} for _ in items]
    for dtype in dict.fromkeys(t.dtype for _, _, t in parts):
        group = [(i, name, t) for i, name, t in parts if t.dtype == dtype]
        flat = stage(torch.cat([t.reshape(-1) for _, _, t in group]), device)
        for (i, name, t), part in zip(group, flat.split([t.numel() for _, _, t in group])):
            moved[i][name] = part.view(t.shape)
    return [replace(item, **changes) for item, changes in zip(items, moved)]

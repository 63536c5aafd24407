"""The one cache of small constant tensors the device kernels need (per device).

A fresh host-to-device copy of a pageable tensor waits for the queued GPU work, and a CUDA graph
cannot capture one, so constants (normalization statistics, the warp's base grid, the HSV table)
are made once per device and key, here, and reused.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch

_CACHE: dict[tuple[Hashable, torch.device], torch.Tensor] = {}


def device_constant(key: Hashable, device: torch.device | str,
                    make: Callable[[torch.device], torch.Tensor]) -> torch.Tensor:
    """`make(device)` the first time `key` is asked for on `device`, the cached tensor after.
    `key` must name everything the tensor depends on (sizes, dtype, values)."""
    device = torch.device(device)
    slot = (key, device)
    if slot not in _CACHE:
        _CACHE[slot] = make(device)
    return _CACHE[slot]


UINT8_MAX = 255.0

"""Device, precision and determinism choices, made once per run from the config.

Defaults come from measurements (docs/benchmarks.md): on CPU fp32 with channels_last (bf16
autocast ran about 10x slower on the 2-core development machine; channels_last about 1.5x faster);
on CUDA bf16 autocast where the card supports it, else fp16 with a grad scaler.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from concutmix_cli.config import RuntimeConfig
from concutmix_cli.errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "auto":
        return torch.device("cpu")
    raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def resolve_precision(cfg: RuntimeConfig, device: torch.device) -> Precision:
    if cfg.amp == "off":
        return Precision(None, False)
    if device.type != "cuda":
        if cfg.amp == "bf16":
            return Precision(torch.bfloat16, False)
        if cfg.amp == "fp16":
            raise UserError("runtime.amp = fp16 needs a CUDA device; use off or bf16 on CPU")
        return Precision(None, False)  # auto on CPU: fp32 (bf16 measured ~10x slower here)
    if cfg.amp == "fp16":
        return Precision(torch.float16, True)
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def use_channels_last(cfg: RuntimeConfig, device: torch.device, precision: Precision) -> bool:
    """`runtime.channels_last`; auto: on CPU (measured about 1.5x faster, docs/benchmarks.md) and
    on CUDA under autocast (NHWC tensor-core kernels), off on CUDA in fp32."""
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return device.type == "cpu" or precision.autocast_dtype is not None


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bit-exact reruns and resumes on CPU; slower on CUDA)."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """RNG states of python, numpy and torch, in types that `torch.load(weights_only=True)` reads."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

"""Heads on the backbone feature h (method notes, section 4).

- the linear classifier is a plain `nn.Linear(feature_dim, C)` (logits = W h + b, W [C, feature_dim],
  the class weights are W's rows), with PyTorch's default initialization, as in the authors'
  CIFAR runs;
- `CosineClassifier`: logits = s * normalize(h) @ normalize(W), W of shape [feature_dim, C]; the
  class weights are W's columns (the authors' ImageNet-LT / iNaturalist runs).
- `ProjectionHead`: Linear -> BatchNorm1d -> ReLU -> Linear. The same shape serves as g (on h,
  giving the contrastive features) and as g' (on the classifier's weight columns, giving the
  class prototypes).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineClassifier", "ProjectionHead"]

_NORM_EPS = 1e-12


def _no_autocast(device_type: str):
    """A context that turns autocast off on `device_type` (cpu / cuda), else does nothing."""
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class CosineClassifier(nn.Module):
    """logits = scale * normalize(h, dim=1) @ normalize(W, dim=0); W is [feature_dim, num_classes].

    Init: every entry uniform in [-1, 1], then each column (class weight) rescaled to unit norm,
    as the reference's normalized linear layer does. The cosine is computed in float32 with
    autocast off, so logits are float32 and |logits| <= scale holds under mixed precision too.
    """

    def __init__(self, feature_dim: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        if feature_dim < 1 or num_classes < 1:
            raise ValueError(
                f"CosineClassifier needs feature_dim >= 1 and num_classes >= 1, "
                f"got {feature_dim} and {num_classes}"
            )
        if not scale > 0:
            raise ValueError(f"cosine scale must be positive, got {scale}")
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(self.feature_dim, self.num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=0, keepdim=True).clamp_min(_NORM_EPS))

    def normalized_weight(self) -> Tensor:
        """W with unit-norm columns, [feature_dim, num_classes], float32."""
        return F.normalize(self.weight.float(), dim=0, eps=_NORM_EPS)

    def forward(self, h: Tensor) -> Tensor:
        with _no_autocast(h.device.type):
            h_unit = F.normalize(h.float(), dim=1, eps=_NORM_EPS)
            return self.scale * (h_unit @ self.normalized_weight())

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, scale={self.scale}"


class ProjectionHead(nn.Module):
    """Linear(in, hidden) -> BatchNorm1d(hidden) -> ReLU -> Linear(hidden, out).

    PyTorch's default initialization of every layer, as the reference's heads have (only its
    backbone is re-initialized Kaiming-normal). Output is NOT normalized; callers normalize where
    the method says so (contrastive features, prototypes in the loss).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)
        self.net = nn.Sequential(
            nn.Linear(self.in_dim, self.hidden_dim),
            nn.BatchNorm1d(self.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden_dim, self.out_dim),
        )  # constructed with PyTorch's default initialization; not re-initialized here

    def reset_parameters(self) -> None:
        for module in self.net:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

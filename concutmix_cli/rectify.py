"""Label rectification, the ConCutMix step (docs/method-notes.md section 6), as one pure function.

The area label of a mixed image is blended with a semantic label read from the contrastive
feature space (inverse distances to the class prototypes, top-k only), with a weight that grows
with how much training data the mixed classes have. No model, no loop: the engine passes the
projected features and prototypes, and `inspect-labels` can call the same function offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Rectification", "rectification_weight", "rectify_labels"]

DISTANCE_EPS = 1e-12
"""Floor on ||f - p_c||: a feature equal to a prototype gets a huge, finite similarity (not inf)."""


@dataclass(frozen=True)
class Rectification:
    """What the rectification computed, kept whole so it can be inspected.

    semantic: y_sem [N, C] (top-k inverse distances, normalized); rho: [N] the data-amount
    factor; rectified: y_rect [N, C], the training target. All float32, detached.
    """

    semantic: torch.Tensor
    rho: torch.Tensor
    rectified: torch.Tensor


def rectification_weight(r: Rectification, omega: float) -> torch.Tensor:
    """The blend weight [N] given to the semantic label: omega * rho, capped at 1.

    The cap only matters when omega * rho > 1 (not with the published settings, where it is
    about 1e-3): past 1 the formula would give negative label entries, so the label becomes
    purely semantic instead.
    """
    return (omega * r.rho).clamp(max=1.0)


def rectify_labels(
    area_labels: torch.Tensor,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    class_counts: torch.Tensor,
    omega: float,
    top_k: int,
) -> Rectification:
    """Rectify area labels [N, C] with the semantic labels of the mixed view-0 features.

    features = g(h) [N, D] and prototypes = g'(W[:, c]) [C, D], both before normalization
    (distances are taken in the unnormalized space, as in the method); inputs are detached
    here and everything is computed in float32 on the features' device.
    - s_c = 1 / max(||f - p_c||, eps); keep the top_k largest per row; y_sem = s / sum(s).
      Computed as d_min / d_c (same ratios after normalizing), which stays finite for any scale.
    - rho = log(sum_c N_c y_area_c) / sum_c log N_c with N_c clamped to >= 1. If every count is
      1, sum_c log N_c = 0 and there is no data imbalance to act on: rho = 0 (no rectification).
      The weighted count is also floored at 1 (a no-op for real labels, which sum to 1), so rho
      is never negative.
    - y_rect = (1 - w) y_area + w y_sem with w = omega * rho capped at 1 (see
      `rectification_weight`), so y_rect stays a distribution.
    """
    if area_labels.dim() != 2:
        raise ValueError(f"rectify_labels: area_labels must be [N, C], got {list(area_labels.shape)}")
    n, c = area_labels.shape
    if features.dim() != 2 or features.shape[0] != n:
        raise ValueError(f"rectify_labels: features must be [N={n}, D], got {list(features.shape)}")
    if prototypes.dim() != 2 or prototypes.shape != (c, features.shape[1]):
        raise ValueError(
            f"rectify_labels: prototypes must be [C={c}, D={features.shape[1]}], got {list(prototypes.shape)}"
        )
    if torch.as_tensor(class_counts).numel() != c:
        raise ValueError(f"rectify_labels: class_counts must have C={c} entries, got {torch.as_tensor(class_counts).numel()}")
    if not 1 <= top_k <= c:
        raise ValueError(f"rectify_labels: top_k must be between 1 and the number of classes ({c}), got {top_k}")
    if not omega >= 0:
        raise ValueError(f"rectify_labels: omega must be >= 0, got {omega}")

    device = features.device
    f = features.detach().to(torch.float32)
    p = prototypes.detach().to(device=device, dtype=torch.float32)
    area = area_labels.detach().to(device=device, dtype=torch.float32)
    counts = torch.as_tensor(class_counts).detach().to(device=device, dtype=torch.float32).clamp_min(1.0)

    # Exact differences (no ||a||^2 + ||b||^2 - 2ab cancellation), memory O(N * C).
    dist = torch.cdist(f, p, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").clamp_min(DISTANCE_EPS)
    nearest = dist.min(dim=1, keepdim=True).values
    inv = nearest / dist  # proportional to 1 / d_c, in (0, 1], 1 at the nearest prototype
    top_vals, top_idx = inv.topk(top_k, dim=1)
    kept = torch.zeros_like(inv).scatter_(1, top_idx, top_vals)
    semantic = kept / kept.sum(dim=1, keepdim=True)

    log_counts_sum = torch.log(counts).sum()
    weighted_count = (area * counts).sum(dim=1).clamp_min(1.0)
    rho = torch.where(
        log_counts_sum > 0,
        torch.log(weighted_count) / log_counts_sum.clamp_min(torch.finfo(torch.float32).tiny),
        torch.zeros_like(weighted_count),
    )

    weight = (omega * rho).clamp(max=1.0).unsqueeze(1)
    rectified = (1.0 - weight) * area + weight * semantic
    return Rectification(semantic=semantic, rho=rho, rectified=rectified)

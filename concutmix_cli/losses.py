"""The training losses of docs/method-notes.md section 5, as pure tensor functions.

Logit-adjusted cross entropy (hard, soft and mixed targets) and the balanced supervised
contrastive loss (BCL) with class prototypes. Everything is vectorized (the reference code had a
Python loop inside the contrastive loss: docs/method-notes.md section 8) and runs on the inputs' own device; half
precision inputs are computed in float32, float64 inputs stay float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "balanced_contrastive_loss",
    "log_prior_from_counts",
    "logit_adjusted_ce",
    "mixed_ce",
    "soft_target_ce",
]


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 (mixed precision) so that log-softmax and exp stay accurate."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """logits + tau * log(prior); tau = 0 skips the addition (plain CE, no 0 * log term)."""
    logits = _at_least_float32(logits)
    if tau == 0:
        return logits
    return logits + tau * log_prior.to(device=logits.device, dtype=logits.dtype)


def log_prior_from_counts(class_counts: torch.Tensor) -> torch.Tensor:
    """log(N_c / sum N) for the logit adjustment, with counts clamped to >= 1 first.

    The clamp keeps a class with no training image finite (log 0 = -inf would make its adjusted
    logit -inf and its CE infinite/NaN). Computed in float64; returned as float64 for float64
    input, else in torch's default float dtype.
    """
    counts = torch.as_tensor(class_counts)
    out_dtype = torch.float64 if counts.dtype == torch.float64 else torch.get_default_dtype()
    c = counts.to(torch.float64).clamp_min(1.0)
    return torch.log(c / c.sum()).to(out_dtype)


def soft_target_ce(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log softmax(logits)_c (targets need not be one-hot)."""
    logits = _at_least_float32(logits)
    log_p = F.log_softmax(logits, dim=1)
    t = soft_targets.to(device=log_p.device, dtype=log_p.dtype)
    return -(t * log_p).sum(dim=1).mean()


def logit_adjusted_ce(
    logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor, tau: float
) -> torch.Tensor:
    """CE of (logits + tau * log_prior) against a hard (int [N]) or soft (float [N, C]) target.

    The adjustment is for training only; evaluation uses the raw logits (docs/method-notes.md section 5).
    """
    adjusted = _adjust(logits, log_prior, tau)
    if target.is_floating_point():
        return soft_target_ce(adjusted, target)
    return F.cross_entropy(adjusted, target.long())


def mixed_ce(
    logits: torch.Tensor,
    class_a: torch.Tensor,
    class_b: torch.Tensor,
    lam: torch.Tensor | float,
    log_prior: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Mean over the batch of lam_i CE_i(a_i) + (1 - lam_i) CE_i(b_i) on the adjusted logits.

    The loss of a mixed batch before label rectification starts (docs/method-notes.md section 5). Equal to the
    soft-target CE against the area label, but kept in this form to match the recipe.
    """
    adjusted = _adjust(logits, log_prior, tau)
    ce_a = F.cross_entropy(adjusted, class_a.long(), reduction="none")
    ce_b = F.cross_entropy(adjusted, class_b.long(), reduction="none")
    lam_t = torch.as_tensor(lam, device=adjusted.device, dtype=adjusted.dtype)
    return (lam_t * ce_a + (1.0 - lam_t) * ce_b).mean()


def _class_counts_in_set(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """count_S(c) for each class c, as a float vector [C] (scatter-add: no host sync on CUDA)."""
    counts = torch.zeros(num_classes, device=labels.device, dtype=dtype)
    return counts.index_add_(0, labels, torch.ones_like(labels, dtype=dtype))


def balanced_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float,
    anchor_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Balanced supervised contrastive loss (BCL) with prototypes, docs/method-notes.md section 5.

    S = the M (already L2-normalized) features plus the C (normalized) prototypes labelled
    arange(C). For anchor i: positives P(i) = the other members of S with i's label; each
    k != i in the denominator is divided by w_ik = count_S(label_k) - [k in P(i)], so every class
    weighs the same whatever its count in the batch (this is the "balanced" part); then
    loss_i = -mean_{k in P(i)} [z_i.z_k / T - log sum_{k' != i} exp(z_i.z_k' / T) / w_ik'].
    `anchor_index` picks the rows of `features` used as anchors (a process's local rows
    against the gathered global set under distributed training); default all M.
    Returns the mean over the anchors. The log-sum-exp subtracts the row max, so it is stable
    for small temperatures; P(i) is never empty because the class prototype is in S.
    """
    if features.dim() != 2 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            "balanced_contrastive_loss: features [M, D] and prototypes [C, D] must share D, got "
            f"{list(features.shape)} and {list(prototypes.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"balanced_contrastive_loss: temperature must be > 0, got {temperature}")
    z = _at_least_float32(features)
    protos = _at_least_float32(prototypes).to(dtype=z.dtype, device=z.device)
    m, c = z.shape[0], protos.shape[0]
    device = z.device

    labels = labels.to(device=device, dtype=torch.long)
    set_feats = torch.cat([z, protos], dim=0)  # [M + C, D]
    set_labels = torch.cat([labels, torch.arange(c, device=device)])  # [M + C]
    counts = _class_counts_in_set(set_labels, c, z.dtype)  # [C]

    if anchor_index is None:
        anchor_index = torch.arange(m, device=device)
    anchor_index = anchor_index.to(device=device, dtype=torch.long)
    anchors = z.index_select(0, anchor_index)  # [A, D]
    anchor_labels = labels.index_select(0, anchor_index)  # [A]

    sim = anchors @ set_feats.T / temperature  # [A, M + C]
    members = torch.arange(m + c, device=device)
    is_self = members.unsqueeze(0) == anchor_index.unsqueeze(1)  # [A, M + C]
    positive = (anchor_labels.unsqueeze(1) == set_labels.unsqueeze(0)) & ~is_self

    # w_ik >= 1 for every k != i: a positive's class holds at least i and k, any class its prototype.
    weights = counts.index_select(0, set_labels).unsqueeze(0) - positive.to(z.dtype)
    # log sum_{k' != i} exp(s_ik') / w_ik' as one log-sum-exp; the anchor itself is -inf.
    weighted = (sim - torch.log(weights.clamp_min(1.0))).masked_fill(is_self, float("-inf"))
    log_denominator = torch.logsumexp(weighted, dim=1, keepdim=True)  # [A, 1]

    pos_f = positive.to(z.dtype)
    log_prob = (sim - log_denominator).masked_fill(~positive, 0.0)
    per_anchor = -log_prob.sum(dim=1) / pos_f.sum(dim=1)
    return per_anchor.mean()

"""Losses (docs/method-notes.md section 5) against slow, plainly written loop references."""

from __future__ import annotations

import math

import pytest
import torch

from concutmix_cli.losses import (
    balanced_contrastive_loss,
    log_prior_from_counts,
    logit_adjusted_ce,
    mixed_ce,
    soft_target_ce,
)

# --------------------------------------------------------------------------- references


def ref_ce_row(row: list[float], target: int) -> float:
    """-log softmax(row)[target], written out."""
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return log_z - row[target]


def ref_logit_adjusted_ce(logits, target, log_prior, tau) -> float:
    total = 0.0
    for i in range(len(logits)):
        adjusted = [logits[i][c] + tau * log_prior[c] for c in range(len(log_prior))]
        total += ref_ce_row(adjusted, target[i])
    return total / len(logits)


def ref_soft_ce(logits, soft) -> float:
    total = 0.0
    for i in range(len(logits)):
        for c in range(len(logits[i])):
            total += soft[i][c] * ref_ce_row(logits[i], c)
    return total / len(logits)


def ref_mixed_ce(logits, a, b, lam, log_prior, tau) -> float:
    total = 0.0
    for i in range(len(logits)):
        adjusted = [logits[i][c] + tau * log_prior[c] for c in range(len(log_prior))]
        total += lam[i] * ref_ce_row(adjusted, a[i]) + (1 - lam[i]) * ref_ce_row(adjusted, b[i])
    return total / len(logits)


def ref_bcl_per_anchor(features, labels, prototypes, temperature, balanced=True) -> list[float]:
    """Per-anchor BCL straight from docs/method-notes.md section 5; balanced=False gives SupCon with prototypes."""
    members = [list(f) for f in features] + [list(p) for p in prototypes]
    member_labels = list(labels) + list(range(len(prototypes)))

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    losses = []
    for i in range(len(features)):
        positives = [k for k in range(len(members)) if k != i and member_labels[k] == labels[i]]
        denom = 0.0
        for k in range(len(members)):
            if k == i:
                continue
            if balanced:
                w = member_labels.count(member_labels[k]) - (1 if k in positives else 0)
            else:
                w = 1
            denom += math.exp(dot(members[i], members[k]) / temperature) / w
        terms = [dot(members[i], members[k]) / temperature - math.log(denom) for k in positives]
        losses.append(-sum(terms) / len(terms))
    return losses


# --------------------------------------------------------------------------- fixtures


def _batch(seed=0, n=5, c=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype) * 3
    target = torch.randint(0, c, (n,), generator=g)
    counts = torch.tensor([100, 30, 7, 1][:c])
    return logits, target, counts


def _bcl_inputs(dtype=torch.float64, seed=0):
    """2B = 6 features (B = 3), 3 classes with unequal counts in the batch: 3, 2 and 1 views."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=dtype), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=dtype), dim=1)
    labels = torch.tensor([0, 0, 1, 0, 1, 2])
    return feats, labels, protos


# --------------------------------------------------------------------------- CE family


def test_log_prior_from_counts():
    lp = log_prior_from_counts(torch.tensor([6, 3, 1, 0]))
    # 0 is clamped to 1: counts 6, 3, 1, 1 of 11.
    expected = [math.log(6 / 11), math.log(3 / 11), math.log(1 / 11), math.log(1 / 11)]
    assert torch.allclose(lp.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    assert bool(torch.isfinite(lp).all())
    assert torch.exp(log_prior_from_counts(torch.tensor([5.0, 5.0], dtype=torch.float64))).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("tau", [0.0, 0.9, 1.0, 2.5])
def test_logit_adjusted_ce_hard_matches_reference(tau):
    logits, target, counts = _batch()
    lp = log_prior_from_counts(counts).double()
    got = logit_adjusted_ce(logits, target, lp, tau)
    ref = ref_logit_adjusted_ce(logits.tolist(), target.tolist(), lp.tolist(), tau)
    assert got.dim() == 0
    assert got.item() == pytest.approx(ref, abs=1e-10)


def test_logit_adjustment_changes_the_loss_and_tau_zero_is_plain_ce():
    logits, target, counts = _batch()
    lp = log_prior_from_counts(counts).double()
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert logit_adjusted_ce(logits, target, lp, 0.0).item() == pytest.approx(plain.item(), abs=1e-12)
    assert abs(logit_adjusted_ce(logits, target, lp, 1.0).item() - plain.item()) > 1e-3


def test_logit_adjusted_ce_soft_target_matches_reference():
    logits, _, counts = _batch(seed=1)
    g = torch.Generator().manual_seed(5)
    soft = torch.softmax(torch.randn(logits.shape, generator=g, dtype=torch.float64), dim=1)
    lp = log_prior_from_counts(counts).double()
    tau = 0.75
    got = logit_adjusted_ce(logits, soft, lp, tau)
    adjusted = (logits + tau * lp).tolist()
    assert got.item() == pytest.approx(ref_soft_ce(adjusted, soft.tolist()), abs=1e-10)


def test_soft_target_ce_matches_reference_and_hard_ce_for_one_hot():
    logits, target, _ = _batch(seed=2)
    g = torch.Generator().manual_seed(6)
    soft = torch.softmax(torch.randn(logits.shape, generator=g, dtype=torch.float64), dim=1)
    assert soft_target_ce(logits, soft).item() == pytest.approx(ref_soft_ce(logits.tolist(), soft.tolist()), abs=1e-10)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).double()
    assert soft_target_ce(logits, onehot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), abs=1e-12
    )


def test_mixed_ce_matches_reference_and_equals_soft_ce_of_area_label():
    logits, a, counts = _batch(seed=3, n=6)
    b = torch.tensor([1, 1, 0, 3, 2, 0])
    lam = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.0, 0.33], dtype=torch.float64)
    lp = log_prior_from_counts(counts).double()
    tau = 0.9
    got = mixed_ce(logits, a, b, lam, lp, tau)
    ref = ref_mixed_ce(logits.tolist(), a.tolist(), b.tolist(), lam.tolist(), lp.tolist(), tau)
    assert got.item() == pytest.approx(ref, abs=1e-10)
    # lam y_a + (1 - lam) y_b as a soft target gives the same number (CE is linear in the target).
    area = lam[:, None] * torch.nn.functional.one_hot(a, 4) + (1 - lam[:, None]) * torch.nn.functional.one_hot(b, 4)
    assert logit_adjusted_ce(logits, area, lp, tau).item() == pytest.approx(ref, abs=1e-10)
    # A Python float lambda is accepted.
    ref_half = ref_mixed_ce(logits.tolist(), a.tolist(), b.tolist(), [0.5] * 6, lp.tolist(), tau)
    assert mixed_ce(logits, a, b, 0.5, lp, tau).item() == pytest.approx(ref_half, abs=1e-10)


def test_ce_float32_agrees_with_float64():
    logits, target, counts = _batch(seed=4, n=16, c=4)
    lp = log_prior_from_counts(counts)
    lo = logit_adjusted_ce(logits.float(), target, lp.float(), 0.9)
    hi = logit_adjusted_ce(logits, target, lp.double(), 0.9)
    assert lo.dtype == torch.float32 and hi.dtype == torch.float64
    assert lo.item() == pytest.approx(hi.item(), abs=1e-5)


# --------------------------------------------------------------------------- BCL


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_bcl_matches_loop_reference(temperature):
    feats, labels, protos = _bcl_inputs()
    got = balanced_contrastive_loss(feats, labels, protos, temperature)
    ref = ref_bcl_per_anchor(feats.tolist(), labels.tolist(), protos.tolist(), temperature)
    assert got.dim() == 0
    assert got.item() == pytest.approx(sum(ref) / len(ref), abs=1e-5)


def test_bcl_class_averaging_weights_matter():
    feats, labels, protos = _bcl_inputs(seed=1)
    got = balanced_contrastive_loss(feats, labels, protos, 0.1).item()
    balanced = ref_bcl_per_anchor(feats.tolist(), labels.tolist(), protos.tolist(), 0.1, balanced=True)
    supcon = ref_bcl_per_anchor(feats.tolist(), labels.tolist(), protos.tolist(), 0.1, balanced=False)
    assert got == pytest.approx(sum(balanced) / 6, abs=1e-5)
    assert abs(got - sum(supcon) / 6) > 1e-2


def test_bcl_anchor_subset_is_mean_of_those_anchors():
    feats, labels, protos = _bcl_inputs(seed=2)
    ref = ref_bcl_per_anchor(feats.tolist(), labels.tolist(), protos.tolist(), 0.2)
    for subset in ([0], [5], [1, 3], [2, 4, 5], [0, 1, 2]):
        got = balanced_contrastive_loss(feats, labels, protos, 0.2, anchor_index=torch.tensor(subset))
        assert got.item() == pytest.approx(sum(ref[i] for i in subset) / len(subset), abs=1e-5)
    # Splitting the anchors in two halves and averaging gives the full loss (distributed use).
    full = balanced_contrastive_loss(feats, labels, protos, 0.2)
    half1 = balanced_contrastive_loss(feats, labels, protos, 0.2, anchor_index=torch.arange(3))
    half2 = balanced_contrastive_loss(feats, labels, protos, 0.2, anchor_index=torch.arange(3, 6))
    assert ((half1 + half2) / 2).item() == pytest.approx(full.item(), abs=1e-10)


def test_bcl_singleton_class_uses_its_prototype_as_positive():
    # The class-2 view has no other view of its class; its only positive is prototype 2.
    feats, labels, protos = _bcl_inputs(seed=3)
    ref = ref_bcl_per_anchor(feats.tolist(), labels.tolist(), protos.tolist(), 0.1)
    got = balanced_contrastive_loss(feats, labels, protos, 0.1, anchor_index=torch.tensor([5]))
    assert got.item() == pytest.approx(ref[5], abs=1e-5)
    assert math.isfinite(got.item())


def test_bcl_gradient_reaches_features_and_prototypes():
    feats, labels, protos = _bcl_inputs(dtype=torch.float32, seed=4)
    raw_f = feats.clone().requires_grad_(True)
    raw_p = protos.clone().requires_grad_(True)
    loss = balanced_contrastive_loss(
        torch.nn.functional.normalize(raw_f, dim=1), labels, torch.nn.functional.normalize(raw_p, dim=1), 0.1
    )
    loss.backward()
    assert raw_f.grad is not None and raw_p.grad is not None
    assert bool(torch.isfinite(raw_f.grad).all()) and bool(torch.isfinite(raw_p.grad).all())
    assert raw_f.grad.abs().sum() > 0 and raw_p.grad.abs().sum() > 0


def test_bcl_gradient_matches_finite_differences():
    feats, labels, protos = _bcl_inputs(seed=5)
    f = feats.clone().requires_grad_(True)
    p = protos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: balanced_contrastive_loss(a, labels, b, 0.3), (f, p), eps=1e-6, atol=1e-5
    )


def test_bcl_float32_agrees_with_float64():
    feats, labels, protos = _bcl_inputs(seed=6)
    hi = balanced_contrastive_loss(feats, labels, protos, 0.1)
    lo = balanced_contrastive_loss(feats.float(), labels, protos.float(), 0.1)
    assert hi.dtype == torch.float64 and lo.dtype == torch.float32
    assert lo.item() == pytest.approx(hi.item(), abs=1e-5)


def test_bcl_stable_for_small_temperature():
    feats, labels, protos = _bcl_inputs(dtype=torch.float32, seed=7)
    loss = balanced_contrastive_loss(feats, labels, protos, 0.01)
    assert math.isfinite(loss.item())
    ref = ref_bcl_per_anchor(feats.double().tolist(), labels.tolist(), protos.double().tolist(), 0.01)
    assert loss.item() == pytest.approx(sum(ref) / 6, rel=1e-4)


def test_bcl_rejects_bad_shapes_and_temperature():
    feats, labels, protos = _bcl_inputs()
    with pytest.raises(ValueError):
        balanced_contrastive_loss(feats, labels, protos[:, :3], 0.1)
    with pytest.raises(ValueError):
        balanced_contrastive_loss(feats, labels, protos, 0.0)

"""Property tests (hypothesis): invariants of mixing, rectification and the losses on edge inputs."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from concutmix_cli.losses import (
    balanced_contrastive_loss,
    log_prior_from_counts,
    logit_adjusted_ce,
    mixed_ce,
)
from concutmix_cli.mixing import area_labels, box_masks, paste, sample_boxes
from concutmix_cli.rectify import rectification_weight, rectify_labels

# No example database: several people share this checkout; keep runs short and file-free.
PROPS = settings(max_examples=50, deadline=None, database=None)

sizes = st.integers(min_value=1, max_value=64)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
magnitudes = st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6])


@PROPS
@given(h=sizes, w=sizes, lams=st.lists(unit, min_size=1, max_size=8), seed=st.integers(0, 2**31 - 1))
def test_sampled_boxes_give_valid_lambda_and_labels(h, w, lams, seed):
    lam = torch.tensor(lams, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    boxes = sample_boxes(lam, h, w, generator=g)
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] <= h).all() and (boxes[:, 0] <= boxes[:, 1]).all())
    assert bool((boxes[:, 2] >= 0).all() and (boxes[:, 3] <= w).all() and (boxes[:, 2] <= boxes[:, 3]).all())
    n = len(lams)
    img = torch.zeros(n, 1, h, w)
    _, exact = paste(img, img + 1, boxes)
    assert bool(((exact >= 0) & (exact <= 1)).all())
    a = torch.randint(0, 5, (n,), generator=g)
    b = torch.randint(0, 5, (n,), generator=g)
    y = area_labels(a, b, exact, 5)
    assert bool((y >= 0).all())
    assert torch.allclose(y.sum(1), torch.ones(n), atol=1e-6)


@PROPS
@given(
    h=sizes,
    w=sizes,
    box=st.tuples(*[st.integers(-10, 80)] * 4),
    classes=st.tuples(st.integers(0, 9), st.integers(0, 9)),
)
def test_any_box_gives_exact_lambda_in_unit_interval(h, w, box, classes):
    boxes = torch.tensor([box])
    img = torch.zeros(1, 2, h, w, dtype=torch.uint8)
    mixed, lam = paste(img, img + 7, boxes)
    mask = box_masks(boxes, h, w)
    assert 0.0 <= lam.item() <= 1.0
    assert math.isclose(lam.item(), (h * w - int(mask.sum())) / (h * w), rel_tol=1e-6, abs_tol=1e-7)
    assert int((mixed == 7).sum()) == 2 * int(mask.sum())
    y = area_labels(torch.tensor([classes[0]]), torch.tensor([classes[1]]), lam, 10)
    assert bool((y >= 0).all()) and math.isclose(y.sum().item(), 1.0, abs_tol=1e-6)


@PROPS
@given(lam=unit, a=st.integers(0, 6), b=st.integers(0, 6))
def test_area_label_any_lambda(lam, a, b):
    y = area_labels(torch.tensor([a]), torch.tensor([b]), torch.tensor([lam]), 7)
    assert bool((y >= 0).all())
    assert math.isclose(y.sum().item(), 1.0, abs_tol=1e-6)
    if a == b:
        assert y[0, a].item() == 1.0


counts_strategy = st.one_of(
    st.lists(st.integers(1, 10**9), min_size=2, max_size=12),
    st.integers(2, 12).map(lambda c: [1] * c),  # all ones: rho = 0
    st.integers(2, 12).map(lambda c: [10**9] * c),  # huge counts
)
# class counts, batch size, feature size, feature magnitude and a seed: what every rectification
# property draws
rectification_inputs = dict(
    counts=counts_strategy, n=st.integers(1, 6), d=st.integers(1, 8), mag=magnitudes,
    seed=st.integers(0, 2**31 - 1),
)


@PROPS
@given(
    **rectification_inputs,
    feature_kind=st.sampled_from(["random", "zero", "on_prototype", "all_zero"]),
    omega=st.floats(0.0, 50.0, allow_nan=False),
    top_k_frac=unit,
)
def test_rectified_labels_are_distributions(counts, n, d, mag, feature_kind, omega, top_k_frac, seed):
    c = len(counts)
    g = torch.Generator().manual_seed(seed)
    top_k = max(1, min(c, 1 + int(top_k_frac * (c - 1))))
    protos = torch.randn(c, d, generator=g) * mag
    feats = torch.randn(n, d, generator=g) * mag
    if feature_kind == "zero":
        feats = torch.zeros(n, d)
    elif feature_kind == "on_prototype":
        feats = protos[torch.randint(0, c, (n,), generator=g)].clone()
    elif feature_kind == "all_zero":
        feats, protos = torch.zeros(n, d), torch.zeros(c, d)
    lam = torch.rand(n, generator=g)
    y = area_labels(torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g), lam, c)
    r = rectify_labels(y, feats, protos, torch.tensor(counts), omega=omega, top_k=top_k)
    for t in (r.semantic, r.rectified, r.rho):
        assert bool(torch.isfinite(t).all())
    assert bool((r.semantic >= 0).all()) and bool((r.rectified >= 0).all()) and bool((r.rho >= 0).all())
    assert torch.allclose(r.semantic.sum(1), torch.ones(n), atol=1e-5)
    assert torch.allclose(r.rectified.sum(1), torch.ones(n), atol=1e-5)
    assert bool(((r.semantic > 0).sum(1) <= top_k).all())
    w = rectification_weight(r, omega)
    assert bool(((w >= 0) & (w <= 1)).all())
    if all(x == 1 for x in counts):
        assert bool((r.rho == 0).all())


def _normalized(raw: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(raw, dim=1)


@PROPS
@given(
    b=st.integers(1, 5),
    c=st.integers(1, 6),
    d=st.integers(1, 8),
    mag=magnitudes,
    layout=st.sampled_from(["random", "identical", "on_prototype", "antipodal"]),
    temperature=st.floats(0.01, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_bcl_finite_on_extreme_normalized_inputs(b, c, d, mag, layout, temperature, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (2 * b,), generator=g)
    protos = _normalized(torch.randn(c, d, generator=g, dtype=dtype) * mag)
    feats = _normalized(torch.randn(2 * b, d, generator=g, dtype=dtype) * mag)
    if layout == "identical":
        feats = feats[:1].expand(2 * b, d).clone()
        protos = feats[:1].expand(c, d).clone()
    elif layout == "on_prototype":
        feats = protos[labels].clone()
    elif layout == "antipodal":
        feats = -protos[labels].clone()
    feats.requires_grad_(True)
    loss = balanced_contrastive_loss(feats, labels, protos, temperature)
    assert loss.dtype == dtype and math.isfinite(loss.item())
    loss.backward()
    assert bool(torch.isfinite(feats.grad).all())
    # log(positives) >= 0 is not guaranteed, but the loss is bounded by 2 / T + log(|S|).
    assert abs(loss.item()) <= 2 / temperature + math.log(2 * b + c) + 1e-3


@PROPS
@given(
    n=st.integers(1, 6),
    counts=st.lists(st.integers(0, 10**9), min_size=2, max_size=10),
    scale=st.sampled_from([1e-6, 1.0, 30.0, 1e3, 1e4]),
    tau=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_ce_losses_finite_on_extreme_inputs(n, counts, scale, tau, seed):
    c = len(counts)
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * scale).requires_grad_(True)
    a = torch.randint(0, c, (n,), generator=g)
    b = torch.randint(0, c, (n,), generator=g)
    lp = log_prior_from_counts(torch.tensor(counts))
    assert bool(torch.isfinite(lp).all())
    soft = torch.softmax(torch.randn(n, c, generator=g), dim=1)
    lam = torch.rand(n, generator=g)
    losses = [
        logit_adjusted_ce(logits, a, lp, tau),
        logit_adjusted_ce(logits, soft, lp, tau),
        mixed_ce(logits, a, b, lam, lp, tau),
    ]
    for loss in losses:
        assert math.isfinite(loss.item()) and loss.item() >= -1e-4
    sum(losses).backward()
    assert bool(torch.isfinite(logits.grad).all())


@PROPS
@given(
    n=st.integers(1, 6),
    c=st.integers(2, 8),
    lam_kind=st.sampled_from(["random", "zero", "one"]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    tau=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_mixed_ce_is_the_soft_ce_of_the_area_label(n, c, lam_kind, scale, tau, seed):
    """The pre-rectification loss of a mixed batch and the soft-target CE against its area label
    agree for any lambda (0 and 1 included) and any pair of classes (a == b included)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    a = torch.randint(0, c, (n,), generator=g)
    b = torch.randint(0, c, (n,), generator=g)
    lam = {"random": torch.rand(n, generator=g, dtype=torch.float64),
           "zero": torch.zeros(n, dtype=torch.float64), "one": torch.ones(n, dtype=torch.float64)}[lam_kind]
    lp = log_prior_from_counts(torch.randint(1, 1000, (c,), generator=g))
    mixed = mixed_ce(logits, a, b, lam, lp, tau)
    soft = logit_adjusted_ce(logits, area_labels(a, b, lam, c).to(torch.float64), lp, tau)
    assert math.isclose(mixed.item(), soft.item(), rel_tol=1e-6, abs_tol=1e-9)


@PROPS
@given(**rectification_inputs)
def test_omega_zero_keeps_the_area_label(counts, n, d, mag, seed):
    """omega = 0 switches rectification off exactly: the target is the area label, bit for bit."""
    c = len(counts)
    g = torch.Generator().manual_seed(seed)
    y = area_labels(torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g),
                    torch.rand(n, generator=g), c)
    r = rectify_labels(y, torch.randn(n, d, generator=g) * mag, torch.randn(c, d, generator=g) * mag,
                       torch.tensor(counts), omega=0.0, top_k=c)
    assert torch.equal(r.rectified, y.float())

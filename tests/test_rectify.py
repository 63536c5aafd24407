"""Label rectification (docs/method-notes.md section 6): hand-computed values, invariants, argument checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from concutmix_cli.rectify import Rectification, rectification_weight, rectify_labels


def _random_case(seed=0, n=8, c=6, d=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, c, (n,), generator=g)
    b = torch.randint(0, c, (n,), generator=g)
    lam = torch.rand(n, generator=g)
    area = lam[:, None] * torch.nn.functional.one_hot(a, c) + (1 - lam[:, None]) * torch.nn.functional.one_hot(b, c)
    feats = torch.randn(n, d, generator=g) * 2
    protos = torch.randn(c, d, generator=g) * 2
    counts = torch.tensor([500, 200, 80, 30, 10, 5][:c])
    return area, feats, protos, counts


def test_hand_computed_example():
    # Row 0: f = (0, 0); distances to p = (1, 0), (0, 2), (3, 4) are 1, 2, 5 -> s = 1, 1/2, 1/5.
    # Row 1: f = (3, 0); distances 2, sqrt(13), 4 -> s = 1/2, 1/sqrt(13), 1/4.
    area = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    feats = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    counts = torch.tensor([100, 10, 1])
    omega = 0.5

    r = rectify_labels(area, feats, protos, counts, omega=omega, top_k=2)

    # top_k = 2: row 0 keeps classes 0 (1) and 1 (1/2); row 1 keeps classes 0 (1/2) and
    # 1 (1/sqrt(13) ~ 0.277), dropping class 2 (1/4).
    s1 = 1 / math.sqrt(13)
    sem = [[1 / 1.5, 0.5 / 1.5, 0.0], [0.5 / (0.5 + s1), s1 / (0.5 + s1), 0.0]]
    assert torch.allclose(r.semantic, torch.tensor(sem), atol=1e-6)

    log_total = math.log(100) + math.log(10) + math.log(1)
    rho = [math.log(0.5 * 100 + 0.5 * 10) / log_total, math.log(0.25 * 10 + 0.75 * 1) / log_total]
    assert torch.allclose(r.rho, torch.tensor(rho), atol=1e-6)
    assert rho[0] == pytest.approx(0.580117, abs=1e-5)  # log 55 / log 1000

    rect = [
        [(1 - omega * rho[i]) * area[i, c].item() + omega * rho[i] * sem[i][c] for c in range(3)] for i in range(2)
    ]
    assert torch.allclose(r.rectified, torch.tensor(rect), atol=1e-6)
    assert torch.allclose(rectification_weight(r, omega), torch.tensor([omega * x for x in rho]), atol=1e-7)

    # top_k = 3 keeps everything: row 0 semantic = (1, 1/2, 1/5) / 1.7.
    r3 = rectify_labels(area, feats, protos, counts, omega=omega, top_k=3)
    assert torch.allclose(r3.semantic[0], torch.tensor([1 / 1.7, 0.5 / 1.7, 0.2 / 1.7]), atol=1e-6)


def test_result_is_a_frozen_dataclass_of_detached_float32():
    area, feats, protos, counts = _random_case()
    feats = feats.double().requires_grad_(True)
    protos = protos.double().requires_grad_(True)
    r = rectify_labels(area.double(), feats, protos, counts, omega=1.0, top_k=3)
    assert isinstance(r, Rectification)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rho = torch.zeros(1)  # type: ignore[misc]
    for t in (r.semantic, r.rho, r.rectified):
        assert t.dtype == torch.float32 and not t.requires_grad
    assert r.semantic.shape == r.rectified.shape == area.shape and r.rho.shape == (area.shape[0],)


@pytest.mark.parametrize("top_k", [1, 2, 4, 6])
def test_rows_are_distributions_with_exactly_top_k_semantic_entries(top_k):
    area, feats, protos, counts = _random_case(seed=top_k)
    r = rectify_labels(area, feats, protos, counts, omega=0.8, top_k=top_k)
    for t in (r.semantic, r.rectified):
        assert bool((t >= 0).all())
        assert torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-6)
    assert torch.equal((r.semantic > 0).sum(1), torch.full((len(area),), top_k))
    # The kept entries are the nearest prototypes.
    dist = torch.cdist(feats.double(), protos.double())
    nearest = dist.argsort(dim=1)[:, :top_k]
    assert bool((r.semantic.gather(1, nearest) > 0).all())


def test_semantic_matches_loop_reference():
    area, feats, protos, counts = _random_case(seed=3, n=5, c=6, d=4)
    top_k = 3
    r = rectify_labels(area, feats, protos, counts, omega=0.5, top_k=top_k)
    for i in range(5):
        s = [1 / math.dist(feats[i].tolist(), protos[c].tolist()) for c in range(6)]
        keep = sorted(range(6), key=lambda c: -s[c])[:top_k]
        total = sum(s[c] for c in keep)
        expected = [s[c] / total if c in keep else 0.0 for c in range(6)]
        assert r.semantic[i].tolist() == pytest.approx(expected, abs=1e-6)


def test_omega_zero_gives_area_label():
    area, feats, protos, counts = _random_case(seed=4)
    r = rectify_labels(area, feats, protos, counts, omega=0.0, top_k=3)
    assert torch.equal(r.rectified, area.float())
    assert torch.equal(rectification_weight(r, 0.0), torch.zeros(len(area)))


def test_larger_omega_moves_toward_semantic():
    area, feats, protos, counts = _random_case(seed=5)
    previous = None
    for omega in (0.0, 0.1, 0.3, 0.6, 1.0):
        r = rectify_labels(area, feats, protos, counts, omega=omega, top_k=3)
        l1 = (r.rectified - r.semantic).abs().sum(1)
        if previous is not None:
            moved = (area - r.semantic).abs().sum(1) > 1e-6
            assert bool((l1[moved] < previous[moved]).all())
        previous = l1


def test_rho_is_zero_when_all_counts_are_one():
    area, feats, protos, _ = _random_case(seed=6)
    r = rectify_labels(area, feats, protos, torch.ones(6, dtype=torch.long), omega=5.0, top_k=2)
    assert torch.equal(r.rho, torch.zeros(len(area)))
    assert torch.allclose(r.rectified, area)


def test_counts_are_clamped_to_one():
    area, feats, protos, counts = _random_case(seed=7)
    zeroed = counts.clone()
    zeroed[-1] = 0
    ones = counts.clone()
    ones[-1] = 1
    a = rectify_labels(area, feats, protos, zeroed, omega=1.0, top_k=2)
    b = rectify_labels(area, feats, protos, ones, omega=1.0, top_k=2)
    assert torch.equal(a.rho, b.rho) and bool(torch.isfinite(a.rectified).all())


def test_feature_equal_to_a_prototype_gives_that_class():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = protos[1:2].clone()
    area = torch.tensor([[0.5, 0.0, 0.5]])
    r = rectify_labels(area, feats, protos, torch.tensor([10, 10, 10]), omega=1.0, top_k=3)
    assert bool(torch.isfinite(r.semantic).all())
    assert r.semantic[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_weight_capped_at_one():
    # omega * rho > 1 would give negative entries; the weight is capped so the label stays valid.
    area = torch.tensor([[0.0, 1.0]])
    r = rectify_labels(area, torch.zeros(1, 2), torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([1, 1000]), omega=4.0, top_k=1)
    assert r.rho.item() == pytest.approx(1.0)
    assert rectification_weight(r, 4.0).item() == 1.0
    assert torch.allclose(r.rectified, r.semantic)
    assert bool((r.rectified >= 0).all())


def test_rho_for_cifar100_lt_if100_is_of_the_published_order():
    c = 100
    counts = torch.tensor([int(500 * (1 / 100) ** (k / 99)) for k in range(c)])
    assert int(counts.sum()) == 10847  # docs/method-notes.md section 1
    omega = 20 / 255
    g = torch.Generator().manual_seed(0)
    pairs = [(0, 99), (0, 1), (50, 51), (98, 99), (10, 80)]
    area = torch.zeros(len(pairs), c)
    for i, (a, b) in enumerate(pairs):
        area[i, a] += 0.5
        area[i, b] += 0.5
    feats = torch.randn(len(pairs), 8, generator=g)
    protos = torch.randn(c, 8, generator=g)
    r = rectify_labels(area, feats, protos, counts, omega=omega, top_k=30)
    w = rectification_weight(r, omega)
    # Hand computation for the head/tail pair: log(252.5) / sum_c log N_c.
    log_total = sum(math.log(n) for n in counts.tolist())
    assert r.rho[0].item() == pytest.approx(math.log(0.5 * 500 + 0.5 * 5) / log_total, rel=1e-5)
    # "omega * rho is about 1e-3 on CIFAR-100-LT": every pair lands within 1e-4 .. 1e-2.
    assert bool(((w > 1e-4) & (w < 1e-2)).all())
    assert w[0].item() == pytest.approx(1.1e-3, rel=0.1)
    # The labels barely move: less than 1% of the mass changes.
    assert float((r.rectified - area).abs().sum(1).max()) < 0.02


@pytest.mark.parametrize(
    "kwargs",
    [dict(top_k=0, omega=0.1), dict(top_k=7, omega=0.1), dict(top_k=-1, omega=0.1),
     dict(top_k=2, omega=-0.1), dict(top_k=2, omega=float("nan"))],
)
def test_bad_arguments_raise(kwargs):
    area, feats, protos, counts = _random_case()
    with pytest.raises(ValueError, match="top_k|omega"):
        rectify_labels(area, feats, protos, counts, **kwargs)


def test_shape_mismatch_raises():
    area, feats, protos, counts = _random_case()
    with pytest.raises(ValueError):
        rectify_labels(area, feats[:3], protos, counts, omega=0.1, top_k=2)
    with pytest.raises(ValueError):
        rectify_labels(area, feats, protos[:4], counts, omega=0.1, top_k=2)
    with pytest.raises(ValueError):
        rectify_labels(area, feats, protos, counts[:4], omega=0.1, top_k=2)

"""CutMix (docs/method-notes.md, section 3): the `CutMix` object's decisions, boxes, masks, pasting,
exact lambda and area labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from concutmix_cli.mixing import CutMix, area_labels, box_masks, paste, sample_boxes


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_rand_bbox(lam: float, height: int, width: int, cy: int, cx: int) -> list[int]:
    """The reference's rand_bbox, written plainly: half side int(side * sqrt(1 - lam)) // 2,
    box [centre - half, centre + half) clipped to the image; returns (y0, y1, x0, x1)."""
    half_h = int(height * math.sqrt(1.0 - lam)) // 2
    half_w = int(width * math.sqrt(1.0 - lam)) // 2
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return [clip(cy - half_h, height), clip(cy + half_h, height), clip(cx - half_w, width), clip(cx + half_w, width)]


def test_boxes_follow_the_reference_arithmetic():
    h, w = 32, 48
    lam = torch.rand(2000, generator=_gen(1))
    boxes = sample_boxes(lam, h, w, generator=_gen(2))
    assert boxes.shape == (2000, 4) and boxes.dtype == torch.int64 and boxes.device.type == "cpu"
    # the centres are drawn rows first, then columns, from the generator
    g = _gen(2)
    cy = torch.randint(0, h, (2000,), generator=g)
    cx = torch.randint(0, w, (2000,), generator=g)
    expected = [reference_rand_bbox(float(lam[i]), h, w, int(cy[i]), int(cx[i])) for i in range(2000)]
    assert boxes.tolist() == expected
    y0, y1, x0, x1 = boxes.unbind(1)
    free_y = (y0 > 0) & (y1 < h)
    assert free_y.sum() > 100 and bool(((y1 - y0)[free_y] % 2 == 0).all())  # unclipped sides are even


def test_mean_exact_lambda_is_the_references():
    # Beta(1, 1) on 32x32, one box each: the reference's truncation gives a mean exact lambda of
    # about 0.700; rounding the side (round(side * sqrt(1 - lam))) would give about 0.678.
    n = 20000
    lam = torch.rand(n, generator=_gen(11))
    boxes = sample_boxes(lam, 32, 32, generator=_gen(12))
    exact = 1.0 - ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).double() / 1024
    assert abs(exact.mean().item() - 0.700) < 0.005
    g = _gen(12)
    cy, cx = torch.randint(0, 32, (n,), generator=g), torch.randint(0, 32, (n,), generator=g)
    side = torch.round(torch.sqrt(1.0 - lam.double()) * 32).long()
    rounded_h = (cy - side // 2 + side).clamp(0, 32) - (cy - side // 2).clamp(0, 32)
    rounded_w = (cx - side // 2 + side).clamp(0, 32) - (cx - side // 2).clamp(0, 32)
    assert abs((1.0 - (rounded_h * rounded_w).double() / 1024).mean().item() - 0.678) < 0.005


def test_box_size_for_known_lambda():
    # lam = 0.75 -> side 0.5 * image side; a centre in the middle never clips for 16x16 in 32x32.
    lam = torch.full((500,), 0.75)
    boxes = sample_boxes(lam, 32, 32, generator=_gen(3))
    sides = torch.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], 1)
    assert int(sides.max()) == 16
    # lam = 1: empty box; lam = 0: box covers everything it can (side = image side).
    empty = sample_boxes(torch.ones(10), 8, 8, generator=_gen(0))
    assert bool(((empty[:, 1] - empty[:, 0]) * (empty[:, 3] - empty[:, 2]) == 0).all())
    full = sample_boxes(torch.zeros(200), 8, 8, generator=_gen(0))
    centred = (full[:, 0] == 0) & (full[:, 1] == 8) & (full[:, 2] == 0) & (full[:, 3] == 8)
    assert bool(centred.any())  # centre (4, 4) gives the whole image


def test_box_centres_cover_the_image():
    # int(8 * sqrt(1 - lam)) = 2: half side 1, box [c - 1, c + 1); its last row/column is the centre.
    lam = torch.full((4000,), 1.0 - (2.0 / 8) ** 2)
    boxes = sample_boxes(lam, 8, 8, generator=_gen(5))
    assert bool(((boxes[:, 1] - boxes[:, 0]) <= 2).all())
    hits = torch.zeros(8, 8, dtype=torch.long)
    hits.index_put_((boxes[:, 1] - 1, boxes[:, 3] - 1), torch.ones(4000, dtype=torch.long), accumulate=True)
    assert int(hits.min()) > 0
    # Roughly uniform: each cell expects 62.5 hits.
    assert int(hits.max()) < 120


def test_box_masks_match_boxes():
    boxes = torch.tensor([[0, 2, 1, 3], [1, 4, 0, 4], [2, 2, 0, 4]])
    masks = box_masks(boxes, 4, 4)
    assert masks.shape == (3, 1, 4, 4) and masks.dtype == torch.bool
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        expected = torch.zeros(4, 4, dtype=torch.bool)
        expected[y0:y1, x0:x1] = True
        assert torch.equal(masks[i, 0], expected)


def test_paste_copies_inside_keeps_outside_and_lam_is_exact_area():
    g = _gen(7)
    n, c, h, w = 16, 3, 20, 28
    bg = torch.randn(n, c, h, w, generator=g)
    fg = torch.randn(n, c, h, w, generator=g)
    lam0 = torch.rand(n, generator=g)
    boxes = sample_boxes(lam0, h, w, generator=g)
    mixed, lam = paste(bg, fg, boxes)
    assert mixed.shape == bg.shape and mixed.dtype == bg.dtype
    assert lam.shape == (n,) and lam.dtype == torch.float32
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[i][:, inside], fg[i][:, inside])
        assert torch.equal(mixed[i][:, ~inside], bg[i][:, ~inside])
        remaining = (h * w - int(inside.sum())) / (h * w)
        assert float(lam[i]) == pytest.approx(remaining, abs=1e-7)
        assert 0.0 <= float(lam[i]) <= 1.0
    # Inputs untouched.
    assert not torch.equal(mixed, bg)


def test_paste_lam_differs_from_draw_when_clipped():
    # A box centred in a corner is clipped: the exact lambda is larger than the drawn one.
    boxes = torch.tensor([[0, 2, 0, 2]])  # what a side-4 box centred at (0, 0) clips to
    img = torch.zeros(1, 1, 4, 4)
    _, lam = paste(img, torch.ones_like(img), boxes)
    assert float(lam[0]) == pytest.approx(1 - 4 / 16)


def test_paste_uint8():
    bg = torch.zeros(2, 3, 6, 6, dtype=torch.uint8)
    fg = torch.full((2, 3, 6, 6), 255, dtype=torch.uint8)
    boxes = torch.tensor([[1, 3, 2, 5], [0, 6, 0, 6]])
    mixed, lam = paste(bg, fg, boxes)
    assert mixed.dtype == torch.uint8
    assert int(mixed[0].sum()) == 255 * 3 * 2 * 3
    assert bool((mixed[1] == 255).all())
    assert torch.allclose(lam, torch.tensor([1 - 6 / 36, 0.0]))


def test_paste_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        paste(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        paste(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, dtype=torch.long))


def test_area_labels_values_and_sums():
    a = torch.tensor([0, 2, 1, 3])
    b = torch.tensor([1, 2, 3, 0])
    lam = torch.tensor([0.25, 0.6, 1.0, 0.0])
    y = area_labels(a, b, lam, 4)
    expected = torch.tensor(
        [
            [0.25, 0.75, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],  # a == b: the class gets 1
            [0.0, 1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.allclose(y, expected)
    assert y[1, 2].item() == 1.0  # exactly
    assert torch.allclose(y.sum(1), torch.ones(4))
    assert y.dtype == torch.float32


def test_area_labels_from_paste_pipeline():
    g = _gen(11)
    n, h, w, classes = 64, 32, 32, 10
    a = torch.randint(0, classes, (n,), generator=g)
    b = torch.randint(0, classes, (n,), generator=g)
    boxes = sample_boxes(torch.rand(n, generator=g), h, w, generator=g)
    img = torch.zeros(n, 3, h, w)
    _, lam = paste(img, img + 1, boxes)
    y = area_labels(a, b, lam, classes)
    assert torch.allclose(y.sum(1), torch.ones(n), atol=1e-6)
    assert bool((y >= 0).all())
    diff = a != b
    assert torch.allclose(y[diff].gather(1, a[diff, None]).squeeze(1), lam[diff])


def _reference_decision(rng: np.random.Generator, prob: float, beta: float, size: int):
    """What one step's CutMix decision is, written plainly: mixed with probability prob, lambda
    ~ Beta(beta, beta) from numpy, then a seed for the box, whose centre (rows, then columns)
    comes from a torch Generator with that seed; the box is the reference's rand_bbox of lambda
    rounded to float32."""
    mixed = rng.random() < prob
    lam = rng.beta(beta, beta) if mixed else 1.0
    seed = int(rng.integers(0, 2**63 - 1))
    if not mixed:
        return None
    g = torch.Generator().manual_seed(seed)
    cy, cx = int(torch.randint(0, size, (1,), generator=g)), int(torch.randint(0, size, (1,), generator=g))
    return float(lam), reference_rand_bbox(float(np.float32(lam)), size, size, cy, cx)


@pytest.mark.parametrize("prob,beta,size", [(0.5, 1.0, 32), (1.0, 0.5, 224), (0.0, 1.0, 32)])
def test_decide_is_the_reference_draw(prob, beta, size):
    cutmix = CutMix(prob, beta, "balanced", size)
    mixed = 0
    for step in range(300):
        got = cutmix.decide(np.random.default_rng([7, step]))
        want = _reference_decision(np.random.default_rng([7, step]), prob, beta, size)
        if want is None:
            assert got is None
            continue
        mixed += 1
        assert got.lam == want[0] and got.box.tolist() == want[1] and got.box.dtype == torch.int64
    assert mixed == sum(np.random.default_rng([7, s]).random() < prob for s in range(300))


def test_decide_each_draws_one_mixed_decision_per_sample():
    rng = np.random.default_rng(3)
    decisions = CutMix(0.0, 1.0, "batch", 32).decide_each(50, rng)  # prob does not apply here
    assert len(decisions) == 50 and len({tuple(d.box.tolist()) for d in decisions}) > 40
    again = CutMix(0.0, 1.0, "batch", 32).decide_each(50, np.random.default_rng(3))
    assert [d.box.tolist() for d in again] == [d.box.tolist() for d in decisions]


def test_beta_shapes_lambda_as_beta_a_a():
    # Beta(a, a) has variance 1 / (4 (2a + 1)): 1/12 for a = 1, 1/8 for a = 0.5, 1/44 for a = 5.
    for beta, var in ((1.0, 1 / 12), (0.5, 1 / 8), (5.0, 1 / 44)):
        lam = np.array([d.lam for d in CutMix(1.0, beta, "batch", 32).decide_each(
            20000, np.random.default_rng(1))])
        assert abs(lam.mean() - 0.5) < 0.02 and ((lam >= 0) & (lam <= 1)).all()
        assert abs(lam.var() - var) < 0.1 * var


def test_foreground_batch_is_a_permutation_balanced_is_the_samplers_draw():
    background = np.arange(100, 116)
    fg = CutMix(1.0, 1.0, "batch", 32).pick_foreground(background, np.random.default_rng(4), None)
    assert sorted(fg.tolist()) == background.tolist()
    assert fg.tolist() == background[np.random.default_rng(4).permutation(16)].tolist()
    calls = []

    def draw(n, rng):
        calls.append(n)
        return np.full(n, 7)

    balanced = CutMix(1.0, 1.0, "balanced", 32)
    assert balanced.pick_foreground(background, np.random.default_rng(4), draw).tolist() == [7] * 16
    assert calls == [16]
    with pytest.raises(ValueError, match="sampler"):
        balanced.pick_foreground(background, np.random.default_rng(4), None)


def test_apply_one_box_for_the_batch_equals_pasting_it_into_each():
    g = _gen(5)
    bg, fg = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    box = torch.tensor([1, 5, 2, 8])
    mixed, lam = CutMix.apply(bg, fg, box)
    want_mixed, want_lam = paste(bg, fg, box.expand(6, 4))
    assert torch.equal(mixed, want_mixed) and torch.equal(lam, want_lam)
    assert torch.allclose(lam, torch.full((6,), 1 - 4 * 6 / 64))
    assert torch.equal(CutMix.targets(torch.tensor([0]), torch.tensor([1]), lam[:1], 2),
                       area_labels(torch.tensor([0]), torch.tensor([1]), lam[:1], 2))


def test_of_method_follows_the_method_row():
    from concutmix_cli.config import MethodConfig
    from concutmix_cli.methods import METHODS

    settings = MethodConfig(cutmix_prob=0.25, cutmix_beta=2.0)
    for row in METHODS.values():
        cutmix = CutMix.of_method(row, settings, 32)
        assert (cutmix is None) == (row.foreground is None), row.name
        if cutmix is not None:
            assert (cutmix.prob, cutmix.beta, cutmix.foreground, cutmix.size) == (
                0.25, 2.0, row.foreground, 32)


@pytest.mark.parametrize("args", [(1.5, 1.0, "batch", 32), (0.5, 0.0, "batch", 32),
                                  (0.5, float("nan"), "batch", 32), (0.5, 1.0, "other", 32),
                                  (0.5, 1.0, "batch", 0)])
def test_cutmix_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="CutMix"):
        CutMix(*args)

"""CutMix pieces (docs/method-notes.md, section 3): boxes, masks, pasting, exact lambda, area labels, lambda draws."""

from __future__ import annotations

import math

import pytest
import torch

from concutmix_cli.mixing import area_labels, box_masks, draw_lambda, paste, sample_boxes


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
    lam = draw_lambda(2000, 1.0, generator=_gen(1))
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
    lam = draw_lambda(n, 1.0, generator=_gen(11))
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
    lam0 = draw_lambda(n, 1.0, generator=g)
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
    boxes = sample_boxes(draw_lambda(n, 1.0, generator=g), h, w, generator=g)
    img = torch.zeros(n, 3, h, w)
    _, lam = paste(img, img + 1, boxes)
    y = area_labels(a, b, lam, classes)
    assert torch.allclose(y.sum(1), torch.ones(n), atol=1e-6)
    assert bool((y >= 0).all())
    diff = a != b
    assert torch.allclose(y[diff].gather(1, a[diff, None]).squeeze(1), lam[diff])


def test_reproducible_with_seeded_generator():
    def run(seed):
        g = _gen(seed)
        lam = draw_lambda(32, 1.0, generator=g)
        return lam, sample_boxes(lam, 32, 32, generator=g)

    lam1, boxes1 = run(123)
    lam2, boxes2 = run(123)
    lam3, boxes3 = run(124)
    assert torch.equal(lam1, lam2) and torch.equal(boxes1, boxes2)
    assert not torch.equal(lam1, lam3)


def test_non_uniform_beta_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = draw_lambda(100, 0.5, generator=_gen(9))
    b = draw_lambda(100, 0.5, generator=_gen(9))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw_lambda(100, 0.5, generator=_gen(10)))
    assert bool(((a >= 0) & (a <= 1)).all())


def test_beta_one_mean_and_spread():
    lam = draw_lambda(20000, 1.0, generator=_gen(42))
    assert lam.dtype == torch.float32 and lam.shape == (20000,)
    assert bool(((lam >= 0) & (lam < 1)).all())
    # Uniform(0,1): mean 0.5, std 1/sqrt(12); the standard error of the mean is ~0.002.
    assert abs(float(lam.mean()) - 0.5) < 0.01
    assert abs(float(lam.std()) - 1 / math.sqrt(12)) < 0.01


def test_beta_other_shape_has_right_variance():
    # Beta(a, a) has variance 1 / (4 (2a + 1)): 1/8 for a = 0.5 (U-shaped), 1/44 for a = 5.
    for beta, var in ((0.5, 1 / 8), (5.0, 1 / 44)):
        lam = draw_lambda(20000, beta, generator=_gen(1))
        assert abs(float(lam.mean()) - 0.5) < 0.02
        assert abs(float(lam.var()) - var) < 0.1 * var


def test_draw_lambda_rejects_bad_arguments():
    with pytest.raises(ValueError):
        draw_lambda(4, 0.0)
    with pytest.raises(ValueError):
        draw_lambda(4, float("nan"))
    with pytest.raises(ValueError):
        draw_lambda(-1, 1.0)
    assert draw_lambda(0, 1.0).shape == (0,)

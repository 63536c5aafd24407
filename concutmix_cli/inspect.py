"""What label rectification (docs/method-notes.md section 6) does to real mixed samples.

Three layers, so that notebooks and tests can stop at any of them:
- `draw_mixed_samples`: N CutMix samples made the way training makes them, through the very
  `mixing.CutMix` object training uses (the classification view of a background image A drawn
  uniformly from the training set, pasted with the box of a class-balanced foreground image B;
  one lambda and one box per batch of the run's batch size, as training draws them). With
  `per_sample_boxes` every sample gets its own lambda and box instead, so one dump shows a range
  of mixing ratios (an option, named so: training never does this). Depends only on (data,
  seed, views, beta, batch size or per-sample boxes).
- `inspect_labels`: the trained model in eval mode on those samples, then `rectify_labels`, the
  very function `train` calls; returns an `InspectResult` (no printing, no files).
- `inspect_run`: a trained run (or weights file) end to end: loads it and its data, checks the
  settings, inspects, and returns an `InspectReport` (rows, summary, notes) without printing;
  the `inspect-labels` command (cli.py) renders it and writes the dump, PNG grid and CSV.
"""

from __future__ import annotations

import csv as _csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from concutmix_cli import __version__
from concutmix_cli.data.prepared import PreparedData
from concutmix_cli.data.sampling import ClassBalancedSampler, counter_rng
from concutmix_cli.config import MAX_SEED
from concutmix_cli.errors import BadValue, UserError
from concutmix_cli.methods import method as method_of
from concutmix_cli.mixing import CutMix
from concutmix_cli.rectify import rectification_weight, rectify_labels

__all__ = [
    "DUMP_FORMAT",
    "GROUPS",
    "InspectResult",
    "MixedSamples",
    "draw_mixed_samples",
    "dump_bytes",
    "grid_png_bytes",
    "inspect_labels",
    "rows_csv_text",
    "InspectReport",
    "check_num",
    "inspect_run",
    "sample_rows",
    "summarize",
    "validate_settings",
]

DUMP_FORMAT = "concutmix-inspect/1"
GROUPS = ("many", "medium", "few")
"""Shot groups of the manifest (head = many, tail = few); a sample belongs to its class a's group."""

# Counter stream of the inspection draws; far from the training streams of data/sampling.py (1-5)
# so that an inspection with seed S never replays the draws of a training run with seed S.
_INSPECT_STREAM = 1001
_BACKGROUND, _FOREGROUND, _LAMBDA, _VIEWS = 0, 1, 2, 3

MAX_NUM = 4096
"""Samples drawn at once: they are held in memory (about 50 KB each for 32x32 CIFAR views with
the model's outputs); more is a typo or wants several --seed values."""
MAX_NUM_LARGE = 256
"""The same for 224x224 (ImageNet-like) views, 49 times larger."""
MAX_TILES = 256
"""Tiles of the --image grid (a larger PNG is too big to look at)."""

TILE_MIN_SIDE = 128
"""Images smaller than this are upscaled (nearest, integer factor) in the PNG grid."""
GRID_COLUMNS = 8
LAMBDA_PER_SAMPLE = "per sample: lam ~ Beta(cutmix_beta, cutmix_beta) and one box per sample"


# ----------------------------------------------------------------------------- drawing samples


@dataclass(frozen=True)
class MixedSamples:
    """N mixed classification views and where they came from (all on the CPU).

    images: [N, 3, H, W] float32, normalized with the data's mean/std (what the model sees);
    index_a / index_b: training-set indices of the background and foreground images;
    class_a / class_b: their classes (int64); lam: [N] exact fraction of A's pixels left;
    boxes: [N, 4] (y0, y1, x0, x1) half-open (the same row for every sample of a batch, unless
    drawn per sample).
    """

    images: torch.Tensor
    index_a: torch.Tensor
    index_b: torch.Tensor
    class_a: torch.Tensor
    class_b: torch.Tensor
    lam: torch.Tensor
    boxes: torch.Tensor


def _image_reader(data: PreparedData):
    """Training index -> PIL image, for in-memory arrays or list datasets."""
    split = data.train
    if split.images is not None:
        from PIL import Image

        return lambda index: Image.fromarray(split.images[index].numpy())
    from concutmix_cli.data.lists import ListImageDataset

    images = ListImageDataset(data.root, split.entries, transform=None)
    return lambda index: images[index][0]


def draw_mixed_samples(
    data: PreparedData, num: int, seed: int, views_kind: str = "cifar", cutmix_beta: float = 1.0,
    callbacks=None, *, batch_size: int = 128, per_sample_boxes: bool = False,
) -> MixedSamples:
    """Draw `num` CutMix samples from the training split, reproducibly from `seed`.

    A: uniform over the training images; B: class-balanced (`CutMix.pick_foreground` with a
    `ClassBalancedSampler`: a class uniformly, then one of its images); both images get the
    training classification view (`views.classification_view`) under torch's RNG seeded per
    sample (the global RNG is left untouched). The mix is `CutMix`'s, as in training: one
    decision (lambda ~ Beta(cutmix_beta, cutmix_beta) and a box) per `batch_size` samples, or one
    per sample with `per_sample_boxes`; `CutMix.apply` pastes B's box into A and recounts lam
    from the clipped box.
    """
    if batch_size < 1:
        raise BadValue(f"batch_size must be at least 1 (got {batch_size})", param="batch_size")
    from concutmix_cli.data.views import classification_view

    check_num(num, MAX_NUM if views_kind == "cifar" else MAX_NUM_LARGE)
    labels = np.asarray(data.train.labels, dtype=np.int64)
    if len(labels) == 0:
        raise UserError(f"{data.folder}: the training split is empty")
    index_a = counter_rng(seed, _INSPECT_STREAM, _BACKGROUND).integers(0, len(labels), size=num)
    side = data.view_side(views_kind)
    cutmix = CutMix(prob=1.0, beta=cutmix_beta, foreground="balanced", size=side)
    index_b = cutmix.pick_foreground(index_a, counter_rng(seed, _INSPECT_STREAM, _FOREGROUND),
                                     ClassBalancedSampler(labels).draw)
    view_seeds = counter_rng(seed, _INSPECT_STREAM, _VIEWS).integers(0, 2**63 - 1, size=num)

    read = _image_reader(data)
    view = classification_view(views_kind, data.mean, data.std, side)
    backgrounds, foregrounds = [], []
    triples = zip(index_a, index_b, view_seeds)
    if callbacks is not None:  # WorkProgress events; the caller draws them (or not)
        from concutmix_cli.events import counted, emitter

        triples = counted(triples, num, "drawing mixed samples", emitter(callbacks))
    with torch.random.fork_rng(devices=[]):
        for a, b, s in triples:
            torch.manual_seed(int(s))
            backgrounds.append(view(read(int(a))))
            foregrounds.append(view(read(int(b))))
    background = torch.stack(backgrounds)
    foreground = torch.stack(foregrounds)

    rng = counter_rng(seed, _INSPECT_STREAM, _LAMBDA)
    if per_sample_boxes:
        boxes = torch.stack([d.box for d in cutmix.decide_each(num, rng)])
    else:  # one decision per batch, as training draws it (prob 1: every batch is mixed here)
        batches = range(0, num, batch_size)
        boxes = torch.cat([cutmix.decide(rng).box.expand(min(batch_size, num - start), 4)
                           for start in batches])
    mixed, lam = CutMix.apply(background, foreground, boxes)
    index_a_t = torch.from_numpy(np.asarray(index_a, dtype=np.int64))
    index_b_t = torch.from_numpy(np.asarray(index_b, dtype=np.int64))
    label_t = torch.from_numpy(labels)
    return MixedSamples(
        images=mixed, index_a=index_a_t, index_b=index_b_t, class_a=label_t[index_a_t],
        class_b=label_t[index_b_t], lam=lam, boxes=boxes,
    )


# ----------------------------------------------------------------------------- model + rectification


@dataclass
class InspectResult:
    """Everything `inspect-labels` shows and saves; tensors are on the CPU, float32 unless noted.

    images [N,3,H,W] unnormalized 0..1; class_a, class_b, index_a, index_b [N] int64; lam [N];
    area_labels, semantic_labels, rectified_labels, probs [N,C]; features [N,D] (g(h) of the
    mixed image, before normalization); prototypes [C,D] (g'(W), before normalization);
    class_counts [C] (training counts); rho [N]; weight [N] = omega * rho as applied (capped at 1).
    """

    images: torch.Tensor
    class_a: torch.Tensor
    class_b: torch.Tensor
    index_a: torch.Tensor
    index_b: torch.Tensor
    lam: torch.Tensor
    area_labels: torch.Tensor
    features: torch.Tensor
    prototypes: torch.Tensor
    class_counts: torch.Tensor
    semantic_labels: torch.Tensor
    rho: torch.Tensor
    weight: torch.Tensor
    rectified_labels: torch.Tensor
    probs: torch.Tensor
    omega: float
    top_k: int
    seed: int
    classes: list[str]
    shot_groups: dict[str, list[int]]
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance filled in by `run_inspect`: source, epoch, data, ..."""

    @property
    def num(self) -> int:
        return int(self.class_a.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of the safetensors dump (contiguous, CPU)."""
        names = ("images", "class_a", "class_b", "index_a", "index_b", "lam", "area_labels",
                 "features", "prototypes", "class_counts", "semantic_labels", "rho",
                 "rectified_labels", "probs")
        return {name: getattr(self, name).detach().cpu().contiguous() for name in names}


def check_num(num: int, limit: int = MAX_NUM) -> None:
    """1 <= num <= limit (the samples are held in memory): the one check of `num`."""
    if num < 1:
        raise BadValue(f"num must be at least 1 (got {num})", param="num")
    if num > limit:
        raise BadValue(f"num {num:,} is more than the {limit:,} samples drawn at once (they are "
                       f"held in memory); use {limit} or less, and other seeds for more", param="num")


def validate_settings(omega: float, top_k: int, num_classes: int) -> None:
    """The checks training applies (top_k <= C, omega >= 0), as one-line errors."""
    if not (isinstance(omega, (int, float)) and math.isfinite(omega) and omega >= 0):
        raise BadValue(f"omega must be a finite number >= 0 (got {omega})", param="omega")
    if not 1 <= top_k <= num_classes:
        raise BadValue(f"top_k must be between 1 and the {num_classes} classes (got {top_k})",
                       param="top_k")


@torch.no_grad()
def inspect_labels(
    model: torch.nn.Module,
    data: PreparedData,
    num: int,
    seed: int,
    omega: float,
    top_k: int,
    device: torch.device | str = "cpu",
    *,
    views_kind: str = "cifar",
    cutmix_beta: float = 1.0,
    batch_size: int = 256,
    train_mode_prototypes: bool = False,
    callbacks=None,
    mix_batch_size: int = 128,
    per_sample_boxes: bool = False,
) -> InspectResult:
    """Draw `num` mixed samples, run `model` in eval mode, rectify their area labels.

    The model's projection g(h) of each mixed image and its prototypes g'(W) go into
    `rectify_labels` with the training counts of `data`, exactly as `train` calls it. In eval
    mode the prototype head's BatchNorm uses its running statistics; during training it
    normalizes the C weight rows with their own statistics. `train_mode_prototypes=True`
    computes the prototypes that way instead (on a copy of the head, so no running statistics
    change). The model's train/eval mode is restored afterwards. Forward passes run in float32,
    `batch_size` images at a time. `mix_batch_size` samples share one CutMix decision (the
    run's optim.batch_size: as training draws them), or each has its own with `per_sample_boxes`.
    """
    validate_settings(omega, top_k, data.num_classes)
    device = torch.device(device)
    samples = draw_mixed_samples(data, num, seed, views_kind, cutmix_beta, callbacks=callbacks,
                                 batch_size=mix_batch_size, per_sample_boxes=per_sample_boxes)
    num_classes = data.num_classes
    counts = torch.tensor(data.train_counts, dtype=torch.float32)

    was_training = model.training
    model.eval()
    try:
        features, logits = [], []
        for start in range(0, num, batch_size):
            chunk = samples.images[start : start + batch_size].to(device)
            out = model(chunk, project=True)
            features.append(out.projection.float().cpu())
            logits.append(out.logits.float().cpu())
        if train_mode_prototypes:
            import copy

            head = copy.deepcopy(model.prototype_head).train()
            prototypes = head(model.class_weights()).float().cpu()
        else:
            prototypes = model.prototypes().float().cpu()
    finally:
        model.train(was_training)
    features_t = torch.cat(features)
    probs = torch.cat(logits).softmax(dim=1)

    area = CutMix.targets(samples.class_a, samples.class_b, samples.lam, num_classes)
    rect = rectify_labels(area, features_t, prototypes, counts, omega, top_k)

    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, 3, 1, 1)
    images = (samples.images * std + mean).clamp_(0.0, 1.0)
    return InspectResult(
        images=images, class_a=samples.class_a, class_b=samples.class_b,
        index_a=samples.index_a, index_b=samples.index_b, lam=samples.lam.float(),
        area_labels=area.float(), features=features_t, prototypes=prototypes,
        class_counts=counts, semantic_labels=rect.semantic, rho=rect.rho,
        weight=rectification_weight(rect, omega), rectified_labels=rect.rectified, probs=probs,
        omega=float(omega), top_k=int(top_k), seed=int(seed), classes=list(data.classes),
        shot_groups={g: list(data.manifest.get("shot_groups", {}).get(g, [])) for g in GROUPS},
        meta={"lambda": LAMBDA_PER_SAMPLE if per_sample_boxes else
              f"per batch of {mix_batch_size}: one lam ~ Beta(cutmix_beta, cutmix_beta) and one "
              "box, as training draws them"},
    )


# ----------------------------------------------------------------------------- rows and summary


def _group_of(classes: int, shot_groups: dict[str, list[int]]) -> list[str | None]:
    lookup: list[str | None] = [None] * classes
    for name in GROUPS:
        for c in shot_groups.get(name, []):
            if 0 <= int(c) < classes:
                lookup[int(c)] = name
    return lookup


def sample_rows(result: InspectResult) -> list[dict[str, Any]]:
    """One dict per sample: the table's (and the CSV's) columns."""
    names = result.classes
    group = _group_of(len(names), result.shot_groups)
    sem_w, sem_c = result.semantic_labels.topk(min(3, len(names)), dim=1)
    change = (result.rectified_labels - result.area_labels).abs().max(dim=1).values
    pred_p, pred_c = result.probs.max(dim=1)
    rows = []
    for i in range(result.num):
        a, b = int(result.class_a[i]), int(result.class_b[i])
        lam = float(result.lam[i])
        row: dict[str, Any] = {
            "sample": i,
            "class_a": names[a],
            "lam": lam,
            "class_b": names[b],
            "one_minus_lam": 1.0 - lam,
            "group_a": group[a] or "",
        }
        for j in range(3):
            if j < sem_c.shape[1]:
                row[f"sem{j + 1}"] = names[int(sem_c[i, j])]
                row[f"sem{j + 1}_weight"] = float(sem_w[i, j])
            else:
                row[f"sem{j + 1}"], row[f"sem{j + 1}_weight"] = "", 0.0
        row.update({
            "omega_rho": float(result.weight[i]),
            "max_change": float(change[i]),
            "rect_a": float(result.rectified_labels[i, a]),
            "rect_b": float(result.rectified_labels[i, b]),
            "prediction": names[int(pred_c[i])],
            "prediction_prob": float(pred_p[i]),
            "index_a": int(result.index_a[i]),
            "index_b": int(result.index_b[i]),
        })
        rows.append(row)
    return rows


def _stats(mask: torch.Tensor, result: InspectResult, l1: torch.Tensor,
           top1: torch.Tensor) -> dict[str, Any]:
    n = int(mask.sum())
    if n == 0:
        return {"n": 0, "omega_rho_mean": None, "omega_rho_max": None, "l1_mean": None,
                "semantic_top1_a": None, "semantic_top1_b": None, "semantic_top1_neither": None}
    is_a = top1 == result.class_a
    is_b = (top1 == result.class_b) & ~is_a
    neither = ~(is_a | is_b)
    w = result.weight[mask]
    return {
        "n": n,
        "omega_rho_mean": float(w.mean()),
        "omega_rho_max": float(w.max()),
        "l1_mean": float(l1[mask].mean()),
        "semantic_top1_a": float(is_a[mask].float().mean()),
        "semantic_top1_b": float(is_b[mask].float().mean()),
        "semantic_top1_neither": float(neither[mask].float().mean()),
    }


def summarize(result: InspectResult) -> dict[str, Any]:
    """Mean/max omega*rho, mean L1 |rectified - area| and how often the semantic top-1 class is
    a, b (when not a) or neither; overall and per shot group of class a (many/medium/few)."""
    l1 = (result.rectified_labels - result.area_labels).abs().sum(dim=1)
    top1 = result.semantic_labels.argmax(dim=1)
    group = _group_of(len(result.classes), result.shot_groups)
    of_a = [group[int(a)] for a in result.class_a]
    summary: dict[str, Any] = {
        "num": result.num, "seed": result.seed, "omega": result.omega, "top_k": result.top_k,
        **{k: result.meta[k] for k in ("source", "epoch", "data") if k in result.meta},
        "all": _stats(torch.ones(result.num, dtype=torch.bool), result, l1, top1),
    }
    for name in GROUPS:
        mask = torch.tensor([g == name for g in of_a], dtype=torch.bool)
        summary[name] = _stats(mask, result, l1, top1)
    return summary


# ----------------------------------------------------------------------------- outputs


def dump_bytes(result: InspectResult) -> bytes:
    """The safetensors dump; metadata (strings): format, omega, top_k, epoch, source, ..."""
    from safetensors.torch import save

    meta = {
        "format": DUMP_FORMAT,
        "toolkit_version": __version__,
        "omega": repr(float(result.omega)),
        "top_k": str(int(result.top_k)),
        "seed": str(int(result.seed)),
        "epoch": json.dumps(result.meta.get("epoch")),
        "source": str(result.meta.get("source", "")),
        "data": str(result.meta.get("data", "")),
        "classes": json.dumps(result.classes),
        "shot_groups": json.dumps(result.shot_groups),
        "lambda": str(result.meta.get("lambda", "")),
    }
    for key in ("cutmix_beta", "train_omega", "train_top_k", "rectify_after_epoch"):
        if key in result.meta:
            meta[key] = json.dumps(result.meta[key])
    return save(result.tensors(), metadata=meta)


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def rows_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = list(rows[0].keys()) if rows else []
    writer = _csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "~", font=font) > width:
        text = text[:-1]
    return text + "~"


def grid_png_bytes(result: InspectResult, columns: int = GRID_COLUMNS) -> bytes:
    """A PNG grid of the mixed images, each captioned with class a / lam, class b / 1 - lam and
    the rectified weights of a and b. The PNG's text chunks record tiles, columns and the tile
    size (`tiles`, `columns`, `tile_width`, `tile_height`, `padding`)."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import make_grid

    images = result.images
    height, width = images.shape[-2:]
    scale = max(1, math.ceil(TILE_MIN_SIDE / max(height, width)))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    tile_w = images.shape[-1]
    font = _font(11)
    line_h, margin = 13, 2
    caption_h = 3 * line_h + 2 * margin
    names = result.classes
    tiles = []
    for i in range(result.num):
        a, b = int(result.class_a[i]), int(result.class_b[i])
        lam = float(result.lam[i])
        rect_a, rect_b = float(result.rectified_labels[i, a]), float(result.rectified_labels[i, b])
        lines = [  # (left text, right-aligned number)
            (f"a: {names[a]}", f"{lam:.2f}"),
            (f"b: {names[b]}", f"{1 - lam:.2f}"),
            ("rect:", f"a {rect_a:.3f}  b {rect_b:.3f}"),
        ]
        caption = Image.new("RGB", (tile_w, caption_h), "white")
        draw = ImageDraw.Draw(caption)
        for j, (left, right) in enumerate(lines):
            y = margin + j * line_h
            right_w = draw.textlength(right, font=font)
            draw.text((tile_w - margin - right_w, y), right, fill="black", font=font)
            room = int(tile_w - 3 * margin - right_w - 4)
            draw.text((margin, y), _fit(draw, left, font, room), fill="black", font=font)
        caption_t = pil_to_tensor(caption).float().div_(255)
        tiles.append(torch.cat([images[i].float(), caption_t], dim=1))
    padding = 4
    grid = make_grid(torch.stack(tiles), nrow=min(columns, result.num), padding=padding,
                     pad_value=0.6)
    info = PngInfo()
    for key, value in (("tiles", result.num), ("columns", min(columns, result.num)),
                       ("tile_width", tile_w), ("tile_height", images.shape[-2] + caption_h),
                       ("padding", padding), ("software", f"concutmix {__version__}")):
        info.add_text(key, str(value))
    buffer = io.BytesIO()
    to_pil_image(grid).save(buffer, format="PNG", pnginfo=info, optimize=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- a run, end to end


@dataclass(frozen=True)
class InspectReport:
    """`inspect_run`'s answer: the samples and labels, one row per sample, the per-group summary
    and notes on the run (trained before rectification, another method, other data)."""

    result: InspectResult
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    notes: list[str]


def inspect_run(
    run: Path | str,
    data: Path | str | None = None,
    num: int = 16,
    seed: int = 0,
    omega: float | None = None,
    top_k: int | None = None,
    device: str = "auto",
    *,
    callbacks=None,
    per_sample_boxes: bool = False,
) -> InspectReport:
    """Load a run folder or weights file (and its data, or `data`), draw `num` mixed samples with
    `seed` (one CutMix decision per batch of the run's optim.batch_size, as training draws them, or
    one per sample with `per_sample_boxes`), rectify them with the run's omega / top_k (or the
    ones given). Errors are `UserError`s naming the parameter."""
    from concutmix_cli.engine.evaluate import (
        check_data_matches, load_data_of, load_trained_model, resolve_weights,
    )
    from concutmix_cli.engine.runtime import resolve_device

    check_num(num)
    if not 0 <= seed <= MAX_SEED:
        raise BadValue(f"seed must be between 0 and {MAX_SEED} (got {seed})", param="seed")
    torch_device = resolve_device(device)
    weights = resolve_weights(Path(run))
    model, cfg, meta = load_trained_model(weights, torch_device)
    prepared, _ = load_data_of(weights, cfg, meta, Path(data) if data is not None else None)
    check_data_matches(meta, prepared)
    trained_classes = meta.get("classes")
    if isinstance(trained_classes, list) and list(trained_classes) != prepared.classes:
        raise UserError(
            f"the classes of {weights} differ from those of {prepared.folder} (same count, "
            "other names or order); pass the data the model was trained on"
        )
    omega_v = cfg.method.omega if omega is None else float(omega)
    top_k_v = cfg.method.top_k if top_k is None else int(top_k)
    validate_settings(omega_v, top_k_v, prepared.num_classes)

    result = inspect_labels(
        model, prepared, num, seed, omega_v, top_k_v, torch_device, views_kind=cfg.data.views,
        cutmix_beta=cfg.method.cutmix_beta, batch_size=cfg.data.eval_batch_size,
        callbacks=callbacks, mix_batch_size=cfg.optim.batch_size, per_sample_boxes=per_sample_boxes,
    )
    epoch = meta.get("epoch")
    result.meta.update({
        "source": str(weights), "epoch": epoch, "data": str(prepared.folder),
        "cutmix_beta": cfg.method.cutmix_beta, "train_omega": cfg.method.omega,
        "train_top_k": cfg.method.top_k, "rectify_after_epoch": cfg.method.rectify_after_epoch,
    })
    notes = []
    after = cfg.method.rectify_after_epoch
    method = method_of(cfg.method.name)
    # `epoch` epochs done = 0-based epochs 0..epoch-1; the first rectified one is after + 1
    if isinstance(epoch, int) and method.rectifies and not method.rectifies_in(cfg.method, epoch - 1):
        notes.append(f"these weights were saved after {epoch} epoch(s), before training used "
                     f"rectified labels (0-based epochs after {after}: method.rectify_after_epoch)")
    if not method.rectifies:
        notes.append(f"this run trained with method {cfg.method.name!r}, without rectification")
    if meta.get("data_checksum") and meta["data_checksum"] != prepared.manifest.get("checksum"):
        notes.append(f"{prepared.folder} is not the prepared folder the weights were trained on "
                     "(checksums differ); class counts are taken from it")
    return InspectReport(result, sample_rows(result), summarize(result), notes)

"""`concutmix predict`: the top-k classes of new images under a trained model, by class name.

Images are given as files, folders (every file with an image extension under them, sorted) or
list files (`.txt`: one image path a line, relative to the list's folder). Each image goes
through the run's own evaluation input transform (`views.input_transform` of the preprocessing
recorded in the weights), in batches, on CPU or GPU.
"""

from __future__ import annotations

import csv as _csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from concutmix_cli.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ImageFolder extensions: what a folder given to predict contributes."""
LIST_SUFFIXES = (".txt", ".lst")
MAX_TOP_K = 100
_SHOW = 3


@dataclass
class Predictions:
    """What `predict` found: one row per readable image (path, top-k classes with
    probabilities), the images left out as unreadable, and where the model came from."""

    rows: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: str = ""
    epoch: int | None = None
    top_k: int = 5


def collect_images(inputs: list[Path]) -> list[Path]:
    """The image files that `inputs` name, in order, each once."""
    found: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            for parent, dirs, files in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(parent) / f for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"list file {path}: cannot read ({err})") from None
            found += [Path(line.strip()) if os.path.isabs(line.strip())
                      else path.parent / line.strip() for line in lines if line.strip()]
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path}: not found (give image files, folders of images, or a "
                            f".txt list of image paths)")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no images found in {', '.join(str(i) for i in inputs)} (folders "
                        f"contribute files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return unique


class _Images(Dataset):
    """(input tensor, position, error) per image; an unreadable image gives its error text and a
    zero tensor, so one bad file does not stop a batch (the caller reports it)."""

    def __init__(self, paths: list[Path], transform, side: int):
        self.paths, self.transform, self.side = paths, transform, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        from concutmix_cli.data.own import decode

        try:
            return self.transform(decode(str(self.paths[index]))), index, ""
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return torch.zeros(3, self.side, self.side), index, " ".join(str(err).split()) or "unreadable"


def model_preprocess(meta: dict[str, Any], cfg, weights: Path) -> dict[str, Any]:
    """The preprocessing recorded with the weights; weights of older runs: their data's."""
    if meta.get("preprocess"):
        return meta["preprocess"]
    from concutmix_cli.data.prepared import load_prepared

    try:
        return load_prepared(Path(cfg.data.path), verify=False).preprocess(cfg.data.views)
    except UserError as err:
        raise UserError(f"{weights}: its metadata does not record the input preprocessing "
                        f"(trained before it was recorded) and its data is unavailable ({err})") from None


def predict_images(run_or_weights: Path, images: list[Path], *, top_k: int = 5,
                   batch_size: int = 64, device: str = "auto", num_workers: int = -1,
                   skip_bad: bool = False, callbacks=None) -> Predictions:
    """Top-k classes with softmax probabilities of each image (see the module docstring)."""
    from concutmix_cli.data.loader import default_num_workers
    from concutmix_cli.data.views import input_transform
    from concutmix_cli.data.workers import LOADER_TIMEOUT_S, guarded
    from concutmix_cli.engine.evaluate import load_trained_model, resolve_weights
    from concutmix_cli.engine.runtime import resolve_device

    if not 1 <= top_k <= MAX_TOP_K:
        raise UserError(f"--top-k must be between 1 and {MAX_TOP_K} (got {top_k})")
    if not 1 <= batch_size <= 4096:
        raise UserError(f"--batch-size must be between 1 and 4096 (got {batch_size})")
    paths = collect_images(images)
    torch_device = resolve_device(device)
    weights = resolve_weights(run_or_weights)
    model, cfg, meta = load_trained_model(weights, torch_device)
    model.eval()
    classes = [str(c) for c in meta.get("classes") or range(int(meta["num_classes"]))]
    top_k = min(top_k, len(classes))
    preprocess = model_preprocess(meta, cfg, weights)
    workers = default_num_workers(torch_device) if num_workers < 0 else num_workers
    workers = min(workers, max(0, len(paths) // batch_size))  # no processes for a few images
    loader = DataLoader(_Images(paths, input_transform(preprocess), int(preprocess["side"])),
                        batch_size=batch_size, num_workers=workers,
                        timeout=LOADER_TIMEOUT_S if workers else 0)
    batches = guarded(loader)
    if callbacks is not None:  # WorkProgress events; the caller draws them
        from concutmix_cli.events import counted, emitter

        batches = counted(batches, len(loader), "predicting", emitter(callbacks))
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with torch.no_grad():
        for x, positions, errors in batches:
            probs = model(x.to(torch_device), project=False).logits.float().softmax(dim=1).cpu()
            values, indices = probs.topk(top_k, dim=1)
            for i, position in enumerate(positions.tolist()):
                path = str(paths[position])
                if errors[i]:
                    skipped.append({"path": path, "reason": errors[i]})
                    continue
                rows.append({"path": path, "top": [
                    {"class": classes[c], "index": int(c), "probability": float(p)}
                    for p, c in zip(values[i].tolist(), indices[i].tolist())]})
    if skipped and not skip_bad:
        shown = ", ".join(f"'{s['path']}'" for s in skipped[:_SHOW])
        raise UserError(f"{len(skipped)} of {len(paths)} images are not readable ({shown}"
                        f"{', ...' if len(skipped) > _SHOW else ''}; first: "
                        f"{skipped[0]['reason']}); remove them or pass --skip-bad")
    return Predictions(rows, skipped, str(weights), meta.get("epoch"), top_k)


def predictions_json(result: Predictions) -> dict[str, Any]:
    return {"source": result.source, "epoch": result.epoch, "top_k": result.top_k,
            "predictions": result.rows, "skipped": result.skipped}


def predictions_csv(result: Predictions) -> str:
    """One row per image: path, then class_1, probability_1, ... class_k, probability_k."""
    buffer = io.StringIO()
    writer = _csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *[f"{what}_{r}" for r in range(1, result.top_k + 1)
                               for what in ("class", "probability")]])
    for row in result.rows:
        writer.writerow([row["path"], *[v for t in row["top"]
                                        for v in (t["class"], f"{t['probability']:.6f}")]])
    return buffer.getvalue()

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
import stat
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
    """The image files that `inputs` name, in order, each once: a file reached twice (a link
    loop in a folder, a link or a hard link to an image already found) is predicted once. Only
    folders are searched and only regular files are read as lists; anything else given is an
    image, which the decoder reports if it is none (a FIFO is never opened)."""
    from concutmix_cli.data.images import file_identity, shown_path, walk_files

    found: list[Path] = []
    seen: set[object] = set()

    def add(path: Path, identity: tuple[int, int] | None) -> None:
        key = identity if identity is not None else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for given in inputs:
        path = Path(given)
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            raise UserError(f"{shown_path(path)}: not found (give image files, folders of images, "
                            "or a .txt list of image paths)") from None
        if stat.S_ISDIR(mode):
            for file in walk_files(path):
                if file.path.name.lower().endswith(IMAGE_EXTENSIONS):
                    add(file.path, file.identity)
        elif path.suffix.lower() in LIST_SUFFIXES and stat.S_ISREG(mode):
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"list file {shown_path(path)}: cannot read "
                                f"({shown_path(str(err))})") from None
            for line in (line.strip() for line in lines):
                if line:
                    listed = Path(line) if os.path.isabs(line) else path.parent / line
                    add(listed, file_identity(listed))
        else:
            add(path, file_identity(path))
    if not found:
        raise UserError(f"no images found in {', '.join(shown_path(i) for i in inputs)} (folders "
                        f"contribute files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return found


class _Images(Dataset):
    """(input tensor, position, error) per image; an unreadable image gives its error text and a
    zero tensor, so one bad file does not stop a batch (the caller reports it). Decoding is
    `images.decode_rgb`: regular files only, 16-bit data scaled to 8 bits."""

    def __init__(self, paths: list[Path], transform, side: int):
        self.paths, self.transform, self.side = paths, transform, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from concutmix_cli.data.images import UnreadableImage, decode_rgb, reason_of

        try:
            return self.transform(decode_rgb(self.paths[index])), index, ""
        except (OSError, UnreadableImage) as err:
            return torch.zeros(3, self.side, self.side), index, reason_of(err)


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
    from concutmix_cli.data.images import shown_path
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
                path = shown_path(paths[position])  # undecodable name bytes escaped: printable
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
    return Predictions(rows, skipped, shown_path(weights), meta.get("epoch"), top_k)


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

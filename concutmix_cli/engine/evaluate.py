"""Predictions -> top-1 overall, many / medium / few, per-class accuracy and calibration (ECE),
and for imbalanced test sets (a user's own split) balanced accuracy, macro-F1 and per-class
precision / recall."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from concutmix_cli.errors import UserError

ECE_BINS = 15


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with `bins` equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / N."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    total = torch.zeros(bins, dtype=torch.float64)
    gap = torch.zeros(bins, dtype=torch.float64)
    total.index_add_(0, which, torch.ones_like(confidence, dtype=torch.float64))
    gap.index_add_(0, which, (correct - confidence).double())
    return float(gap.abs().sum() / max(len(labels), 1))


def accuracy_report(
    probs: torch.Tensor, labels: torch.Tensor, shot_groups: dict[str, list[int]]
) -> dict[str, Any]:
    """Metrics of softmax probabilities [N, C] against labels [N]; group accuracies average the
    per-class accuracies of the classes in the group (the usual LT protocol, equal to the sample
    average on balanced test sets).

    A sample whose probabilities are not finite (finite weights can still overflow) predicts no
    class: it counts as wrong, is left out of the ECE and is counted in `non_finite_outputs`, so
    the report stays valid JSON and says what happened."""
    num_classes = probs.shape[1]
    finite = torch.isfinite(probs).all(dim=1)
    predicted = torch.where(finite, probs.argmax(dim=1), torch.full_like(labels, -1))
    correct = (predicted == labels).double()
    per_class_hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, correct)
    per_class_n = torch.bincount(labels, minlength=num_classes).double()
    per_class = [
        None if n == 0 else float(h / n) for h, n in zip(per_class_hits.tolist(), per_class_n.tolist())
    ]
    per_class_predicted = torch.bincount(predicted[finite], minlength=num_classes).double()
    precision = [None if p == 0 else float(h / p)
                 for h, p in zip(per_class_hits.tolist(), per_class_predicted.tolist())]
    recalls = [r for r in per_class if r is not None]
    # F1_c = 2 TP / (2 TP + FP + FN) over the classes that occur or are predicted (scikit-learn's
    # macro average: a class predicted but absent, or present and never predicted, scores 0)
    f1_denominator = per_class_n + per_class_predicted  # 2 TP + FP + FN
    f1 = [2 * h / d for h, d in zip(per_class_hits.tolist(), f1_denominator.tolist()) if d > 0]

    def group(ids: Iterable[int]) -> float | None:
        values = [per_class[c] for c in ids if per_class[c] is not None]
        return sum(values) / len(values) if values else None

    return {
        "overall": float(correct.mean()) if len(labels) else None,
        "many": group(shot_groups.get("many", [])),
        "medium": group(shot_groups.get("medium", [])),
        "few": group(shot_groups.get("few", [])),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else None,
        "macro_f1": sum(f1) / len(f1) if f1 else None,
        "ece": (expected_calibration_error(probs[finite].float(), labels[finite])
                if bool(finite.any()) else None),
        "non_finite_outputs": int((~finite).sum()),
        "per_class": per_class,
        "per_class_precision": precision,
        "per_class_recall": per_class,
        "per_class_support": [int(n) for n in per_class_n.tolist()],
        "num_samples": int(len(labels)),
    }


@torch.no_grad()
def predict(model: torch.nn.Module, batches, device: torch.device, amp_dtype=None,
            channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (float32, CPU) and labels for every sample of `batches`."""
    was_training = model.training
    model.eval()
    all_probs, all_labels = [], []
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images, project=False).logits
        all_probs.append(logits.float().softmax(dim=1).cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    return torch.cat(all_probs), torch.cat(all_labels).long()


def _shard_batches(batches, which: range) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of `batches` (an EvalBatches) numbered in `which`, cut and normalized exactly
    as EvalBatches cuts them, without reading or decoding the other batches."""
    split, size = batches.split, batches.batch_size
    bounds = [(b * size, min((b + 1) * size, len(split))) for b in which]
    labels = torch.from_numpy(split.labels)
    if split.images is not None:
        for start, stop in bounds:
            x = split.images[start:stop].permute(0, 3, 1, 2).float().div_(255)
            yield (x - batches.mean) / batches.std, labels[start:stop]
        return
    from torch.utils.data import DataLoader

    from concutmix_cli.data.lists import ListImageDataset
    from concutmix_cli.data.workers import LOADER_TIMEOUT_S, guarded

    dataset = ListImageDataset(batches.data.root, split.entries, transform=batches.transform)
    yield from guarded(DataLoader(dataset, batch_sampler=[list(range(a, b)) for a, b in bounds],
                                  num_workers=batches.num_workers,
                                  pin_memory=batches.device.type == "cuda",
                                  timeout=LOADER_TIMEOUT_S if batches.num_workers > 0 else 0))


def predict_sharded(model: torch.nn.Module, batches, device: torch.device, ctx=None,
                    amp_dtype=None, channels_last: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` split over the processes of a torchrun job: rank r computes the evaluation
    batches r, r + G, ...; the predictions are gathered (padding dropped) and put back in the
    single-process order, so every rank holds exactly what one process computes alone.
    A single process (ctx None or world size 1) is `predict` itself."""
    from concutmix_cli.engine import distributed as dist_utils

    if ctx is None or not ctx.enabled:
        return predict(model, batches, device, amp_dtype, channels_last)
    total, size = len(batches.split), batches.batch_size
    sizes = [min(size, total - start) for start in range(0, total, size)]
    mine = dist_utils.shard_batches(len(sizes), ctx)
    if len(mine):
        probs, labels = predict(model, _shard_batches(batches, mine), device, amp_dtype,
                                channels_last)
    else:  # fewer batches than processes: this rank only takes part in the gather
        probs = torch.zeros(0, batches.data.num_classes)
        labels = torch.zeros(0, dtype=torch.long)
    probs = dist_utils.gather_batches(probs, sizes, ctx)
    labels = dist_utils.gather_batches(labels, sizes, ctx)
    return probs, labels


def resolve_weights(run_or_weights: Path) -> Path:
    """A run folder means its last.safetensors; a file is taken as it is."""
    path = Path(run_or_weights)
    if path.is_dir():
        weights = path / "last.safetensors"
        if not weights.is_file():
            raise UserError(f"{path} has no trained model (last.safetensors); train it first")
        return weights
    if not path.exists():
        raise UserError(f"not found: {path} (give a run folder or a .safetensors weights file)")
    return path


def load_trained_model(weights_path: Path, device: torch.device):
    """Rebuild the model from a weights file's own metadata and load the weights."""
    from concutmix_cli.config import saved_config
    from concutmix_cli.engine.checkpoint import read_weights
    from concutmix_cli.models.build import build_model

    tensors, meta = read_weights(weights_path)
    if "config" not in meta or "num_classes" not in meta:
        raise UserError(f"{weights_path}: weights metadata lacks the config; not a run's weights")
    cfg = saved_config(meta["config"], origin=f"{weights_path} metadata")
    model = build_model(cfg.model, int(meta["num_classes"]))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # shape mismatches: metadata and tensors disagree
        first = str(err).strip().splitlines()[-1].strip()
        raise UserError(
            f"{weights_path}: weights do not fit the {cfg.model.arch} its metadata describes ({first})"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"{weights_path}: weights do not match a {cfg.model.arch} with {meta['num_classes']} "
            f"classes ({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    return model.to(device), cfg, meta


def check_data_matches(meta: dict[str, Any], data) -> None:
    if int(meta["num_classes"]) != data.num_classes:
        raise UserError(
            f"the weights have {meta['num_classes']} classes but {data.folder} has "
            f"{data.num_classes}; pass the --data the model was trained on"
        )


def load_data_of(weights: Path, cfg, meta: dict[str, Any], data: Path | None):
    """The prepared data to evaluate trained weights on: `data` if given, else the folder the run
    trained on (an error that says it moved when it is gone). Returns (data, note): the note says
    when the data is not the one the weights were trained on (manifest checksums differ)."""
    from concutmix_cli.data.prepared import load_prepared
    from concutmix_cli.engine import resume

    if data is None:
        resume.check_run_data(cfg.data.path, f"the metadata of {weights}", meta.get("data_checksum"))
    prepared = load_prepared(Path(data) if data is not None else Path(cfg.data.path))
    return prepared, resume.other_data_note(meta.get("data_checksum"),
                                            prepared.manifest.get("checksum"), prepared.folder)


@dataclass
class RunPredictions:
    """A trained model's softmax outputs on a split, with what they came from."""

    probs: torch.Tensor
    """[N, C] float32."""
    labels: torch.Tensor
    data: Any
    """The PreparedData predicted on (its manifest has the training counts and shot groups)."""
    weights: Path
    meta: dict[str, Any]
    split: str
    note: str | None
    """Set when the data is not the one the weights were trained on."""


def predict_run(run_or_weights: Path, data: Path | None = None, split: str = "test",
                device: str = "auto", callbacks=None) -> RunPredictions:
    """Load trained weights and their data and predict `split`; `callbacks` receive a
    `WorkProgress` event per batch (the library draws nothing itself)."""
    from concutmix_cli.data.loader import EvalBatches
    from concutmix_cli.engine.runtime import resolve_device
    from concutmix_cli.events import counted, emitter

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val (got {split!r})")
    torch_device = resolve_device(device)
    weights = resolve_weights(run_or_weights)
    model, cfg, meta = load_trained_model(weights, torch_device)
    prepared, note = load_data_of(weights, cfg, meta, data)
    check_data_matches(meta, prepared)
    batches = EvalBatches(prepared, split, cfg.data.views, cfg.data.eval_batch_size, torch_device)
    steps = -(-len(batches) // batches.batch_size)
    probs, labels = predict(model, counted(batches, steps, f"eval {split}", emitter(callbacks)),
                            torch_device)
    return RunPredictions(probs, labels, prepared, weights, meta, split, note)


def evaluate_run(run_or_weights: Path, data: Path | None = None, split: str = "test",
                 device: str = "auto", callbacks=None) -> dict[str, Any]:
    return report_of(predict_run(run_or_weights, data, split, device, callbacks))


def report_of(found: RunPredictions) -> dict[str, Any]:
    """The `eval` report of a run's predictions."""
    report = accuracy_report(found.probs, found.labels, found.data.manifest["shot_groups"])
    report.update({"split": found.split, "source": str(found.weights),
                   "epoch": found.meta.get("epoch"), "data": str(found.data.folder),
                   "classes": found.data.classes, "notes": [found.note] if found.note else []})
    note = non_finite_note(report, found.split)
    if note:
        report["notes"].append(note)
    return report


def non_finite_note(report: dict[str, Any], split: str) -> str | None:
    """What `eval` and training say when some of a split's outputs were not finite; None if none."""
    n = report["non_finite_outputs"]
    return None if not n else (f"{n} of {report['num_samples']} {split} images gave non-finite "
                               "outputs (overflow): counted as wrong, left out of the ECE")

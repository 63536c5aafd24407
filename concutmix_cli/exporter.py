"""`concutmix export`: a trained classifier as TorchScript or ONNX, checked by loading it back.

The exported model is backbone + classifier (linear or cosine) with the evaluation normalization
inside: input `image`, float32 [N, 3, S, S] RGB in [0, 1] already resized as the run's
evaluation does (S and the resize in the file's metadata, `views.input_transform`), output
`logits` [N, C] (softmax for probabilities). The projection and prototype heads are training
only and left out. After writing, the file is loaded back and its logits compared with the
original model's on a few random inputs (two batch sizes: the batch axis is dynamic), within
`TOLERANCE` of the logits' scale.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import atomic_write_bytes

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4
"""Largest logit difference accepted between the exported and the original model, relative to
the logits' scale max(1, max |logit|): absolute for logits up to 1, and float32 rounding of
other kernels (ONNX Runtime's convolutions) on the 100s that untrained networks give."""
CHECK_BATCHES = (2, 3)
METADATA_NAME = "concutmix.json"


class Classifier(nn.Module):
    """normalize -> backbone -> classifier: the deployable part of a `ConCutMixNet`."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = net.backbone
        self.classifier = net.classifier
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone((image - self.mean) / self.std))


@dataclass
class ExportResult:
    out: Path
    format: str
    max_difference: float | None
    """Largest |logit difference| of the loaded-back file (None: not checked)."""
    checked_with: str | None
    note: str | None = None


def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("--format onnx needs the optional extra 'onnx' (onnx, onnxscript, "
                        "onnxruntime): pip install 'concutmix[onnx]'") from None


def _torchscript_bytes(module: nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, buffer, _extra_files={METADATA_NAME: metadata})
    return buffer.getvalue()


def _onnx_bytes(module: nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    _onnx_modules()
    import onnx

    with tempfile.TemporaryDirectory(prefix="concutmix-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), path, input_names=["image"],
                              output_names=["logits"], external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, metadata
    return model.SerializeToString()


def _check(fmt: str, data: bytes, module: nn.Module, side: int) -> tuple[float | None, str | None, str | None]:
    """(max |difference| / max(1, max |logit|), what loaded it, a note when it was not checked)."""
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(n, 3, side, side, generator=gen) for n in CHECK_BATCHES]
    with torch.no_grad():
        expected = [module(x) for x in inputs]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        with torch.no_grad():
            got = [loaded(x) for x in inputs]
        checker = "torch.jit.load"
    else:
        try:
            import onnxruntime
        except ImportError:
            return None, None, ("not checked: onnxruntime is not installed (pip install "
                                "'concutmix[onnx]' to run the exported model back)")
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = [torch.from_numpy(session.run(None, {"image": x.numpy()})[0]) for x in inputs]
        checker = f"onnxruntime {onnxruntime.__version__}"
    scale = max(1.0, max(float(e.abs().max()) for e in expected))
    return max(float((g - e).abs().max()) for g, e in zip(got, expected)) / scale, checker, None


def export_model(run_or_weights: Path, fmt: str, out: Path, *, force: bool = False) -> ExportResult:
    """Write the classifier of `run_or_weights` to `out` in `fmt`, then load it back and compare
    logits; a difference above `TOLERANCE` is an error and nothing is left at `out`. `out` is
    checked first (outputs.check_outputs): never the run's files, the weights or a dataset's, and
    an existing file only with `force`."""
    from concutmix_cli.engine.evaluate import load_trained_model, resolve_weights
    from concutmix_cli.inference import model_preprocess
    from concutmix_cli.outputs import check_outputs, run_inputs

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    weights = resolve_weights(run_or_weights)
    inputs = run_inputs(run_or_weights)
    inputs["reads"].append(weights)  # a run folder's last.safetensors
    out = check_outputs({"out": out}, force=force, **inputs)["out"]
    net, cfg, meta = load_trained_model(weights, torch.device("cpu"))
    preprocess = model_preprocess(meta, cfg, weights)
    module = Classifier(net, preprocess["mean"], preprocess["std"]).eval()
    side = int(preprocess["side"])
    example = torch.rand(CHECK_BATCHES[0], 3, side, side, generator=torch.Generator().manual_seed(1))
    info: dict[str, Any] = {
        "input": f"image: float32 [N, 3, {side}, {side}] RGB in [0, 1], normalization inside",
        "output": "logits [N, C]", "classes": meta.get("classes"), "preprocess": preprocess,
        "source": str(weights), "epoch": meta.get("epoch"), "arch": cfg.model.arch,
    }
    metadata = json.dumps(info, ensure_ascii=False)
    data = (_torchscript_bytes if fmt == "torchscript" else _onnx_bytes)(module, example, metadata)
    difference, checker, note = _check(fmt, data, module, side)
    if difference is not None and difference > TOLERANCE:
        raise UserError(f"the exported {fmt} model's logits differ from the original's by "
                        f"{difference:.2e} of their scale (more than {TOLERANCE:g}); nothing "
                        f"written to {out}")
    atomic_write_bytes(Path(out), data)
    return ExportResult(Path(out), fmt, difference, checker, note)

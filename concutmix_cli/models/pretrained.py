"""Backbones initialized from ImageNet weights (`model.pretrained`, docs/own-data.md).

`"torchvision"`: torchvision's own weights API (`get_model_weights(arch).DEFAULT`), which
downloads into the torch hub cache on a machine that can. A path: a local state dict (`.pth`,
`.pt`, `torch.load(weights_only=True)`) or `.safetensors` file, the offline route. Either way the
keys are checked against the backbone and every mismatch is named in one line; only the
backbone is initialized (the classifier and both heads keep their fresh initialization, the
ImageNet classifier `fc.*` is left out).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from concutmix_cli.errors import UserError

TORCHVISION = "torchvision"
_SHOW = 3
"""How many names of each kind of mismatch one error message shows."""


def _names(items: list[str]) -> str:
    return ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")


def torchvision_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The default ImageNet weights of torchvision's `arch` and their name (downloads once)."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(arch).DEFAULT
    except ValueError:
        raise UserError(f"model.pretrained = 'torchvision': torchvision has no weights for "
                        f"model.arch = {arch!r}; use resnet50 or resnext50_32x4d, or a local "
                        f"state-dict file") from None
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # offline, proxy, a damaged download (hash check)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"model.pretrained = 'torchvision': could not get {weights} ({err}); on a machine "
            f"without network, download {weights.url} elsewhere and set model.pretrained to the "
            f"file's path (or put it into {cache})") from None
    return state, str(weights)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A local state dict: safetensors, or a torch file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.pretrained {path}: file not found (give 'torchvision' or the "
                        f"path of a state-dict or .safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.pretrained {path}: not a readable state dict ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that wraps its weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.pretrained {path}: not a state dict (a mapping of names to "
                        f"tensors)")
    return state


def backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a state dict: without DDP's `module.` prefix, the `backbone.`
    part of a whole ConCutMix model, and without torchvision's ImageNet classifier `fc.*`."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy `state` into `backbone`, refusing any missing, unexpected or wrongly shaped tensor."""
    own = backbone.state_dict()
    given = backbone_keys(state)
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {list(given[k].shape)} vs {list(v.shape)}" for k, v in own.items()
              if k in given and given[k].shape != v.shape]
    problems = [f"{len(items)} {kind} ({_names(items)})" for kind, items in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if items]
    if problems:
        raise UserError(f"{what} does not fit the backbone: {'; '.join(problems)} of "
                        f"{len(own)} tensors; use weights of the same model.arch")
    with torch.no_grad():
        backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in given.items()})


def init_pretrained(backbone: nn.Module, arch: str, spec: str) -> str:
    """Initialize `backbone` from `spec` ('torchvision' or a file path); returns what was loaded."""
    if spec == TORCHVISION:
        state, name = torchvision_state_dict(arch)
        load_backbone(backbone, state, f"model.pretrained = 'torchvision' ({name})")
        return f"torchvision {name}"
    path = Path(spec).expanduser()
    load_backbone(backbone, read_state_dict(path), f"model.pretrained {path}")
    return str(path)

"""The run configuration: pydantic models, TOML presets and `--set section.key=value` overrides.

One source of truth: a preset (TOML) loads into `Config`, command-line options and `--set`
overrides go on top, and the resolved `Config` is what a run saves in `config.json` and in the
metadata of every weights file. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import json
import tomllib  # Python >= 3.11 (pyproject.toml: requires-python)
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from concutmix_cli.errors import UserError
from concutmix_cli.fileio import json_text
from concutmix_cli.methods import MethodName
from concutmix_cli.methods import method as method_of

# Upper bounds of counts and sizes: far above any real run, low enough that a typo (an extra
# zero, a seed of 1e300) is refused at once instead of exhausting memory or processes.
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence take it; negatives they do not
MAX_WORKERS = 256
MAX_BATCH = 1 << 20
MAX_WIDTH = 1 << 16
MAX_EPOCHS = 100_000
MAX_EPOCH_STEPS = 1 << 24


class _Section(BaseModel):
    # allow_inf_nan=False: `--set optim.lr=inf` or `nan` in a preset is refused with the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the prepared data is and how training views are made."""

    path: str = "data/synthetic-lt-if100"
    """A folder written by `concutmix prepare` (holds manifest.json)."""
    views: Literal["cifar", "imagenet"] = "cifar"
    """Augmentation recipe of docs/method-notes.md section 2: 32x32 CIFAR views or 224x224 ImageNet-like views."""
    augment_on: Literal["auto", "loader", "device"] = "auto"
    """`loader`: torchvision transforms on PIL images in DataLoader workers; `device`: batched on the
    training device (in-memory data with CIFAR views only); `auto`: device where it applies, else
    loader (the two paths reach the same accuracy, docs/benchmarks.md section 4; the device path
    measured faster on CPU and GPU alike)."""
    num_workers: int = Field(-1, ge=-1, le=MAX_WORKERS)
    """DataLoader worker processes; -1 picks from the machine (CPU count, capped)."""
    prefetch: bool = False
    """Device path only: make the next step's views (the next chunk's, see `epoch_views`) in a
    background thread while this step trains (identical batches). Meant for CUDA, where the views are bound by the CPU launching small
    kernels and could overlap with the backward pass; not yet measured on a GPU, so off by default
    (the GPU window of benchmarks/gpu_window.sh measures both). On CPU it only shares the same cores."""
    epoch_views: Literal["auto", "off", "epoch"] | Annotated[int, Field(ge=1, le=MAX_EPOCH_STEPS)] = "auto"
    """Device path only: how many steps' views are made together, one batched pass per kind of
    view and one host-to-device copy of the indices and boxes per chunk (identical batches: every
    step still draws from its own generator). `off`: each step on its own; an integer K: chunks of
    K steps; `epoch`: the whole epoch at once; `auto`: on CUDA as many steps as fit a quarter of
    the free device memory (the whole CIFAR epoch on any recent card), `off` on CPU, where one
    big pass is no faster and only holds more memory (docs/benchmarks.md). With `prefetch` the
    next chunk is made during this one's steps (moot for a whole-epoch chunk)."""
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH)


class ModelConfig(_Section):
    arch: Literal["resnet8", "resnet32", "resnet50", "resnext50_32x4d"] = "resnet32"
    """resnet8 (one block per stage) is for the quick-start preset; resnet32 for CIFAR."""
    classifier: Literal["linear", "cosine"] = "linear"
    """`linear`: logits = W h + b, what the authors' published CIFAR runs used (no `--use_norm`);
    `cosine`: logits = s * normalize(h) @ normalize(W), their ImageNet-LT / iNaturalist runs.
    The class prototypes are g' of each class's weight vector either way (docs/method-notes.md)."""
    cosine_scale: float = Field(30.0, gt=0)
    """s of the cosine classifier (unused by the linear one)."""
    proj_hidden: int = Field(512, ge=1, le=MAX_WIDTH)
    proj_dim: int = Field(128, ge=1, le=MAX_WIDTH)
    sync_batchnorm: bool = False
    """Convert BatchNorm to SyncBatchNorm under torchrun (DDP)."""
    pretrained: str = ""
    """Initialize the backbone at the start of a run: "" (random, Kaiming-normal), "torchvision"
    (torchvision's default ImageNet weights, downloaded into the torch hub cache) or the path of
    a local state-dict / .safetensors file (keys checked). models/pretrained.py."""


class OptimConfig(_Section):
    epochs: int = Field(200, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    """Global batch size: under torchrun each of the G processes takes batch_size / G."""
    lr: float = Field(0.15, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    warmup_epochs: int = Field(5, ge=0)
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[int] = [160, 180]
    gamma: float = Field(0.1, gt=0)
    accumulate: int = Field(1, ge=1)
    """Gradient accumulation: optimizer step every `accumulate` batches."""
    drop_last: bool = False
    """Drop the last partial batch of an epoch. The published runs keep it (43 steps an epoch on
    CIFAR-100-LT IF 100, the last one of 95 images); under torchrun it is trimmed to a multiple of
    the process count so that every process takes the same number of images."""


class MethodConfig(_Section):
    """The training method and its terms (docs/method-notes.md sections 3, 5 and 6)."""

    name: MethodName = "concutmix"
    alpha: float = Field(2.0, ge=0)
    """Weight of the classification loss."""
    beta: float = Field(0.6, ge=0)
    """Weight of the balanced contrastive loss."""
    temperature: float = Field(0.1, gt=0)
    tau: float = Field(0.9, ge=0)
    """Logit adjustment strength (used by bcl and concutmix; ce and cutmix train on raw logits)."""
    cutmix_prob: float = Field(0.5, ge=0, le=1)
    cutmix_beta: float = Field(1.0, gt=0)
    """lambda ~ Beta(cutmix_beta, cutmix_beta)."""
    omega: float = Field(20 / 255, ge=0)
    top_k: int = Field(30, ge=1)
    rectify_after_epoch: int = Field(100, ge=-1, le=MAX_EPOCHS)
    """E_r: mixed batches are rectified in the 0-based epochs AFTER this one (epoch > E_r, as the
    reference code tests it), so epochs 0..E_r use the lambda-weighted loss of the two labels;
    -1 rectifies from the first epoch."""


StepMode = Literal["auto", "eager", "sync_free", "graphed"]
STEP_MODES: tuple[str, ...] = get_args(StepMode)
"""runtime.step's values, for the scripts' --step choices (RuntimeConfig.step says what each does)."""


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    deterministic: bool = False
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA cards that support it, fp16 with a grad scaler on older cards, fp32 on CPU."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Memory format of the model and its inputs. auto: on where it measured faster or is the
    known fast path (CPU: about 1.5x on the 2-core development machine, docs/benchmarks.md; CUDA
    under bf16/fp16 autocast: cuDNN's NHWC tensor-core kernels), off on CUDA in fp32."""
    keep: int = Field(1, ge=1)
    """How many epoch checkpoints to keep besides last.safetensors."""
    max_bad_steps: int = Field(0, ge=0)
    """Non-finite losses to skip (batch dropped) before the run stops; 0 stops at the first."""
    max_steps_per_epoch: int = Field(0, ge=0)
    """Cap on steps per epoch (0 = the whole epoch); for smoke runs and benchmarks."""
    step: StepMode = "auto"
    """How a training step runs (engine/steps.py). eager: checks each loss on the host and
    reports a bad step at once. sync_free: the same arithmetic with no host sync (a non-finite
    step is skipped on the device by the fused SGD and counted; read every few steps). graphed:
    sync_free captured in one CUDA graph per step variant (CUDA only). Both need one process, no
    gradient accumulation and no fp16 grad scaler. auto: eager everywhere until the GPU check
    (benchmarks/gpu_window.sh) has measured the other two on a card."""
    tensorboard: bool = False
    """Also write TensorBoard scalars into RUN/tensorboard (the `tensorboard` extra)."""


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    method: MethodConfig = MethodConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    preset: str = "custom"
    """The name of the preset this config came from (informational)."""
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """What resolving this config noticed for the user (settings of the preset that the
        chosen method ignores); `train` says them once. Not saved."""
        return self._notes

    @model_validator(mode="after")
    def _check_consistency(self) -> "Config":
        if method_of(self.method.name).contrast and self.optim.batch_size < 2:
            raise ValueError(
                f"optim.batch_size must be at least 2 for the contrastive loss of "
                f"{self.method.name} (got {self.optim.batch_size}); use --batch-size 2 or more"
            )
        return self

    def to_json(self) -> str:
        return json_text(self.model_dump(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- presets


def _packaged_presets_dir() -> Path | None:
    try:
        root = resources.files("concutmix_cli.presets")
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(root))
    return path if path.is_dir() else None


def presets_dir() -> Path:
    """The folder of shipped presets: the installed package's, else the checkout's `presets/`."""
    packaged = _packaged_presets_dir()
    if packaged is not None and any(packaged.glob("*.toml")):
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def resolve_preset(name_or_path: str) -> Path:
    """A preset by name (`cifar100-lt-if100`) or by path to a TOML file."""
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml" or as_path.exists():
        if not as_path.is_file():
            raise UserError(f"preset file not found: {name_or_path}")
        return as_path
    candidate = presets_dir() / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise UserError(
            f"unknown preset '{name_or_path}'; shipped presets: {', '.join(list_presets())}"
        )
    return candidate


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key `loc` was found (for the error message)."""
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(
                field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def _format_validation_error(err: ValidationError, origin: str,
                             sources: dict[str, str] | None = None) -> str:
    errors = err.errors()
    first = errors[0]
    loc = first["loc"]
    # a union field (e.g. "auto" | an int) fails once per member, each loc ending in the
    # member's tag: name the field, and say what each member wanted
    members = [e for e in errors if len(loc) > 1 and e["loc"][:-1] == loc[:-1]
               and isinstance(e["loc"][-1], str) and not e["loc"][-1].isidentifier()]
    if len(members) > 1 and not isinstance(loc[-1], int) and not loc[-1].isidentifier():
        loc = loc[:-1]
        first = {**first, "msg": "; or ".join(e["msg"] for e in members)}
    key = ".".join(str(p) for p in loc)
    kind = first["type"]
    sources = sources or {}
    where = sources.get(key) or next(
        (v for k, v in sources.items() if key and k.startswith(key + ".")), origin)
    if not key:  # a check across sections (model validator): its message names the keys
        return f"config: {first.get('ctx', {}).get('error') or first['msg']}"
    if kind == "extra_forbidden":
        known = _known_keys(first["loc"])
        hint = f"; known keys here: {', '.join(known)}" if known else ""
        return f"{where}: unknown key '{key}'{hint}"
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a table"
    return f"{where}: bad value for '{key}' ({shown}): {first['msg']}"


def upgrade_saved_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config saved by older code (a run's config.json or a weights file's metadata),
    rewritten with the current names so that it means what it meant when it was saved.

    Configs saved before the linear classifier existed (before the recipe fidelity fixes of
    issue 11) have no `model.classifier` key (their classifier was always the cosine one), name
    E_r `method.rectify_start_epoch` (the first rectified epoch: `rectify_after_epoch` is one
    less) and dropped the last partial batch. A saved config holds every key, so a missing
    `model.classifier` marks such a config; a current config passes through unchanged.
    """
    raw = json.loads(json.dumps(raw))
    runtime = raw.get("runtime")
    if isinstance(runtime, dict):  # `runtime.compile`: in older configs, never used; dropped
        runtime.pop("compile", None)
    model = raw.get("model")
    if isinstance(model, dict) and "classifier" not in model:
        model["classifier"] = "cosine"
        optim = raw.setdefault("optim", {})
        if isinstance(optim, dict):
            optim.setdefault("drop_last", True)
    method = raw.get("method")
    if isinstance(method, dict) and "rectify_start_epoch" in method:
        start = method.pop("rectify_start_epoch")
        if isinstance(start, int) and not isinstance(start, bool):
            method.setdefault("rectify_after_epoch", start - 1)
    return raw


def saved_config(raw: dict[str, Any], origin: str) -> Config:
    """Validate a config that a run saved (any toolkit version)."""
    return config_from_dict(upgrade_saved_config(raw), origin=origin)


def config_from_dict(raw: dict[str, Any], origin: str = "config",
                     sources: dict[str, str] | None = None) -> Config:
    """Validate a raw config; errors name the key and where its value came from (`sources`:
    dotted key -> origin, for command-line values)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, origin, sources)) from None


def load_preset_dict(name_or_path: str) -> dict[str, Any]:
    path = resolve_preset(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"preset {path}: not valid TOML ({err})") from None
    except OSError as err:
        raise UserError(f"preset {path}: cannot read ({err.strerror})") from None
    raw.setdefault("preset", path.stem)
    return raw


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override to a raw config dict (in place)."""
    if "=" not in assignment:
        raise UserError(f"--set expects section.key=value, got '{assignment}'")
    dotted, text = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise UserError(f"--set expects section.key=value, got '{assignment}'")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = _parse_value(text.strip())


def build_config(
    preset: str | None = None,
    base: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    shortcuts: dict[str, Any] | None = None,
) -> Config:
    """Resolve a config: base dict (or preset) < shortcut options < `--set` overrides."""
    raw: dict[str, Any] = json.loads(json.dumps(base)) if base is not None else {}
    if preset is not None:
        raw = load_preset_dict(preset)
    preset_method = raw.get("method") if preset is not None else None
    preset_keys = set(preset_method) if isinstance(preset_method, dict) else set()
    sources: dict[str, str] = {}
    for section, value in raw.items():  # `optim = 3` in a preset: not a table
        if section in Config.model_fields and section != "preset" and not isinstance(value, dict):
            where = f"preset {preset}" if preset else "config"
            raise UserError(f"{where}: '{section}' must be a table ([{section}] with keys), "
                            f"got {value!r}")
    for dotted, value in (shortcuts or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
        sources[dotted] = f"command-line option for {dotted}"
    for assignment in overrides or []:
        apply_override(raw, assignment)
        sources[override_key(assignment)] = (
            f"--set {assignment}")
    cfg = config_from_dict(raw, origin=f"preset {preset}" if preset else "config",
                           sources=sources)
    cfg._notes.extend(_check_method_settings(cfg, preset, preset_keys, sources))
    return cfg


def override_key(assignment: str) -> str:
    """The dotted key of a `section.key=value` override (`method.top_k=3` -> `method.top_k`)."""
    return ".".join(p for p in assignment.split("=", 1)[0].strip().split(".") if p)


def read_by_method(name: str, overrides: list[str]) -> list[str]:
    """`overrides` without the `method.*` settings that method `name` does not read (which
    `build_config` refuses): for scripts that give one list of settings to several methods."""
    uses = method_of(name).settings
    return [o for o in overrides if not override_key(o).startswith("method.")
            or override_key(o).split(".", 1)[1] in uses]


def _check_method_settings(cfg: Config, preset: str | None, preset_keys: set[str],
                           sources: dict[str, str]) -> list[str]:
    """A `method.*` setting the chosen method does not read (its row's `settings`) is refused
    when the command line gave it (it would silently do nothing), and noted once when it came
    from a preset written for another method; a saved config (resume) holds every key: silent."""
    row = method_of(cfg.method.name)
    given = [key for key in sources if key.startswith("method.")
             and key.split(".", 1)[1] not in row.settings]
    if given:
        key = given[0]
        reads = [f"method.{k}" for k in row.settings if k != "name"]
        uses = f"it reads {', '.join(reads)}" if reads else "it has no settings of its own"
        raise UserError(f"{sources[key]}: method {row.name} does not use {key} ({uses}); drop it "
                        "or choose a method that uses it")
    ignored = sorted(k for k in preset_keys if k not in row.settings)
    if not ignored:
        return []
    return [f"preset {preset} sets {', '.join('method.' + k for k in ignored)}, ignored by "
            f"method {row.name}"]

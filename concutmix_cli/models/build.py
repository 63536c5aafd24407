"""The ConCutMix network: backbone + classifier + projection head g + prototype head g'.

Method notes, section 4. One forward pass computes the feature h once and returns the logits and,
when asked, the projection g(h). The classifier is a plain linear layer (the published CIFAR runs)
or the cosine one (ImageNet-LT, iNaturalist). The class prototypes are g' of each class's weight
vector, [C, feature_dim] either way: W's rows for the linear layer, W's columns for the cosine one.
(The reference code applies g' to the linear layer's W transposed, which gives feature_dim rows,
not C prototypes: a defect we do not copy.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from torch import Tensor, nn

from concutmix_cli.models.heads import CosineClassifier, ProjectionHead
from concutmix_cli.models.resnet_cifar import resnet8, resnet32

if TYPE_CHECKING:  # only attributes of the config are read; keeps this module free of pydantic
    from concutmix_cli.config import ModelConfig

__all__ = [
    "ARCHS",
    "CLASSIFIERS",
    "ConCutMixNet",
    "ModelOutput",
    "build_backbone",
    "build_model",
    "count_parameters",
]

ARCHS = ("resnet8", "resnet32", "resnet50", "resnext50_32x4d")
CLASSIFIERS = ("linear", "cosine")


@dataclass
class ModelOutput:
    """What `ConCutMixNet.forward` returns.

    logits: [N, C] logits (float32 for the cosine classifier; the autocast dtype for the linear).
    projection: [N, proj_dim] g(h) before normalization, or None when `project=False`.
    prototypes: [C, proj_dim] g'(class weights) before normalization, or None unless
        `with_prototypes=True` (computing them inside forward keeps DDP's bookkeeping simple).
    """

    logits: Tensor
    projection: Optional[Tensor] = None
    prototypes: Optional[Tensor] = None


def _register_model_output_pytree() -> None:
    # Lets torch.utils._pytree (used by DDP and torch.compile) see the tensors inside ModelOutput.
    try:
        from torch.utils import _pytree as pytree
    except ImportError:  # pragma: no cover - very old torch
        return
    register = getattr(pytree, "register_pytree_node", None) or getattr(
        pytree, "_register_pytree_node", None
    )
    if register is None:  # pragma: no cover
        return

    def flatten(out: ModelOutput):
        return [out.logits, out.projection, out.prototypes], None

    def unflatten(values, _context) -> ModelOutput:
        return ModelOutput(*values)

    try:
        register(
            ModelOutput,
            flatten,
            unflatten,
            serialized_type_name="concutmix_cli.models.build.ModelOutput",
        )
    except TypeError:  # pragma: no cover - older signature without serialized_type_name
        try:
            register(ModelOutput, flatten, unflatten)
        except ValueError:
            pass
    except ValueError:  # already registered (module reloaded)
        pass


_register_model_output_pytree()


class ConCutMixNet(nn.Module):
    """backbone -> h; logits = classifier(h); projection = g(h); prototypes = g'(class weights)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        classifier: str = "linear",
        cosine_scale: float = 30.0,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        arch: str = "custom",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.arch = arch
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.proj_hidden = int(proj_hidden)
        self.proj_dim = int(proj_dim)
        self.backbone = backbone
        if classifier == "linear":
            self.classifier: nn.Module = nn.Linear(self.feature_dim, self.num_classes)
        elif classifier == "cosine":
            self.classifier = CosineClassifier(self.feature_dim, self.num_classes, cosine_scale)
        else:
            raise ValueError(f"unknown classifier {classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
        self.classifier_kind = classifier
        self.projector = ProjectionHead(self.feature_dim, self.proj_hidden, self.proj_dim)
        self.prototype_head = ProjectionHead(self.feature_dim, self.proj_hidden, self.proj_dim)

    def features(self, x: Tensor) -> Tensor:
        """The backbone feature h, [N, feature_dim]."""
        return self.backbone(x)

    def class_weights(self) -> Tensor:
        """Each class's weight vector, [C, feature_dim]: the linear layer's rows W[c, :], the
        cosine classifier's columns W[:, c] (unnormalized, as g' receives them)."""
        weight = self.classifier.weight
        return weight if self.classifier_kind == "linear" else weight.t()

    def prototypes(self) -> Tensor:
        """g'(class weights): one prototype per class, [C, proj_dim], before normalization.

        g' holds a BatchNorm1d over the C class rows: in train mode it normalizes with the
        statistics of the C rows (and updates its running statistics), in eval mode it uses
        the running statistics, like the reference.
        """
        return self.prototype_head(self.class_weights())

    def forward(
        self, x: Tensor, project: bool = True, with_prototypes: bool = False
    ) -> ModelOutput:
        h = self.features(x)
        logits = self.classifier(h)
        projection = self.projector(h) if project else None
        prototypes = self.prototypes() if with_prototypes else None
        return ModelOutput(logits=logits, projection=projection, prototypes=prototypes)

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch}, classifier={self.classifier_kind}, feature_dim={self.feature_dim}, "
            f"num_classes={self.num_classes}, "
            f"proj_hidden={self.proj_hidden}, proj_dim={self.proj_dim}"
        )


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """The backbone for `arch` (randomly initialized) and its feature dimension."""
    if arch in ("resnet8", "resnet32"):
        net = resnet8() if arch == "resnet8" else resnet32()
        return net, net.feature_dim
    if arch in ("resnet50", "resnext50_32x4d"):
        import torchvision.models as tvm

        net = getattr(tvm, arch)(weights=None)
        feature_dim = int(net.fc.in_features)
        net.fc = nn.Identity()
        net.feature_dim = feature_dim
        return net, feature_dim
    raise ValueError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHS)}")


def build_model(cfg: "ModelConfig", num_classes: int) -> ConCutMixNet:
    """The ConCutMix network for `cfg` with `num_classes` classes (no pretrained weights).

    `cfg.sync_batchnorm` is not applied here: converting to SyncBatchNorm is the distributed
    runner's job, after the process group exists.
    """
    backbone, feature_dim = build_backbone(cfg.arch)
    return ConCutMixNet(
        backbone,
        feature_dim,
        num_classes,
        classifier=cfg.classifier,
        cosine_scale=cfg.cosine_scale,
        proj_hidden=cfg.proj_hidden,
        proj_dim=cfg.proj_dim,
        arch=cfg.arch,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )

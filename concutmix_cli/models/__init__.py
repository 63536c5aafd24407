"""Models: the CIFAR ResNet, torchvision ResNet-50 / ResNeXt-50 backbones and the ConCutMix heads."""

from concutmix_cli.models.build import (
    ARCHS,
    ConCutMixNet,
    ModelOutput,
    build_backbone,
    build_model,
    count_parameters,
)
from concutmix_cli.models.heads import CosineClassifier, ProjectionHead
from concutmix_cli.models.resnet_cifar import CifarResNet, resnet32

__all__ = [
    "ARCHS",
    "CifarResNet",
    "ConCutMixNet",
    "CosineClassifier",
    "ModelOutput",
    "ProjectionHead",
    "build_backbone",
    "build_model",
    "count_parameters",
    "resnet32",
]

"""The CIFAR ResNet of the LDAM-DRW / BCL line of work (docs/method-notes.md section 4).

A 3x3 stem convolution with 16 channels, BatchNorm and ReLU, then three stages of n BasicBlocks
with 16, 32 and 64 channels (strides 1, 2, 2), then global average pooling. depth = 6n + 2, so
ResNet-32 has n = 5. When a block changes the shape, its shortcut is "option A" of He et al.:
parameter-free, the input is subsampled spatially by the stride and zero-padded in channels.

The forward pass returns the pooled feature h of shape [N, feature_dim] (64 for the default
widths); the classifier lives elsewhere (`heads.CosineClassifier`).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "PadShortcut", "resnet32"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every `stride`-th pixel, zero-pad the new channels (no parameters).

    The padding is split evenly before and after the existing channels (for a doubling of the
    width, a quarter of the output channels on each side), as in the LDAM / BCL reference.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            before = extra // 2
            x = F.pad(x, (0, 0, 0, 0, before, extra - before))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (20, 32, 44, 56, 110, ...) returning pooled features [N, C]."""

    def __init__(
        self,
        depth: int = 32,
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 3:
            raise ValueError(f"CIFAR ResNet has three stages, got widths {tuple(widths)}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.blocks_per_stage = blocks_per_stage
        self.feature_dim = int(widths[-1])

        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if b == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) conv/linear weights; BatchNorm weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pooling; works for any input size and memory format.
        return out.mean(dim=(2, 3))


def resnet8(**kwargs) -> CifarResNet:
    """ResNet-8: one BasicBlock per stage, 64-d feature, about 75K parameters; about 6x cheaper
    than ResNet-32 a step, for the quick-start preset that has to learn in minutes on a CPU."""
    return CifarResNet(depth=8, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 for 32x32 inputs: 5 BasicBlocks per stage, 64-d feature, about 0.46M parameters."""
    return CifarResNet(depth=32, **kwargs)


"""The papers' networks (docs/math.md#experiments) for inputs of any channel count and size.

* :class:`MLP`: ``depth`` hidden layers of ``width`` units, each Linear -> BatchNorm
  -> ReLU (the paper: 8 x 2048), then a Linear layer to the C logits.
* :class:`VGG11`: VGG11 with batch norm after every convolution and in place of
  dropout in the classifier (512 -> 4096 -> 4096 -> C); inputs zero-padded to 32.
* :class:`ResNet18`: the CIFAR-style ResNet18 (3x3 stem, no max-pool, four stages
  of two basic blocks, global average pooling).

All take ``in_shape = (channels, height, width)`` and ``num_classes`` and return
logits (batch, C); weights use PyTorch's default initialisation, so a seeded
``torch.manual_seed`` before construction fixes them. Any other ``nn.Module``
classifier mapping (batch, *in_shape) to (batch, C) is used the same way by the
trainer and the operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from theory.checks import check_int

__all__ = ["MLP", "VGG11", "ResNet18", "MODELS", "build_model", "VGG11_CONFIG"]

VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
"""Convolution widths of VGG11 ("M": 2x2 max-pool)."""


def _check_in_shape(in_shape: Sequence[int], *, image: bool) -> tuple[int, ...]:
    shape = tuple(in_shape) if isinstance(in_shape, Sequence) else ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape) or (image and len(shape) != 3):
        expected = "(channels, height, width)" if image else "a tuple of positive sizes"
        raise ValueError(f"in_shape: expected {expected} of positive integers, got {in_shape!r}")
    return shape


class MLP(nn.Module):
    """``f(x) = W_{L+1} h_L + b``, ``h_l = relu(BN(W_l h_{l-1} + b_l))``, ``h_0 = vec(x)``.

    ``depth`` hidden layers (0 gives multinomial logistic regression) of ``width``
    units; ``batch_norm=False`` drops the BN layers.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        depth: int = 8,
        width: int = 2048,
        batch_norm: bool = True,
    ):
        super().__init__()
        shape = _check_in_shape(in_shape, image=False)
        check_int("num_classes", num_classes, 2)
        check_int("depth", depth, 0)
        check_int("width", width, 1)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = int(torch.Size(shape).numel())
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width)] + ([nn.BatchNorm1d(width)] if batch_norm else []) + [nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VGG11(nn.Module):
    """VGG11 with batch norm (docs/math.md#experiments): conv3x3 -> BN -> ReLU blocks of
    :data:`VGG11_CONFIG` (widths scaled by ``width / 64``), then
    ``Linear(512, hidden) -> BN -> ReLU -> Linear(hidden, hidden) -> BN -> ReLU ->
    Linear(hidden, C)``.

    Inputs smaller than ``pad_to`` are zero-padded (centred) to ``pad_to`` x
    ``pad_to`` in ``forward``; zero is the mean pixel of standardised data, the
    value the convolutions pad with too. With 32 x 32 inputs the five pools leave
    1 x 1 maps; larger inputs give ``(H // 32) * (W // 32)`` positions per channel.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: int = 64,
        hidden: int = 4096,
        pad_to: int = 32,
    ):
        super().__init__()
        channels, height, wide = _check_in_shape(in_shape, image=True)
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        check_int("hidden", hidden, 1)
        self.pad_to = check_int("pad_to", pad_to, 32)
        layers: list[nn.Module] = []
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, int(item) * width // 64)
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        positions = (max(height, pad_to) // 32) * (max(wide, pad_to) // 32)
        self.classifier = nn.Sequential(
            nn.Linear(channels * positions, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = max(0, self.pad_to - x.shape[-2]), max(0, self.pad_to - x.shape[-1])
        if dh or dw:
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``; the shortcut is a strided
    1x1 convolution with BN when the shape changes, the identity otherwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet18: conv3x3(``width``) -> BN -> ReLU, stages of two
    :class:`BasicBlock` with ``width * (1, 2, 4, 8)`` channels and strides
    (1, 2, 2, 2), the spatial mean, and ``Linear(8 * width, C)``."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int = 64):
        super().__init__()
        channels = _check_in_shape(in_shape, image=True)[0]
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        in_channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**stage
            blocks += [BasicBlock(in_channels, out, stride), BasicBlock(out, out, 1)]
            in_channels = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean over positions (global average pooling), written so that its
        # backward is deterministic on CUDA as well.
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "vgg11": VGG11, "resnet18": ResNet18}


def build_model(name: str, num_classes: int, in_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """The network ``name`` (a key of :data:`MODELS`, case-insensitive) for inputs of
    ``in_shape`` and ``num_classes`` outputs; ``kwargs`` go to its constructor
    (``depth``, ``width``, ``batch_norm`` for the MLP; ``width``, ``hidden``,
    ``pad_to`` for VGG11; ``width`` for ResNet18)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"model: unknown name {name!r}; expected one of {', '.join(MODELS)}")
    cls = MODELS[key]
    try:
        return cls(in_shape, num_classes, **kwargs)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"model {key!r}: {error}; see {cls.__name__}'s parameters") from None
        raise

"""Small building blocks shared by the model families.

TensorFlow's "SAME" padding pads stride-2 convolutions asymmetrically (the extra row and column
go to the bottom and right). Models trained in TensorFlow need it to give their published
accuracy, so it is a layer of its own here, computed from the input size at run time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TensorFlow's "SAME" uses for one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Zero-pads a NCHW tensor so that a following 'valid' conv behaves like TF "SAME"."""

    def __init__(self, kernel_size: int, stride: int, dilation: int = 1):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride, self.dilation)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride, self.dilation)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Conv2dSame(nn.Conv2d):
    """A Conv2d with TensorFlow "SAME" padding (asymmetric when strided)."""

    def __init__(self, *args, **kwargs):
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = same_padding(x.shape[-2], kh, sh, dh)
        left, right = same_padding(x.shape[-1], kw, sw, dw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class Add(nn.Module):
    """Element-wise sum of a residual branch and its shortcut, as a named layer."""

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return x + shortcut


class GlobalAvgPool(nn.Module):
    """Mean over the spatial axes: N x C x H x W -> N x C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Dropout, nn.Identity)


def is_global_pool(module: nn.Module) -> bool:
    """Global average pooling: :class:`GlobalAvgPool` or ``nn.AdaptiveAvgPool2d(1)``."""
    return isinstance(module, GlobalAvgPool) or (
        isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)))


def pooled_classifier(module: nn.Module) -> tuple[str, tuple[str, ...], nn.Linear] | None:
    """For a flat network that ends ``spatial layer -> global average pooling -> (Flatten,
    Dropout, Identity)* -> Linear``: (the spatial layer's name, the names of the layers after
    it, the linear classifier). None for any other ending."""
    children = list(module.named_children())
    if len(children) < 3 or not isinstance(children[-1][1], nn.Linear):
        return None
    i = len(children) - 2
    while i > 0 and isinstance(children[i][1], PASS_THROUGH):
        i -= 1
    if i < 1 or not is_global_pool(children[i][1]):
        return None
    return children[i - 1][0], tuple(name for name, _ in children[i:]), children[-1][1]


# Modules graph tools (torch.fx) keep whole: the padding ones compute from the input's shape, and
# Add / GlobalAvgPool are named layers that would otherwise dissolve into plain tensor ops.
LEAF_MODULES: tuple[type[nn.Module], ...] = (SamePad2d, Conv2dSame, Add, GlobalAvgPool)

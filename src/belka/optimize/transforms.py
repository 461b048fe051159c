"""Random transformations applied to the picture before every forward pass, so that what is
optimised is a picture the network responds to when it is shifted, scaled or turned a little,
not one exact arrangement of pixels (that would be adversarial noise). All randomness comes
from one ``torch.Generator``: the same seed gives the same sequence of transformations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Robustness:
    """Per-picture random shift (``jitter`` pixels at 224 px, scaled with the picture), scale
    (``1 +- scale``) and rotation (``+- rotate`` degrees), applied as one bilinear warp with
    reflected borders, then a small second shift (``fine`` pixels)."""

    jitter: float = 16.0
    scale: float = 0.1
    rotate: float = 10.0
    fine: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        rand = torch.rand((n, 4), generator=generator, dtype=torch.float32) * 2 - 1
        k = max(h, w) / 224.0
        shift = rand[:, :2] * self.jitter * k
        scale = 1.0 + rand[:, 2] * self.scale
        angle = rand[:, 3] * math.radians(self.rotate)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros((n, 2, 3), dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 0, 2] = 2 * shift[:, 0] / w
        theta[:, 1, 2] = 2 * shift[:, 1] / h
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return roll(x, self.fine, generator)


def roll(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by up to ``pixels`` in each direction (wrapping around)."""
    if pixels <= 0:
        return x
    dy, dx = (torch.randint(-pixels, pixels + 1, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))

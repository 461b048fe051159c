"""How an optimised picture is held: its parameters and the function that turns them into
RGB pixels in [0, 1] (N x 3 x H x W).

- :class:`PixelImage`: the pixels themselves, kept in [0, 1] after each step. Style transfer
  starts it from the content photo.
- :class:`FourierImage`: a spectrum in a decorrelated colour space. Each frequency's
  coefficient is scaled by 1 / frequency, so a gradient step moves large-scale structure as
  easily as fine detail (in plain pixels, steps pile up as high-frequency noise the network
  happens to like). The three colour channels are mixed by :data:`COLOR_SQRT`, the square
  root of the colour covariance of natural photos, so the optimiser's axes are uncorrelated
  colour directions; a sigmoid keeps pixels in (0, 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Symmetric square root of the RGB covariance (pixels in [0, 1]) of the 112 shared photos
# (../shared/data/photos, thumbnails of at most 128 px, 1.45 M pixels), scaled so that its
# largest column has norm 1. Recomputed by docs/pictures.md's snippet.
COLOR_SQRT = ((0.7552, 0.4534, 0.3671),
              (0.4534, 0.6743, 0.4878),
              (0.3671, 0.4878, 0.7920))


class Picture(nn.Module):
    """Base: ``picture()`` -> N x 3 x H x W RGB in [0, 1]; ``project()`` runs after each step."""

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def project(self) -> None:
        """Bring the parameters back into their domain after an optimiser step."""

    @torch.no_grad()
    def to_uint8(self) -> np.ndarray:
        """N x H x W x 3 uint8 pixels of the current picture."""
        x = self().detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()


class PixelImage(Picture):
    """Plain pixels, started from ``init`` (N x 3 x H x W in [0, 1])."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.pixels = nn.Parameter(init.detach().clone().clamp(0, 1))

    def forward(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def project(self) -> None:
        self.pixels.clamp_(0, 1)


class FourierImage(Picture):
    """``n`` pictures of ``height`` x ``width`` held as decorrelated-colour spectra (see the
    module's docstring); ``decay`` is the exponent of the 1 / frequency scaling, ``std`` the
    spread of the random start (drawn from ``generator``)."""

    def __init__(self, n: int, height: int, width: int, *, generator: torch.Generator,
                 device: torch.device | str = "cpu", decay: float = 1.0, std: float = 0.01):
        super().__init__()
        self.height, self.width = height, width
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freq, min=1.0 / max(height, width)) ** decay
        # The lowest frequencies carry most of the energy: normalise so pixels start with a
        # spread near `std` times the mixing, whatever the size.
        scale = scale / math.sqrt(float((scale ** 2).mean()))
        self.register_buffer("scale", scale.to(device))
        self.register_buffer("color", torch.tensor(COLOR_SQRT, device=device))
        shape = (n, 3, height, width // 2 + 1, 2)
        init = torch.randn(shape, generator=generator, dtype=torch.float32) * std
        self.spectrum = nn.Parameter(init.to(device))

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spec, s=(self.height, self.width), norm="ortho")
        image = torch.einsum("ij,njhw->nihw", self.color, image)
        return torch.sigmoid(image)

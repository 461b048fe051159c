"""The preprocessing contract: how a decoded image becomes the tensor a network was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import images
from ..images import RESIZE_POLICIES  # noqa: F401  (re-exported: the policies a model accepts)


@dataclass(frozen=True)
class Preprocessing:
    """Resize policy, input size and normalisation of one model.

    ``mean``/``std`` are in 0..255 units: the network sees ``(pixel - mean) / std``.
    ``crop_fraction`` is the share of the shorter side the ``crop`` policy keeps
    (224 / 256 = 0.875: shorter side to 256, then the centre 224 x 224).
    """

    size: int = 224
    crop_fraction: float = 0.875
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    policy: str = "crop"

    def resize(self, image: np.ndarray, policy: str | None = None) -> np.ndarray:
        """One decoded H x W x 3 uint8 image -> size x size x 3 uint8, by the resize policy."""
        policy = policy or self.policy
        fill = tuple(int(round(m)) for m in self.mean)
        return images.resize(image, self.size, policy, crop_fraction=self.crop_fraction, fill=fill)

    def normalize(self, batch: np.ndarray) -> torch.Tensor:
        """N x S x S x 3 uint8 -> N x 3 x S x S float32 tensor in the network's units."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: Sequence[np.ndarray], policy: str | None = None) -> torch.Tensor:
        """Decoded images (any sizes) -> one batch tensor."""
        return self.normalize(np.stack([self.resize(im, policy) for im in images]))


def draft_size(preprocessing: Preprocessing, policy: str | None = None) -> tuple[int, int]:
    """The smallest (width, height) a JPEG may be decoded at without losing detail the resize
    policy keeps: the crop policy's shorter side (256 for a 224 input at 0.875), else the input
    size. Draft mode keeps both sides at least this large."""
    policy = policy or preprocessing.policy
    side = round(preprocessing.size / preprocessing.crop_fraction) if policy == "crop" \
        else preprocessing.size
    return side, side

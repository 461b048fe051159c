"""Small pieces both pictures need: the model to use, pixels to and from tensors, the
network's input units, and bounds on what one request may ask for."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .. import images
from ..errors import UsageError

MAX_SIZE = 1024    # the longest side of a picture (style transfer refines up to it in stages)
MIN_SIZE = 32
MAX_STEPS = 2000   # steps of one picture; the server caps its own (see belka.server.pictures)
MAX_BATCH = 64     # pictures optimised together (a grid, or --diversity)


def default_model(model=None):
    """``model``, or the packaged EfficientNet-Lite0 (loaded once per call site)."""
    if model is not None:
        return model
    import belka

    return belka.load(engine="torch")


def check_range(name: str, value: int | float, low: int | float, high: int | float) -> None:
    if not (low <= value <= high):
        raise UsageError(f"{name} must be between {low} and {high}, not {value}")


def fit_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longer side ``longest`` and the aspect ratio kept."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_tensor(image: np.ndarray, size: tuple[int, int], device) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x size[0] x size[1] float in [0, 1] (belka's bilinear
    resampling, antialiased when shrinking)."""
    h, w = size
    pil = Image.fromarray(image)
    if pil.size != (w, h):
        pil = images.resample(pil, (w, h))
    array = np.asarray(pil, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].to(device)


def network_input(model, pixels: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the network's units (its preprocessing's mean and std, in 0..255)."""
    pre = model.preprocessing
    mean = torch.tensor(pre.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * 255.0 - mean) / std


def generator(seed: int) -> torch.Generator:
    """One CPU generator for everything random in a run: same seed, same picture."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen

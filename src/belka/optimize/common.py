"""Small pieces both pictures need: the model to use, pixels to and from tensors, the
network's input units, and bounds on what one request may ask for."""

from __future__ import annotations

import re

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
    from ..models.model import load_model

    return load_model("efficientnet_lite0", engine="torch")


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


def parse_channels(text: str) -> list[int]:
    """``0-15``, ``3,7,9`` or a mix (``0-3,10``) -> channel indices."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d{1,6})(?:\s*-\s*(\d{1,6}))?", part)
        if not m:
            raise UsageError(f"--channels takes indices and ranges like 0-15 or 3,7,9, got {text!r}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise UsageError(f"--channels range {part!r} runs backwards")
        if hi - lo >= 64 or len(out) + hi - lo + 1 > 64:
            raise UsageError("--channels makes one picture per channel: at most 64")
        out.extend(range(lo, hi + 1))
    return out


def parse_direction(text: str, channels: int | None = None) -> list[float]:
    """A direction: ``CHANNEL:WEIGHT`` pairs (``12:1,40:-0.5``, the rest 0; needs the layer's
    channel count) or a ``.npy`` file with one number per channel."""
    if text.endswith(".npy"):
        try:
            values = np.load(text, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read the direction {text!r}: {err}") from None
        return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
    pairs = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d{1,6})\s*:\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)", part)
        if not m:
            raise UsageError(f"--direction takes CHANNEL:WEIGHT pairs like 12:1,40:-0.5 or a "
                             f".npy file, got {part!r}")
        pairs[int(m[1])] = float(m[2])
    if not pairs:
        raise UsageError("--direction is empty")
    if channels is not None and max(pairs) >= channels:
        raise UsageError(f"--direction names channel {max(pairs)}; the layer has {channels}")
    values = [0.0] * (channels or max(pairs) + 1)
    for c, w in pairs.items():
        values[c] = w
    return values

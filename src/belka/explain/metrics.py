"""Is a heat map faithful to the model? Deletion, insertion and the randomisation sanity check.

* **Deletion** (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
  Black-box Models", BMVC 2018): remove the map's most important pixels first, in ``steps``
  equal steps, and follow the target's probability. Removed pixels take the image's per-channel
  mean (a flat colour, ``baseline="mean"``). A faithful map makes the probability fall fast:
  **lower AUC is better**.
* **Insertion** (same paper): start from a heavily blurred copy (Gaussian, sigma 5 % of the
  side, ``baseline="blur"``) and put the sharp pixels back, most important first. **Higher AUC
  is better**.
* **Sanity check** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, cascading
  model randomisation): explain the same image and target with a copy of the model whose top
  layers have random weights; a map that still looks the same does not depend on what the
  model learned. Reported as the Spearman rank correlation of the two maps; it passes below
  ``threshold`` (0.5).

Everything runs on the model's S x S input grid, with ``Explanation.raw`` as the ranking (ties,
common after a ReLU, are broken in a fixed random order so they carry no raster bias). Pixels
are counted on the grid, so AUCs compare across image sizes. Forwards are batched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import INPUT, Explanation, explain


@dataclass
class Curve:
    """A deletion or insertion curve: target probability against the fraction of pixels
    removed (deletion) or inserted (insertion), and the area under it (trapezoid rule)."""

    kind: str
    fractions: np.ndarray
    probabilities: np.ndarray
    auc: float
    baseline: str


@dataclass
class SanityCheck:
    """Model-randomisation check: rank correlation between the map of the trained model and
    the map of a copy with randomised top layers. ``passed`` when below ``threshold``."""

    spearman: float
    passed: bool
    randomized: list[str]
    threshold: float
    random_map: np.ndarray = field(repr=False, default=None)


def _input(model, image, explanation: Explanation, resize: str | None) -> torch.Tensor:
    device = next((p.device for p in model.module.parameters()), torch.device("cpu"))
    if isinstance(image, torch.Tensor):
        return (image if image.dim() == 4 else image[None]).to(device, torch.float32)
    source = explanation.image if image is None else image
    if source is None:
        raise UsageError("this explanation was made from a tensor: pass the same tensor")
    policy = resize or explanation.details.get("resize") or model.preprocessing.policy
    return model.preprocessing([model.decode(source)], policy).to(device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x C x H x W tensor (reflect padding)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def baseline_image(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``mean``: each channel's mean everywhere; ``blur``: Gaussian, sigma 5 % of the side;
    ``zero``: the model's zero input."""
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return gaussian_blur(x, sigma=0.05 * min(x.shape[-2:]))
    if kind == "zero":
        return torch.zeros_like(x)
    raise UsageError(f"unknown baseline {kind!r}; choose mean, blur or zero")


def _order(raw: np.ndarray, seed: int = 0) -> np.ndarray:
    flat = np.asarray(raw, dtype=np.float64).ravel()
    perm = np.random.default_rng(seed).permutation(flat.size)
    return perm[np.argsort(-flat[perm], kind="stable")]


def _curve(kind: str, model, image, explanation: Explanation, steps: int, baseline: str,
           batch_size: int, resize: str | None) -> Curve:
    if steps < 1:
        raise UsageError("a curve needs steps >= 1")
    x = _input(model, image, explanation, resize)
    h, w = x.shape[-2:]
    raw = np.asarray(explanation.raw, dtype=np.float32)
    if raw.shape != (h, w):
        raw = F.interpolate(torch.from_numpy(raw)[None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    rank = np.empty(h * w, dtype=np.int64)
    rank[_order(raw)] = np.arange(h * w)
    rank_t = torch.from_numpy(rank).to(x.device).view(1, 1, h, w)
    base = baseline_image(x, baseline)
    start, end = (x, base) if kind == "deletion" else (base, x)
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64)
    indices = list(explanation.indices)
    probs = []
    with torch.inference_mode():
        for s in range(0, len(counts), batch_size):
            k = torch.from_numpy(counts[s:s + batch_size]).to(x.device).view(-1, 1, 1, 1)
            mask = (rank_t < k).to(x.dtype)              # 1 where the pixel has switched
            batch = start * (1.0 - mask) + end * mask
            p = torch.softmax(model.module(batch).float(), dim=1)[:, indices].sum(dim=1)
            probs.append(p.cpu().numpy())
    probabilities = np.concatenate(probs)
    fractions = counts / float(h * w)
    auc = float(np.sum((probabilities[1:] + probabilities[:-1]) * np.diff(fractions)) / 2.0)
    return Curve(kind, fractions, probabilities, auc, baseline)


def deletion(model, image, explanation: Explanation, *, steps: int = 32, baseline: str = "mean",
             batch_size: int = 33, resize: str | None = None) -> Curve:
    """Deletion curve and AUC (lower is better). ``image`` may be None for the explained one,
    or the same preprocessed tensor the explanation was made from."""
    return _curve("deletion", model, image, explanation, steps, baseline, batch_size, resize)


def insertion(model, image, explanation: Explanation, *, steps: int = 32, baseline: str = "blur",
              batch_size: int = 33, resize: str | None = None) -> Curve:
    """Insertion curve and AUC (higher is better), from a blurred copy by default."""
    return _curve("insertion", model, image, explanation, steps, baseline, batch_size, resize)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    average = (starts + ends - 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (0.0 when either is flat)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else 0.0


def randomized_copy(model, top_layers: int = 3, seed: int = 0):
    """A copy of the model whose last ``top_layers`` layers with weights are re-drawn at random
    (each tensor from a normal with its own mean and standard deviation, so scales stay
    plausible). Returns (model copy, names of the randomised layers)."""
    from ..models.model import Model

    module = copy.deepcopy(model.module)
    layers = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
    chosen = layers[-top_layers:] if top_layers > 0 else []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in chosen:
            for p in layer.parameters():
                mean = float(p.mean())
                std = float(p.std()) if p.numel() > 1 else 1.0
                std = std if std > 0 else 1.0
                p.copy_(torch.randn(p.shape, generator=generator) * std + mean)
    copied = Model(model.name, module, model.preprocessing, model.labels, groups=model.groups,
                   device=next((p.device for p in module.parameters()), None))
    return copied, [n for n, _ in chosen]


def sanity_check(model, image=None, explanation: Explanation | None = None, *,
                 method: str = "gradcam", layer=None, target=None, top_layers: int = 3,
                 seed: int = 0, threshold: float = 0.5, resize: str | None = None,
                 **options) -> SanityCheck:
    """Model-randomisation sanity check for a method on one image (or for an explanation):
    the maps of the trained and the randomised model should not rank pixels alike."""
    if explanation is None:
        if image is None:
            raise UsageError("pass an image or an explanation")
        explanation = explain(model, image, target=target, method=method, layer=layer,
                              resize=resize, **options)
    source = explanation.image if image is None else image
    if source is None:
        raise UsageError("this explanation was made from a tensor: pass the same tensor")
    if isinstance(source, torch.Tensor) and source.dim() == 4:
        source = source[0]
    random_model, names = randomized_copy(model, top_layers, seed)
    other = explain(random_model, source, target=tuple(explanation.indices),
                    method=explanation.method,
                    layer=None if explanation.layer == INPUT else explanation.layer,
                    resize=resize or explanation.details.get("resize"), **options)
    rho = spearman(explanation.raw, other.raw)
    return SanityCheck(rho, rho < threshold, names, threshold, other.raw)

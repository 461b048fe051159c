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
from typing import Sequence

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


def _raw_on_grid(explanation: Explanation, h: int, w: int) -> np.ndarray:
    """The explanation's raw map on the model's h x w input grid (bilinear when it is coarser)."""
    raw = np.asarray(explanation.raw, dtype=np.float32)
    if raw.shape != (h, w):
        raw = F.interpolate(torch.from_numpy(raw)[None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    return raw


def _curve(kind: str, model, image, explanation: Explanation, steps: int, baseline: str,
           batch_size: int, resize: str | None) -> Curve:
    if steps < 1:
        raise UsageError("a curve needs steps >= 1")
    x = _input(model, image, explanation, resize)
    h, w = x.shape[-2:]
    raw = _raw_on_grid(explanation, h, w)
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


# --------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence


@dataclass
class Confidence:
    """The target's probability on the image and on the image masked by the map
    (``x * map``), and what Chattopadhay et al. derive from the pair: ``drop`` =
    max(0, p - p_masked) / p (lower is better) and ``increase`` = p_masked > p."""

    probability: float
    masked_probability: float
    drop: float
    increase: bool


def _unit_map(explanation: Explanation, shape) -> torch.Tensor:
    raw = np.asarray(explanation.raw, dtype=np.float32)
    if raw.shape != tuple(shape):
        raw = F.interpolate(torch.from_numpy(raw)[None, None], size=tuple(shape), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    lo, hi = float(raw.min()), float(raw.max())
    unit = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
    return torch.from_numpy(np.clip(unit, 0.0, 1.0))


def confidence_change(model, image, explanation: Explanation, *,
                      resize: str | None = None) -> Confidence:
    """Average Drop / Increase in Confidence for one image (Chattopadhay et al., "Grad-CAM++",
    WACV 2018, section 5.1): the model sees the input multiplied by the explanation's map,
    min-max scaled to [0, 1] on the S x S grid. Multiplying is done in the model's units, so
    hidden pixels become its zero input (mid-grey for belka's models), as in Score-CAM's masks;
    the paper multiplied raw pixels (black). Average the per-image values with
    :func:`average_drop_increase`."""
    x = _input(model, image, explanation, resize)
    mask = _unit_map(explanation, x.shape[-2:]).to(x.device, x.dtype)
    indices = list(explanation.indices)
    with torch.inference_mode():
        logits = model.module(torch.cat([x, x * mask]))
        p = torch.softmax(logits.float(), dim=1)[:, indices].sum(dim=1).cpu().numpy()
    before, after = float(p[0]), float(p[1])
    drop = max(0.0, before - after) / before if before > 0 else 0.0
    return Confidence(before, after, drop, after > before)


def average_drop_increase(changes) -> tuple[float, float]:
    """(Average Drop %, Increase in Confidence %) over :class:`Confidence` results: the mean
    relative drop (lower is better) and the share of images whose probability rose (higher is
    better), both in percent."""
    changes = list(changes)
    if not changes:
        raise UsageError("no results to average")
    return (100.0 * float(np.mean([c.drop for c in changes])),
            100.0 * float(np.mean([c.increase for c in changes])))


# --------------------------------------------------------------------------------------------
# ROAD: remove and debias


_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
               (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))


def noisy_linear_impute(x: torch.Tensor, removed: np.ndarray, *, noise: float = 0.01,
                        seed: int = 0) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML 2022): every removed pixel takes the weighted mean
    of its 8 neighbours (1/6 for the four direct ones, 1/12 for the diagonals; removed
    neighbours are themselves unknowns, so all removed pixels are solved for together as one
    sparse linear system, one right-hand side per channel), plus Gaussian noise of ``noise``
    times the channel's value range. ``x`` is C x H x W; ``removed`` an H x W boolean mask.
    Kept pixels are returned unchanged."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    c, h, w = x.shape
    removed = np.asarray(removed, dtype=bool)
    out = x.detach().cpu().double().numpy().copy()
    ys, xs = np.nonzero(removed)
    n = ys.size
    if n == 0:
        return x.clone()
    index = -np.ones((h, w), dtype=np.int64)
    index[ys, xs] = np.arange(n)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        k = np.nonzero(inside)[0]
        diag[k] += weight
        other = index[ny[k], nx[k]]
        unknown = other >= 0
        rows.append(k[unknown])
        cols.append(other[unknown])
        vals.append(np.full(int(unknown.sum()), -weight))
        known = k[~unknown]
        rhs[known] += weight * out[:, ny[known], nx[known]].T
    matrix = sparse.csr_matrix(
        (np.concatenate([diag, *vals]),
         (np.concatenate([np.arange(n), *rows]), np.concatenate([np.arange(n), *cols]))),
        shape=(n, n))
    solved = spsolve(matrix.tocsc(), rhs)
    solved = solved.reshape(n, c)
    if noise > 0:
        rng = np.random.default_rng(seed)
        spans = out.reshape(c, -1).max(axis=1) - out.reshape(c, -1).min(axis=1)
        solved = solved + rng.standard_normal((n, c)) * noise * spans[None, :]
    out[:, ys, xs] = solved.T
    return torch.from_numpy(out).to(x.device, x.dtype)


@dataclass
class Road:
    """ROAD curves: the target's probability after removing the ``fractions`` of pixels the map
    ranks highest (MoRF: lower is better) or lowest (LeRF: higher is better), each removal
    imputed by :func:`noisy_linear_impute`. ``score`` = mean LeRF - mean MoRF (higher is
    better)."""

    fractions: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray

    @property
    def morf_mean(self) -> float:
        return float(np.mean(self.morf))

    @property
    def lerf_mean(self) -> float:
        return float(np.mean(self.lerf))

    @property
    def score(self) -> float:
        return self.lerf_mean - self.morf_mean


def road(model, image, explanation: Explanation, *,
         fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), noise: float = 0.01,
         seed: int = 0, resize: str | None = None) -> Road:
    """ROAD (remove and debias) for one explanation: for every fraction, remove that share of
    the S x S grid's pixels, most relevant first (MoRF) and least relevant first (LeRF), fill
    them by noisy linear imputation and read the target's probability (all 2 x len(fractions)
    copies in one batched forward). Imputation, unlike a flat fill, leaves no mask-shaped
    edges for the model to react to, so the scores follow the removed information."""
    x = _input(model, image, explanation, resize)
    h, w = x.shape[-2:]
    raw = _raw_on_grid(explanation, h, w)
    order = _order(raw)                                   # most relevant first
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.size == 0 or (fractions <= 0).any() or (fractions >= 1).any():
        raise UsageError("ROAD fractions must lie strictly between 0 and 1")
    copies = []
    for kind in ("morf", "lerf"):
        ranking = order if kind == "morf" else order[::-1]
        for f in fractions:
            removed = np.zeros(h * w, dtype=bool)
            removed[ranking[:int(round(f * h * w))]] = True
            copies.append(noisy_linear_impute(x[0], removed.reshape(h, w), noise=noise, seed=seed))
    with torch.inference_mode():
        p = torch.softmax(model.module(torch.stack(copies)).float(), dim=1)
        p = p[:, list(explanation.indices)].sum(dim=1).cpu().numpy()
    k = fractions.size
    return Road(fractions, p[:k], p[k:])

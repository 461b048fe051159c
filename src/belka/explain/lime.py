"""LIME: a weighted linear surrogate over superpixels.

Ribeiro, Singh & Guestrin, "'Why Should I Trust You?': Explaining the Predictions of Any
Classifier", KDD 2016, with the image settings of the authors' ``lime`` package: the model's
input is cut into superpixels (SLIC, from scikit-image: ``segments`` ~50, ``compactness`` 10, on
the S x S input grid), ``samples`` (256) random on/off patterns are drawn (each superpixel kept
with probability 1/2; the first pattern keeps all), hidden superpixels take ``baseline`` (0.0
in model units: mid-grey), and a ridge regression (``alpha`` 1.0) of the explained logit on the
patterns is fitted with weights ``exp(-d^2 / width^2)``, ``d`` the cosine distance of the pattern
from all-on and ``width`` (0.25) as in ``lime``. The map paints every superpixel with its
coefficient; the heat map keeps the positive part, ``attributions`` the signed map.

For a model that is linear in its input the coefficients are exactly the drops of occluding
each superpixel alone (the surrogate is then exact; ``tests`` check this "occlusion
consistency"). Forwards run ``internal_batch_size`` at a time, on the engine when it is made.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from .base import Context, Explainer, register


def superpixels(x: torch.Tensor, segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixel labels (H x W, 0..K-1) of one C x H x W model input."""
    from skimage.segmentation import slic

    img = x.detach().float().cpu().numpy().transpose(1, 2, 0)
    lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
    img = (img - lo) / np.where(hi > lo, hi - lo, 1.0)
    labels = slic(img.astype(np.float64), n_segments=int(segments), compactness=float(compactness),
                  start_label=0, channel_axis=-1)
    _, labels = np.unique(labels, return_inverse=True)        # consecutive 0..K-1
    return labels.reshape(img.shape[:2])


def fit_surrogate(patterns: np.ndarray, scores: np.ndarray, *, width: float = 0.25,
                  alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of LIME's weighted ridge regression of ``scores`` on the on/off
    ``patterns`` (samples x features), weights from the cosine distance to all-on."""
    from sklearn.linear_model import Ridge

    z = patterns.astype(np.float64)
    norms = np.linalg.norm(z, axis=1)
    cosine = np.where(norms > 0, z.sum(axis=1) / (norms * np.sqrt(z.shape[1]) + 1e-300), 0.0)
    distance = 1.0 - cosine
    weights = np.exp(-(distance ** 2) / width ** 2)
    model = Ridge(alpha=alpha).fit(z, np.asarray(scores, dtype=np.float64), sample_weight=weights)
    return model.coef_, float(model.intercept_)


@register("lime-superpixels")
class Lime(Explainer):
    """LIME over SLIC superpixels (see the module docstring)."""

    name = "lime"
    slow = True
    title = "LIME (superpixels)"
    paper = "Ribeiro et al., KDD 2016"
    uses_layer = False
    options = {"samples": 256, "segments": 50, "compactness": 10.0, "width": 0.25,
               "alpha": 1.0, "baseline": 0.0, "seed": 0}

    def compute(self, ctx: Context) -> torch.Tensor:
        s = self.settings
        samples = int(s["samples"])
        if samples < 2:
            raise UsageError("lime needs samples >= 2")
        maps = []
        with self.bar(samples * len(ctx.targets), "LIME") as bar:
            for i, target in enumerate(ctx.targets):
                x = ctx.x[i]
                labels = superpixels(x, s["segments"], s["compactness"])
                k = int(labels.max()) + 1
                rng = np.random.default_rng(int(s["seed"]))
                patterns = rng.integers(0, 2, size=(samples, k)).astype(np.float32)
                patterns[0] = 1.0
                seg = torch.from_numpy(labels).to(x.device)
                base = torch.broadcast_to(torch.as_tensor(s["baseline"], dtype=x.dtype,
                                                          device=x.device), x.shape)
                scores = []
                for start in range(0, samples, self.internal_batch_size):
                    z = torch.from_numpy(patterns[start:start + self.internal_batch_size]).to(x.device)
                    keep = z[:, seg].to(x.dtype)[:, None]             # b x 1 x H x W
                    batch = x[None] * keep + base[None] * (1.0 - keep)
                    logits = self.logits(batch)
                    scores.append(logits[:, list(target.indices)].sum(dim=1).float().cpu().numpy())
                    bar.update(len(z))
                coef, intercept = fit_surrogate(patterns, np.concatenate(scores),
                                                width=float(s["width"]), alpha=float(s["alpha"]))
                maps.append(torch.from_numpy(coef[labels].astype(np.float32)).to(x.device))
                ctx.details.append({"superpixels": k, "intercept": intercept})
        signed = torch.stack(maps)
        ctx.attributions = signed[:, None]
        return torch.relu(signed)

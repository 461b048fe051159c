"""Scores: from the probabilities of one image's views to the image's score.

A view's score is the allowed classes' summed probability (:func:`view_scores`). With a
head, two more rules apply:

* *agreement* (a head's default since head format 2, when the allowed class is also an
  ImageNet class or group): the view scores the geometric mean of the head's probability and
  the backbone's own ImageNet probability of that class, ``sqrt(p_head * p_prior)``. A tile the
  head likes because it knows the place, while the ImageNet model sees no squirrel in it, no
  longer decides (docs/training.md, "Measured by source");
* the novelty floor: a view that is not close enough to the allowed class's training photos
  (cosine :func:`similarities` below the class's floor) scores 0.

The image's score combines its views' (:func:`combine`: ``max`` or ``noisy-or``, see
:mod:`belka.tiling`); :func:`image_score` does both. The gate, training and calibration all
score this way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import UsageError

COMBINE_METHODS = ("max", "noisy-or")


def combine(scores: np.ndarray, method: str = "max") -> tuple[float, int]:
    """(image score, index of the deciding view) from one image's view scores.

    ``max``: the best view decides. ``noisy-or``: 1 - prod(1 - p), the chance that at least one
    view shows the class if views were independent witnesses; the deciding view is the best one.
    """
    scores = np.asarray(scores, dtype=np.float64)
    best = int(np.argmax(scores))
    if method == "max":
        return float(scores[best]), best
    if method == "noisy-or":
        return float(1.0 - np.prod(1.0 - np.clip(scores, 0.0, 1.0))), best
    raise UsageError(f"unknown combination {method!r}; choose one of {', '.join(COMBINE_METHODS)}")


def view_scores(probs: np.ndarray, allow: Sequence[int], similarities: np.ndarray | None = None,
                floors: np.ndarray | None = None, prior: np.ndarray | None = None) -> np.ndarray:
    """One score per view: the allowed classes' summed probability; with ``prior`` (V: the
    backbone's own probability of the allowed classes per view) its :func:`agreement` with
    that; set to 0 for a view that is not close enough to any allowed class's references
    (``similarities`` V x K, ``floors`` K)."""
    scores = probs[:, list(allow)].sum(axis=1)
    if prior is not None:
        scores = agreement(scores, prior)
    if similarities is not None and floors is not None:
        known = (similarities[:, list(allow)] >= floors[list(allow)]).any(axis=1)
        scores = np.where(known, scores, 0.0)
    return scores


def image_score(probs: np.ndarray, allow: Sequence[int], similarities: np.ndarray | None = None,
                floors: np.ndarray | None = None, method: str = "max",
                prior: np.ndarray | None = None) -> tuple[float, int]:
    """(score, deciding view) for one image from its views' probabilities (whole first)."""
    return combine(view_scores(probs, allow, similarities, floors, prior), method)


def agreement(head: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The geometric mean ``sqrt(head * prior)`` of two probabilities per view: high only when
    both the head and the backbone's ImageNet classifier see the class."""
    head = np.clip(np.asarray(head, np.float64), 0.0, 1.0)
    return np.sqrt(head * np.clip(np.asarray(prior, np.float64), 0.0, 1.0))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity is then a dot product)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarities(embeddings: np.ndarray, references: np.ndarray, reference_labels: np.ndarray,
                 n_classes: int) -> np.ndarray:
    """V x K: each view's highest cosine similarity to each class's references."""
    sims = unit(embeddings) @ references.T
    out = np.full((len(embeddings), n_classes), -1.0, np.float32)
    for c in range(n_classes):
        mask = reference_labels == c
        if mask.any():
            out[:, c] = sims[:, mask].max(axis=1)
    return out

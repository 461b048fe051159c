"""Choosing a threshold: the lowest that keeps false accepts at or under a target, and the check
of that choice on held-out folds that keep whole sources together (see :mod:`belka.calibrate`
for the whole calibration, :mod:`belka.sources` for what a source is)."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError


def choose_threshold(negative_scores: Sequence[float], max_false_accept: float,
                     floor: float = 0.0) -> float:
    """A threshold (accept when score >= threshold) that accepts at most
    ``a = floor(max_false_accept * len(negative_scores))`` negatives; at least ``floor``, at most 1.

    With ``a`` = 0 it is just above the highest negative. Otherwise it lies halfway (geometric
    mean: scores are probabilities spanning decades) between the highest negative that must be
    refused and the next one up, which may pass: the same count on these photos, but a margin
    on the refused side instead of a threshold that touches a negative's score."""
    if not 0.0 <= max_false_accept <= 1.0:
        raise UsageError(f"the false-accept target must be between 0 and 1, got {max_false_accept}")
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if len(neg) == 0:
        return float(floor)
    allowed = int(math.floor(max_false_accept * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float(floor)
    threshold = float(np.nextafter(neg[allowed], np.inf))
    if allowed > 0 and neg[allowed] > 0 and neg[allowed - 1] > threshold:
        threshold = float(np.sqrt(neg[allowed] * neg[allowed - 1]))
    return float(min(1.0, max(floor, threshold)))


@dataclass
class HeldOut:
    """Thresholds chosen on training folds, measured on the held-out fold, summed over folds."""

    thresholds: list[float]
    false_accepts: int
    negatives: int
    accepts: int
    positives: int
    accepted: np.ndarray | None = None     # per photo: accepted by its held-out fold's threshold

    @property
    def heldout_false_accept_rate(self) -> float:
        return self.false_accepts / self.negatives if self.negatives else 0.0

    @property
    def heldout_accept_rate(self) -> float:
        return self.accepts / self.positives if self.positives else 0.0

    def to_dict(self) -> dict:
        return {"fold_thresholds": [round(t, 6) for t in self.thresholds],
                "false_accepts": self.false_accepts, "negatives": self.negatives,
                "accepts": self.accepts, "positives": self.positives,
                "false_accept_rate": round(self.heldout_false_accept_rate, 4),
                "accept_rate": round(self.heldout_accept_rate, 4)}


def cross_validated_threshold(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray,
                              max_false_accept: float, *, folds: int = 5, seed: int = 0,
                              floor: float = 0.0) -> HeldOut:
    """Choose on k-1 folds, measure on the k-th, for each fold (see :mod:`belka.calibrate`)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    out = HeldOut([], 0, 0, 0, 0, np.zeros(len(scores), dtype=bool))
    for train_rows, test_rows in fold_splits(positive.astype(np.int64), np.asarray(groups),
                                             folds, seed):
        train_neg = scores[train_rows][~positive[train_rows]]
        t = choose_threshold(train_neg, max_false_accept, floor)
        test_scores, test_pos = scores[test_rows], positive[test_rows]
        out.thresholds.append(t)
        out.accepted[test_rows] = test_scores >= t
        out.false_accepts += int((test_scores[~test_pos] >= t).sum())
        out.negatives += int((~test_pos).sum())
        out.accepts += int((test_scores[test_pos] >= t).sum())
        out.positives += int(test_pos.sum())
    return out


def fold_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that keep each group (source or burst) whole: stratified ``folds`` folds (no more
    than the most groups any class has), or leave-one-group-out when ``folds`` is at least the
    number of groups (``bench/gate.py --by-source``: each source held out on its own)."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

    groups = np.asarray(groups)
    if folds >= len(set(groups.tolist())) >= 2:
        return list(LeaveOneGroupOut().split(np.zeros(len(y)), y, groups))
    per_class = [len(set(groups[y == c])) for c in np.unique(y)]
    k = min(folds, max(per_class))
    if k < 2:
        raise UsageError("cross-validation needs at least two bursts (photos with different "
                         "names) of some class")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "the least populated class has fewer members"
        return list(splitter.split(np.zeros(len(y)), y, groups))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-accept rates, accept rates, thresholds) for every distinct score, descending."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(scores)[::-1]
    fa = np.array([(scores[~positive] >= t).mean() if (~positive).any() else 0.0 for t in thresholds])
    acc = np.array([(scores[positive] >= t).mean() if positive.any() else 0.0 for t in thresholds])
    return (np.concatenate([[0.0], fa, [1.0]]), np.concatenate([[0.0], acc, [1.0]]),
            np.concatenate([[np.inf], thresholds, [-np.inf]]))


def plot_roc(scores: np.ndarray, positive: np.ndarray, path: str | os.PathLike, *,
             threshold: float | None = None, title: str = "ROC") -> Path:
    """The ROC curve (accept rate of positives against false-accept rate) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fa, acc, _ = roc_curve(scores, positive)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.step(fa, acc, where="post", lw=2)
    if threshold is not None:
        s, p = np.asarray(scores), np.asarray(positive, bool)
        x = float((s[~p] >= threshold).mean()) if (~p).any() else 0.0
        y = float((s[p] >= threshold).mean()) if p.any() else 0.0
        ax.plot([x], [y], "o", color="crimson", label=f"threshold {threshold:.4g}")
        ax.legend(loc="lower right")
    ax.set_xlabel("false-accept rate (negatives accepted)")
    ax.set_ylabel("accept rate (positives accepted)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

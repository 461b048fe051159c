"""Calibrated decisions: the threshold that keeps false accepts at or under a target.

On labelled photos (one sub-folder per class; the folders named after the allowed class are the
positives, all others negatives) every photo gets the gate's score. :func:`choose_threshold`
takes the negatives' scores and returns the lowest threshold that accepts at most
``floor(max_false_accept x negatives)`` of them. Because a threshold chosen on the photos it is
measured on flatters itself, :func:`cross_validated_threshold` also chooses one on the training
folds and measures it on the held-out fold (folds keep whole sources together: one camera,
one sub-folder, one burst; see :mod:`belka.sources`), and reports the held-out false-accept and
accept rates: those are the rates to expect on photos from new places.

With a head that was trained on some of the photos, its scores on them are in-sample (too
good), so :func:`calibrate_folder` retrains the head the same way in cross-validation on the
folder and calibrates on out-of-fold scores instead.

A *policy* (:class:`Policy`) is the result in a small JSON file: what to allow, the threshold,
tiling on or off, which backbone and head it was measured for, and the measurement.
``belka check --policy policy.json`` uses it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BelkaError, ModelError, UsageError
from .files import write_atomic

POLICY_FORMAT = "belka-policy"
POLICY_VERSION = 1


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
    """Choose on k-1 folds, measure on the k-th, for each fold (see the module docstring)."""
    from .heads import fold_splits

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


# ------------------------------------------------------------------------------------------
# Policies


@dataclass
class Policy:
    """A calibrated gate setting, saved as JSON."""

    allow: list[str]
    threshold: float
    tiles: bool = True
    max_false_accept: float | None = None
    model: str | None = None
    weights_sha256: str | None = None
    head: str | None = None                  # the head's fingerprint, None for ImageNet labels
    head_labels: list[str] | None = None
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        try:
            write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Policy":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such policy file") from None
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: not a belka policy (JSON) file: {err}") from None
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
            raise UsageError(f"{path}: not a belka policy file (format must be {POLICY_FORMAT!r})")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            policy = cls(**fields)
            policy.threshold = float(policy.threshold)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{path}: bad policy: {err}") from None
        if not 0.0 <= policy.threshold <= 1.0:
            raise UsageError(f"{path}: threshold must be between 0 and 1")
        return policy

    def check_model(self, model) -> None:
        """Raise unless ``model`` (and its head) is what this policy was calibrated for."""
        head = getattr(model, "head", None)
        if self.head and head is None:
            raise UsageError("this policy was calibrated for a head: pass the same --head "
                             f"(classes {', '.join(self.head_labels or [])})")
        if head is not None and self.head != head.fingerprint:
            raise UsageError("this policy was calibrated for a different head (or for the "
                             "ImageNet classes): calibrate again with this head")
        if self.model and model.name != self.model:
            raise ModelError(f"this policy was calibrated on {self.model}, the model is {model.name}")
        if self.weights_sha256 and model.weights_sha256 and self.weights_sha256 != model.weights_sha256:
            raise ModelError("this policy was calibrated on other weights of "
                             f"{model.name}: calibrate again")


# ------------------------------------------------------------------------------------------
# Folders of labelled photos


def positive_folders(model, labels: Sequence[str], allow: str | Sequence[str]) -> np.ndarray:
    """Which class folders hold the allowed class: the folder is named like an allowed item, or
    names the same classes of the model (``squirrel`` and ``fox squirrel``)."""
    items = [a.strip() for a in (allow.split(",") if isinstance(allow, str) else allow)]
    wanted = {str(a).lower() for a in items}
    allowed_indices = set(model.class_indices(allow))
    out = []
    for label in labels:
        hit = label.lower() in wanted
        if not hit:
            try:
                hit = set(model.class_indices(label)) <= allowed_indices
            except BelkaError:
                hit = False
        out.append(hit)
    return np.array(out, dtype=bool)


@dataclass
class Scored:
    """Every photo of a folder with the gate's score."""

    paths: list[str]
    labels: list[str]           # folder names
    y: np.ndarray
    positive: np.ndarray        # per photo
    scores: np.ndarray
    groups: np.ndarray
    tiles: list                 # per photo: the deciding tile (Box) or None
    out_of_fold: bool = False   # scores from heads retrained without the photo's source
    skipped: list = field(default_factory=list)
    forwards: int = 0
    grouping: str = "bursts"    # how photos were grouped by source (belka.sources)


def score_folder(model, data_dir: str | os.PathLike, allow: str | Sequence[str], *,
                 tiles: bool = True, folds: int = 5, seed: int = 0,
                 progress: bool | None = None, batch_size: int = 16,
                 groups_file: str | os.PathLike | None = None) -> Scored:
    """Score every photo under ``DATA_DIR/<class>/`` with the gate (threshold-free), and group
    the photos by source (:mod:`belka.sources`) for the held-out check.

    A head model whose training photos are among them is retrained in cross-validation on the
    folder (its own training options) so that every photo gets an out-of-fold score from a
    head that never saw its source.
    """
    from . import heads
    from .gate import Gate

    photos = heads.read_folder(
        data_dir, purpose="calibration (the allowed class and other things)")
    positive_class = positive_folders(model, photos.labels, allow)
    if not positive_class.any():
        raise UsageError(f"{data_dir}: no sub-folder holds {allow!r}: name the folder of the "
                         f"allowed photos after it (e.g. squirrel/)")
    if positive_class.all():
        raise UsageError(f"{data_dir}: every sub-folder holds {allow!r}; add photos of other things")
    positive = positive_class[photos.y]
    head = getattr(model, "head", None)
    if head is not None and any(heads.seen_in_training(head, photos.paths)):
        return _score_retrained(model, photos, positive, allow, tiles, folds, seed, progress,
                                groups_file)

    gate = Gate(model, allow=allow, threshold=0.5, tiles=tiles)
    kept, scores, boxes, skipped, embeddings = [], [], [], [], []
    forwards = 0
    for path, result, error in gate.check_paths(photos.paths, batch_size=batch_size,
                                                progress=progress):
        if error is not None:
            skipped.append((path, error))
            continue
        kept.append(path)
        scores.append(result.score)
        boxes.append(result.tile)
        embeddings.append(result.embedding)
        forwards += result.views
    index = {p: i for i, p in enumerate(photos.paths)}
    rows = np.array([index[p] for p in kept], dtype=np.int64)
    embedded = bool(embeddings) and all(e is not None for e in embeddings)
    keep = np.zeros(len(photos.paths), bool)
    keep[rows] = True
    grouping = photos.subset(keep).sources(
        groups_file=groups_file, embeddings=np.stack(embeddings) if embedded else None)
    return Scored(kept, photos.labels, photos.y[rows], positive[rows], np.array(scores),
                  grouping.ids, boxes, False, skipped, forwards, grouping.kind)


def _score_retrained(model, photos, positive, allow, tiles, folds, seed, progress,
                     groups_file=None) -> Scored:
    from . import heads
    from .tiling import DEFAULT_TILING

    head = model.head
    options = heads.TrainOptions.from_dict(head.training.get("options", {}))
    options = heads.TrainOptions(**{**{k: getattr(options, k) for k in options.__dataclass_fields__},
                                    "folds": folds, "seed": seed,
                                    "tiling": (options.tiling or DEFAULT_TILING) if tiles else None})
    base = model.backbone
    embedded = heads.embed_photos(base, photos.paths, augment=options.augment,
                                  tiling=options.tiling, progress=progress)
    grouping = photos.sources(groups_file=groups_file, embeddings=embedded.whole)
    groups = grouping.ids
    oof = heads.cross_validate(base, embedded, photos.y, groups, photos.labels, options, progress)
    allow_idx = list(np.flatnonzero(positive_folders(model, photos.labels, allow)))
    scores = oof.scores(allow_idx, tiles=tiles)
    return Scored(list(photos.paths), photos.labels, photos.y, positive, scores, groups,
                  [None] * len(scores), True, [], embedded.forwards, grouping.kind)


@dataclass
class Calibration:
    allow: str
    max_false_accept: float
    threshold: float
    accept_rate: float          # on all photos at the final threshold (in-sample)
    false_accept_rate: float
    heldout: HeldOut
    false_accepts: list[str]
    tiles: bool
    out_of_fold: bool
    positives: int
    negatives: int
    heldout_refused: list[str] = field(default_factory=list)        # allowed photos, held out
    heldout_let_through: list[str] = field(default_factory=list)    # other photos, held out
    grouping: str = "bursts"    # how the held-out folds kept sources together
    sources: int = 0            # sources of the allowed photos

    def to_dict(self) -> dict:
        return {"allow": self.allow, "max_false_accept": self.max_false_accept,
                "threshold": round(self.threshold, 6), "tiles": self.tiles,
                "positives": self.positives, "negatives": self.negatives,
                "accept_rate": round(self.accept_rate, 4),
                "false_accept_rate": round(self.false_accept_rate, 4),
                "heldout": self.heldout.to_dict(), "false_accepts": self.false_accepts,
                "heldout_refused": self.heldout_refused,
                "heldout_let_through": self.heldout_let_through,
                "out_of_fold_scores": self.out_of_fold, "grouping": self.grouping,
                "sources": self.sources}


def calibrate_scores(scored: Scored, allow: str, max_false_accept: float, *, folds: int = 5,
                     seed: int = 0, floor: float = 0.0, tiles: bool = True) -> Calibration:
    """The final threshold (chosen on all photos) and its held-out check (see module doc)."""
    neg = ~scored.positive
    threshold = choose_threshold(scored.scores[neg], max_false_accept, floor)
    held = cross_validated_threshold(scored.scores, scored.positive, scored.groups,
                                     max_false_accept, folds=folds, seed=seed, floor=floor)
    accepted = scored.scores >= threshold
    false_accepts = [p for p, a, n in zip(scored.paths, accepted, neg) if a and n]
    paths = np.asarray(scored.paths, dtype=object)
    return Calibration(allow, max_false_accept, threshold,
                       float(accepted[scored.positive].mean()), float(accepted[neg].mean()),
                       held, false_accepts, tiles, scored.out_of_fold,
                       int(scored.positive.sum()), int(neg.sum()),
                       paths[scored.positive & ~held.accepted].tolist(),
                       paths[neg & held.accepted].tolist(), scored.grouping,
                       len(set(scored.groups[scored.positive].tolist())))


def policy_for(model, calibration: Calibration, allow: str) -> Policy:
    head = getattr(model, "head", None)
    return Policy(allow=[a.strip() for a in allow.split(",")], threshold=calibration.threshold,
                  tiles=calibration.tiles, max_false_accept=calibration.max_false_accept,
                  model=model.name, weights_sha256=model.weights_sha256,
                  head=head.fingerprint if head is not None else None,
                  head_labels=list(head.labels) if head is not None else None,
                  calibration=calibration.to_dict())

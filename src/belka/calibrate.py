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

The threshold choice lives in :mod:`belka.thresholds` and the policy file in :mod:`belka.policy`
(both below the gate); this module, on top of the gate and the heads, scores folders with them
and re-exports their names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import BelkaError, UsageError
from .gate import Gate
from .heads.crossval import cross_validate
from .heads.embed import embed_photos
from .heads.fit import TrainOptions
from .heads.photos import read_folder
from .heads.training import seen_in_training
from .policy import POLICY_FORMAT, POLICY_VERSION, Policy  # noqa: F401  (re-exported)
from .thresholds import (HeldOut, choose_threshold, cross_validated_threshold,  # noqa: F401
                         fold_splits, plot_roc, roc_curve)
from .tiling import DEFAULT_TILING


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
    burst_share: float = 1.0    # the share of photos whose source is only their burst


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
    photos = read_folder(
        data_dir, purpose="calibration (the allowed class and other things)")
    positive_class = positive_folders(model, photos.labels, allow)
    if not positive_class.any():
        raise UsageError(f"{data_dir}: no sub-folder holds {allow!r}: name the folder of the "
                         f"allowed photos after it (e.g. squirrel/)")
    if positive_class.all():
        raise UsageError(f"{data_dir}: every sub-folder holds {allow!r}; add photos of other things")
    positive = positive_class[photos.y]
    head = getattr(model, "head", None)
    if head is not None and any(seen_in_training(head, photos.paths)):
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
                  grouping.ids, boxes, False, skipped, forwards, grouping.kind,
                  grouping.burst_share)


def _score_retrained(model, photos, positive, allow, tiles, folds, seed, progress,
                     groups_file=None) -> Scored:
    head = model.head
    options = TrainOptions.from_dict(head.training.get("options", {}))
    options = TrainOptions(**{**{k: getattr(options, k) for k in options.__dataclass_fields__},
                                    "folds": folds, "seed": seed,
                                    "tiling": (options.tiling or DEFAULT_TILING) if tiles else None})
    base = model.backbone
    embedded = embed_photos(base, photos.paths, augment=options.augment,
                                  tiling=options.tiling, progress=progress)
    grouping = photos.sources(groups_file=groups_file, embeddings=embedded.whole)
    groups = grouping.ids
    oof = cross_validate(base, embedded, photos.y, groups, photos.labels, options, progress)
    allow_idx = list(np.flatnonzero(positive_folders(model, photos.labels, allow)))
    scores = oof.scores(allow_idx, tiles=tiles)
    return Scored(list(photos.paths), photos.labels, photos.y, positive, scores, groups,
                  [None] * len(scores), True, [], embedded.forwards, grouping.kind,
                  grouping.burst_share)


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

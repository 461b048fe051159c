"""The whole training run (:func:`train`): embed, cross-validate, choose thresholds per class,
fit the final head, and the report."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..models.model import Model
from ..thresholds import choose_threshold, cross_validated_threshold
from .crossval import OutOfFold, cross_validate
from .embed import Embedded, embed_photos
from .fit import TrainOptions, _backbone_parts, _fit
from .head import Head, prior_classes
from .photos import LabelledPhotos

MIN_HEAD_THRESHOLD = 0.1             # calibrated head thresholds never go below this


@dataclass
class TrainResult:
    head: Head
    out_of_fold: OutOfFold
    photos: LabelledPhotos
    groups: np.ndarray
    embedded: Embedded
    confusion: np.ndarray            # K x K, rows true, columns predicted (whole image, OOF)
    seconds: dict


def _preprocessing_dict(model: Model) -> dict:
    p = model.preprocessing
    return {"size": p.size, "crop_fraction": p.crop_fraction, "mean": list(p.mean),
            "std": list(p.std), "policy": p.policy}


def train(model: Model, photos: LabelledPhotos, options: TrainOptions = TrainOptions(), *,
          embedded: Embedded | None = None, progress: bool | None = None,
          groups_file: str | os.PathLike | None = None) -> TrainResult:
    """Embed every photo once, cross-validate holding out whole sources (:mod:`belka.sources`:
    ``groups_file``, sub-folders, cameras, else bursts), choose thresholds, fit the final head
    on all.

    ``embedded`` (from :func:`embed_photos` with the same photos) skips the embedding step.
    """
    timings = {}
    started = time.perf_counter()
    if embedded is None:
        embedded = embed_photos(model, photos.paths, augment=options.augment,
                                tiling=options.tiling, progress=progress)
    timings["embedding"] = embedded.seconds
    grouping = photos.sources(groups_file=groups_file, embeddings=embedded.whole)
    groups = grouping.ids
    y, labels = photos.y, photos.labels
    t0 = time.perf_counter()
    oof = cross_validate(model, embedded, y, groups, labels, options, progress)
    timings["cross_validation"] = time.perf_counter() - t0

    # report: per-class precision / recall of the whole-image argmax, out of fold
    k = len(labels)
    predicted = np.array([p[0].argmax() for p in oof.probs])
    confusion = np.zeros((k, k), np.int64)
    for t, p in zip(y, predicted):
        confusion[t, p] += 1
    per_class = {}
    for c, label in enumerate(labels):
        tp = confusion[c, c]
        per_class[label] = {
            "photos": int(confusion[c].sum()),
            "sources": len(set(groups[y == c].tolist())),
            "precision": round(float(tp / confusion[:, c].sum()), 4) if confusion[:, c].sum() else None,
            "recall": round(float(tp / confusion[c].sum()), 4) if confusion[c].sum() else None}
    thresholds: dict = {"whole": {}, "tiles": {}}
    gate_report: dict = {}
    modes = [("whole", False)] + ([("tiles", True)] if options.tiling else [])
    for c, label in enumerate(labels):
        positive = y == c
        for mode, tiles in modes:
            scores = oof.scores([c], tiles=tiles)
            t = max(MIN_HEAD_THRESHOLD, choose_threshold(scores[~positive], options.max_false_accept))
            thresholds[mode][label] = round(float(t), 6)
            held = cross_validated_threshold(scores, positive, groups, options.max_false_accept,
                                             folds=options.folds, seed=options.seed,
                                             floor=MIN_HEAD_THRESHOLD)
            gate_report.setdefault(label, {})[mode] = {
                "threshold": thresholds[mode][label],
                "accept_rate": round(float((scores[positive] >= t).mean()), 4),
                "false_accept_rate": round(float((scores[~positive] >= t).mean()), 4),
                "heldout_accept_rate": round(held.heldout_accept_rate, 4),
                "heldout_false_accept_rate": round(held.heldout_false_accept_rate, 4),
                "heldout_refused": _named(photos, scores, positive & ~held.accepted, True),
                "heldout_false_accepts": _named(photos, scores, ~positive & held.accepted, False)}

    t0 = time.perf_counter()
    backbone, prior_mask = _backbone_parts(model, labels)
    from tqdm import tqdm

    with tqdm(total=options.epochs, desc="training", unit="epoch", leave=False,
              disable=(not progress) if progress is not None else None, dynamic_ncols=True) as bar:
        fitted = _fit(backbone, prior_mask, embedded, y, groups, np.arange(len(y)), labels,
                      options, progress=lambda _e: bar.update(1))
    timings["final_fit"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    report = {
        "photos": int(len(y)), "groups": int(len(set(groups.tolist()))),
        "grouping": grouping.kind, "burst_share": round(grouping.burst_share, 4),
        "agreement": bool(options.agreement),
        "folds": int(oof.fold.max() + 1), "classes": per_class,
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
        "gate": gate_report, "forwards": embedded.forwards,
        "seconds": {k_: round(v, 2) for k_, v in timings.items()},
        "skipped": [{"path": p, "error": e} for p, e in photos.skipped],
    }
    files = []
    for path, label_index in zip(photos.paths, y):
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        except OSError:
            digest = None
        files.append({"sha256_16": digest, "label": labels[label_index]})
    head = Head(list(labels), fitted.layer, fitted.references.astype(np.float16),
                fitted.reference_labels, fitted.floors,
                {"name": model.name, "weights_sha256": model.weights_sha256,
                 "embedding_dim": int(embedded.whole.shape[1])},
                _preprocessing_dict(model), prior_classes(model, labels), thresholds,
                options.tiling, {"options": options.to_dict(), "files": files}, report)
    return TrainResult(head, oof, photos, groups, embedded, confusion, timings)


def _named(photos: LabelledPhotos, scores: np.ndarray, mask: np.ndarray, ascending: bool,
           ) -> list[dict]:
    """The photos in ``mask`` as ``{"file": "class/name.jpg", "score": s}``, worst first."""
    rows = [{"file": f"{photos.labels[photos.y[i]]}/{Path(photos.paths[i]).name}",
             "score": round(float(scores[i]), 4)} for i in np.flatnonzero(mask)]
    return sorted(rows, key=lambda r: r["score"], reverse=not ascending)


def seen_in_training(head: Head, paths: Iterable[str]) -> list[bool]:
    """Whether each file's content (sha256) is among the head's training photos."""
    known = {f.get("sha256_16") for f in head.training.get("files", [])}
    out = []
    for path in paths:
        try:
            out.append(hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] in known)
        except OSError:
            out.append(False)
    return out

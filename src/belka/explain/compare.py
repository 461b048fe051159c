"""Which explanation method is most faithful on your photos? One table over a labelled folder.

:func:`compare_methods` explains every photo of a labelled folder (``DIR/squirrel/*.jpg``,
``DIR/cat/*.jpg``: each subfolder names the class or group to explain; photos directly in
``DIR`` explain their top prediction) with each method and scores every map with the metrics
of :mod:`belka.explain.metrics`: deletion and insertion AUC, ROAD (LeRF - MoRF, imputed), and
Average Drop / Increase in Confidence; the model-randomisation sanity check runs on the first
``sanity`` photos. Methods are ranked by their mean rank over the five scores (ties share);
the sanity check is reported beside the rank, not in it (a map can be faithful by these scores
and still fail it). A ``random`` row (a random map for the same targets) is the floor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "ablationcam", "fullgrad",
                   "layercam-fused", "saliency", "guidedbackprop", "deeplift")

# (attribute, True when higher is better)
SCORES = (("deletion", False), ("insertion", True), ("road", True), ("drop", False),
          ("increase", True))


@dataclass
class MethodScores:
    """One method's means over the photos (``drop`` and ``increase`` in percent)."""

    method: str
    images: int
    deletion: float
    insertion: float
    road: float
    drop: float
    increase: float
    sanity: float | None
    sanity_passed: str
    seconds: float
    rank: float = 0.0


@dataclass
class Comparison:
    folder: str
    images: int
    targets: dict
    rows: list[MethodScores]

    def to_dict(self) -> dict:
        return {"folder": self.folder, "images": self.images, "targets": self.targets,
                "methods": [asdict(r) for r in self.rows]}

    def to_text(self) -> str:
        head = ("rank", "method", "deletion ↓", "insertion ↑", "ROAD ↑", "avg drop % ↓",
                "increase % ↑", "sanity ρ", "s/image")
        lines = [f"{self.images} photos from {self.folder} ("
                 + ", ".join(f"{k}: {v}" for k, v in self.targets.items()) + ")", "",
                 "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            sanity = "-" if r.sanity is None else f"{r.sanity:+.2f} ({r.sanity_passed})"
            rank = "-" if r.method == "random" else f"{r.rank:.1f}"
            lines.append(f"| {rank} | {r.method} | {r.deletion:.3f} | {r.insertion:.3f} | "
                         f"{r.road:+.3f} | {r.drop:.1f} | {r.increase:.1f} | {sanity} | "
                         f"{'-' if r.method == 'random' else f'{r.seconds:.2f}'} |")
        lines += ["", "rank: mean of the five score ranks (1 = best; the random map is not "
                  "ranked); sanity: Spearman between the maps of the model and of a copy with "
                  "random top layers, passes below 0.5"]
        return "\n".join(lines)


def labelled_images(model, folder, limit: int | None = None) -> tuple[list[Path], list, dict]:
    """(files, targets, {subfolder: target}) of a labelled folder."""
    from .. import images

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"no such folder: {str(folder)!r}")
    files, targets, names = [], [], {}
    loose = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in images.IMAGE_EXTENSIONS)[:limit]
    files += loose
    targets += [None] * len(loose)
    if loose:
        names["(top level)"] = "top prediction"
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = images.iter_image_files([sub])[:limit]
        if not found:
            continue
        try:
            model.class_indices(sub.name)
        except Exception:
            raise UsageError(f"subfolder {sub.name!r} of {str(folder)!r} names no class or group "
                             "of the model; name subfolders after what they show (squirrel, "
                             "cat, 'fox squirrel')") from None
        files += found
        targets += [sub.name] * len(found)
        names[sub.name] = sub.name
    if not files:
        raise UsageError(f"no images in {str(folder)!r}")
    return files, targets, names


def compare_methods(model, folder, methods=DEFAULT_METHODS, *, limit: int | None = None,
                    steps: int = 16, sanity: int = 2, road_fractions=(0.2, 0.5, 0.8),
                    resize: str | None = None, progress=None, options: dict | None = None,
                    seed: int = 0) -> Comparison:
    """Score ``methods`` on a labelled folder (see the module docstring). ``options`` maps a
    method name to its keyword options."""
    from tqdm.auto import tqdm

    from .base import Explanation
    from .batch import explain_many
    from .metrics import (average_drop_increase, confidence_change, deletion, insertion, road,
                          sanity_check)

    files, targets, names = labelled_images(model, folder, limit)
    decoded = [model.decode(f) for f in files]
    options = options or {}
    rows = []
    rng = np.random.default_rng(seed)
    reference = None
    bar = tqdm(total=len(methods) * len(files), unit="map", desc="compare",
               disable=None if progress is None else not progress, leave=False)
    try:
        for method in ["random", *methods]:
            start = time.perf_counter()
            if method == "random":
                if reference is None:
                    reference = explain_many(model, decoded, target=targets, method="gradcam",
                                             resize=resize, progress=False)
                explanations = []
                for item in reference:
                    ex = item.explanation
                    raw = rng.random(ex.raw.shape).astype(np.float32)
                    explanations.append(Explanation(
                        heatmap=ex.heatmap, indices=ex.indices, label=ex.label, layer="-",
                        score=ex.score, probability=ex.probability, method="random", raw=raw,
                        image=ex.image, details=dict(ex.details)))
            else:
                items = explain_many(model, decoded, target=targets, method=method, resize=resize,
                                     progress=False, **options.get(method, {}))
                explanations = [i.explanation for i in items]
            made = 0.0 if method == "random" else time.perf_counter() - start
            dels, inss, roads, changes = [], [], [], []
            for ex in explanations:
                dels.append(deletion(model, None, ex, steps=steps).auc)
                inss.append(insertion(model, None, ex, steps=steps).auc)
                roads.append(road(model, None, ex, fractions=road_fractions).score)
                changes.append(confidence_change(model, None, ex))
                if method != "random":
                    bar.update(1)
            drop, increase = average_drop_increase(changes)
            rhos = []
            if method != "random":
                for ex in explanations[:sanity]:
                    rhos.append(sanity_check(model, None, ex, **options.get(method, {})).spearman)
            mean_rho = float(np.mean(rhos)) if rhos else None
            passed = "-" if not rhos else f"{sum(r < 0.5 for r in rhos)}/{len(rhos)}"
            rows.append(MethodScores(method, len(explanations), float(np.mean(dels)),
                                     float(np.mean(inss)), float(np.mean(roads)), drop, increase,
                                     mean_rho, passed, made / len(explanations)))
    finally:
        bar.close()
    ranked = [r for r in rows if r.method != "random"]
    for attr, higher in SCORES:
        values = np.array([getattr(r, attr) for r in ranked])
        order = -values if higher else values
        ranks = _average_ranks(order)
        for r, k in zip(ranked, ranks):
            r.rank += k / len(SCORES)
    ranked.sort(key=lambda r: r.rank)
    return Comparison(str(folder), len(files), names,
                      ranked + [r for r in rows if r.method == "random"])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    from .metrics import _ranks

    return _ranks(np.asarray(values, dtype=np.float64)) + 1.0

"""Are the heat maps faithful? Deletion/insertion AUC per method on the shared photos, how often
the map peaks on the squirrel, and the model-randomisation sanity check.

For every photo in ../shared/data/photos/squirrel (target: 335 "fox squirrel") and .../cat
(target: the "cat" group, 281-285), and every method, it explains the photo and measures:

* deletion AUC (lower is better: removing the top pixels first should kill the probability;
  removed pixels take the image's mean colour) and insertion AUC (higher is better: sharp
  pixels put back into a blurred copy, most important first), ``--steps`` steps each;
* for the squirrels whose hand-drawn box below covers at least 5 % of the photo ("large"), whether
  the heat map's peak falls inside the box plus a 5 % margin ("peak"), inside the tight box
  ("tight"), and the share of the heat map's mass inside the tight box divided by the box's
  share of the area ("mass": 1 is no better than uniform);
* on the first ``--sanity`` photos of each folder, the Spearman correlation between the map and
  the map of a copy with randomised top layers (low is good).

Two reference rows need no model gradients: ``random`` (a random map: the floor) and
``centre`` (a centred Gaussian blob: what a photographer's prior gives for free).

    python bench/faithfulness.py [--limit 8] [--steps 16] [--methods gradcam ig ...]
    python bench/faithfulness.py --methods scorecam --limit 3      # slow: a forward per channel
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import belka
from belka import images
from belka.explain import Explanation, deletion, explain, insertion, sanity_check

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
TARGETS = {"squirrel": 335, "cat": "cat"}
DEFAULT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam",
                   "saliency", "smoothgrad", "ig", "occlusion"]
FAST_OPTIONS = {"smoothgrad": {"samples": 16}, "ig": {"steps": 16}}

# Tight boxes (x0, y0, x1, y1, fractions of width and height) drawn by hand around the squirrel
# in each shared photo, read off a 10 x 10 grid overlay.
SQUIRREL_BOXES = {
    "cjmcdd_squirrel1.jpg": (0.38, 0.38, 0.75, 0.55),
    "cjmcdd_squirrel2.jpg": (0.30, 0.42, 0.60, 0.57),
    "cjmcdd_squirrel3.jpg": (0.28, 0.35, 0.58, 0.60),
    "cjmcdd_squirrel4.jpg": (0.23, 0.38, 0.80, 0.63),
    "cjmcdd_squirrel5.jpg": (0.33, 0.30, 0.90, 0.70),
    "cjmcdd_squirrel6.jpg": (0.22, 0.37, 0.83, 0.67),
    "cjmcdd_squirrel7.jpg": (0.27, 0.33, 0.70, 0.80),
    "cjmcdd_squirrel8.jpg": (0.33, 0.17, 0.62, 0.82),
    "cjmcdd_squirrel9.jpg": (0.27, 0.38, 0.55, 0.62),
    "cjmcdd_squirrel10.jpg": (0.36, 0.30, 0.62, 0.68),
    "cjmcdd_squirrel11.jpg": (0.25, 0.38, 0.78, 0.62),
    "cjmcdd_squirrel12.jpg": (0.30, 0.42, 0.50, 0.62),
    "cjmcdd_squirrel13.jpg": (0.18, 0.35, 0.87, 0.62),
    "cjmcdd_squirrel14.jpg": (0.30, 0.40, 0.85, 0.62),
    "eli_n02356798_fox_squirrel.jpg": (0.35, 0.20, 0.70, 0.65),
    "imagen_n02355227_10230_squirrel.jpg": (0.15, 0.38, 0.72, 0.72),
    "imagen_n02355227_12611_squirrel.jpg": (0.30, 0.15, 0.58, 0.62),
    "imagen_n02355227_4298_squirrel.jpg": (0.42, 0.28, 0.75, 0.65),
    "sift_squirrel1.jpg": (0.30, 0.20, 0.42, 0.40),
}
LARGE = 0.05      # box area fraction that makes a squirrel "large"
MARGIN = 0.05     # generous margin around a box when judging the peak


def peak_in_box(e: Explanation, box, margin: float = MARGIN) -> bool:
    x0, y0, x1, y1 = box
    h, w = e.heatmap.shape
    row, col = e.peak
    return ((x0 - margin) * w <= col <= (x1 + margin) * w
            and (y0 - margin) * h <= row <= (y1 + margin) * h)


def mass_ratio(e: Explanation, box) -> float:
    """Share of the heat inside the tight box over the box's share of the (seen) area."""
    x0, y0, x1, y1 = box
    heat = e.heatmap
    h, w = heat.shape
    inside = heat[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))]
    seen_rows, seen_cols = heat.max(axis=1) > 0, heat.max(axis=0) > 0
    seen = np.zeros_like(heat, dtype=bool)
    seen[np.ix_(seen_rows, seen_cols)] = True
    box_mask = np.zeros_like(seen)
    box_mask[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))] = True
    area = (box_mask & seen).sum() / max(1, seen.sum())
    total = float(heat.sum())
    return float(inside.sum()) / total / area if total > 0 and area > 0 else float("nan")


def reference(model, image, target, kind: str, seed: int) -> Explanation:
    """A map that uses no explanation method, wrapped like one for the metrics."""
    e = explain(model, image, target=target)                  # for the target and the image
    s = model.preprocessing.size
    if kind == "random":
        raw = np.random.default_rng(seed).random((s, s)).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:s, 0:s] + 0.5
        raw = np.exp(-(((yy - s / 2) ** 2 + (xx - s / 2) ** 2) / (2 * (s / 4) ** 2))).astype(np.float32)
    from belka.explain.base import geometry, heatmap_on_image

    geo = geometry(e.image.shape[0], e.image.shape[1], s, e.details["resize"],
                   model.preprocessing.crop_fraction)
    return Explanation(heatmap_on_image(raw, geo), e.indices, e.label, "-", e.score,
                       e.probability, kind, raw, e.image, None, dict(e.details))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--folders", nargs="+", default=["squirrel", "cat"])
    parser.add_argument("--methods", nargs="+", default=["random", "centre", *DEFAULT_METHODS])
    parser.add_argument("--limit", type=int, default=0, help="photos per folder (0: all)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--sanity", type=int, default=2, help="photos per folder to sanity-check")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = belka.load()
    rows = []
    for folder in args.folders:
        paths = sorted(p for p in (args.photos / folder).iterdir()
                       if p.suffix.lower() in images.IMAGE_EXTENSIONS)
        paths = paths[:args.limit] if args.limit else paths
        decoded = [images.decode(p) for p in paths]
        target = TARGETS.get(folder)
        for method in args.methods:
            dels, inss, rhos, hits, tight, masses, large, seconds = [], [], [], 0, 0, [], 0, 0.0
            for i, (path, image) in enumerate(zip(paths, decoded)):
                start = time.perf_counter()
                if method in ("random", "centre"):
                    e = reference(model, image, target, method, seed=i)
                else:
                    e = explain(model, image, target=target, method=method,
                                **FAST_OPTIONS.get(method, {}))
                seconds += time.perf_counter() - start
                dels.append(deletion(model, None, e, steps=args.steps).auc)
                inss.append(insertion(model, None, e, steps=args.steps).auc)
                box = SQUIRREL_BOXES.get(path.name) if folder == "squirrel" else None
                if box and (box[2] - box[0]) * (box[3] - box[1]) >= LARGE:
                    large += 1
                    hits += peak_in_box(e, box)
                    tight += peak_in_box(e, box, 0.0)
                    masses.append(mass_ratio(e, box))
                if i < args.sanity and method not in ("random", "centre"):
                    rhos.append(sanity_check(model, None, e, **FAST_OPTIONS.get(method, {})).spearman)
            rows.append((folder, method, len(paths), np.mean(dels), np.mean(inss),
                         f"{hits}/{large}" if large else "-", f"{tight}/{large}" if large else "-",
                         f"{np.nanmean(masses):.2f}" if masses else "-",
                         f"{np.mean(rhos):+.2f}" if rhos else "-", seconds / max(1, len(paths))))
            r = rows[-1]
            print(f"{r[0]:9s} {r[1]:12s} n={r[2]:2d}  deletion {r[3]:.3f}  insertion {r[4]:.3f}  "
                  f"peak {r[5]:>5s}  tight {r[6]:>5s}  mass {r[7]:>4s}  sanity {r[8]:>5s}  "
                  f"{r[9]:6.2f} s/img", flush=True)
    print("\n| folder | method | photos | deletion AUC (lower better) | insertion AUC (higher "
          "better) | peak on large squirrel (+5 % margin) | peak in tight box | mass ratio | "
          "sanity Spearman | s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]} | {r[6]} | {r[7]} "
              f"| {r[8]} | {r[9]:.2f} |")


if __name__ == "__main__":
    main()

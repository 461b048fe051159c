"""How well the packaged model and the squirrel gate do on real photos.

Reads ../shared/data/photos/<folder>/ (squirrel, cat, other, mixed) and prints, per folder:
top-1 and top-5 hit rates of the expected ImageNet classes (squirrel -> 335, cat -> 281-285,
other -> the manifest's `imagenet_label` where given), and the squirrel gate's accept rate at
several thresholds (for squirrels that is the accept rate; for cats and other things, the false
accept rate).

    python bench/accuracy.py [--photos DIR] [--model NAME] [--resize crop]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

import belka
from belka.gate import DEFAULT_THRESHOLD
from belka.scan import scan

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"squirrel": [335], "cat": [281, 282, 283, 284, 285]}
THRESHOLDS = tuple(sorted({0.005, 0.01, 0.02, 0.05, DEFAULT_THRESHOLD, 0.2, 0.5}))


def manifest_labels(photos: Path) -> dict[str, list[int]]:
    """Per-file expected class from the manifest's `imagenet_label` column ("335 fox squirrel")."""
    out: dict[str, list[int]] = {}
    manifest = photos / "manifest.csv"
    if manifest.exists():
        for row in csv.DictReader(manifest.open()):
            label = (row.get("imagenet_label") or "").strip()
            if label:
                out[row["file"]] = [int(label.split()[0])]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--resize", default="crop", choices=["crop", "squash", "letterbox"])
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"no photos at {args.photos}: pass --photos DIR", file=sys.stderr)
        return 2

    model = belka.load(args.model)
    per_file = manifest_labels(args.photos)
    squirrel = model.class_indices("squirrel")
    print(f"model {model.name}, resize {args.resize}, photos {args.photos}\n")
    header = f"{'folder':10} {'n':>4} {'top-1':>7} {'top-5':>7}   " + " ".join(
        f"{'P>=' + format(t, 'g'):>8}" for t in THRESHOLDS)
    print(header + "\n" + "-" * len(header))
    for folder in sorted(p for p in args.photos.iterdir() if p.is_dir()):
        probs, hits1, hits5, known = [], 0, 0, 0
        for item in scan(model, [folder], resize=args.resize, progress=False):
            if item.error:
                print(f"  skipped {item.path}: {item.error}", file=sys.stderr)
                continue
            p = item.probabilities
            probs.append(p)
            rel = str(Path(item.path).relative_to(args.photos))
            expected = per_file.get(rel, EXPECTED.get(folder.name))
            if expected:
                known += 1
                order = np.argsort(-p)
                hits1 += int(order[0] in expected)
                hits5 += int(bool(set(order[:5]) & set(expected)))
        if not probs:
            continue
        scores = np.stack(probs)[:, squirrel].sum(axis=1)
        rates = " ".join(f"{(scores >= t).mean():8.0%}" for t in THRESHOLDS)
        top1 = f"{hits1 / known:7.0%}" if known else f"{'-':>7}"
        top5 = f"{hits5 / known:7.0%}" if known else f"{'-':>7}"
        print(f"{folder.name:10} {len(probs):4} {top1} {top5}   {rates}")
    print(f"\nP>=t columns: share of the folder the squirrel gate accepts at threshold t "
          f"(the default is {DEFAULT_THRESHOLD:g}). For squirrel, higher is better; for the "
          f"others it is the false-accept rate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

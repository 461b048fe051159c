"""Where the scan's decoding time goes: CPU time per image for Pillow's own open + draft + load,
for belka's decode, and for decode + resize (what every scan pays before the model runs).

    python bench/decode.py [--photos DIR] [--repeats 3] [--top 8]

Thread CPU time, best of --repeats per file, so another busy process on the machine inflates it
less than wall time. Prints the means, then per format, then the dearest files.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

import belka
from belka import images
from belka.pipeline import draft_size

ROOT = Path(__file__).resolve().parents[1]


def cpu_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return 1000 * best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in
                   {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
    if not files:
        print(f"no photos under {args.photos}: pass --photos DIR", file=sys.stderr)
        return 2
    prep = belka.load(engine="torch").preprocessing
    draft = draft_size(prep)

    rows = []
    for path in files:
        data = path.read_bytes()

        def pillow() -> None:
            with Image.open(io.BytesIO(data)) as im:
                if im.format == "JPEG":
                    im.draft("RGB", draft)
                im.load()

        with Image.open(path) as im:
            fmt, size = im.format, im.size
        rows.append({"file": path.name, "format": fmt, "size": size, "bytes": len(data),
                     "pillow": cpu_ms(pillow, args.repeats),
                     "decode": cpu_ms(lambda: images.decode(data, draft=draft), args.repeats),
                     "resized": cpu_ms(lambda: prep.resize(images.decode(data, draft=draft)),
                                       args.repeats)})
    print(f"{len(files)} files under {args.photos}, draft size {draft[0]}x{draft[1]}; "
          f"CPU ms per image, best of {args.repeats}\n")
    print("| step | mean | median |\n|---|---|---|")
    for key, name in (("pillow", "Pillow open + draft + load"), ("decode", "belka decode"),
                      ("resized", "belka decode + resize (a scan's cost)")):
        values = [r[key] for r in rows]
        print(f"| {name} | {statistics.mean(values):.2f} | {statistics.median(values):.2f} |")
    by_format = defaultdict(list)
    for r in rows:
        by_format[r["format"]].append(r["resized"])
    print("\n| format | files | decode + resize, mean |\n|---|---|---|")
    for fmt, values in sorted(by_format.items()):
        print(f"| {fmt} | {len(values)} | {statistics.mean(values):.2f} |")
    print(f"\ndearest {args.top}:\n")
    print("| file | format | size | kB | decode + resize | of which Pillow |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["resized"])[:args.top]:
        print(f"| {r['file']} | {r['format']} | {r['size'][0]}x{r['size'][1]} | "
              f"{r['bytes'] / 1000:.0f} | {r['resized']:.1f} | {r['pillow']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

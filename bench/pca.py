"""Benchmark eigen-images on the shared photos: fit time, k vs PSNR vs bytes, squirrel baseline.

    .venv/bin/python bench/pca.py [--photos ../shared/data/photos] [--out /tmp/belka-bench-pca]
                                  [--variants 4] [--size 64] [--threads N] [--repeat 3]

1. Fitting time, randomized vs incremental, on a few hundred images: every shared photo in
   ``--variants`` versions (centre crop, mirrored, squashed, zoomed), decoded once so the table
   times the PCA itself; plus the time to read and resize the photos from disk.
2. k vs numbers per image, bytes against raw pixels, and PSNR: on the images the model was fitted
   on, and on held-out photos (5 folds, numbered series kept in one fold).
3. The PCA-codes squirrel-vs-not baseline, cross-validated.

Pictures (eigen-images grid, explained-variance curve, reconstruction strip of a held-out photo)
go to ``--out``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from belka import images  # noqa: E402
from belka.ops import pca  # noqa: E402


def variants(photo: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """Up to 5 versions of one photo at size x size: crop, mirrored crop, squash, zoom, mirrored squash."""
    crop = images.resize(photo, size, "crop", crop_fraction=1.0)
    squash = images.resize(photo, size, "squash")
    zoom = images.resize(photo, size, "crop", crop_fraction=0.75)
    return [crop, crop[:, ::-1], squash, zoom, squash[:, ::-1]][:count]


def best_time(fn, repeat: int) -> tuple[float, float]:
    """Fastest wall-clock and CPU time of ``repeat`` calls (CPU time is steadier on a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def fit_times(data: list[np.ndarray], size: int, ks: list[int], repeat: int) -> None:
    print(f"\n## Fit time, {len(data)} images at {size}x{size} RGB (d = {size * size * 3}), best of {repeat}\n")
    print("Wall-clock and CPU seconds; incremental reads batches of 256 images (at least k).\n")
    print("| k | randomized wall / CPU (s) | incremental wall / CPU (s) | incremental / randomized (CPU) |")
    print("|---:|---:|---:|---:|")
    for k in ks:
        r = best_time(lambda: pca.fit(data, k, size=(size, size), progress=False), repeat)
        i = best_time(lambda: pca.fit(data, k, size=(size, size), method="incremental", batch_size=256,
                                      progress=False), repeat)
        print(f"| {k} | {r[0]:.2f} / {r[1]:.2f} | {i[0]:.2f} / {i[1]:.2f} | {i[1] / r[1]:.1f}x |")


def psnr_table(files: list[Path], fitted: pca.EigenImages, fitted_rows: np.ndarray, photos_rows: np.ndarray,
               groups: np.ndarray, ks: list[int], size: int) -> None:
    from sklearn.model_selection import GroupKFold

    raw = size * size * 3
    held: dict[int, list[float]] = {k: [] for k in ks}
    max_held = len(files)
    for train, test in GroupKFold(n_splits=5).split(photos_rows, groups=groups):
        model = pca.fit(list(photos_rows[train].reshape(-1, size, size, 3)), min(max(ks), len(train) - 1),
                        size=(size, size), progress=False)
        max_held = min(max_held, model.k)
        codes = model.transform(photos_rows[test])
        for k in ks:
            if k <= model.k:
                held[k].append(float(np.mean((model.inverse(codes[:, :k]) - photos_rows[test]) ** 2)))
    codes = fitted.transform(fitted_rows)
    print(f"\n## k vs size vs PSNR ({size}x{size} RGB: {raw} bytes of raw pixels per image)\n")
    print(f"PSNR on the fitted set: the {len(fitted_rows)} images the model was fitted on. Held-out: 5 folds over "
          f"the {len(files)} photos (numbered series in one fold), a model fitted on the other folds "
          f"(at most {max_held} components).\n")
    print("| k | numbers / image | bytes float32 | bytes float16 | raw / float16 | PSNR fitted (dB) | PSNR held-out (dB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        if k > fitted.k:
            continue
        fit_mse = float(np.mean((fitted.inverse(codes[:, :k]) - fitted_rows) ** 2))
        out = f"{pca.psnr(float(np.mean(held[k]))):.1f}" if len(held[k]) == 5 else "-"
        print(f"| {k} | {k} | {4 * k} | {2 * k} | {raw / (2 * k):.0f}x | {pca.psnr(fit_mse):.1f} | {out} |")


def baseline_table(photos: Path) -> None:
    print("\n## Squirrel vs not from PCA codes (5-fold grouped cross-validation)\n")
    print("| grouping | classifier | size | k | accuracy | balanced accuracy | always 'not squirrel' | tp / fn / fp / tn |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for grouping in ("series", "pixels"):
        for classifier in ("logistic", "knn"):
            for size, k in (((32, 32), 16), ((64, 64), 64)):
                r = pca.baseline_report(photos, k=k, size=size, classifier=classifier, grouping=grouping)
                tn, fp, fn, tp = r.confusion
                print(f"| {grouping} ({r.n_groups} groups) | {classifier} | {size[0]}x{size[1]} | {r.k} "
                      f"| {r.accuracy:.3f} | {r.balanced_accuracy:.3f} | {r.majority_accuracy:.3f} "
                      f"| {tp} / {fn} / {fp} / {tn} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(os.environ.get("BELKA_SHARED", ROOT.parent / "shared"))
                        / "data" / "photos")
    parser.add_argument("--out", type=Path, default=Path("/tmp/belka-bench-pca"))
    parser.add_argument("--variants", type=int, default=4, help="versions of each photo (1-5)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's)")
    args = parser.parse_args()
    if not args.photos.is_dir():
        sys.exit(f"no photos at {args.photos}")
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", pca.PcaWarning)

    import scipy.linalg  # noqa: F401  (load every BLAS before limiting its threads)
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    limits = threadpool_limits(args.threads) if args.threads else None
    blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info())
    print(f"# belka PCA benchmark\n\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {blas}")

    files, labels = pca.labelled_folder(args.photos)
    size = args.size
    start = time.perf_counter()
    photos_rows = pca._matrix(files, (size, size), False, "crop")
    read = time.perf_counter() - start
    print(f"\nReading, decoding and resizing {len(files)} photos from disk: {read:.2f} s "
          f"({1000 * read / len(files):.1f} ms per photo)")

    decoded = [images.decode(f, draft=(2 * size, 2 * size)) for f in files]
    data = [v for photo in decoded for v in variants(photo, size, args.variants)]
    fit_times(data, size, [16, 64, 340], args.repeat)

    fitted = pca.fit(data, 340, size=(size, size), progress=False)
    fitted_rows = np.stack([pca._pixels(im, (size, size), False, "crop") for im in data])
    groups = pca.near_duplicate_groups(photos_rows, (size, size, 3), names=[f.name for f in files])
    psnr_table(files, fitted, fitted_rows, photos_rows, groups, [1, 5, 10, 20, 50, 85, 100, 200, 340], size)

    # Pictures: the model of all variants, and a strip of a photo none of the fit saw.
    fitted.show(args.out / "eigen-grid.png", curve=args.out / "eigen-curve.png")
    held_out = next(f for f, label in zip(files, labels) if label == 1)
    others = [v for f, photo in zip(files, decoded) if f != held_out for v in variants(photo, size, args.variants)]
    pca.fit(others, 340, size=(size, size), progress=False).reconstruction_strip(
        held_out, [5, 20, 50, 100, 200, 340], args.out / "reconstruction-strip.png")
    print(f"\nPictures in {args.out}: eigen-grid.png, eigen-curve.png, reconstruction-strip.png ({held_out.name}, held out)")

    baseline_table(args.photos)
    if limits is not None:
        limits.restore_original_limits()


if __name__ == "__main__":
    main()

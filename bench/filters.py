"""Megapixels per second of ``belka.ops.filters.convolve`` next to SciPy and OpenCV.

All three compute the same thing on the same synthetic uint8 RGB image: cross-correlation with
mirror padding (belka ``reflect`` = ``scipy.ndimage`` ``mirror`` = OpenCV ``BORDER_REFLECT_101``)
and a uint8 result. SciPy's ``ndimage.convolve`` flips the kernel, so it gets the flipped kernel.
The outputs are compared as a sanity check; timings are the best of ``--repeat`` runs and nothing
is asserted about them. A library that is not installed gets a note instead of a column.

    python bench/filters.py                 # 12 MP, 3x3 and 9x9
    python bench/filters.py --megapixels 24 --sizes 3 5 9 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from belka.ops.filters import convolve


def synthetic_image(megapixels: float, seed: int = 0) -> np.ndarray:
    """A 4:3 RGB uint8 image: smooth gradients plus noise, so filters have work to do."""
    h = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    w = int(round(megapixels * 1e6 / h))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
    noise = rng.normal(0, 20, size=(h, w, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def blur_kernel(size: int) -> np.ndarray:
    """A normalised, non-separable-looking kernel (Gaussian plus a small asymmetric term)."""
    r = size // 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    k = np.exp(-(x * x + y * y) / (2 * max(r, 1) ** 2)) + 0.05 * (x + 2 * y) / size
    return k / k.sum()


def best_time(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    result = fn()  # warm-up (thread pools, oneDNN kernels)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def runners(image: np.ndarray, k: np.ndarray) -> dict[str, Callable[[], np.ndarray] | str]:
    """name -> callable, or name -> note when the library is missing."""
    out: dict[str, Callable[[], np.ndarray] | str] = {
        "belka": lambda: convolve(image, k, padding="reflect"),
    }
    try:
        from scipy import ndimage

        flipped = k[::-1, ::-1, None]  # convolve() flips; flip back to get correlation

        def scipy_run() -> np.ndarray:
            result = ndimage.convolve(image.astype(np.float32), flipped, mode="mirror")
            return np.clip(np.rint(result), 0, 255).astype(np.uint8)

        out["scipy"] = scipy_run
    except ImportError:
        out["scipy"] = "scipy is not installed (pip install scipy)"
    try:
        import cv2

        out["opencv"] = lambda: cv2.filter2D(image, -1, k.astype(np.float32),
                                             borderType=cv2.BORDER_REFLECT_101)
    except ImportError:
        out["opencv"] = "OpenCV is not installed (pip install opencv-python-headless)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    image = synthetic_image(args.megapixels)
    mp = image.shape[0] * image.shape[1] / 1e6
    print(f"image {image.shape[1]}x{image.shape[0]} RGB uint8 ({mp:.1f} MP), best of "
          f"{args.repeat}; MP/s = megapixels (all 3 channels) per second")
    import torch

    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {os.cpu_count()} CPUs, "
          f"load average {load}")

    rows = []
    notes: set[str] = set()
    for size in args.sizes:
        k = blur_kernel(size)
        speeds: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for name, run in runners(image, k).items():
            if isinstance(run, str):
                notes.add(run)
                continue
            seconds, outputs[name] = best_time(run, args.repeat)
            speeds[name] = mp / seconds
        agree = ", ".join(
            f"{name} max|diff| {int(np.abs(out.astype(int) - outputs['belka']).max())}"
            for name, out in outputs.items() if name != "belka")
        rows.append((f"{size}x{size}", speeds, agree))

    names = ["belka", "scipy", "opencv"]
    header = f"{'kernel':<8}" + "".join(f"{n + ' MP/s':>14}" for n in names)
    header += f"{'belka/scipy':>13}{'belka/opencv':>14}"
    print(header)
    print("-" * len(header))
    for label, speeds, agree in rows:
        line = f"{label:<8}"
        line += "".join(f"{speeds[n]:>14.1f}" if n in speeds else f"{'-':>14}" for n in names)
        for other, width in (("scipy", 13), ("opencv", 14)):
            ratio = speeds["belka"] / speeds[other] if other in speeds else None
            line += f"{ratio:>{width}.2f}" if ratio else f"{'-':>{width}}"
        print(line + f"   ({agree})" if agree else line)
    for note in sorted(notes):
        print(f"note: {note}")


if __name__ == "__main__":
    main()

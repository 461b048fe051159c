"""End-to-end classification of a folder of JPEGs, and the memory of a long scan.

* ``end_to_end_rows``: images/s of belka's pipeline (parallel decode with JPEG draft mode,
  batched ONNX Runtime) and its variants against the naive loop (Pillow full decode, resize,
  PyTorch eager, one image at a time), interleaved round by round on the same files.
* ``rss_rows``: a long scan with the pipeline, peak RSS sampled every batch and printed at
  checkpoints, to show that memory stays flat whatever the number of files.

Run alone with ``python bench/scan.py [--quick]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import Row, interleaved  # noqa: E402


def repeat_files(sources: Sequence[Path], n: int, folder: Path) -> list[Path]:
    """``n`` files in ``folder`` that cycle through ``sources`` (symbolic links, or copies where
    links are not allowed), each under its own name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        source = sources[i % len(sources)]
        link = folder / f"{i:05d}_{source.name}"
        if not link.exists():
            try:
                link.symlink_to(source.resolve())
            except OSError:
                link.write_bytes(source.read_bytes())
        out.append(link)
    for path in out:  # read every byte once so that the first contender is not the cold one
        path.read_bytes()
    return out


def naive(model, files: Sequence[Path]) -> None:
    """The loop a first script would write: full decode, resize, eager forward, one by one."""
    prep = model.preprocessing
    for f in files:
        with Image.open(f) as im:
            pixels = np.asarray(im.convert("RGB"))
        x = prep.normalize(prep.resize(pixels)[None])
        with torch.inference_mode():
            torch.softmax(model.module(x), dim=1).numpy()


def end_to_end_rows(model, onnx_engine, files: Sequence[Path], *, quick: bool = False) -> list[Row]:
    """Images/s over ``files``; the naive loop runs on a slice (it is slow), rates compared."""
    from belka.engine import OnnxEngine, TorchEngine
    from belka.pipeline import iter_predictions

    # Eager PyTorch is slow and suffers most on a busy machine: it runs on a slice of the files.
    naive_files = files[:10 if quick else 30]
    torch_files = files[:96]

    def run(engine, subset: Sequence[Path] = files, **options) -> Callable[[], None]:
        options = {"batch_size": 32, "workers": 2, **options}

        def go() -> None:
            for result in iter_predictions(engine, subset, **options):
                assert result.error is None, result.error
        return go

    def belka_scan() -> None:
        from belka.scan import scan

        for item in scan(model, [str(f) for f in files], progress=False):
            assert item.error is None, item.error

    contenders = {
        "naive (full decode + eager, 1 by 1)": lambda: naive(model, naive_files),
        "belka scan (belka classify's path)": belka_scan,
        "belka pipeline onnx (draft)": run(onnx_engine, draft=True),
    }
    if not quick:
        no_spin = OnnxEngine(model, spin=False)
        contenders.update({
            "belka pipeline onnx, no draft": run(onnx_engine, draft=False),
            "belka pipeline onnx, ORT spin off": run(no_spin, draft=True),
            "belka pipeline onnx, 1 decode worker": run(onnx_engine, workers=1, draft=True),
            "belka pipeline torch (draft)": run(TorchEngine(model), torch_files, draft=True),
        })
    counts = {name: len(files) for name in contenders}
    counts.update({"naive (full decode + eager, 1 by 1)": len(naive_files),
                   "belka pipeline torch (draft)": len(torch_files)})
    medians = interleaved(contenders, rounds=2 if quick else 3, gap_s=0.2, warmup=0)
    base = "naive (full decode + eager, 1 by 1)"
    return [Row("end-to-end", name, seconds, counts[name], None if name == base else base,
                f"{counts[name]} files") for name, seconds in medians.items()]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process (Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_rows(onnx_engine, files: Sequence[Path], checkpoints: Sequence[int]) -> list[Row]:
    """Scan ``files`` once with the pipeline, sampling RSS after every batch; one row per
    checkpoint with the images/s so far and the peak RSS since the scan began."""
    from belka.pipeline import iter_predictions

    reset = _reset_peak_rss()
    start_rss = _status_kib("VmRSS") or 0
    peak_sampled = start_rss
    rows = []
    begin = time.perf_counter()
    for done, result in enumerate(iter_predictions(onnx_engine, files, batch_size=32), start=1):
        if done % 32 == 0 or done in checkpoints:
            peak_sampled = max(peak_sampled, _status_kib("VmRSS") or 0)
        if done in checkpoints:
            hwm = _status_kib("VmHWM") if reset else None
            peak = max(peak_sampled, hwm or 0)
            rows.append(Row("scan memory", f"pipeline onnx, {done} images",
                            time.perf_counter() - begin, done, None,
                            f"peak RSS {peak / 1024:.0f} MiB (start {start_rss / 1024:.0f}, "
                            f"+{(peak - start_rss) / 1024:.0f})"))
    return rows


def small_photos(files: Sequence[Path], max_bytes: int = 200_000) -> list[Path]:
    """The JPEGs under ``max_bytes``, to repeat into a long scan."""
    return [f for f in files if f.suffix.lower() in (".jpg", ".jpeg")
            and os.path.getsize(f) <= max_bytes] or list(files)


if __name__ == "__main__":
    from bench.run import main

    main(["--only", "scan", *sys.argv[1:]])

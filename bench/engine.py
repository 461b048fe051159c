"""Model forward speed: belka's engines against plain PyTorch eager and raw ONNX Runtime on the
same exported graph, plus the machine's sgemm rate (the yardstick) and the optional int8 graph.

Shared by ``bench/run.py`` (the ``make bench`` entry); also runnable alone:

    python bench/engine.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GFLOP_PER_IMAGE = 0.77  # EfficientNet-Lite0 at 224 x 224: 0.385 G multiply-adds
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


@dataclass
class Row:
    """One measured contender: median seconds per call for ``images`` images per call."""

    section: str
    name: str
    seconds: float
    images: int
    baseline: str | None = None  # the row of the same section this one is compared with
    note: str = ""

    @property
    def per_image(self) -> float:
        return self.seconds / self.images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int, calls: int = 1,
                gap_s: float = 0.05, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, measured in ``rounds`` rounds in which every
    contender takes a turn (starting one further along each round), so that a noisy machine
    hurts them alike. ``gap_s`` of sleep before each turn lets the previous contender's idle
    threads stop spinning."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    items = list(contenders.items())
    for r in range(rounds):
        for name, fn in items[r % len(items):] + items[:r % len(items)]:
            time.sleep(gap_s)
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n float32 matrix product, with torch (MKL/OpenMP) and NumPy's BLAS."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    medians = interleaved({"torch.mm": lambda: torch.mm(ta, tb), "numpy @": lambda: a @ b},
                          rounds=repeats, gap_s=0.1)
    time.sleep(0.2)  # let the BLAS threads go idle before anything else is timed
    return {name: 2 * n**3 / s / 1e9 for name, s in medians.items()}


def photo_files(folder: Path = PHOTOS) -> list[Path]:
    """The shared photos (JPEG and PNG), sorted; empty when ../shared is absent."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def forward_rows(model, onnx_engine, *, quick: bool = False,
                 int8_path: Path | None = None) -> list[Row]:
    """Batch 1 and 32: belka's ONNX engine (float input, and uint8 images in -> probabilities),
    raw ONNX Runtime with default session options on the same file, PyTorch eager, and int8."""
    import onnxruntime as ort

    raw = ort.InferenceSession(str(onnx_engine.path), providers=["CPUExecutionProvider"])
    raw_input = raw.get_inputs()[0].name
    int8 = None
    if int8_path is not None:
        from belka.engine import OnnxEngine

        int8 = OnnxEngine(model, path=int8_path)
    size = model.preprocessing.size
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    for batch in (1, 32):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        x = onnx_engine.prepare(images)
        tensor = torch.from_numpy(x)

        def eager() -> None:
            with torch.inference_mode():
                model.module(tensor)

        def raw_run() -> None:
            raw.run(None, {raw_input: x})

        contenders = {
            "raw onnxruntime": raw_run,
            "belka onnx .logits": lambda: onnx_engine.logits(x),
            "belka onnx uint8 -> probs": lambda: onnx_engine.probabilities_from_batch(images),
        }
        if int8 is not None:
            contenders["belka onnx int8 .logits"] = lambda: int8.logits(x)
        # The ONNX Runtime contenders: one call per turn and many turns, because fine-grained
        # alternation averages out a busy machine far better than blocks of one contender.
        section = f"forward b{batch}"
        rounds = (20 if quick else 60) if batch == 1 else (3 if quick else 9)
        for name, seconds in interleaved(contenders, rounds=rounds, gap_s=0.01).items():
            rows.append(Row(section, name, seconds, batch,
                            None if name == "raw onnxruntime" else "raw onnxruntime"))
        # Eager PyTorch is 5-50x slower: fewer rounds of its own, against raw ONNX Runtime again.
        base = "raw onnxruntime (eager's rounds)"
        rounds = (3 if quick else 9) if batch == 1 else (2 if quick else 5)
        medians = interleaved({base: raw_run, "pytorch eager": eager}, rounds=rounds, gap_s=0.05)
        rows += [Row(section, base, medians[base], batch, "raw onnxruntime"),
                 Row(section, "pytorch eager", medians["pytorch eager"], batch, base)]
    return rows


def int8_agreement(model, fp32_engine, int8_path: Path, files: Sequence[Path]) -> str:
    """Top-1 agreement of the int8 graph with fp32 on ``files`` (the photos it was not
    calibrated on), and how often fp32's top-1 is still in int8's top-5."""
    from belka.engine import OnnxEngine
    from belka.pipeline import iter_predictions

    int8 = OnnxEngine(model, path=int8_path)
    same = in_top5 = total = 0
    for a, b in zip(iter_predictions(fp32_engine, files), iter_predictions(int8, files)):
        if a.error or b.error:
            continue
        total += 1
        same += int(a.probabilities.argmax() == b.probabilities.argmax())
        in_top5 += int(a.probabilities.argmax() in np.argsort(-b.probabilities)[:5])
    return (f"int8 vs fp32 top-1 agreement on {total} held-out photos: {same}/{total} = "
            f"{same / max(total, 1):.1%} (fp32 top-1 within int8 top-5: {in_top5 / max(total, 1):.1%})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from bench.run import main

    main(["--only", "forward", *sys.argv[1:]])

"""Seconds and peak memory per picture: style transfer at 256, 512 and 1024 px (multi-scale,
the defaults: 120 steps), one 256 px run at a single scale for comparison, and feature
visualisation per objective (class, channel, neuron, direction, a 16-channel grid, four
diverse pictures).

Each case runs in a fresh Python process, so its peak resident memory (``ru_maxrss``) is its
own; the table also gives the peak over the process after the model is loaded ("work"), and
on CUDA the device's peak allocation. The content photo is a shared squirrel
(``../shared/data/photos/squirrel/cjmcdd_squirrel10.jpg``; belka's bundled cat when shared is
absent) and the style the built-in ``strokes`` pattern.

    python bench/pictures.py            # every case (several minutes on two cores)
    python bench/pictures.py --quick    # a quarter of the steps
    python bench/pictures.py --only style-256 class
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BELKA_SHARED", ROOT.parent / "shared"))
SQUIRREL = SHARED / "data" / "photos" / "squirrel" / "cjmcdd_squirrel10.jpg"
LAYER = "block5c_expand_activation"

CASES = {
    "style-256": ("style", dict(size=256)),
    "style-256-single-scale": ("style", dict(size=256, multiscale=False)),
    "style-512": ("style", dict(size=512)),
    "style-1024": ("style", dict(size=1024)),
    "class": ("visualize", dict(target=335)),
    "channel": ("visualize", dict(layer=LAYER, channel=1)),
    "neuron": ("visualize", dict(layer=LAYER, channel=1, neuron=True)),
    "direction": ("visualize", dict(layer=LAYER, direction="1:1,3:1,13:-1")),
    "grid-16@128": ("visualize", dict(layer=LAYER, channels=list(range(16)), size=128)),
    "diversity-4@128": ("visualize", dict(target=335, diversity=4, size=128)),
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads): less sensitive than wall time
    to other programs sharing the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(name: str, quick: bool) -> dict:
    """One case in this process; prints one JSON line."""
    import numpy as np
    import torch

    import belka
    from belka.optimize import patterns, style, visualize

    model = belka.load(engine="torch")
    kind, kwargs = CASES[name]
    kwargs = dict(kwargs)
    content = str(SQUIRREL) if SQUIRREL.exists() else str(
        Path(belka.__file__).parent / "data" / "chelsea.jpg")
    strokes = patterns.strokes()
    # warm up once at a tiny size (imports, the trace, the allocator), outside the timing
    visualize(model, target=1, size=32, steps=1)
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    base = rss_mib()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    if kind == "style":
        steps = 30 if quick else 120
        result = style(content, strokes, model=model, steps=steps, **kwargs)
        extra = {"style_gain": round(result.style_gain, 1),
                 "content_cosine": round(result.content_cosine, 3),
                 "stages": "+".join(str(max(s)) for s in result.stages)}
    else:
        steps = 64 if quick else 256
        if "direction" in kwargs:
            from belka.cli.commands_pictures import parse_direction

            kwargs["direction"] = parse_direction(kwargs["direction"], 672)
        result = visualize(model, steps=steps, **kwargs)
        extra = {"pictures": len(result.images), "objective": round(float(np.mean(result.values)), 3)}
        if name == "class":
            extra["p335"] = round(float(model.probabilities(result.images[0])[0, 335]), 4)
    seconds = time.perf_counter() - started
    extra["cpu_s"] = round(cpu_seconds() - cpu0, 1)
    record = {"case": name, "steps": steps, "seconds": round(seconds, 2),
              "s_per_step": round(seconds / steps, 3), "peak_rss_mib": round(rss_mib()),
              "work_mib": round(rss_mib() - base), "device": str(model.device), **extra}
    if torch.cuda.is_available():
        record["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(CASES))
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.quick)), flush=True)
        return
    import torch

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    header = f"{'case':24} {'steps':>5} {'s':>8} {'s/step':>7} {'peak MiB':>9} {'work MiB':>9}  notes"
    print(header)
    print("-" * len(header))
    for name in args.only or list(CASES):
        cmd = [sys.executable, __file__, "--case", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{name:24} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        notes = ", ".join(f"{k} {v}" for k, v in r.items() if k not in (
            "case", "steps", "seconds", "s_per_step", "peak_rss_mib", "work_mib", "device"))
        print(f"{name:24} {r['steps']:>5} {r['seconds']:>8.1f} {r['s_per_step']:>7.3f} "
              f"{r['peak_rss_mib']:>9} {r['work_mib']:>9}  {notes}", flush=True)


if __name__ == "__main__":
    main()

"""belka's speed benchmark (``make bench``): one command, every contender side by side in one
process, medians of interleaved rounds, one table.

Sections:

1. forward, batch 1 and 32: belka's ONNX engine vs raw ONNX Runtime on the same exported graph
   vs PyTorch eager (and the int8 graph, with its top-1 agreement on held-out photos);
2. end-to-end: a folder of a few hundred JPEGs (the shared photos, repeated) classified by the
   pipeline vs the naive loop (Pillow full decode + PyTorch eager, one image at a time);
3. Grad-CAM per image vs one forward pass (``belka.explain`` through ``bench/explain.py``'s
   photos), when ``bench/explain.py`` is present;
4. peak RSS of a 2,000-image scan at 200, 1,000 and 2,000 images.

Every row shows achieved GFLOP/s (0.77 GFLOP per 224 x 224 image) and its share of a large
sgemm measured in the same run. No asserts: the numbers are for reading.

    python bench/run.py [--quick] [--photos DIR] [--only forward scan explain memory]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import (GFLOP_PER_IMAGE, PHOTOS, Row, forward_rows,  # noqa: E402
                          int8_agreement, interleaved, photo_files, sgemm_gflops)
from bench.scan import end_to_end_rows, repeat_files, rss_rows, small_photos  # noqa: E402

SECTIONS = ("forward", "scan", "explain", "memory", "gpu")


def progress(message: str) -> None:
    """A line on stderr while the benchmark runs (the table comes at the end, on stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPU model, cores, load and library versions, for the header."""
    import numpy
    import onnxruntime
    import torch

    from belka.engine import physical_cores

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{model}; {physical_cores()} physical cores, {os.cpu_count()} logical; load average "
            f"{load}\nPython {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
            f"numpy {numpy.__version__}")


def explain_rows(model, onnx_engine, quick: bool) -> tuple[list[Row], str]:
    """Grad-CAM per image against one forward pass (eager and ONNX Runtime) and against Captum's
    LayerGradCam on the same module and layer, at batch 1 and 16."""
    if not (ROOT / "bench" / "explain.py").is_file():
        return [], "Grad-CAM: skipped (bench/explain.py is not in this tree yet)"
    try:
        import torch

        from bench import explain as bench_explain
        from belka.explain import explain
    except Exception as exc:  # noqa: BLE001 - another engineer's module, report and move on
        return [], f"Grad-CAM: skipped ({type(exc).__name__}: {exc})"
    model.engine = onnx_engine           # what belka.load() gives: Grad-CAM's fast path runs on it
    rows: list[Row] = []
    notes: list[str] = []
    for bs in (1, 16):
        decoded = bench_explain.photos(bs)
        x = model.preprocess(decoded)
        x_np = x.numpy()
        with torch.inference_mode():
            targets = model.module(x).argmax(1).tolist()

        def eager(x=x) -> None:
            with torch.inference_mode():
                model.module(x)

        contenders = {"pytorch eager forward": eager,
                      "belka onnx forward": lambda x_np=x_np: onnx_engine.logits(x_np),
                      "belka gradcam (explain)":
                          lambda x=x, targets=targets: explain(model, x, target=targets)}
        try:
            from captum.attr import LayerAttribution, LayerGradCam

            cam = LayerGradCam(model.module, model.module.top_activation)

            def captum(x=x, targets=targets) -> None:
                a = cam.attribute(x, target=targets, relu_attributions=True)
                LayerAttribution.interpolate(a, tuple(x.shape[-2:]), "bilinear")

            contenders["captum LayerGradCam"] = captum
        except ImportError:
            notes.append("Grad-CAM: Captum is not installed, so its row is missing "
                         "(pip install captum)")
        medians = interleaved(contenders, rounds=5 if quick else 9, calls=2)
        base = "pytorch eager forward"
        rows += [Row(f"gradcam b{bs}", name, s, bs, None if name == base else base)
                 for name, s in medians.items()]
        if "captum LayerGradCam" in medians:
            ours, theirs = medians["belka gradcam (explain)"], medians["captum LayerGradCam"]
            engine = medians["belka onnx forward"]
            notes.append(f"Grad-CAM at top_activation, batch {bs}: Captum / belka = "
                         f"{theirs / ours:.2f}; belka's Grad-CAM = {ours / engine:.2f} forward "
                         f"passes of its engine")
    return rows, "\n".join(notes)


def table(rows: list[Row], sgemm: float) -> str:
    """The rows as an aligned text table (Markdown-compatible)."""
    head = ("section", "contender", "n", "ms/img", "img/s", "time / baseline",
            "GFLOP/s", "% sgemm", "note")
    by_key = {(r.section, r.name): r for r in rows}
    lines = []
    for r in rows:
        base = by_key.get((r.section, r.baseline)) if r.baseline else None
        ratio = f"{r.per_image / base.per_image:.2f}" if base else "1 (baseline)" \
            if any(o.baseline == r.name and o.section == r.section for o in rows) else ""
        if base and r.per_image < base.per_image:
            ratio += f" ({base.per_image / r.per_image:.1f}x faster)"
        gflops = r.images_per_s * GFLOP_PER_IMAGE
        lines.append((r.section, r.name, str(r.images), f"{r.per_image * 1e3:.2f}",
                      f"{r.images_per_s:.1f}", ratio, f"{gflops:.1f}",
                      f"{gflops / sgemm:.0%}", r.note))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(fmt, lines)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about one minute, fewer repeats")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="folder of photos")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--files", type=int, help="end-to-end folder size (300; quick 100)")
    parser.add_argument("--scan-images", type=int, help="memory scan length (2000; quick 1000)")
    parser.add_argument("--no-int8", action="store_true", help="skip int8 quantization")
    args = parser.parse_args(argv)

    import belka
    from belka.engine import OnnxEngine, onnx_path, quantize_int8

    began = time.perf_counter()
    print(f"belka bench{' --quick' if args.quick else ''}\n{machine()}\n")
    model = belka.load(device="cpu")
    fresh = not onnx_path(model).is_file()
    start = time.perf_counter()
    onnx_engine = OnnxEngine(model)
    print(f"ONNX graph: {onnx_engine.path.name} "
          f"({'exported in' if fresh else 'from the cache in'} {time.perf_counter() - start:.1f} s)")
    photos = photo_files(args.photos)
    jpegs = [p for p in photos if p.suffix.lower() in (".jpg", ".jpeg")]
    if not photos:
        print(f"no photos under {args.photos}: the end-to-end, int8 and memory parts are skipped")

    sgemm = sgemm_gflops()
    peak = max(sgemm.values())
    print("sgemm 2048 x 2048 float32: "
          + ", ".join(f"{name} {g:.0f} GFLOP/s" for name, g in sgemm.items())
          + f"; fp32 floor {GFLOP_PER_IMAGE / peak * 1e3:.2f} ms/img")

    rows: list[Row] = []
    notes: list[str] = []
    int8_path = None
    if "forward" in args.only and photos and not (args.quick or args.no_int8):
        progress("int8 quantization")
        start = time.perf_counter()
        int8_path = quantize_int8(model, photos[::2])  # calibrate on half, judge on the rest
        took = time.perf_counter() - start
        notes.append(f"int8 (QDQ, per-channel, MinMax, calibrated on {len(photos[::2])} photos"
                     + (f" in {took:.0f} s" if took > 1 else ", from the cache") + "): "
                     + int8_agreement(model, onnx_engine, int8_path, photos[1::2]))
    if "forward" in args.only:
        progress("forward passes")
        rows += forward_rows(model, onnx_engine, quick=args.quick, int8_path=int8_path)
    with tempfile.TemporaryDirectory(prefix="belka-bench-") as tmp:
        if "scan" in args.only and jpegs:
            progress("end-to-end")
            files = repeat_files(jpegs, args.files or (100 if args.quick else 300), Path(tmp, "e2e"))
            rows += end_to_end_rows(model, onnx_engine, files, quick=args.quick)
        if "explain" in args.only:
            progress("Grad-CAM")
            found, note = explain_rows(model, onnx_engine, args.quick)
            rows += found
            notes += [note] if note else []
        if "memory" in args.only and jpegs:
            n = args.scan_images or (1000 if args.quick else 2000)
            progress(f"memory over a {n}-image scan")
            small = small_photos(jpegs)
            files = repeat_files(small, n, Path(tmp, "scan"))
            checkpoints = (200, 500, 1000) if args.quick and n == 1000 else \
                tuple(c for c in (200, 1000, 2000) if c < n) + (n,)
            rows += rss_rows(onnx_engine, files, checkpoints)
            notes.append(f"memory scan: {n} files cycling through {len(small)} JPEGs <= 200 kB; "
                         "peak RSS = max(VmHWM after resetting it, VmRSS sampled every batch)")

    gpu_table = ""
    if "gpu" in args.only:
        import torch

        if torch.cuda.is_available():
            from bench.gpu import device_sgemm_gflops, gpu_rows

            progress("GPU (CUDA)")
            with tempfile.TemporaryDirectory(prefix="belka-bench-gpu-") as tmp:
                files = repeat_files(jpegs, args.files or (100 if args.quick else 300),
                                     Path(tmp, "gpu")) if jpegs else []
                found, gpu_notes = gpu_rows(files, "cuda", quick=args.quick)
            cuda_sgemm = device_sgemm_gflops(torch.device("cuda"))
            gpu_table = (f"{torch.cuda.get_device_name(0)}; CUDA sgemm 2048 x 2048 float32 "
                         f"{cuda_sgemm:.0f} GFLOP/s (the % sgemm column below)\n\n"
                         + table(found, cuda_sgemm))
            notes += gpu_notes
        else:
            notes.append("no CUDA device: the GPU section was skipped (it runs by itself where "
                         "torch.cuda.is_available())")

    print()
    print(table(rows, peak))
    if gpu_table:
        print()
        print(gpu_table)
    print()
    for note in notes:
        print(note)
    if int8_path is not None:
        print("int8 rows count the same 0.77 G operations per image, so they can pass 100% of "
              "the fp32 sgemm rate")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"medians of interleaved rounds; {time.perf_counter() - began:.0f} s in all; "
          f"load average at the end {load}")


if __name__ == "__main__":
    main()

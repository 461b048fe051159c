"""The GPU part of ``make bench``: the same questions on a CUDA device, when there is one.

* ``forward``: PyTorch eager on the device (fp32), batch 1 and 32, synchronised; ONNX Runtime's
  CUDA provider on the same exported graph when the installed ONNX Runtime has it (the
  ``onnxruntime-gpu`` build; belka declares the CPU build, so usually it has not);
* ``end-to-end``: ``belka.scan.scan`` with the model on the device (what ``belka classify``
  runs there), against the naive loop on the device;
* ``gradcam``: ``belka.explain`` at ``top_activation`` against Captum's ``LayerGradCam`` on
  the same module, batch 1 and 16.

The yardstick is a CUDA sgemm (2048 x 2048 float32, ``torch.mm``) measured in the same run.
Every function takes the device, so the code can be exercised on the CPU
(``python bench/gpu.py --device cpu``); ``bench/run.py`` calls it only when
``torch.cuda.is_available()``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine import Row, interleaved  # noqa: E402


def synchronized(device: torch.device, fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation, so that timings include the GPU work."""
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def device_sgemm_gflops(device: torch.device, n: int = 2048) -> float:
    """GFLOP/s of an n x n float32 ``torch.mm`` on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = interleaved({"mm": synchronized(device, lambda: torch.mm(a, b))}, rounds=5,
                          calls=3, gap_s=0.0)["mm"]
    return 2 * n**3 / seconds / 1e9


def gpu_rows(files: Sequence[Path], device: str | torch.device = "cuda", *,
             quick: bool = False) -> tuple[list[Row], list[str]]:
    """Rows for the device, and notes (what was skipped and why)."""
    import belka
    from belka.engine import OnnxEngine, default_providers
    from belka.explain import explain
    from belka.scan import scan

    device = torch.device(device)
    notes: list[str] = []
    model = belka.load(device=str(device), engine="torch")
    module = model.module
    size = model.preprocessing.size
    rows: list[Row] = []
    rng = np.random.default_rng(0)
    ort_cuda = "CUDAExecutionProvider" in default_providers()
    if not ort_cuda:
        notes.append("ONNX Runtime has no CUDA provider here (belka declares the CPU build; "
                     "install onnxruntime-gpu for it): the GPU rows are PyTorch's")
    for batch in (1, 32):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        x = model.preprocessing.normalize(images).to(device)

        def eager() -> None:
            with torch.inference_mode():
                module(x)

        contenders = {"pytorch eager": synchronized(device, eager)}
        if ort_cuda:
            engine = OnnxEngine(belka.load(device="cpu"))
            xn = x.cpu().numpy()
            contenders["belka onnx (CUDA provider)"] = lambda: engine.logits(xn)
        rounds = (10 if quick else 30) if batch == 1 else (3 if quick else 9)
        medians = interleaved(contenders, rounds=rounds, gap_s=0.0)
        section = f"{device.type} forward b{batch}"
        rows += [Row(section, name, s, batch, None if name == "pytorch eager" else "pytorch eager")
                 for name, s in medians.items()]

    if files:
        naive_files = list(files[:10 if quick else 30])

        def naive() -> None:
            from PIL import Image

            prep = model.preprocessing
            for f in naive_files:
                with Image.open(f) as im:
                    pixels = np.asarray(im.convert("RGB"))
                with torch.inference_mode():
                    module(prep.normalize(prep.resize(pixels)[None]).to(device)).cpu()

        def belka_scan() -> None:
            for item in scan(model, [str(f) for f in files], progress=False):
                assert item.error is None, item.error

        medians = interleaved({"naive (full decode, 1 by 1)": naive, "belka scan": belka_scan},
                              rounds=2 if quick else 3, gap_s=0.1, warmup=0)
        section = f"{device.type} end-to-end"
        base = "naive (full decode, 1 by 1)"
        rows += [Row(section, base, medians[base], len(naive_files), None,
                     f"{len(naive_files)} files"),
                 Row(section, "belka scan", medians["belka scan"], len(files), base,
                     f"{len(files)} files")]

    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        LayerGradCam = None
        notes.append("Captum is not installed: no Grad-CAM comparison on the device")
    if LayerGradCam is not None:
        cam = LayerGradCam(module, module.top_activation)
        for batch in (1, 16):
            images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            x = model.preprocessing.normalize(images).to(device)
            with torch.inference_mode():
                targets = module(x).argmax(1).tolist()

            def forward() -> None:
                with torch.inference_mode():
                    module(x)

            def captum() -> None:
                a = cam.attribute(x, target=targets, relu_attributions=True)
                LayerAttribution.interpolate(a, tuple(x.shape[-2:]), "bilinear")

            contenders = {"pytorch eager forward": synchronized(device, forward),
                          "belka gradcam": synchronized(device, lambda: explain(
                              model, x, target=targets, layer="top_activation")),
                          "captum LayerGradCam": synchronized(device, captum)}
            medians = interleaved(contenders, rounds=5 if quick else 15, gap_s=0.0)
            section = f"{device.type} gradcam b{batch}"
            rows += [Row(section, name, s, batch,
                         None if name == "pytorch eager forward" else "pytorch eager forward")
                     for name, s in medians.items()]
            notes.append(f"{device.type} Grad-CAM b{batch}: Captum / belka = "
                         f"{medians['captum LayerGradCam'] / medians['belka gradcam']:.2f}")
    return rows, notes


def main() -> None:
    from bench.engine import photo_files
    from bench.run import table
    from bench.scan import repeat_files

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here (python bench/gpu.py --device cpu runs the same code on the CPU)")
    import tempfile

    jpegs = [p for p in photo_files() if p.suffix.lower() in (".jpg", ".jpeg")]
    with tempfile.TemporaryDirectory(prefix="belka-bench-gpu-") as tmp:
        files = repeat_files(jpegs, args.files, Path(tmp)) if jpegs else []
        rows, notes = gpu_rows(files, device, quick=args.quick)
    print(table(rows, device_sgemm_gflops(device)))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

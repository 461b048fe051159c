"""How much an explanation costs, side by side with Captum, in one run on the same model.

For batch sizes 1 and 16 it times, per image (median over repeats, after warm-up, the
contenders interleaved in every repeat so a noisy machine hurts them alike):

* ``forward``: one plain PyTorch forward pass (``model.module(x)`` in inference mode): the unit;
* ``engine forward``: one forward pass on belka's engine (``model.engine.logits``, ONNX Runtime
  when installed): belka's own unit;
* ``belka gradcam``: ``belka.explain.explain(model, x)`` at the automatic layer
  (``top_activation``): the closed-form fast path on the engine (one forward-only run that
  returns the logits and the feature map), no backward pass, heat maps normalised;
* ``belka gradcam, torch``: the same fast path with the PyTorch engine (hooks on the module);
* ``belka gradcam, autograd``: ``fast=False`` (backward from the logits to the layer only);
* ``captum LayerGradCam``: ``LayerGradCam(...).attribute(x, target, relu_attributions=True)``
  plus ``LayerAttribution.interpolate(..., "bilinear")`` to the input size (the same map);
* ``belka gradcam, images``: the whole verb from decoded photos: resize, forward, heat map
  mapped back onto each photo at its own size, against ``classify, images``
  (``model.probabilities`` on the same decoded photos: resize and forward).

and prints each as a multiple of one forward pass (PyTorch's and the engine's) and Captum's
time over each row's. No asserts: the targets are at most 1.5 forward passes for belka's
Grad-CAM and 3x faster than Captum (whose ``LayerGradCam`` runs on the same PyTorch module,
parameters requiring grad as usual; autograd then only walks back to the layer).

    python bench/explain.py [--repeats 15] [--layer top_activation] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import belka
from belka import images
from belka.explain import explain

ROOT = Path(__file__).resolve().parents[1]


def photos(n: int) -> list[np.ndarray]:
    """n real photos: the shared cats and squirrels when present, else scikit-image's."""
    found = []
    for folder in ("cat", "squirrel"):
        d = ROOT.parent / "shared" / "data" / "photos" / folder
        if d.is_dir():
            found += sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if found:
        return [images.decode(p) for p in (found * n)[:n]]
    from skimage import data

    base = [data.chelsea(), data.coffee(), data.astronaut()]
    return [base[i % 3] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layer", default="top_activation")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        sys.exit("bench/explain.py compares with Captum: pip install captum")

    model = belka.load()
    model.engine                                   # made (and exported once) before timing
    torch_model = belka.load(engine="torch")
    module = model.module
    layer = getattr(module, args.layer)
    print(f"belka {belka.__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {model.name}, layer {args.layer}, {args.repeats} repeats, engine "
          f"{model.engine!r}")

    for bs in args.batches:
        decoded = photos(bs)
        x = model.preprocess(decoded)
        with torch.inference_mode():
            targets = module(x).argmax(1).tolist()
        cam = LayerGradCam(module, layer)

        def forward():
            with torch.inference_mode():
                module(x)

        xn = x.numpy()

        def engine_forward():
            model.engine.logits(xn)

        def ours():
            explain(model, x, target=targets, layer=args.layer)

        def ours_torch():
            explain(torch_model, x, target=targets, layer=args.layer)

        def ours_autograd():
            explain(model, x, target=targets, layer=args.layer, fast=False)

        def captum():
            a = cam.attribute(x, target=targets, relu_attributions=True)
            LayerAttribution.interpolate(a, tuple(x.shape[-2:]), "bilinear")

        def ours_images():
            explain(model, decoded, target=targets, layer=args.layer)

        def classify_images():
            model.probabilities(decoded)

        contenders = {"forward": forward, "engine forward": engine_forward,
                      "belka gradcam": ours, "belka gradcam, torch": ours_torch,
                      "belka gradcam, autograd": ours_autograd, "captum LayerGradCam": captum,
                      "classify, images": classify_images,
                      "belka gradcam, images": ours_images}
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.warmup):
            for f in contenders.values():
                f()
        for _ in range(args.repeats):
            for name, f in contenders.items():
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) / bs for k, v in times.items()}
        best = {k: min(v) / bs for k, v in times.items()}
        print(f"\nbatch {bs}: per image, median (min) of {args.repeats}")
        print(f"  {'':26s} {'ms/image':>16s} {'x forward':>10s} {'x engine fwd':>13s} "
              f"{'captum / this':>14s}")
        for k in contenders:
            print(f"  {k:26s} {med[k] * 1e3:8.2f} ({best[k] * 1e3:6.2f}) "
                  f"{med[k] / med['forward']:10.2f} {med[k] / med['engine forward']:13.2f} "
                  f"{med['captum LayerGradCam'] / med[k]:14.2f}")
        print(f"  belka gradcam from photos / classify from photos: "
              f"{med['belka gradcam, images'] / med['classify, images']:.2f}")


if __name__ == "__main__":
    main()

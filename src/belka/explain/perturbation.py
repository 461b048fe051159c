"""Perturbation methods: explain by hiding parts of the input and watching the score.

(Score-CAM, which masks the input with the layer's own channels, lives with the CAMs in
:mod:`belka.explain.cam`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Context, Explainer, register


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:   # cover the last rows/columns too
        starts.append(size - window)
    return starts


@register("occlude")
class Occlusion(Explainer):
    """Occlusion: how much the score drops when a square patch is hidden.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014. A
    ``window`` x ``window`` patch (default: a seventh of the input side, 32 px at 224) slides
    with ``stride`` (default: half the window) and is filled with ``baseline`` (0.0 in the
    model's units: mid-grey for belka's models). Each pixel gets the mean drop of the explained
    logit over the patches that cover it. ``attributions`` keeps that signed map; the heat map
    keeps its positive part (what the class needs). Runs ``internal_batch_size`` occluded
    copies per forward.
    """

    name = "occlusion"
    slow = True
    title = "Occlusion"
    paper = "Zeiler & Fergus, ECCV 2014"
    uses_layer = False
    options = {"window": None, "stride": None, "baseline": 0.0}

    def compute(self, ctx: Context) -> torch.Tensor:
        n, _, height, width = ctx.x.shape
        window = int(self.settings["window"] or max(1, min(height, width) // 7))
        stride = int(self.settings["stride"] or max(1, window // 2))
        if not 1 <= window <= min(height, width) or stride < 1:
            raise UsageError(f"occlusion window must be 1..{min(height, width)} and stride >= 1")
        patches = [(top, left) for top in _starts(height, window, stride)
                   for left in _starts(width, window, stride)]
        baseline = torch.as_tensor(self.settings["baseline"], dtype=ctx.x.dtype, device=ctx.x.device)
        step = self.internal_batch_size
        maps = []
        with self.bar(n * len(patches), "Occlusion") as bar:
            for i, target in enumerate(ctx.targets):
                x = ctx.x[i]
                clean = ctx.scores[i].to(x.dtype)
                total = torch.zeros(height, width, device=x.device)
                count = torch.zeros(height, width, device=x.device)
                for start in range(0, len(patches), step):
                    chunk = patches[start:start + step]
                    batch = x[None].repeat(len(chunk), 1, 1, 1)
                    for j, (top, left) in enumerate(chunk):
                        batch[j, :, top:top + window, left:left + window] = baseline
                    logits = self.logits(batch)
                    drops = clean - logits[:, list(target.indices)].sum(dim=1)
                    for j, (top, left) in enumerate(chunk):
                        total[top:top + window, left:left + window] += drops[j]
                        count[top:top + window, left:left + window] += 1
                    bar.update(len(chunk))
                maps.append(total / count.clamp(min=1))
        signed = torch.stack(maps)
        ctx.attributions = signed[:, None]
        return F.relu(signed)

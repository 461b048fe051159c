"""FullGrad: input gradients plus the gradients of every bias, as one map.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS
2019. For a network that is piecewise linear in its input (ReLU, max-pooling, convolutions,
affine BatchNorm in eval mode) the explained logit splits exactly into the input part and one
part per bias:

    score(x) = sum(grad_x * x) + sum over layers b of sum(grad_b * b)

("completeness"). The map is ``psi(grad_x * x)`` summed over channels plus, for every layer with
a spatial output, ``psi(grad_z * b)`` summed over channels, where ``z`` is the layer's output,
``b`` its bias broadcast over positions and ``psi`` = absolute value, min-max scaling per image
and bilinear upsampling to the input grid (the authors' post-processing).

The biases belka counts: ``nn.Conv*`` and ``nn.Linear`` biases; every ``BatchNorm`` in eval
mode as the affine map it is, whose bias is ``beta - gamma * mean / sqrt(var + eps)``; and the
**ReLU6 cap**: a unit above 6 outputs the constant 6, which is a bias too (``6 * grad_z`` where
the unit is saturated). With that last term completeness holds exactly on EfficientNet-Lite0
and MobileNetV2 (which are piecewise linear; the test finds the gap at float rounding), where
leaving the cap out would lose part of the score. ``details["completeness_gap"]`` reports
``sum of all parts - score``. One forward and one backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Context, Explainer, register

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _bias(module: nn.Module) -> torch.Tensor | None:
    """The bias of an affine layer as it acts in eval mode (None: no bias term)."""
    if isinstance(module, _BATCHNORMS):
        if module.training or module.running_mean is None:
            return None
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        bias = -module.running_mean * scale
        return bias + module.bias if module.bias is not None else bias
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and module.bias is not None:
        return module.bias
    return None


@register("full-grad", "fullgradient")
class FullGrad(Explainer):
    """FullGrad (see the module docstring)."""

    name = "fullgrad"
    title = "FullGrad"
    paper = "Srinivas & Fleuret, NeurIPS 2019"
    uses_layer = False

    def compute(self, ctx: Context) -> torch.Tensor:
        module = self.model.module
        records: list[tuple[nn.Module, torch.Tensor]] = []

        def keep(m, _inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                records.append((m, output))

        watched = [m for m in module.modules()
                   if _bias(m) is not None or isinstance(m, nn.ReLU6)]
        handles = [m.register_forward_hook(keep) for m in watched]
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x = ctx.x.detach().clone().requires_grad_(True)
                logits = module(x)
                scores = torch.stack([logits[i, list(t.indices)].sum()
                                      for i, t in enumerate(ctx.targets)])
                grads = torch.autograd.grad(scores.sum(), [x] + [o for _, o in records])
        finally:
            for handle in handles:
                handle.remove()
        size = tuple(ctx.x.shape[-2:])
        n = ctx.x.shape[0]
        input_part = (grads[0] * ctx.x).detach()
        total = input_part.flatten(1).sum(dim=1)
        heat = _psi(input_part.sum(dim=1, keepdim=True).abs(), size)
        with torch.no_grad():
            for (m, out), g in zip(records, grads[1:]):
                if isinstance(m, nn.ReLU6):
                    term = g * 6.0 * (out.detach() >= 6.0)
                else:
                    b = _bias(m).detach().to(g.dtype)
                    term = g * b.view(1, -1, *([1] * (g.dim() - 2)))
                total = total + term.flatten(1).sum(dim=1)
                if term.dim() == 4 and term.shape[-2] * term.shape[-1] > 1:
                    heat = heat + _psi(term.abs().sum(dim=1, keepdim=True), size)
        gaps = (total - scores.detach()).tolist()
        ctx.details.extend({"completeness_gap": float(gap)} for gap in gaps[:n])
        ctx.attributions = input_part
        return heat[:, 0]


def _psi(maps: torch.Tensor, size) -> torch.Tensor:
    """N x 1 x h x w non-negative maps -> min-max scaled per image, upsampled to ``size``."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scaled = (maps - lo) / span
    if tuple(scaled.shape[-2:]) != tuple(size):
        scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
    return scaled

"""Guided Backpropagation and Guided Grad-CAM: input gradients with the rectifiers' backward
pass "guided" to keep only positive signals.

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR Workshops 2015
(guided backpropagation); Selvaraju et al., "Grad-CAM", ICCV 2017 (Guided Grad-CAM = guided
backpropagation times the upsampled Grad-CAM map).

The rule: at every rectifier module the gradient passed back is ``ReLU(g) * f'(x)``: only
positive gradients, and only where the unit was active. For ``nn.ReLU`` that is Captum's
``GuidedBackprop`` rule exactly. **ReLU6** (EfficientNet-Lite0, MobileNetV2), which Captum leaves
alone (it overrides ``nn.ReLU`` modules only, so on these models its ``GuidedBackprop`` is the
plain gradient), gets the same rule: ``ReLU(g)`` where ``0 < x < 6`` and 0 elsewhere (a
saturated unit passes nothing back, as its own derivative says). The rule is applied with a
forward hook that wraps each rectifier's output in an identity whose backward clamps the
gradient at 0; the hooks are removed in ``finally``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .base import Context, Explainer, register

RECTIFIERS = (nn.ReLU, nn.ReLU6)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only the positive part of the incoming gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


@contextmanager
def guided_rectifiers(module: nn.Module):
    """Within the block, every ``nn.ReLU`` / ``nn.ReLU6`` in ``module`` back-propagates only
    positive gradients (guided backpropagation)."""
    handles = [m.register_forward_hook(lambda _m, _i, out: _PositiveGradient.apply(out))
               for m in module.modules() if isinstance(m, RECTIFIERS)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@register("guided-backprop", "guidedbackpropagation", "gbp")
class GuidedBackprop(Explainer):
    """Guided Backpropagation: d score / d x with the guided rule at every rectifier.

    ``attributions`` holds the signed guided gradient (3 x S x S); the heat map is its largest
    absolute value over the colour channels. One forward and one backward pass.
    """

    name = "guidedbackprop"
    title = "Guided Backpropagation"
    paper = "Springenberg et al., ICLR Workshops 2015"
    uses_layer = False
    gradients = "input"

    def _forward(self, x, specs):
        with guided_rectifiers(self.model.module):
            return super()._forward(x, specs)

    def compute(self, ctx: Context) -> torch.Tensor:
        ctx.attributions = ctx.gradients
        return ctx.gradients.abs().amax(dim=1)


@register("guided-grad-cam", "guidedgradcam", "ggradcam")
class GuidedGradCAM(Explainer):
    """Guided Grad-CAM: guided backpropagation times the Grad-CAM map at ``layer``, upsampled
    bilinearly to the input grid (Captum's ``GuidedGradCam`` with ``interpolate_mode=
    "bilinear"``; its default is nearest). ``attributions`` is that signed 3 x S x S product;
    the heat map is its largest absolute value over the channels. Grad-CAM uses the fast path
    where it applies, so the cost is one forward and one backward pass (two at other layers).
    """

    name = "guidedgradcam"
    title = "Guided Grad-CAM"
    paper = "Selvaraju et al., ICCV 2017"
    gradients = None

    def compute(self, ctx: Context) -> torch.Tensor:
        from .cam import GradCAM

        cam = GradCAM(self.model, layer=self.layer_module, batch_size=len(ctx.targets),
                      progress=False)
        cam_ctx = cam._forward(ctx.x, ctx.targets)
        maps = cam.compute(cam_ctx).float()
        up = F.interpolate(maps[:, None], size=tuple(ctx.x.shape[-2:]), mode="bilinear",
                           align_corners=False)
        guided = GuidedBackprop(self.model, batch_size=len(ctx.targets), progress=False)
        g_ctx = guided._forward(ctx.x, ctx.targets)
        attributions = g_ctx.gradients * up
        ctx.attributions = attributions
        return attributions.abs().amax(dim=1)

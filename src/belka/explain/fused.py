"""LayerCAM fused over several layers.

Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE
TIP 2021, show that LayerCAM's element-wise weights give usable maps at early, high-resolution
layers too, and combine the maps of several stages. Here: LayerCAM at each of ``layers``, every
map upsampled to the input grid and min-max scaled to [0, 1]; maps of layers other than the
last get the paper's scaling for shallow layers, ``tanh(gamma * m / max(m))`` (``gamma`` 2),
which lifts their weak but sharp responses; the fused map is the element-wise maximum (belka's
choice of the combining rule; ``fuse="mean"`` averages instead).

``layer`` (or the ``layers`` option) takes a list of layers or a comma-separated string;
default: the last layer at each of the last three spatial resolutions before the pooling,
padding layers left out (EfficientNet-Lite0: ``block4a_expand_activation`` at 28 x 28,
``block6a_expand_activation`` at 14 x 14, ``top_activation`` at 7 x 7).
Costs one forward and one backward pass per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import INPUT, Context, Explainer, layer_shapes, register


def default_layers(model, count: int = 3) -> list[str]:
    """The last layer with a 4-D output at each of the last ``count`` spatial resolutions before
    the global pooling (e.g. 28 x 28, 14 x 14 and 7 x 7 on EfficientNet-Lite0)."""
    from torch import nn

    from ..models.layers import SamePad2d

    modules = dict(model.module.named_children())
    pads = (SamePad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
    last_at: dict[tuple[int, int], str] = {}
    order: list[tuple[int, int]] = []
    for name, shape in layer_shapes(model):
        if shape is None or isinstance(modules.get(name), pads):   # padding: no stage of its own
            continue
        if len(shape) == 2 and order:
            break
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            key = (shape[2], shape[3])
            if key not in last_at:
                order.append(key)
            last_at[key] = name
    if not order:
        raise UsageError("found no convolutional layers to fuse; pass layers=[...]")
    return [last_at[k] for k in order[-count:]]


def _layer_list(spec) -> list:
    if spec is None:
        return []
    if isinstance(spec, str):             # "a,b,c", or "a+b+c" as Explanation.layer names them
        return [s.strip() for s in spec.replace("+", ",").split(",") if s.strip()]
    if isinstance(spec, (list, tuple)):
        return list(spec)
    return [spec]


@register("layercam-fused", "fusedlayercam", "multilayercam", "layercam-multi")
class FusedLayerCAM(Explainer):
    """LayerCAM fused over several layers (see the module docstring)."""

    name = "layercam-fused"
    title = "LayerCAM, fused over layers"
    paper = "Jiang et al., IEEE TIP 2021"
    uses_layer = False
    options = {"layers": None, "gamma": 2.0, "fuse": "max"}

    def __init__(self, model, layer=None, **kwargs):
        wanted = _layer_list(layer) if layer not in (None, INPUT) else []
        super().__init__(model, None, **kwargs)
        wanted = wanted or _layer_list(self.settings["layers"]) or default_layers(model)
        from .base import resolve_layer

        self.fused = [resolve_layer(model, w)[0] for w in wanted]
        self.layer_name = "+".join(self.fused)
        if self.settings["fuse"] not in ("max", "mean"):
            raise UsageError("fuse is 'max' or 'mean'")

    def compute(self, ctx: Context) -> torch.Tensor:
        from .cam import LayerCAM

        size = tuple(ctx.x.shape[-2:])
        gamma = float(self.settings["gamma"])
        fused = None
        for j, name in enumerate(self.fused):
            cam = LayerCAM(self.model, layer=name, batch_size=len(ctx.targets), progress=False)
            sub = cam._forward(ctx.x, ctx.targets)
            m = cam.compute(sub).float()
            m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            m = scale_unit(m)
            if j < len(self.fused) - 1 and gamma > 0:
                m = torch.tanh(gamma * m) / math.tanh(gamma)
            if fused is None:
                fused = m
            elif self.settings["fuse"] == "max":
                fused = torch.maximum(fused, m)
            else:
                fused = fused + m
        if self.settings["fuse"] == "mean":
            fused = fused / len(self.fused)
        return fused


def scale_unit(maps: torch.Tensor) -> torch.Tensor:
    """N x H x W maps min-max scaled to [0, 1] per map (a flat map becomes 0)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    return torch.where(hi > lo, (maps - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)),
                       torch.zeros_like(maps))

"""Ablation-CAM: channel weights from how much the score falls when the channel is removed.

Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
Gradient-free Localization", WACV 2020. ``weight_k = (y - y_k) / y``, where ``y`` is the
explained logit (the sum of a group's logits) and ``y_k`` the same logit with channel ``k`` of
the layer's output set to zero; map ``ReLU(sum_k weight_k A_k)``. No gradients.

Cost. At a layer followed only by global average pooling and the linear classifier (the
automatic layer: ``top_activation``, ``out_relu``) removing a channel changes the logit by
exactly ``W[target, k] * mean(A_k)``, so the weights are read off the classifier with no extra
forward pass (``details["fast_path"]``; ``fast=False`` runs the ablations anyway, and a test
checks both agree). Elsewhere the network is cut after the layer (:func:`belka.inspect.split`)
and only the part after the cut runs, once per active channel, ``internal_batch_size`` ablated
copies at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Context, Explainer, classifier_after, register


@register("ablation-cam", "ablation")
class AblationCAM(Explainer):
    """Ablation-CAM (see the module docstring)."""

    name = "ablationcam"
    slow = True
    title = "Ablation-CAM"
    paper = "Desai & Ramaswamy, WACV 2020"

    def __init__(self, model, layer=None, *, fast: bool = True, **kwargs):
        super().__init__(model, layer, fast=fast, **kwargs)
        self.closed_form = classifier_after(model, self.layer_name) if fast else None

    def compute(self, ctx: Context) -> torch.Tensor:
        acts = ctx.activations.float()
        n, c = acts.shape[:2]
        y = ctx.scores.float()
        if self.closed_form is not None:
            rows = torch.stack([self.closed_form.weight.detach()[list(t.indices)].sum(dim=0)
                                for t in ctx.targets]).float()
            drops = rows * acts.mean(dim=(2, 3))                  # y - y_k, exactly
            ctx.fast = True
        else:
            drops = self._ablated_drops(ctx, acts)
        safe = torch.where(y.abs() > 0, y, torch.ones_like(y))
        weights = drops / safe[:, None]
        return F.relu(torch.einsum("nc,nchw->nhw", weights, acts))

    def _ablated_drops(self, ctx: Context, acts: torch.Tensor) -> torch.Tensor:
        from ..inspect import split

        head, tail = split(self.model.module, self.layer_name)
        n, c = acts.shape[:2]
        drops = torch.zeros(n, c)
        step = self.internal_batch_size
        with torch.inference_mode(), self.bar(n * c, f"Ablation-CAM {n} image(s)") as bar:
            for i, target in enumerate(ctx.targets):
                carried = head(ctx.x[i:i + 1])
                first = carried[0] if isinstance(carried, tuple) else carried
                active = torch.nonzero(first[0].flatten(1).abs().amax(dim=1) > 0).flatten()
                for start in range(0, len(active), step):
                    chunk = active[start:start + step]
                    k = len(chunk)
                    ablated = first.repeat(k, 1, 1, 1)
                    ablated[torch.arange(k), chunk] = 0.0
                    if isinstance(carried, tuple):
                        rest = tuple(t.expand(k, *t.shape[1:]) for t in carried[1:])
                        logits = tail((ablated, *rest))
                    else:
                        logits = tail(ablated)
                    drops[i, chunk] = ctx.scores[i].float() - logits[:, list(target.indices)].sum(dim=1).float()
                    bar.update(k)
                bar.update(c - len(active))
        return drops

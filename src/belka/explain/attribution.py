"""Reference-based input attribution: DeepLIFT (Rescale rule) and GradientSHAP.

* **DeepLIFT** (Shrikumar, Greenside & Kundaje, "Learning Important Features Through
  Propagating Activation Differences", ICML 2017), Rescale rule, as Captum's ``DeepLift``: the
  image and its baseline run as one batch; at every element-wise nonlinearity the gradient is
  replaced by the ratio of differences ``(f(x) - f(x0)) / (x - x0)`` (the local derivative
  where ``|x - x0| < 1e-10``), linear layers keep theirs, and the attribution is
  ``(x - x0) * that modified gradient``. It sums exactly to ``score(x) - score(x0)``
  ("summation to delta"; ``details["completeness_gap"]``). **ReLU6**: Captum's rule table has
  ``nn.ReLU`` but not ``nn.ReLU6``, which it would pass through with its plain gradient and lose
  summation to delta; belka applies the Rescale rule to ReLU6 like to ReLU (the rule needs only
  ``f(x) - f(x0)``), and to the other element-wise activations listed in
  :data:`RESCALED`. The baseline (``baseline``, 0.0) is in model units: mid-grey.
* **GradientSHAP** (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions",
  NeurIPS 2017; the expected-gradients estimator as in SHAP's ``GradientExplainer`` and
  Captum's ``GradientShap``): for each of ``samples`` draws, a baseline ``b`` from a
  distribution, ``alpha`` uniform in [0, 1] and optional Gaussian noise ``stdev`` on the input,
  the attribution is ``(x' - b) * grad(b + alpha (x' - b))``; the mean over draws. Its expected
  sum is ``score(x) - E[score(b)]`` (completeness in expectation); ``details`` reports the
  Monte Carlo gap and its standard error. ``baselines``: ``"zero"`` (mid-grey), ``"blur"`` (a
  Gaussian-blurred copy, sigma 5 % of the side), ``"noise"`` (uniform noise over the image's
  value range), a comma-separated mix of those (default ``"zero,blur,noise"``: drawn in turn),
  or a K x 3 x S x S tensor to draw from.

Heat maps: ``|sum over channels|`` of the attributions, as Integrated Gradients.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UsageError
from .base import Context, Explainer, register

RESCALED = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh,
            nn.Softplus, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid)
_EPS = 1e-10


@contextmanager
def rescale_rule(module: nn.Module, n: int):
    """Within the block, forwards of a 2n batch (n inputs, then their n baselines) through
    ``module`` back-propagate DeepLIFT's Rescale multipliers at every :data:`RESCALED` module
    for the first n rows. The values are unchanged (to float rounding)."""

    def hook(_m, inputs, out):
        inp = inputs[0]
        x_in, ref_in = inp[:n], inp[n:].detach()
        x_out, ref_out = out[:n], out[n:].detach()
        delta_in = x_in.detach() - ref_in
        small = delta_in.abs() < _EPS
        ratio = (x_out.detach() - ref_out) / torch.where(small, torch.ones_like(delta_in), delta_in)
        rescaled = ref_out + (x_in - ref_in) * ratio
        return torch.cat([torch.where(small, x_out, rescaled), out[n:]])

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, RESCALED)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def _baseline(x: torch.Tensor, spec) -> torch.Tensor:
    base = torch.as_tensor(spec, dtype=x.dtype, device=x.device)
    return torch.broadcast_to(base, x.shape).clone()


@register("deep-lift", "deeplift-rescale")
class DeepLift(Explainer):
    """DeepLIFT with the Rescale rule (see the module docstring)."""

    name = "deeplift"
    title = "DeepLIFT (Rescale)"
    paper = "Shrikumar et al., ICML 2017"
    uses_layer = False
    options = {"baseline": 0.0}

    def compute(self, ctx: Context) -> torch.Tensor:
        x = ctx.x
        n = x.shape[0]
        base = _baseline(x, self.settings["baseline"])
        module = self.model.module
        with rescale_rule(module, n), torch.inference_mode(False), torch.enable_grad():
            both = torch.cat([x, base]).detach().requires_grad_(True)
            logits = module(both)
            scores = torch.stack([logits[i, list(t.indices)].sum()
                                  for i, t in enumerate(ctx.targets)])
            ref_scores = torch.stack([logits[n + i, list(t.indices)].sum()
                                      for i, t in enumerate(ctx.targets)])
            (grad,) = torch.autograd.grad(scores.sum(), both)
        attributions = ((x - base) * grad[:n]).detach()
        deltas = (scores - ref_scores).detach()
        for i in range(n):
            ctx.details.append({"completeness_gap": float(attributions[i].sum() - deltas[i])})
        ctx.attributions = attributions
        return attributions.sum(dim=1).abs()


@register("gradient-shap", "gradshap", "expectedgradients")
class GradientShap(Explainer):
    """GradientSHAP / expected gradients (see the module docstring)."""

    name = "gradientshap"
    slow = True
    title = "GradientSHAP"
    paper = "Lundberg & Lee, NeurIPS 2017"
    uses_layer = False
    options = {"samples": 32, "baselines": "zero,blur,noise", "stdev": 0.0, "seed": 0}

    def _baselines(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.settings["baselines"]
        if isinstance(spec, torch.Tensor):
            base = spec.to(x.device, x.dtype)
            if base.dim() == 3:
                base = base[None]
            if base.shape[1:] != x.shape:
                raise UsageError(f"baselines must be K x {' x '.join(map(str, x.shape))}")
            return base
        from .metrics import gaussian_blur

        kinds = [k.strip() for k in str(spec).split(",") if k.strip()]
        out = []
        for kind in kinds:
            if kind == "zero":
                out.append(torch.zeros_like(x))
            elif kind == "blur":
                out.append(gaussian_blur(x[None], sigma=0.05 * min(x.shape[-2:]))[0])
            elif kind == "noise":
                g = torch.Generator().manual_seed(int(self.settings["seed"]) + 1)
                lo, hi = float(x.min()), float(x.max())
                out.append((torch.rand(x.shape, generator=g) * (hi - lo) + lo).to(x.device, x.dtype))
            else:
                raise UsageError(f"unknown GradientSHAP baseline {kind!r}; choose zero, blur, "
                                 "noise or a comma-separated mix")
        if not out:
            raise UsageError("GradientSHAP needs at least one baseline")
        return torch.stack(out)

    def compute(self, ctx: Context) -> torch.Tensor:
        samples, stdev = int(self.settings["samples"]), float(self.settings["stdev"])
        if samples < 2 or stdev < 0:
            raise UsageError("gradientshap needs samples >= 2 and stdev >= 0")
        step = self.internal_batch_size
        maps, attributions = [], []
        with self.bar(samples * len(ctx.targets), "GradientSHAP") as bar:
            for i, target in enumerate(ctx.targets):
                x = ctx.x[i]
                bases = self._baselines(x)
                g = torch.Generator().manual_seed(int(self.settings["seed"]))
                pick = torch.arange(samples) % bases.shape[0]
                alpha = torch.rand(samples, generator=g)
                noise = torch.randn((samples, *x.shape), generator=g) * stdev
                total = torch.zeros_like(x)
                sums = []
                for start in range(0, samples, step):
                    sl = slice(start, min(start + step, samples))
                    b = bases[pick[sl]]
                    xn = x[None] + noise[sl].to(x.device, x.dtype)
                    a = alpha[sl].to(x.device, x.dtype).view(-1, 1, 1, 1)
                    grads, _ = self.input_gradients(b + a * (xn - b), target)
                    each = (xn - b) * grads
                    total += each.sum(dim=0)
                    sums.append(each.flatten(1).sum(dim=1))
                    bar.update(sl.stop - sl.start)
                attr = total / samples
                per_sample = torch.cat(sums)
                ends = self.logits(torch.cat([x[None], bases]))[:, list(target.indices)].sum(dim=1)
                expected = float(ends[0] - ends[1:][pick].mean())
                stderr = float(per_sample.std() / samples ** 0.5)
                ctx.details.append({"completeness_gap": float(attr.sum()) - expected,
                                    "completeness_stderr": stderr})
                attributions.append(attr)
                maps.append(attr.sum(dim=0).abs())
        ctx.attributions = torch.stack(attributions)
        return torch.stack(maps)

"""Why did the model say that? Heat maps over the image, one verb for every method.

>>> import belka
>>> from belka.explain import explain
>>> model = belka.load()
>>> cam = explain(model, "squirrel.jpg", target="fox squirrel")          # Grad-CAM
>>> cam.label, round(cam.probability, 2), cam.layer, cam.heatmap.shape
('fox squirrel', 0.91, 'top_activation', (480, 640))
>>> cam.overlay().save("cam.png")
>>> maps = explain(model, ["a.jpg", "b.jpg"], target=["cat", 335], method="scorecam")

Methods (see :data:`METHODS`): gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam,
eigencam, ablationcam, guidedgradcam (at a layer), layercam-fused (over several layers),
saliency, smoothgrad, integratedgradients, occlusion, guidedbackprop, deeplift, gradientshap,
fullgrad, lime (on the input). Many images and folders: :func:`explain_many`.
Faithfulness checks live in :mod:`belka.explain.metrics`; pictures in
:mod:`belka.explain.render`.

The package itself is callable (``belka.explain.explain(...)`` and ``belka.explain(...)`` are
the same call), so ``belka.explain`` works whether it names the package or the function.
"""

from __future__ import annotations

import sys
import types

from . import (ablation, attribution, cam, fullgrad, fused, gradients, guided,  # noqa: F401
               lime, perturbation)  # (register the methods)
from .base import (INPUT, METHODS, Explainer, Explanation, auto_layer, explain, get_method,
                   resolve_layer)
from .batch import BatchItem, contact_sheet, explain_many, map_statistics
from .metrics import (Confidence, Curve, Road, SanityCheck, average_drop_increase,
                      confidence_change, deletion, insertion, road, sanity_check, spearman)


def methods() -> list[str]:
    """The method names :func:`explain` accepts."""
    return list(METHODS)


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["explain", "Explanation", "Explainer", "METHODS", "INPUT", "methods", "get_method",
           "auto_layer", "resolve_layer", "deletion", "insertion", "sanity_check", "spearman",
           "Curve", "SanityCheck", "explain_many", "BatchItem", "map_statistics", "contact_sheet",
           "road", "Road", "confidence_change", "Confidence", "average_drop_increase"]

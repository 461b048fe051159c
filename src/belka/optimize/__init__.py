"""Pictures made by optimising the input image against the network's activations: neural
style transfer (:func:`style`) and feature visualisation (:func:`visualize`). Both share one
engine: a picture parameterisation (:mod:`.param`), random transformations (:mod:`.transforms`),
named layer taps cut from the model's traced graph (:mod:`.features`) and an Adam loop with a
progress / preview / cancel callback (:mod:`.loop`). See docs/pictures.md."""

from __future__ import annotations

from .style import StyleResult, style
from .visualize import Objective, VisualizeResult, tile, visualize

__all__ = ["style", "visualize", "StyleResult", "VisualizeResult", "Objective", "tile"]

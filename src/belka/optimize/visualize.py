"""Feature visualisation: pictures of what a channel, a neuron, a direction in a layer's
channel space, or a class looks for, made by optimising the input to excite it.

The picture is a :class:`~belka.optimize.param.FourierImage` (decorrelated colour, 1 /
frequency scaled spectrum, sigmoid), every forward pass sees it randomly shifted, scaled and
turned (:class:`~belka.optimize.transforms.Robustness`), and Adam climbs the objective. Several
pictures of one objective (``diversity``) are pushed apart by a penalty on how alike their
feature statistics are; several channels of one layer (``channels``) are optimised together as
one batch, one channel per picture, and drawn as a grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..inspect import get_layer
from .common import (MAX_BATCH, MAX_SIZE, MAX_STEPS, MIN_SIZE, check_range, default_model,
                     generator, network_input)
from .features import Taps
from .loop import Progress, optimize
from .param import FourierImage
from .transforms import Robustness

DEFAULT_SIZE = 224
DEFAULT_STEPS = 256
LEARNING_RATE = 0.05
DIVERSITY_LAYER = "block4c_expand_activation"   # where "different" is measured (480 channels)
DIVERSITY_WEIGHT = 1.0


@dataclass(frozen=True)
class Objective:
    """What to excite: ``kind`` is ``channel``, ``neuron``, ``direction`` or ``class``;
    ``layer`` the layer's name (``predictions`` for a class), ``index`` the channel or class
    (a list for a grid: one per picture), ``direction`` a vector over the layer's channels."""

    kind: str
    layer: str
    index: tuple[int, ...] = ()
    direction: tuple[float, ...] = ()
    climb: str | None = None   # the layer the optimiser climbs, when not ``layer`` (see below)

    def describe(self, i: int = 0) -> str:
        if self.kind == "class":
            return f"class {self.index[i % len(self.index)]}"
        if self.kind == "direction":
            return f"{self.layer} direction ({len(self.direction)} channels)"
        return f"{self.layer} {self.kind} {self.index[i % len(self.index)]}"

    def value(self, acts: torch.Tensor) -> torch.Tensor:
        """One number per picture (N): how much the objective is met (higher is better)."""
        n = acts.shape[0]
        if self.kind == "direction":
            d = torch.tensor(self.direction, dtype=acts.dtype, device=acts.device)
            d = d / d.norm().clamp_min(1e-12)
            shape = (1, -1) + (1,) * (acts.dim() - 2)
            out = (acts * d.view(shape)).sum(1)
            return out.reshape(n, -1).mean(1)
        idx = torch.tensor([self.index[i % len(self.index)] for i in range(n)], device=acts.device)
        picked = acts[torch.arange(n, device=acts.device), idx]   # N (x H x W)
        if self.kind == "neuron":
            h, w = picked.shape[-2:]
            return picked[:, h // 2, w // 2]
        return picked.reshape(n, -1).mean(1)


@dataclass
class VisualizeResult:
    """The pictures (N x H x W x 3 uint8), the objective, the objective's value for each
    picture as the model sees it without transformations, and the seconds it took."""

    images: np.ndarray
    objective: Objective
    values: list[float]
    seconds: float
    steps: int

    def grid(self, columns: int | None = None, gap: int = 2) -> np.ndarray:
        """The pictures side by side in a grid (``columns`` defaults to a near-square one)."""
        return tile(self.images, columns, gap)

    def to_dict(self) -> dict:
        return {"objective": self.objective.kind, "layer": self.objective.layer,
                "index": list(self.objective.index), "count": int(len(self.images)),
                "width": int(self.images.shape[2]), "height": int(self.images.shape[1]),
                "values": [round(v, 6) for v in self.values], "steps": self.steps,
                "seconds": round(self.seconds, 3)}


def tile(pictures: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """N x H x W x 3 uint8 -> one grid picture, white gaps between the tiles."""
    n, h, w, _ = pictures.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255,
                  np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = p
    return out


def make_objective(model, *, layer: str | int | None = None, channel: int | None = None,
                   channels: Sequence[int] | None = None, neuron: bool = False,
                   direction: Sequence[float] | None = None,
                   target: int | str | None = None) -> Objective:
    """Check and build an :class:`Objective` from the options (see :func:`visualize`)."""
    chosen = sum(x is not None for x in (channel, channels, direction, target))
    if chosen != 1:
        raise UsageError("say what to visualise: one of a channel (with a layer), channels "
                         "(a grid), a direction (with a layer) or a class")
    if target is not None:
        if layer is not None or neuron:
            raise UsageError("a class is visualised on the logits: leave out the layer and neuron")
        found = model.class_indices(target)
        if len(found) != 1:
            raise UsageError(f"{target!r} names {len(found)} classes; give one class")
        return Objective("class", get_layer(model, "predictions").name, (found[0],))
    if layer is None:
        raise UsageError("a channel or a direction needs a layer (see `belka layers`)")
    name = get_layer(model, layer).name
    out_channels = _channels(model, name)
    if direction is not None:
        values = tuple(float(v) for v in direction)
        if len(values) != out_channels:
            raise UsageError(f"the direction has {len(values)} numbers; {name} has "
                             f"{out_channels} channels")
        if not np.all(np.isfinite(values)) or not any(values):
            raise UsageError("the direction must be finite and not all zeros")
        return Objective("direction", name, (), values, climb=_pre_activation(model, name))
    wanted = (channel,) if channel is not None else tuple(int(c) for c in channels)
    if not wanted:
        raise UsageError("no channels given")
    bad = [c for c in wanted if not 0 <= c < out_channels]
    if bad:
        raise UsageError(f"{name} has channels 0 to {out_channels - 1}, not {bad[0]}")
    if neuron and _spatial(model, name) is False:
        raise UsageError(f"{name} has no spatial positions: use a channel, not a neuron")
    return Objective("neuron" if neuron else "channel", name, wanted,
                     climb=_pre_activation(model, name))


def _pre_activation(model, name: str) -> str | None:
    """For a ReLU / ReLU6 layer, the layer whose output it clips (its input), else None.

    A channel that is zero everywhere on the grey start gets no gradient through the ReLU
    and would stay grey; climbing the value before the clip moves it (what is reported is
    still the layer's own activation)."""
    from torch import nn

    layer = get_layer(model, name)
    if not isinstance(layer.module, (nn.ReLU, nn.ReLU6)) or layer.index == 0:
        return None
    before = get_layer(model, layer.index - 1)
    node = next((n for n in _graph_nodes(model) if n.op == "call_module" and n.target == name),
                None)
    if node is None or len(node.args) != 1 or getattr(node.args[0], "target", None) != before.name:
        return None
    return before.name


def _graph_nodes(model):
    from ..inspect import trace

    return list(trace(model).graph.nodes)


def _shape(model, name: str) -> tuple[int, ...]:
    """The layer's output shape for one small input, from a pass through the taps (no hooks:
    safe on a model other threads are using)."""
    device = getattr(model, "device", None) or next(model.module.parameters()).device
    with torch.no_grad():
        out = Taps(model, [name])(torch.zeros(1, 3, 64, 64, device=device))[name]
    return tuple(out.shape)


def _channels(model, name: str) -> int:
    shape = _shape(model, name)
    if len(shape) < 2:
        raise UsageError(f"{name} has no channels to visualise")
    return shape[1]


def _spatial(model, name: str) -> bool:
    return len(_shape(model, name)) == 4


def visualize(model=None, *, layer: str | int | None = None, channel: int | None = None,
              channels: Sequence[int] | None = None, neuron: bool = False,
              direction: Sequence[float] | None = None, target: int | str | None = None,
              size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS, diversity: int = 1,
              seed: int = 0, lr: float = LEARNING_RATE,
              robustness: Robustness | None = Robustness(),
              progress: Progress | None = None) -> VisualizeResult:
    """Pictures of what the model looks for.

    For a ReLU layer (``..._activation``) the optimiser climbs the values before the clip
    (the preceding BatchNorm's output), so channels that are zero on the grey start move too;
    the values reported are the layer's own.

    Objectives (exactly one): ``layer`` + ``channel`` (its mean activation), ``layer`` +
    ``channel`` + ``neuron=True`` (the activation at the centre), ``layer`` + ``direction``
    (the activation along a vector over the channels), ``layer`` + ``channels`` (one picture
    per channel: a grid) or ``target`` (a class index or name: its logit).

    ``diversity`` > 1 makes that many different pictures of one objective. ``size`` is the
    side of each square picture, ``steps`` Adam steps, ``seed`` fixes the start and the
    transformations (same seed, same pictures on the same machine). ``progress(done, total,
    preview)`` as in :func:`belka.optimize.loop.optimize`.
    """
    check_range("size", size, MIN_SIZE, MAX_SIZE)
    check_range("steps", steps, 1, MAX_STEPS)
    check_range("diversity", diversity, 1, MAX_BATCH)
    model = default_model(model)
    objective = make_objective(model, layer=layer, channel=channel, channels=channels,
                               neuron=neuron, direction=direction, target=target)
    n = len(objective.index) if objective.kind in ("channel", "neuron") and channels else 1
    if channels is not None and diversity > 1:
        raise UsageError("a grid of channels makes one picture per channel; leave out diversity")
    n = max(n, diversity)
    check_range("pictures", n, 1, MAX_BATCH)
    started = time.perf_counter()
    climb = objective.climb or objective.layer
    taps = Taps(model, [objective.layer, climb] + ([DIVERSITY_LAYER] if diversity > 1 else []))
    gen = generator(seed)
    picture = FourierImage(n, size, size, generator=gen, device=model.device)

    def loss_fn(step: int, x: torch.Tensor) -> torch.Tensor:
        if robustness is not None:
            x = robustness(x, gen)
        feats = taps(network_input(model, x))
        values = objective.value(feats[climb])
        loss = -values.mean()
        if diversity > 1:
            loss = loss + DIVERSITY_WEIGHT * values.detach().abs().mean() * _alike(
                feats[DIVERSITY_LAYER])
        return loss

    optimize(picture, loss_fn, steps, lr=lr, progress=progress)
    pictures = picture.to_uint8()
    with torch.no_grad():
        seen = torch.from_numpy(pictures.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        values = objective.value(taps(network_input(model, seen.to(model.device)))[objective.layer])
    return VisualizeResult(pictures, objective, [float(v) for v in values],
                           time.perf_counter() - started, steps)


def _alike(acts: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the pictures' Gram matrices (off the diagonal)."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    grams = F.normalize((flat @ flat.transpose(1, 2)).reshape(n, -1), dim=1)
    sims = grams @ grams.T
    return (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))

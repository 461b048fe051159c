"""The machinery every explanation method shares.

:class:`Explainer` owns everything that is not the method's own formula:

* **layers**: a layer is named, indexed (``-3``) or chosen automatically (the last layer with a
  4-D N x C x H x W output before the global pooling; the choice is logged and noted in
  ``Explanation.details["note"]``);
* **hooks**: one forward hook on that layer captures its output; gradients with respect to it are
  taken with :func:`torch.autograd.grad` on the captured tensor, so nothing is written to the
  parameters' ``.grad`` and no tensor hook outlives the call. Hooks are removed in ``finally``
  blocks, also when the forward raises, so repeated calls leak neither hooks nor graphs;
* **targets**: a class index, a class name ("fox squirrel"), a group ("squirrel": the *sum of
  the group's logits* is explained, and the reported probability is the sum of the group's
  probabilities) or, by default, each image's top prediction;
* **batching**: N images with N targets run in chunks of ``batch_size``; every method works
  image by image inside a batch, so a batched call equals N single calls;
* **the fast path**: when the layer's output goes through nothing but global average pooling and
  the linear classifier (EfficientNet-Lite0's ``top_activation``, MobileNetV2's ``out_relu``),
  ``d score / d A[k, i, j] = W[target, k] / (H * W)`` exactly, so the gradient CAM methods need
  no backward pass: one forward in inference mode, verified on every call against the logits;
* **upsampling and mapping back**: a map at the layer's resolution is upsampled bilinearly to
  the model's input grid (``Explanation.raw``), then mapped onto the input image's own pixels by
  undoing the resize policy (see :func:`map_to_image`).

Each method is a small subclass that overrides :meth:`Explainer.compute`.
"""

from __future__ import annotations

import difflib
import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError, UsageError

log = logging.getLogger("belka.explain")

INPUT = "input"
"""The layer name input-attribution methods (saliency, SmoothGrad, IG, occlusion) report."""


# --------------------------------------------------------------------------------------------
# The result


@dataclass(eq=False)
class Explanation:
    """Why the model scored an image as it did, as a heat map.

    ``heatmap`` is H x W float32 in [0, 1] at the input image's own size (at the model's input
    size when the input was an already preprocessed tensor). ``raw`` is the method's map before
    normalisation, upsampled to the model's input grid (S x S). ``indices`` are the explained
    classes (one, or several for a group), ``label`` their name, ``score`` the explained logit
    (the sum for a group) and ``probability`` the softmax probability (the sum for a group).
    ``attributions`` holds the signed per-channel input attributions of the input methods
    (C x S x S; None for the CAM family). ``details`` records how it was computed (fast path,
    automatic layer choice, resize policy, IG's completeness gap ...).
    """

    heatmap: np.ndarray
    indices: tuple[int, ...]
    label: str
    layer: str
    score: float
    probability: float
    method: str
    raw: np.ndarray = field(repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    attributions: np.ndarray | None = field(default=None, repr=False)
    details: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        h, w = self.heatmap.shape
        return (f"<Explanation {self.method} @ {self.layer}: {self.label!r} {list(self.indices)} "
                f"p={self.probability:.3f} score={self.score:.3f}, heatmap {h}x{w}, "
                f"peak {self.peak}>")

    @property
    def index(self) -> int | None:
        """The explained class index, or None when a group of several classes was explained."""
        return self.indices[0] if len(self.indices) == 1 else None

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heat map's maximum."""
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape))

    @property
    def caption(self) -> str:
        """One line for people: label, probability, method and layer."""
        cls = f" ({self.index})" if self.index is not None else ""
        return (f"{self.label}{cls}  p={self.probability:.1%}  {self.method} @ {self.layer}")

    def _image(self, image) -> np.ndarray:
        if image is None:
            image = self.image
        if image is None:
            raise UsageError("this explanation was made from a tensor: pass the image to draw on")
        if isinstance(image, (str, os.PathLike, bytes)):
            from .. import images as _images

            image = _images.decode(image)
        return image

    def overlay(self, image=None, colormap: str = "turbo", alpha: float = 0.5):
        """The heat map blended over the image (default: the explained image) as a PIL image."""
        from .render import overlay

        return overlay(self._image(image), self.heatmap, colormap=colormap, alpha=alpha)

    def grid(self, image=None, colormap: str = "turbo", alpha: float = 0.5, caption: str | None = None):
        """Image, heat map and overlay side by side with the caption underneath (PIL image)."""
        from .render import grid

        return grid(self._image(image), self.heatmap, self.caption if caption is None else caption,
                    colormap=colormap, alpha=alpha)

    def to_dict(self) -> dict:
        """The scalar facts (no arrays), for JSON."""
        return {"method": self.method, "layer": self.layer, "indices": list(self.indices),
                "label": self.label, "score": round(self.score, 6),
                "probability": round(self.probability, 6), "peak": list(self.peak),
                "size": list(self.heatmap.shape),
                **{k: v for k, v in self.details.items() if isinstance(v, (str, int, float, bool))}}


# --------------------------------------------------------------------------------------------
# Layers


_CHILDREN: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _children(model) -> list[tuple[str, nn.Module]]:
    """The model's named layers, cached per module (checked against the module's own child
    dict, so a replaced layer is seen)."""
    module = model.module
    cached = _CHILDREN.get(module)
    if cached is not None and cached[0] == list(module._modules.values()):
        return cached[1]
    children = list(module.named_children())
    _CHILDREN[module] = ([m for _, m in children], children)
    return children


def _unknown_layer(name: str, names: Sequence[str]) -> ModelError:
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ModelError(f"unknown layer {name!r}.{hint} `belka layers` lists them "
                      f"({len(names)} layers, {names[0]} ... {names[-1]}).")


def resolve_layer(model, layer: str | int | nn.Module | None) -> tuple[str, nn.Module, bool]:
    """(name, module, chosen automatically) for a layer name, index, module or None (auto)."""
    children = _children(model)
    names = [n for n, _ in children]
    if layer is None or (isinstance(layer, str) and layer.strip().lower() in ("", "auto")):
        name = auto_layer(model)
        return name, dict(children)[name], True
    if isinstance(layer, nn.Module):
        for name, module in model.module.named_modules():
            if module is layer and name:
                return name, module, False
        raise ModelError("the given module is not a layer of this model")
    if isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and layer.isascii() and layer.strip().lstrip("-").isdigit()):
        index = int(layer)
        if not -len(names) <= index < len(names):
            raise ModelError(f"layer index {index} is out of range: the model has {len(names)} "
                             f"layers (0..{len(names) - 1}, or negative from the end)")
        name = names[index]
        return name, dict(children)[name], False
    if isinstance(layer, str):
        modules = dict(model.module.named_modules())
        if layer in modules and layer:
            return layer, modules[layer], False
        raise _unknown_layer(layer, names)
    raise UsageError(f"layer must be a name, an index or None, not {type(layer).__name__}")


_SHAPES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def layer_shapes(model, size: int | None = None) -> list[tuple[str, tuple[int, ...] | None]]:
    """(name, output shape for one image) of every direct child, in the order they run.

    Found with one forward pass of a blank image and cached per module and size.
    """
    size = size or model.preprocessing.size
    cache = _SHAPES.setdefault(model.module, {})
    if size in cache:
        return cache[size]
    records: list[tuple[str, tuple[int, ...] | None]] = []
    handles = []

    def recorder(name):
        def hook(_module, _inputs, output):
            records.append((name, tuple(output.shape) if isinstance(output, torch.Tensor) else None))
        return hook

    try:
        for name, child in _children(model):
            handles.append(child.register_forward_hook(recorder(name)))
        device = next((p.device for p in model.module.parameters()), torch.device("cpu"))
        with torch.inference_mode():
            model.module(torch.zeros(1, 3, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    cache[size] = records
    return records


def auto_layer(model) -> str:
    """The last layer with a 4-D spatial output (H x W > 1) before the first 2-D output (the
    global pooling): the usual Grad-CAM layer (``top_activation``, ``out_relu``)."""
    best = None
    for name, shape in layer_shapes(model):
        if shape is None:
            continue
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            best = name
        elif len(shape) == 2 and best is not None:
            return best
    if best is None:
        raise ModelError("found no convolutional layer to explain; pass layer=NAME")
    return best


_POOLS = (nn.AdaptiveAvgPool2d,)
_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


def classifier_after(model, layer_name: str) -> nn.Linear | None:
    """The final ``nn.Linear`` when the layer's output goes through nothing but a global average
    pooling (optionally Flatten/Dropout/Identity) and that linear classifier; else None."""
    from ..models.layers import GlobalAvgPool

    children = _children(model)
    names = [n for n, _ in children]
    if layer_name not in names:
        return None
    rest = [m for _, m in children[names.index(layer_name) + 1:]]
    if not rest:
        return None
    pool = rest[0]
    is_gap = isinstance(pool, GlobalAvgPool) or (
        isinstance(pool, _POOLS) and pool.output_size in (1, (1, 1)))
    if not is_gap:
        return None
    middle, last = rest[1:-1], rest[-1]
    if not isinstance(last, nn.Linear) or not all(isinstance(m, _PASS_THROUGH) for m in middle):
        return None
    return last


# --------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """Explained classes and their name."""

    indices: tuple[int, ...]
    label: str


def resolve_target(model, spec, logits: torch.Tensor | None = None) -> Target:
    """A target spec (None = top prediction, index, class name, group name, tuple of them) ->
    :class:`Target`."""
    if spec is None:
        if logits is None:
            raise UsageError("the top prediction needs the logits")
        index = int(torch.argmax(logits))
        return Target((index,), model.labels[index])
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, (np.integer,)):
        spec = int(spec)
    if isinstance(spec, bool) or not isinstance(spec, (int, str, tuple, set, frozenset)):
        raise UsageError(f"a target is a class index, a class or group name, or a tuple of them; "
                         f"got {type(spec).__name__}")
    indices = tuple(model.class_indices(list(spec) if isinstance(spec, (set, frozenset)) else spec))
    if len(indices) == 1:
        label = model.labels[indices[0]]
    elif isinstance(spec, str):
        label = spec.strip()
    else:
        label = " + ".join(model.labels[i] for i in indices)
    return Target(indices, label)


def _target_specs(target, n: int) -> list:
    if isinstance(target, list):
        if len(target) != n:
            raise UsageError(f"got {len(target)} targets for {n} images: give one target, or a "
                             "list with one per image (a tuple names several classes at once)")
        return list(target)
    return [target] * n


def target_scores(logits: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """The explained score of each row: the target's logit, or the sum of a group's logits."""
    return torch.stack([logits[i, list(t.indices)].sum() for i, t in enumerate(targets)])


def target_probabilities(logits: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Softmax probability of each row's target (summed over a group)."""
    probs = torch.softmax(logits.float(), dim=1)
    return torch.stack([probs[i, list(t.indices)].sum() for i, t in enumerate(targets)])


# --------------------------------------------------------------------------------------------
# Mapping the model's input grid back onto the image


@dataclass(frozen=True)
class Geometry:
    """Where the model's S x S input grid lies on an H x W image.

    Along each axis an image pixel ``u`` (centre ``u + 0.5``) sits at grid coordinate
    ``(u + 0.5) * scale - offset``; pixels whose coordinate falls outside [0, S] were cut away
    by the resize policy (``crop``) and get heat 0.
    """

    height: int
    width: int
    size: int
    scale_y: float
    scale_x: float
    offset_y: float
    offset_x: float


def _centre(outer: int, inner: int) -> int:
    return int(round((outer - inner) / 2.0))


def geometry(height: int, width: int, size: int, policy: str, crop_fraction: float = 0.875) -> Geometry:
    """The grid placement :func:`belka.images.resize` uses for ``policy``.

    * ``squash``: the grid covers the whole image, stretched.
    * ``crop``: the shorter side is scaled to ``round(size / crop_fraction)`` and the centre
      ``size`` x ``size`` is kept: the grid covers a centred square of the image and the border
      outside it was never seen by the model.
    * ``letterbox``: the longer side is scaled to ``size`` and centred; the padding holds no
      image pixels.
    """
    if policy == "squash":
        return Geometry(height, width, size, size / height, size / width, 0.0, 0.0)
    if policy == "crop":
        short = round(size / crop_fraction)
        scale = short / min(width, height)
        if width <= height:
            sw, sh = short, round(height * scale)
        else:
            sw, sh = round(width * scale), short
        return Geometry(height, width, size, sh / height, sw / width,
                        float(_centre(sh, size)), float(_centre(sw, size)))
    if policy == "letterbox":
        scale = size / max(width, height)
        sw, sh = max(1, round(width * scale)), max(1, round(height * scale))
        return Geometry(height, width, size, sh / height, sw / width,
                        -float(_centre(size, sh)), -float(_centre(size, sw)))
    raise UsageError(f"unknown resize policy {policy!r}; choose crop, squash or letterbox")


def _axis(n: int, size: int, scale: float, offset: float):
    coord = (np.arange(n, dtype=np.float64) + 0.5) * scale - offset
    inside = (coord >= 0.0) & (coord <= size)
    c = np.clip(coord - 0.5, 0.0, size - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, size - 1)
    t = (c - i0).astype(np.float32)
    return i0, i1, t, inside


def map_to_image(grid: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample an S x S map on the model's input grid onto the H x W image (bilinear, the same
    sampling as ``F.interpolate(align_corners=False)``). Returns (map, rows inside, columns
    inside); pixels the model never saw (outside the ``crop``) are 0."""
    grid = np.asarray(grid, dtype=np.float32)
    y0, y1, ty, in_y = _axis(geo.height, geo.size, geo.scale_y, geo.offset_y)
    x0, x1, tx, in_x = _axis(geo.width, geo.size, geo.scale_x, geo.offset_x)
    rows = grid[y0] * (1.0 - ty)[:, None] + grid[y1] * ty[:, None]          # H x S
    out = rows[:, x0] * (1.0 - tx)[None, :] + rows[:, x1] * tx[None, :]     # H x W
    out[~in_y, :] = 0.0
    out[:, ~in_x] = 0.0
    return out, in_y, in_x


def normalize(values: np.ndarray, in_y: np.ndarray | None = None,
              in_x: np.ndarray | None = None) -> np.ndarray:
    """Min-max scale to [0, 1] over the region the model saw; elsewhere 0; a flat map is 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if in_y is None or in_x is None:
        region = values
    else:
        if not in_y.any() or not in_x.any():
            return np.zeros_like(values)
        region = values[np.ix_(in_y, in_x)]
    lo, hi = float(region.min()), float(region.max())
    out = np.zeros_like(values)
    if hi - lo > 1e-12 * max(1.0, abs(hi)):
        out = (values - lo) / (hi - lo)
        np.clip(out, 0.0, 1.0, out=out)
        if in_y is not None and in_x is not None:
            out[~in_y, :] = 0.0
            out[:, ~in_x] = 0.0
    return out.astype(np.float32, copy=False)


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out x n_in weights of 1-D linear interpolation with PyTorch's ``align_corners=False``
    rule (source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - t)
    np.add.at(m, (np.arange(n_out), i1), t)
    return m.astype(np.float32)


_MATRICES: dict[tuple[int, int], np.ndarray] = {}


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N x h x w maps -> N x S x S by bilinear interpolation, the same numbers as
    ``F.interpolate(mode="bilinear", align_corners=False)`` (to float rounding), in NumPy:
    two small matrix products per map instead of a torch kernel that wakes the thread pool."""
    maps = np.asarray(maps, dtype=np.float32)
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return np.array(maps, dtype=np.float32)
    rows = _MATRICES.get((size[0], h))
    if rows is None:
        rows = _MATRICES[(size[0], h)] = _interpolation_matrix(size[0], h)
    cols = _MATRICES.get((size[1], w))
    if cols is None:
        cols = _MATRICES[(size[1], w)] = _interpolation_matrix(size[1], w)
    return np.ascontiguousarray(rows @ maps @ cols.T, dtype=np.float32)


def _seen(n: int, size: int, scale: float, offset: float) -> slice:
    """Grid indices along one axis whose pixel centres lie on the image."""
    start, stop = -offset, n * scale - offset          # the image's extent in grid units
    first = max(0, int(np.ceil(start - 0.5)))
    last = min(size, int(np.floor(stop - 0.5)) + 1)
    return slice(first, max(first + 1, last))


def heatmap_on_image(grid: np.ndarray, geo: Geometry) -> np.ndarray:
    """The H x W heat map in [0, 1] for a raw S x S map: min-max scaled over the part of the
    grid that shows the image (all of it for crop and squash, the content for letterbox), mapped
    onto the image, and rescaled so that its maximum is exactly 1. Unseen pixels are 0."""
    rows = _seen(geo.height, geo.size, geo.scale_y, geo.offset_y)
    cols = _seen(geo.width, geo.size, geo.scale_x, geo.offset_x)
    grid = normalize(np.asarray(grid, dtype=np.float32)[rows, cols])
    full = np.pad(grid, ((rows.start, geo.size - rows.stop), (cols.start, geo.size - cols.stop)),
                  mode="edge")                         # letterbox padding: repeat the edge
    out, _, _ = map_to_image(full, geo)
    peak = float(out.max())
    if peak > 0:
        out /= np.float32(peak)
        np.minimum(out, 1.0, out=out)
    return out


# --------------------------------------------------------------------------------------------
# The base class


@dataclass
class Context:
    """What one forward pass over a batch found, handed to :meth:`Explainer.compute`."""

    x: torch.Tensor                       # N x 3 x S x S, the model's input
    logits: torch.Tensor                  # N x classes, detached
    targets: list[Target]
    scores: torch.Tensor                  # N, the explained logit (sum for a group)
    activations: torch.Tensor | None = None   # N x C x h x w at the layer, detached
    gradients: torch.Tensor | None = None     # d score / d activations (or / d x), detached
    fast: bool = False                    # gradients came from the closed form, not autograd
    channel_gradient: torch.Tensor | None = None  # fast path: N x C, d score / d A_k (same everywhere)
    attributions: torch.Tensor | None = None  # set by input methods: N x C x S x S, signed
    details: list[dict] = field(default_factory=list)  # per image, set by methods


class _CallbackBar:
    """tqdm's ``update``/context-manager interface over a ``progress(done, total)`` callback."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0
        callback(0, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.callback(self.done, self.total)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class Explainer:
    """Base class of every method. Subclasses set the class attributes and override
    :meth:`compute` (or, for the gradient CAMs, ``weights``).

    ``layer`` is a name, an index, a module or None (automatic). ``batch_size`` bounds how many
    images run together; ``internal_batch_size`` bounds the extra forwards of the methods that
    make many (Score-CAM, SmoothGrad, IG, occlusion, metrics). ``fast=False`` disables the
    closed-form gradient path. ``progress`` shows a tqdm bar for the slow methods (True, False,
    or None: only on a terminal), or is a ``progress(done, total)`` callable, called as the work
    advances (passes of a slow method, else images); an exception it raises cancels the work.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = True       # explains a layer's activations (the CAM family)
    gradients: ClassVar[str | None] = None  # "layer", "input" or None: what the forward must give
    fast_path: ClassVar[bool] = False       # only needs d score / d A: the closed form applies
    slow: ClassVar[bool] = False            # makes many passes per image and reports them
    options: ClassVar[dict[str, Any]] = {}  # method-specific keyword options and their defaults

    def __init__(self, model, layer: str | int | nn.Module | None = None, *, batch_size: int = 16,
                 internal_batch_size: int = 32, fast: bool = True,
                 progress: bool | Callable[[int, int], Any] | None = None, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise UsageError(f"{self.name} takes no option {', '.join(unknown)} "
                             f"(its options: {accepted})")
        if batch_size < 1 or internal_batch_size < 1:
            raise UsageError("batch sizes must be at least 1")
        self.model = model
        self.batch_size = int(batch_size)
        self.internal_batch_size = int(internal_batch_size)
        self.progress = progress
        self.settings = {**self.options, **options}
        self.note = ""
        if self.uses_layer:
            self.layer_name, self.layer_module, auto = resolve_layer(model, layer)
            if auto:
                self.note = f"layer chosen automatically: {self.layer_name}"
                log.info("belka.explain: %s", self.note)
            else:
                shapes = dict(layer_shapes(model))
                shape = shapes.get(self.layer_name, "unknown")
                if self.layer_name in shapes and (shape is None or len(shape) != 4):
                    raise ModelError(f"layer {self.layer_name!r} outputs {shape}, not an "
                                     f"N x C x H x W feature map; choose a convolutional layer "
                                     f"(e.g. {auto_layer(model)})")
        else:
            if layer not in (None, INPUT):
                raise UsageError(f"{self.name} attributes the input pixels and takes no layer "
                                 f"(got layer={layer!r}); drop the layer option")
            self.layer_name, self.layer_module = INPUT, None
        self.head = (classifier_after(model, self.layer_name)
                     if self.uses_layer and self.gradients == "layer" and self.fast_path and fast
                     else None)

    # -- the method's own part -------------------------------------------------------------
    def compute(self, ctx: Context) -> torch.Tensor:
        """N x h x w raw maps (any resolution; upsampled by the base class)."""
        raise NotImplementedError

    # -- helpers for methods that run the model more --------------------------------------
    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.module.parameters()), torch.device("cpu"))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for any number of inputs, ``internal_batch_size`` at a time, no gradients;
        on the model's engine when it is made and on the CPU (Score-CAM, occlusion)."""
        out = []
        engine = getattr(self.model, "engine_if_made", None)
        use_engine = engine is not None and x.device.type == "cpu"
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.internal_batch_size):
                chunk = x[start:start + self.internal_batch_size]
                out.append(torch.from_numpy(self.model.fast_logits(chunk.numpy())) if use_engine
                           else self.model.module(chunk))
        return torch.cat(out) if out else x.new_zeros((0, len(self.model.labels)))

    def input_gradients(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d x, score) for a batch of inputs that share one target; graph freed."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            logits = self.model.module(x)
            scores = logits[:, list(target.indices)].sum(dim=1)
            (grad,) = torch.autograd.grad(scores.sum(), x)
        return grad.detach(), scores.detach()

    def bar(self, total: int, desc: str):
        """A progress bar for a method's inner loop: tqdm, or the ``progress(done, total)``
        callback (which may raise to cancel the work)."""
        if callable(self.progress):
            return _CallbackBar(self.progress, total)
        from tqdm.auto import tqdm

        disable = None if self.progress is None else not self.progress
        return tqdm(total=total, desc=desc, unit="pass", disable=disable, leave=False)

    # -- one forward over a batch -----------------------------------------------------------
    def _forward(self, x: torch.Tensor, specs: Sequence) -> Context:
        store: dict[str, Any] = {}
        grad_at_layer = self.uses_layer and self.gradients == "layer"
        fast = grad_at_layer and self.head is not None

        def hook(_module, _inputs, output):
            if "activations" in store:
                raise UsageError(f"layer {self.layer_name!r} runs more than once per forward "
                                 "pass; choose another layer")
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ModelError(f"layer {self.layer_name!r} does not output an N x C x H x W "
                                 "feature map; choose a convolutional layer")
            if grad_at_layer and not fast:
                # Layers before this one ran without autograd; from here on it records, so the
                # backward pass covers only the layers between this one and the logits.
                torch.set_grad_enabled(True)
                output = output.detach().requires_grad_(True)
            store["activations"] = output
            return output

        handle = self.layer_module.register_forward_hook(hook) if self.uses_layer else None
        try:
            if fast:
                with torch.inference_mode():
                    ran = self._engine_forward(x)
                    if ran is None:
                        logits = self.model.module(x)
                        acts = store["activations"]
                    else:
                        logits, acts = ran
                    targets = [resolve_target(self.model, s, logits[i]) for i, s in enumerate(specs)]
                    channel = self._closed_form_gradients(acts, logits, targets)
                if channel is not None:
                    grads = channel[:, :, None, None].expand_as(acts)
                    return Context(x, logits, targets, target_scores(logits, targets), acts,
                                   grads, fast=True, channel_gradient=channel)
                # The classifier does not reproduce the logits: this model is wired otherwise.
                self.head = None
                store.clear()
                grad_at_layer, fast = True, False
            if grad_at_layer:
                with torch.inference_mode(False), torch.no_grad():
                    logits = self.model.module(x)
                    acts = store["activations"]
                    targets = [resolve_target(self.model, s, logits[i].detach())
                               for i, s in enumerate(specs)]
                    with torch.enable_grad():
                        scores = target_scores(logits, targets)
                        (grads,) = torch.autograd.grad(scores.sum(), acts)
                return Context(x, logits.detach(), targets, scores.detach(), acts.detach(),
                               grads.detach())
            if self.gradients == "input":
                with torch.inference_mode(False), torch.enable_grad():
                    xg = x.detach().clone().requires_grad_(True)
                    logits = self.model.module(xg)
                    targets = [resolve_target(self.model, s, logits[i].detach())
                               for i, s in enumerate(specs)]
                    scores = target_scores(logits, targets)
                    (grads,) = torch.autograd.grad(scores.sum(), xg)
                return Context(x, logits.detach(), targets, scores.detach(), None, grads.detach())
            with torch.inference_mode():
                logits = self.model.module(x)
            targets = [resolve_target(self.model, s, logits[i]) for i, s in enumerate(specs)]
            acts = store.get("activations")
            return Context(x, logits, targets, target_scores(logits, targets), acts)
        finally:
            if handle is not None:
                handle.remove()
            store.clear()

    def _engine_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(logits, the layer's feature map) from the model's engine in one forward-only run,
        when the engine is already made, runs on the CPU, and gives this layer's output (the
        last spatial layer before the pooling): ONNX Runtime is several times faster than eager
        PyTorch, and the closed form needs nothing else. None to run the module instead."""
        from ..engine import FEATURES

        engine = getattr(self.model, "engine_if_made", None)
        if (engine is None or x.device.type != "cpu" or FEATURES not in engine.outputs
                or engine.spatial_layer != self.layer_name
                or len(self.model.labels) != len(engine.model.labels)):
            return None
        logits, features = engine.run(x.numpy(), ("logits", FEATURES))
        return torch.from_numpy(logits), torch.from_numpy(features)

    def _closed_form_gradients(self, acts, logits, targets) -> torch.Tensor | None:
        """d score / d A_k for a layer followed only by global average pooling and the linear
        classifier: the classifier row (summed over a group) / (H * W), the same at every
        position, as an N x C tensor. None when the classifier does not reproduce the logits
        from ``acts``.

        Computed in NumPy on the CPU: these are small operations, and torch's thread pool
        waking up beside ONNX Runtime's threads cost more than the arithmetic (a 1 x 1280 x 7 x 7
        mean took milliseconds right after an engine run)."""
        head = self.head
        on_cpu = acts.device.type == "cpu" and head.weight.device.type == "cpu"
        if on_cpu:
            a = acts.detach().numpy()
            weight = head.weight.detach().numpy()
            bias = None if head.bias is None else head.bias.detach().numpy()
            # The explained rows and every 50th other: the map depends on the explained rows
            # only, and a classifier wired otherwise fails on any row. (All 1000 rows cost a
            # threaded BLAS call, slower here than the rest of the method.)
            pooled = a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2) / np.float32(
                a.shape[2] * a.shape[3])
            got = logits.detach().numpy()
            agrees = got.shape == (a.shape[0], weight.shape[0])
            if agrees:
                spot = np.arange(0, weight.shape[0], 50)
                for i, t in enumerate(targets):
                    idx = np.concatenate([spot, np.asarray(t.indices, dtype=np.intp)])
                    check = weight[idx] @ pooled[i]
                    if bias is not None:
                        check += bias[idx]
                    tolerance = 1e-4 * max(1.0, float(np.abs(got[i]).max()))
                    agrees = agrees and np.allclose(check, got[i, idx], rtol=1e-4, atol=tolerance)
        else:
            pooled = acts.mean(dim=(2, 3))
            check = F.linear(pooled, head.weight, head.bias)
            tolerance = 1e-4 * max(1.0, float(logits.abs().max()))
            agrees = check.shape == logits.shape and bool(
                torch.allclose(check, logits, rtol=1e-4, atol=tolerance))
        if not agrees:
            log.warning("belka.explain: layer %s is not followed by pooling and the classifier "
                        "alone; using autograd", self.layer_name)
            return None
        h, w = acts.shape[2:]
        if on_cpu:
            rows = np.stack([weight[list(t.indices)].sum(axis=0) for t in targets])
            return torch.from_numpy(rows / np.float32(h * w))
        rows = torch.stack([head.weight[list(t.indices)].sum(dim=0) for t in targets])
        return rows / (h * w)

    # -- the whole run -------------------------------------------------------------------------
    def explain(self, images, target=None, *, resize: str | None = None) -> list[Explanation]:
        """Explanations for a list of images (or an N x 3 x S x S tensor), one per image.

        ``target`` is one spec for all images or a list with one per image.
        """
        if isinstance(images, torch.Tensor):
            x_all = images if images.dim() == 4 else images.unsqueeze(0)
            items: list = [None] * x_all.shape[0]
        else:
            x_all = None
            items = list(images)
        specs = _target_specs(target, len(items))
        policy = resize or self.model.preprocessing.policy
        results: list[Explanation] = []
        report = self.progress if callable(self.progress) and not self.slow else None
        if report is not None:
            report(0, len(items))
        for start in range(0, len(items), self.batch_size):
            stop = min(start + self.batch_size, len(items))
            if x_all is not None:
                x = x_all[start:stop].to(self.device, torch.float32)
                originals = [None] * (stop - start)
            else:
                originals = [self.model.decode(im) for im in items[start:stop]]
                prep = self.model.preprocessing
                batch = np.stack([prep.resize(im, policy) for im in originals])
                x = prep.normalize(batch).to(self.device)
            ctx = self._forward(x, specs[start:stop])
            maps = self.compute(ctx)
            results.extend(self._finish(ctx, maps, originals, policy))
            if report is not None:
                report(len(results), len(items))
        return results

    def _finish(self, ctx: Context, maps: torch.Tensor, originals, policy: str) -> list[Explanation]:
        size = tuple(ctx.x.shape[-2:])
        maps = maps.detach().float()
        if maps.device.type == "cpu":
            raw = upsample(maps.numpy(), size)
        else:
            if tuple(maps.shape[-2:]) != size:
                maps = F.interpolate(maps[:, None], size=size, mode="bilinear",
                                     align_corners=False)[:, 0]
            raw = maps.cpu().numpy()
        probs = target_probabilities(ctx.logits, ctx.targets).cpu().numpy()
        scores = ctx.scores.float().cpu().numpy()
        attributions = None if ctx.attributions is None else ctx.attributions.float().cpu().numpy()
        out = []
        for i, original in enumerate(originals):
            details = {"fast_path": bool(ctx.fast)}
            if self.note:
                details["note"] = self.note
            if i < len(ctx.details):
                details.update(ctx.details[i])
            if original is None:
                heat = normalize(raw[i])
            else:
                details["resize"] = policy
                prep = self.model.preprocessing
                geo = geometry(original.shape[0], original.shape[1], size[0], policy,
                               prep.crop_fraction)
                heat = heatmap_on_image(raw[i], geo)
            out.append(Explanation(
                heatmap=heat, indices=ctx.targets[i].indices, label=ctx.targets[i].label,
                layer=self.layer_name, score=float(scores[i]), probability=float(probs[i]),
                method=self.name, raw=raw[i].copy(), image=original,
                attributions=None if attributions is None else attributions[i].copy(),
                details=details))
        return out


# --------------------------------------------------------------------------------------------
# Registry and the public verb


METHODS: dict[str, type[Explainer]] = {}
_ALIASES: dict[str, str] = {}


def register(*aliases: str):
    """Class decorator: make a method available to :func:`explain` by its name and aliases."""
    def add(cls: type[Explainer]) -> type[Explainer]:
        METHODS[cls.name] = cls
        for alias in (cls.name, *aliases):
            _ALIASES[_key(alias)] = cls.name
        return cls
    return add


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch == "+")


def get_method(name: str | type[Explainer]) -> type[Explainer]:
    """The :class:`Explainer` subclass for a method name ("gradcam", "Grad-CAM++", "ig")."""
    if isinstance(name, type) and issubclass(name, Explainer):
        return name
    from . import (ablation, attribution, cam, fullgrad, fused, gradients, guided,  # noqa: F401
                   lime, perturbation)  # (they register the methods)

    key = _key(str(name))
    if key not in _ALIASES:
        close = difflib.get_close_matches(key, list(_ALIASES), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(sorted({_ALIASES[c] for c in close}))}?" if close else ""
        raise UsageError(f"unknown explanation method {name!r}.{hint} "
                         f"Methods: {', '.join(METHODS)}")
    return METHODS[_ALIASES[key]]


def _is_batch(images) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    if isinstance(images, torch.Tensor):
        return images.dim() == 4
    return isinstance(images, np.ndarray) and images.ndim == 4


def explain(model, images, target=None, method: str = "gradcam", layer=None, *,
            resize: str | None = None, batch_size: int = 16, **options):
    """Explain a model's score for one image or many, as heat maps.

    ``images``: a path, bytes, H x W x 3 array or PIL image (returns one :class:`Explanation`),
    a list of them (returns a list), or an already preprocessed N x 3 x S x S tensor (a list,
    heat maps at S x S). ``target``: None (each image's top prediction), a class index, a class
    name ("fox squirrel"), a group ("squirrel": the sum of its logits), a tuple of classes, or a
    list with one of those per image. ``method``: see :data:`METHODS` (default Grad-CAM).
    ``layer``: a name, an index, or None for the last convolutional layer before the pooling
    (the input methods take none). ``resize`` overrides the model's resize policy. Other keyword options go to the method (``steps=``, ``samples=``, ``fast=``,
    ``internal_batch_size=``, ``progress=``...).
    """
    cls = get_method(method)
    explainer = cls(model, layer=layer, batch_size=batch_size, **options)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        return explainer.explain(images.unsqueeze(0), target, resize=resize)[0]
    results = explainer.explain(images if _is_batch(images) else [images], target, resize=resize)
    return results if _is_batch(images) else results[0]

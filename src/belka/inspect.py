"""Look inside a model: a Keras-style summary, layer lookup, running one layer, named
activations, feature-map grids, and splitting the network in two at any layer.

Every function takes a :class:`belka.Model` or a bare ``nn.Module`` whose direct children are the
named layers (the layout every belka model family has). Indices count those children from 0, so
``get_layer(model, 0)`` is the first layer after the input (Keras counts its ``input_1`` as layer 0,
so Keras's ``model.layers[i]`` is our index ``i - 1``).

Shapes are channels-first, the way PyTorch computes them, with ``None`` for the batch axis:
``(None, 32, 112, 112)`` is Keras's ``(None, 112, 112, 32)``.
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import threading
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

import numpy as np
import torch
from torch import fx, nn

from .errors import ModelError, UsageError
from .models.layers import LEAF_MODULES

if TYPE_CHECKING:
    from .models.model import ImageLike, Model

ModelLike = Union["Model", nn.Module]
LayerKey = Union[str, int]
Shape = tuple[Union[int, None], ...]

__all__ = [
    "Layer", "LayerRow", "LayerTracer", "Summary", "activations", "feature_grid", "find_layers",
    "format_shape", "get_layer", "layers", "run_layer", "split", "splittable_layers", "summarize",
    "trace",
]


# --------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True, eq=False)
class Layer:
    """One named layer: its index among the model's layers, its name and its module.

    Calling it runs the layer alone (the seed article's ``layer.apply``): ``layer(x)``, or
    ``layer(x, shortcut)`` for an ``Add``.
    """

    index: int
    name: str
    module: nn.Module

    @property
    def type(self) -> str:
        return type(self.module).__name__

    def __call__(self, *inputs: torch.Tensor) -> Any:
        device = _device(self.module)
        return self.module(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs))

    def __repr__(self) -> str:
        return f"<Layer {self.index}: {self.name} ({self.type})>"


def _module(model: ModelLike) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a belka Model or an nn.Module, not {type(model).__name__}")
    return module


def _model_name(model: ModelLike) -> str:
    return getattr(model, "name", None) or type(_module(model)).__name__


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def layers(model: ModelLike) -> list[Layer]:
    """The model's layers (the module's direct children) in order."""
    children = _module(model).named_children()
    return [Layer(i, name, child) for i, (name, child) in enumerate(children)]


def get_layer(model: ModelLike, key: LayerKey) -> Layer:
    """A layer by name (``"block_12_expand"``) or index (``100``, ``-1``; a string of digits
    counts as an index unless a layer has that name); a nested module by its dotted path
    (``"features.3.conv"``, as ``belka summary --depth N`` lists it; its index is that of the
    layer it belongs to).

    Raises :class:`ModelError` for an unknown name (listing close matches) or an index out of range.
    """
    all_layers = layers(model)
    by_name = {layer.name: layer for layer in all_layers}
    if isinstance(key, str) and key in by_name:
        return by_name[key]
    if isinstance(key, str) and "." in key:            # a nested module by its dotted path
        nested = dict(_module(model).named_modules())
        if key in nested:
            top = by_name.get(key.split(".")[0])
            return Layer(top.index if top is not None else -1, key, nested[key])
    if isinstance(key, str) and key.isascii() and key.lstrip("-").isdigit():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool):
        n = len(all_layers)
        if -n <= key < n:
            return all_layers[key]
        raise ModelError(f"layer index {key} is out of range: {_model_name(model)} has {n} layers "
                         f"(0 to {n - 1})")
    if not isinstance(key, str):
        raise TypeError(f"a layer is named by a str or an int, not {type(key).__name__}")
    raise ModelError(_unknown_layer(model, key, list(by_name)))


def _unknown_layer(model: ModelLike, name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if not close:  # a case slip ("conv_1") or a fragment ("expand") is a likely mistake too
        close = [n for n in names if name.lower() in n.lower()][:5]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = (f"`belka layers --model {model.name}` lists all {len(names)}"
               if getattr(model, "name", None) else f"it has {len(names)} layers")
    return f"{_model_name(model)} has no layer {name!r}.{hint} ({listing})"


def find_layers(model: ModelLike, query: str | None = None, depth: int = 1) -> list[Layer]:
    """The layers whose name contains ``query`` (case-insensitive); all of them for None.
    ``depth`` > 1 also searches nested modules down to that depth (dotted names).

    Raises :class:`ModelError`, listing close matches, when none does.
    """
    all_layers = layers(model)
    if depth > 1:
        index = {layer.name: layer.index for layer in all_layers}
        all_layers = [Layer(index.get(name.split(".")[0], -1), name, sub)
                      for name, sub in _module(model).named_modules()
                      if name and name.count(".") < depth]
    found = [layer for layer in all_layers if not query or query.lower() in layer.name.lower()]
    if not found:
        names = [layer.name for layer in all_layers]
        close = difflib.get_close_matches(query, names, n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ModelError(f"no layer of {_model_name(model)} has {query!r} in its name.{hint}")
    return found


def run_layer(model: ModelLike, layer: LayerKey, *inputs: torch.Tensor) -> Any:
    """Run one layer on tensors (moved to the model's device); autograd works as usual.

    ``run_layer(model, "Conv1", x)`` gives ``Conv1``'s output for the batch ``x``;
    an ``Add`` layer takes two tensors.
    """
    return get_layer(model, layer)(*inputs)


# --------------------------------------------------------------------------------------------
# Summary: data collection


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class LayerRow:
    """One row of a :class:`Summary`: a layer (or the input) and what it costs for one image.

    ``params`` counts like Keras: weights plus floating-point buffers (BatchNorm's running mean
    and variance), the latter as non-trainable. ``macs`` are the multiply-adds of convolutions
    (depthwise included) and linear layers. ``activation_bytes`` is the size of the output.
    ``index`` is the layer's index for :func:`get_layer` (None for the input row).
    """

    index: int | None
    name: str
    type: str
    output_shape: Shape | tuple[Shape, ...] | None
    params: int
    trainable_params: int
    macs: int
    activation_bytes: int

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params


@dataclass(frozen=True)
class ModuleRow(LayerRow):
    """A row of a nested summary (:func:`summarize` with ``depth``): any module, named by its
    dotted path (``features.3.conv``), ``depth`` levels below the model (1: a direct child).
    ``kernel`` is a convolution's or pooling's kernel size (None for other modules); ``macs``
    and ``params`` count the module's whole subtree; ``index`` is the index of the direct child
    it belongs to."""

    depth: int = 1
    kernel: tuple[int, ...] | None = None


@dataclass(frozen=True, repr=False)
class Summary:
    """Everything :func:`summarize` measured; ``to_table()`` (also ``str()``) and ``to_json()``
    present it."""

    model: str
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    param_bytes: int
    trainable_param_bytes: int
    depth: int | None = None          # None: one row per layer (Keras); N: nested modules to N

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def _top(self) -> list[LayerRow]:
        return [r for r in self.rows if getattr(r, "depth", 1) <= 1]

    @property
    def macs(self) -> int:
        """Multiply-adds of one forward pass of one image."""
        return sum(row.macs for row in self._top())

    @property
    def activation_bytes(self) -> int:
        """The input plus every layer's output for one image: what a forward pass that keeps
        all activations (as training or a gradient method does) holds at once."""
        return sum(row.activation_bytes for row in self._top())

    def to_dict(self) -> dict:
        extra = {} if self.depth is None else {"depth": self.depth}
        return {**extra,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "layout": "NCHW",
            "layers": [asdict(row) for row in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "macs": self.macs,
            "activation_bytes": self.activation_bytes,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        return _format_table(self)

    def __str__(self) -> str:
        return self.to_table()

    def __repr__(self) -> str:
        return (f"<Summary {self.model}: {len(self.rows) - 1} layers, {self.total_params:,} "
                f"params, {_count(self.macs)} multiply-adds>")


@dataclass
class _Record:
    output: Any = None
    macs: int = 0
    ran: bool = False


def summarize(model: ModelLike, input_size: int | tuple[int, int] | None = None, *,
              in_channels: int = 3, depth: int | None = None) -> Summary:
    """Measure every layer for one image: output shape, parameters, multiply-adds, memory.

    Runs the network once on a "meta" tensor (shapes only: no arithmetic, no weights needed),
    falling back to a zero image on the model's device if some layer cannot run on meta.
    ``input_size`` defaults to the model's preprocessing size (224 for a bare module).

    ``depth`` (torchinfo's view): one row for every module down to that many levels below the
    model, named by its dotted path, in the order the modules first run (a parent before its
    children), as :class:`ModuleRow` with the kernel size; ``None`` (default) gives one row per
    direct child, as Keras does.
    """
    module = _module(model)
    if input_size is None:
        input_size = getattr(getattr(model, "preprocessing", None), "size", 224)
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    shape = (1, in_channels, h, w)
    if depth is not None:
        return _summarize_nested(model, module, shape, int(depth))

    try:
        records, order = _probe(module, shape, meta=True)
    except (NotImplementedError, RuntimeError):
        records, order = _probe(module, shape, meta=False)

    children = dict(module.named_children())
    index = {name: i for i, name in enumerate(children)}
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    rows = [LayerRow(None, "input_1", "InputLayer", (None, *shape[1:]), 0, 0, 0,
                     math.prod(shape) * torch.empty((), dtype=dtype).element_size())]
    # Layers in the order they ran, then any that never ran (no output).
    for name in order + [n for n in children if n not in order]:
        child, record = children[name], records[name]
        params, trainable = _count_params(child)
        rows.append(LayerRow(index[name], name, type(child).__name__, _shape_of(record.output),
                             params, trainable, record.macs, _bytes_of(record.output)))

    total, trainable = _count_params(module)
    total_bytes = sum(t.numel() * t.element_size() for t in _counted_tensors(module))
    trainable_bytes = sum(p.numel() * p.element_size() for p in module.parameters()
                          if p.requires_grad)
    return Summary(_model_name(model), shape, tuple(rows), total, trainable, total_bytes,
                   trainable_bytes)


def _depth_of(name: str) -> int:
    return name.count(".") + 1


def _kernel(module: nn.Module) -> tuple[int, ...] | None:
    size = getattr(module, "kernel_size", None)
    if size is None:
        return None
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _summarize_nested(model: ModelLike, module: nn.Module, shape: tuple[int, ...],
                      depth: int) -> Summary:
    if depth < 1:
        raise UsageError(f"depth must be at least 1, got {depth}")
    named = [(n, m) for n, m in module.named_modules() if n and _depth_of(n) <= depth]
    records = {n: _Record() for n, _ in named}
    leaf_macs: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def before(name: str):
        def hook(_module, _inputs):
            if name not in order:
                order.append(name)
        return hook

    def after(name: str):
        def hook(_module, _inputs, output):
            record = records[name]
            if not record.ran:
                record.ran, record.output = True, output
        return hook

    def count(name: str):
        def hook(sub, inputs, output):
            leaf_macs[name] = leaf_macs.get(name, 0) + _macs(sub, inputs, output)
        return hook

    def run(meta: bool) -> None:
        if meta:
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in (*module.named_parameters(), *module.named_buffers())}
            with torch.no_grad():
                torch.func.functional_call(module, state, (torch.zeros(shape, device="meta"),))
        else:
            with torch.inference_mode():
                module(torch.zeros(shape, device=_device(module)))

    try:
        for name, sub in named:
            handles.append(sub.register_forward_pre_hook(before(name)))
            handles.append(sub.register_forward_hook(after(name)))
        for name, sub in module.named_modules():
            if name and isinstance(sub, (*_CONVS, *_TRANSPOSED_CONVS, nn.Linear)):
                handles.append(sub.register_forward_hook(count(name)))
        try:
            run(meta=True)
        except (NotImplementedError, RuntimeError):
            order.clear()
            leaf_macs.clear()
            records = {n: _Record() for n, _ in named}
            run(meta=False)
    finally:
        for handle in handles:
            handle.remove()

    modules = dict(named)
    top_index = {name: i for i, (name, _) in enumerate(module.named_children())}
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    rows: list[LayerRow] = [ModuleRow(None, "input_1", "InputLayer", (None, *shape[1:]), 0, 0, 0,
                                      math.prod(shape) * torch.empty((), dtype=dtype).element_size(),
                                      depth=0)]
    for name in order + [n for n, _ in named if n not in order]:
        sub, record = modules[name], records[name]
        params, trainable = _count_params(sub)
        macs = sum(v for k, v in leaf_macs.items() if k == name or k.startswith(name + "."))
        rows.append(ModuleRow(top_index.get(name.split(".")[0]), name, type(sub).__name__,
                              _shape_of(record.output), params, trainable, macs,
                              _bytes_of(record.output), depth=_depth_of(name),
                              kernel=_kernel(sub)))
    total, trainable = _count_params(module)
    total_bytes = sum(t.numel() * t.element_size() for t in _counted_tensors(module))
    trainable_bytes = sum(p.numel() * p.element_size() for p in module.parameters()
                          if p.requires_grad)
    return Summary(_model_name(model), shape, tuple(rows), total, trainable, total_bytes,
                   trainable_bytes, depth=depth)


def _probe(module: nn.Module, shape: tuple[int, ...], *, meta: bool
           ) -> tuple[dict[str, _Record], list[str]]:
    """Run ``module`` once with hooks on its children; their outputs and multiply-adds."""
    records = {name: _Record() for name, _ in module.named_children()}
    order: list[str] = []
    handles = []

    def on_output(name: str):
        def hook(_module, _inputs, output):
            record = records[name]
            if not record.ran:
                record.ran, record.output = True, output
                order.append(name)
        return hook

    def on_macs(name: str):
        def hook(sub, inputs, output):
            records[name].macs += _macs(sub, inputs, output)
        return hook

    try:
        for name, child in module.named_children():
            handles.append(child.register_forward_hook(on_output(name)))
            for sub in child.modules():
                if isinstance(sub, (*_CONVS, *_TRANSPOSED_CONVS, nn.Linear)):
                    handles.append(sub.register_forward_hook(on_macs(name)))
        if meta:
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in (*module.named_parameters(), *module.named_buffers())}
            x = torch.zeros(shape, device="meta")
            with torch.no_grad():
                torch.func.functional_call(module, state, (x,))
        else:
            with torch.inference_mode():
                module(torch.zeros(shape, device=_device(module)))
    finally:
        for handle in handles:
            handle.remove()
    return records, order


def _macs(sub: nn.Module, inputs: tuple, output: Any) -> int:
    """Multiply-adds of one convolution or linear layer call (batch 1)."""
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(sub, _CONVS):
        return output.numel() * (sub.in_channels // sub.groups) * math.prod(sub.kernel_size)
    if isinstance(sub, _TRANSPOSED_CONVS):
        return inputs[0].numel() * (sub.out_channels // sub.groups) * math.prod(sub.kernel_size)
    if isinstance(sub, nn.Linear):
        return output.numel() * sub.in_features
    return 0


def _counted_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    yield from module.parameters()
    yield from (b for b in module.buffers() if b.is_floating_point())


def _count_params(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) as Keras counts them: float buffers are non-trainable parameters."""
    total = sum(t.numel() for t in _counted_tensors(module))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def _shape_of(output: Any) -> Shape | tuple[Shape, ...] | None:
    if isinstance(output, torch.Tensor):
        return (None, *output.shape[1:]) if output.dim() else ()
    if isinstance(output, (tuple, list)):
        return tuple(_shape_of(o) for o in output)
    return None


def _bytes_of(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, (tuple, list)):
        return sum(_bytes_of(o) for o in output)
    return 0


# --------------------------------------------------------------------------------------------
# Summary: formatting


def _human(n: float, units: Sequence[str], base: int) -> str:
    for unit in units[:-1]:
        if abs(n) < base:
            return f"{n:.0f} {unit}" if unit == units[0] else f"{n:.2f} {unit}"
        n /= base
    return f"{n:.2f} {units[-1]}"


def _bytes(n: int) -> str:
    return _human(n, ("B", "KiB", "MiB", "GiB"), 1024)


def _count(n: int) -> str:
    return _human(n, ("", "K", "M", "G"), 1000).strip()


def format_shape(shape: Any) -> str:
    """``(None, 32, 112, 112)``; several outputs joined by commas; ``-`` for none."""
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(format_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _format_table(summary: Summary) -> str:
    if summary.depth is None:
        header = ("Layer (type)", "Output Shape", "Param #", "MACs", "Memory")
        body = [(f"{r.name} ({r.type})", format_shape(r.output_shape), f"{r.params:,}",
                 _count(r.macs) if r.macs else "-", _bytes(r.activation_bytes))
                for r in summary.rows]
        left_cols = 2
    else:
        header = ("Layer (type)", "Output Shape", "Kernel", "Param #", "Param %", "MACs",
                  "Memory")
        total = max(1, summary.total_params)

        def kernel(r) -> str:
            return "x".join(map(str, r.kernel)) if getattr(r, "kernel", None) else "-"

        def label(r) -> str:
            level = getattr(r, "depth", 1)
            own = r.name.rsplit(".", 1)[-1] if level > 1 else r.name
            return "  " * max(0, level - 1) + f"{own} ({r.type})"

        body = [(label(r), format_shape(r.output_shape), kernel(r), f"{r.params:,}",
                 f"{100.0 * r.params / total:.2f}%" if r.params else "-",
                 _count(r.macs) if r.macs else "-", _bytes(r.activation_bytes))
                for r in summary.rows]
        left_cols = 3
    widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(wd) for c, wd in zip(cells[:left_cols], widths)]
        right = [c.rjust(wd) for c, wd in zip(cells[left_cols:], widths[left_cols:])]
        return " " + "   ".join(left + right)

    width = len(line(header)) + 1
    n, c, h, w = summary.input_shape
    out = [f'Model: "{summary.model}"  (input {n} x {c} x {h} x {w}; shapes are (batch, '
           f"channels, height, width))", "_" * width, line(header), "=" * width]
    out += [line(cells) for cells in body]
    out += ["=" * width,
            f"Total params: {summary.total_params:,} ({_bytes(summary.param_bytes)})",
            f"Trainable params: {summary.trainable_params:,} "
            f"({_bytes(summary.trainable_param_bytes)})",
            f"Non-trainable params: {summary.non_trainable_params:,} "
            f"({_bytes(summary.param_bytes - summary.trainable_param_bytes)})",
            f"Multiply-adds: {_count(summary.macs)} ({summary.macs:,})",
            f"Activation memory (batch 1, all layer outputs): {_bytes(summary.activation_bytes)}",
            "_" * width]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Activations


class _Collected(Exception):
    """Raised by a hook once every requested activation is in, to skip the rest of the net."""


def _as_input(model: ModelLike, image: "ImageLike | torch.Tensor", resize: str | None
              ) -> torch.Tensor:
    module = _module(model)
    if isinstance(image, torch.Tensor):
        x = image.unsqueeze(0) if image.dim() == 3 else image
    elif hasattr(model, "preprocess"):
        x = model.preprocess([image], resize)
    else:
        raise UsageError("a bare nn.Module needs a preprocessed tensor; pass a belka Model to "
                         "give it images")
    return x.to(_device(module))


def activations(model: ModelLike, image: "ImageLike | torch.Tensor",
                layers: LayerKey | Iterable[LayerKey] | None = None, *,
                resize: str | None = None) -> dict[str, torch.Tensor]:
    """Named activations (layer outputs) for one image or a batch, keyed by layer name in the
    order asked (every layer when ``layers`` is None).

    ``image`` is a preprocessed tensor (N x 3 x S x S, or 3 x S x S) or anything
    :meth:`Model.decode` reads (then ``model`` must be a :class:`belka.Model`). Runs without
    gradients and stops after the last layer asked for; the hooks are removed afterwards, even
    when the forward pass fails.
    """
    module = _module(model)
    if layers is None:
        keys: list[LayerKey] = [name for name, _ in module.named_children()]
    elif isinstance(layers, (str, int)):
        keys = [layers]
    else:
        keys = list(layers)
    wanted = list(dict.fromkeys(get_layer(model, key).name for key in keys))
    x = _as_input(model, image, resize)

    found: dict[str, Any] = {}
    children = dict(module.named_modules())

    def keep(name: str):
        def hook(_module, _inputs, output):
            if name not in found:
                found[name] = output.detach() if isinstance(output, torch.Tensor) else output
                if len(found) == len(wanted):
                    raise _Collected
        return hook

    handles = [children[name].register_forward_hook(keep(name)) for name in wanted]
    try:
        with torch.no_grad():
            module(x)
    except _Collected:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ModelError(f"layer(s) {', '.join(missing)} did not run in {_model_name(model)}'s "
                         "forward pass")
    return {name: found[name] for name in wanted}


# --------------------------------------------------------------------------------------------
# Feature-map grid

# Viridis at eleven evenly spaced stops (perceptually uniform, readable in grayscale print).
_VIRIDIS = np.array([
    (68, 1, 84), (72, 36, 117), (65, 68, 135), (53, 95, 141), (42, 120, 142), (33, 145, 140),
    (34, 168, 132), (68, 191, 112), (122, 209, 81), (189, 223, 38), (253, 231, 37)], float)


def _colormap(name: str) -> np.ndarray:
    """A 256 x 3 uint8 lookup table."""
    if name in ("gray", "grey", "grayscale"):
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    if name != "viridis":
        raise UsageError(f"unknown colormap {name!r}; use viridis or gray")
    stops = np.linspace(0, 1, len(_VIRIDIS))
    t = np.linspace(0, 1, 256)
    table = np.stack([np.interp(t, stops, _VIRIDIS[:, c]) for c in range(3)], axis=1)
    return table.round().astype(np.uint8)


def feature_grid(activation: torch.Tensor | np.ndarray, *, title: str | None = None,
                 max_channels: int = 64, cmap: str = "viridis", min_tile: int = 64) -> np.ndarray:
    """Feature maps as one labelled picture: H x W x 3 uint8.

    ``activation`` is one image's C x H x W maps (a leading batch axis of 1 is dropped); a flat
    vector of C values is drawn as one near-square map. Each channel is min-max normalised on
    its own and coloured with ``cmap`` (viridis or gray); small maps are enlarged (nearest
    neighbour) to at least ``min_tile`` pixels; each tile is labelled with its channel index;
    the first ``max_channels`` channels are shown under ``title``.
    """
    from PIL import Image, ImageDraw, ImageFont

    a = activation.detach().float().cpu().numpy() if isinstance(activation, torch.Tensor) \
        else np.asarray(activation, dtype=np.float32)
    if a.ndim in (2, 4) and a.shape[0] == 1:
        a = a[0]
    labels: list[str]
    if a.ndim == 1:  # a vector (pooled features, logits): one map of its values, row-major
        cols = math.ceil(math.sqrt(a.size))
        rows_ = math.ceil(a.size / cols)
        maps = np.full(rows_ * cols, a.min() if a.size else 0.0, np.float32)
        maps[:a.size] = a
        maps, labels = maps.reshape(1, rows_, cols), [f"0-{a.size - 1}"]
    elif a.ndim == 3:
        maps = a[:max_channels]
        labels = [str(i) for i in range(len(maps))]
    else:
        raise UsageError(f"cannot draw an activation of shape {tuple(activation.shape)}; "
                         "expected C x H x W maps or a vector")
    if len(maps) == 0:
        raise UsageError("the activation has no channels to draw")

    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    norm = np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)
    tiles = _colormap(cmap)[np.clip(norm * 255 + 0.5, 0, 255).astype(np.uint8)]  # C x H x W x 3

    scale = max(1, math.ceil(min_tile / max(tiles.shape[1:3])))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = tiles.shape[1:3]
    font = ImageFont.load_default(size=13)
    label_h, gap, pad = 16, 6, 8
    cols = math.ceil(math.sqrt(len(tiles)))
    grid_rows = math.ceil(len(tiles) / cols)
    title_h = 26 if title else 0

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_w = probe.textbbox((0, 0), title, font=font)[2] if title else 0
    width = max(2 * pad + cols * tw + (cols - 1) * gap, 2 * pad + title_w)
    height = 2 * pad + title_h + grid_rows * (label_h + th) + (grid_rows - 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(i, cols)
        x = pad + c * (tw + gap)
        y = pad + title_h + r * (label_h + th + gap)
        draw.text((x, y), label, fill=(60, 60, 60), font=font)
        canvas.paste(Image.fromarray(tile), (x, y + label_h))
    return np.asarray(canvas)


# --------------------------------------------------------------------------------------------
# Split


class LayerTracer(fx.Tracer):
    """A ``torch.fx`` tracer that keeps every named layer (each direct child of the traced
    module) and every shape-dependent module (:data:`LEAF_MODULES`) whole, so each layer is one
    ``call_module`` node whose target is its name."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return ("." not in module_qualified_name or isinstance(m, LEAF_MODULES)
                or super().is_leaf_module(m, module_qualified_name))


_TRACES: "weakref.WeakKeyDictionary[nn.Module, fx.GraphModule]" = weakref.WeakKeyDictionary()
# torch.fx patches nn.Module.__call__ for the whole process while it traces: two traces at once
# corrupt each other, and a forward pass in another thread meanwhile is taken for part of the
# trace. Traces are serialised here; a server traces its models before it serves (and so never
# while other threads run them).
_TRACE_LOCK = threading.Lock()


def trace(model: ModelLike) -> fx.GraphModule:
    """The model's graph: a ``GraphModule`` sharing the model's layers (so its weights), traced
    once per module and cached. Raises :class:`ModelError` when ``torch.fx`` cannot trace it."""
    module = _module(model)
    traced = _TRACES.get(module)
    if traced is not None:
        return traced
    with _TRACE_LOCK:
        traced = _TRACES.get(module)
        if traced is None:
            try:
                graph = LayerTracer().trace(module)
            except Exception as err:  # fx raises many kinds on data-dependent control flow
                raise ModelError(f"cannot trace {type(module).__name__} with torch.fx "
                                 f"({type(err).__name__}: {err})") from None
            traced = fx.GraphModule(module, graph, class_name=type(module).__name__)
            _TRACES[module] = traced
    return traced


def splittable_layers(model: ModelLike) -> list[str]:
    """Names of the layers :func:`split` can cut after: every layer called exactly once in the
    traced graph, in execution order (the last layer too; its tail is the identity)."""
    children = {name for name, _ in _module(model).named_children()}
    calls = [n.target for n in trace(model).graph.nodes
             if n.op == "call_module" and n.target in children]
    return [name for name in calls if calls.count(name) == 1]


def split(model: ModelLike, layer: LayerKey) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut the network after ``layer``: ``tail(head(x))`` equals ``module(x)``.

    The head runs every graph node up to and including the layer (in execution order); the
    tail runs the rest. When only the layer's output is needed after the cut, ``head`` returns
    that tensor. When other head values are needed too (a residual shortcut crossing the cut),
    ``head`` returns a tuple: the layer's output first, then those values in execution order;
    ``tail`` takes that tuple as its single argument. ``head.output_names`` (equal to
    ``tail.input_names``) names the values that cross. Both share the model's modules, so they
    see its weights and its train/eval mode.
    """
    module = _module(model)
    name = get_layer(model, layer).name
    traced = trace(module)
    nodes = list(traced.graph.nodes)
    cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == name]
    if len(cuts) != 1:
        how = "does not run" if not cuts else f"runs {len(cuts)} times"
        raise ModelError(f"cannot split {_model_name(model)} after {name!r}: the layer {how} in "
                         "its traced graph")
    head_nodes, tail_nodes = nodes[:cuts[0] + 1], nodes[cuts[0] + 1:]
    cut = head_nodes[-1]
    in_head = set(head_nodes)
    crossing = [n for n in head_nodes if n is not cut and any(u not in in_head for u in n.users)]
    carried = [cut, *crossing]

    head_graph, env = fx.Graph(), {}
    for node in head_nodes:
        env[node] = head_graph.node_copy(node, env.__getitem__)
    outputs = [env[n] for n in carried]
    head_graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))

    tail_graph, env = fx.Graph(), {}
    given = tail_graph.placeholder("head_output")
    if len(carried) == 1:
        env[cut] = given
    else:
        for i, node in enumerate(carried):
            env[node] = tail_graph.create_node("call_function", operator.getitem, (given, i),
                                               name=node.name)
    for node in tail_nodes:
        env[node] = tail_graph.node_copy(node, env.__getitem__)

    names = tuple(str(n.target) if n.op == "call_module" else n.name for n in carried)
    head = fx.GraphModule(traced, head_graph, class_name="Head")
    tail = fx.GraphModule(traced, tail_graph, class_name="Tail")
    head.output_names = tail.input_names = names
    head.training = tail.training = module.training
    return head, tail

"""MobileNetV2 (alpha 1.0, 224 x 224) with the Keras application's layer names.

The network is one flat module: its direct children are the Keras layers, named and ordered as
``tf.keras.applications.MobileNetV2`` names them (``Conv1``, ``bn_Conv1``, ``Conv1_relu``,
``expanded_conv_depthwise``, ..., ``block_16_project_BN``, ``Conv_1``, ``Conv_1_bn``, ``out_relu``,
``global_average_pooling2d``, ``predictions``), minus Keras's ``input_1``. ``forward`` is a loop
over a static table, so ``torch.fx`` sees one ``call_module`` node per Keras layer.

Two flavours share the names:

* ``padding="same", bn_eps=1e-3`` is the Keras network: TF "SAME" padding on ``Conv1`` and
  ``block_{1,3,6,13}_pad`` padding (0, 1) x (0, 1) before the stride-2 depthwise convs.
* ``padding="symmetric", bn_eps=1e-5`` is torchvision's ``mobilenet_v2``: stride-2 convs pad
  1 pixel on every side.

The output is **logits**: Keras's ``predictions`` layer ends in a softmax, ours does not.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from .spec import ModelSpec, WeightSource
from .layers import Add, Conv2dSame, GlobalAvgPool, SamePad2d
from .preprocessing import Preprocessing

__all__ = [
    "MobileNetV2",
    "build_keras",
    "build_torchvision",
    "read_keras_h5",
    "read_torchvision_state_dict",
]

# (expansion, output channels, stride) of the 17 inverted-residual blocks, alpha 1.0.
_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)  # fmt: skip
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280

# Roles in the forward table.
_PLAIN, _BLOCK_IN, _ADD = 0, 1, 2


def _block_prefix(i: int) -> str:
    return "expanded_conv" if i == 0 else f"block_{i}"


def _layer_table() -> tuple[tuple[str, int], ...]:
    """Every child in Keras order with its role: plain, first layer of a residual block, or Add."""
    table = [("Conv1", _PLAIN), ("bn_Conv1", _PLAIN), ("Conv1_relu", _PLAIN)]
    in_ch = _STEM_CHANNELS
    for i, (t, out_ch, stride) in enumerate(_BLOCKS):
        p = _block_prefix(i)
        residual = stride == 1 and in_ch == out_ch
        names = [f"{p}_expand", f"{p}_expand_BN", f"{p}_expand_relu"] if t != 1 else []
        if stride == 2:
            names.append(f"{p}_pad")
        names += [f"{p}_depthwise", f"{p}_depthwise_BN", f"{p}_depthwise_relu"]
        names += [f"{p}_project", f"{p}_project_BN"]
        table.append((names[0], _BLOCK_IN if residual else _PLAIN))
        table += [(n, _PLAIN) for n in names[1:]]
        if residual:
            table.append((f"{p}_add", _ADD))
        in_ch = out_ch
    table += [(n, _PLAIN) for n in ("Conv_1", "Conv_1_bn", "out_relu")]
    table += [("global_average_pooling2d", _PLAIN), ("predictions", _PLAIN)]
    return tuple(table)


_LAYER_TABLE = _layer_table()
LAYER_NAMES: tuple[str, ...] = tuple(name for name, _ in _LAYER_TABLE)
"""The children of :class:`MobileNetV2` in order: the Keras layer names without ``input_1``."""


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 / 224 as a flat module named like the Keras application; returns logits.

    ``padding="same"`` with ``bn_eps=1e-3`` reproduces Keras (TF "SAME" / (0, 1) padding on the
    stride-2 convs); ``padding="symmetric"`` with ``bn_eps=1e-5`` reproduces torchvision.
    """

    def __init__(self, num_classes: int = 1000, *, padding: str = "same", bn_eps: float = 1e-3):
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', not {padding!r}")
        self.padding = padding
        same = padding == "same"

        def bn(c: int) -> nn.BatchNorm2d:
            # Keras's momentum 0.999 is torch's 0.001; it only matters when training.
            return nn.BatchNorm2d(c, eps=bn_eps, momentum=0.001 if same else 0.1)

        def conv1x1(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 1, bias=False)

        if same:
            self.Conv1 = Conv2dSame(3, _STEM_CHANNELS, 3, stride=2, bias=False)
        else:
            self.Conv1 = nn.Conv2d(3, _STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn_Conv1 = bn(_STEM_CHANNELS)
        self.Conv1_relu = nn.ReLU6()

        in_ch = _STEM_CHANNELS
        for i, (t, out_ch, stride) in enumerate(_BLOCKS):
            p = _block_prefix(i)
            mid = in_ch * t
            if t != 1:
                setattr(self, f"{p}_expand", conv1x1(in_ch, mid))
                setattr(self, f"{p}_expand_BN", bn(mid))
                setattr(self, f"{p}_expand_relu", nn.ReLU6())
            if stride == 2:
                setattr(self, f"{p}_pad", SamePad2d(3, 2) if same else nn.ZeroPad2d(1))
                dw = nn.Conv2d(mid, mid, 3, stride=2, padding=0, groups=mid, bias=False)
            else:
                # TF "SAME" with stride 1 and an odd kernel is the symmetric padding 1.
                dw = nn.Conv2d(mid, mid, 3, stride=1, padding=1, groups=mid, bias=False)
            setattr(self, f"{p}_depthwise", dw)
            setattr(self, f"{p}_depthwise_BN", bn(mid))
            setattr(self, f"{p}_depthwise_relu", nn.ReLU6())
            setattr(self, f"{p}_project", conv1x1(mid, out_ch))
            setattr(self, f"{p}_project_BN", bn(out_ch))
            if stride == 1 and in_ch == out_ch:
                setattr(self, f"{p}_add", Add())
            in_ch = out_ch

        self.Conv_1 = conv1x1(in_ch, _HEAD_CHANNELS)
        self.Conv_1_bn = bn(_HEAD_CHANNELS)
        self.out_relu = nn.ReLU6()
        self.global_average_pooling2d = GlobalAvgPool()
        self.predictions = nn.Linear(_HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W normalised images -> N x num_classes logits (no softmax)."""
        shortcut = x
        for name, role in _LAYER_TABLE:
            layer = getattr(self, name)
            if role == _ADD:
                x = layer(x, shortcut)
            else:
                if role == _BLOCK_IN:
                    shortcut = x
                x = layer(x)
        return x


def build_keras(num_classes: int = 1000) -> MobileNetV2:
    """The Keras application's network: TF "SAME" padding, BatchNorm eps 1e-3."""
    return MobileNetV2(num_classes, padding="same", bn_eps=1e-3)


def build_torchvision(num_classes: int = 1000) -> MobileNetV2:
    """torchvision's network with Keras names: symmetric padding, BatchNorm eps 1e-5."""
    return MobileNetV2(num_classes, padding="symmetric", bn_eps=1e-5)


# --------------------------------------------------------------------------- weight readers


@functools.lru_cache(maxsize=4)
def _expected_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of our state dict, without ``num_batches_tracked``."""
    # A CPU build takes ~0.1 s; the meta device would spend ~2 s warming up its init kernels.
    model = MobileNetV2(num_classes)
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _check_strict(
    state: Mapping[str, torch.Tensor], num_classes: int, origin: str
) -> dict[str, torch.Tensor]:
    """Every expected key present, nothing extra, every shape equal; else a WeightsError."""
    expected = _expected_shapes(num_classes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mismatched),
    ):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(
            f"the weights do not fit MobileNetV2 ({num_classes} classes): " + "; ".join(problems),
            path=origin,
        )
    return {k: state[k] for k in expected}


def _as_str(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _str_list(attr: Any) -> list[str]:
    """An HDF5 string-list attribute (vlen ``str`` or h5py-2 fixed-length bytes) -> list[str]."""
    arr = np.atleast_1d(np.asarray(attr))
    if arr.size == 0 or arr.dtype.kind not in "OSU":  # an empty float64 array: no weights
        return []
    return [_as_str(v) for v in arr]


_BN_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _keras_to_torch(
    layer: str, weight_name: str, value: np.ndarray, origin: str
) -> tuple[str, np.ndarray]:
    """One Keras weight -> (our state-dict key, array in torch layout)."""
    short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    if short == "depthwise_kernel":  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        return f"{layer}.weight", value.transpose(2, 3, 0, 1)
    if short == "kernel":
        if value.ndim == 4:  # Conv2D (kh, kw, in, out) -> (out, in, kh, kw)
            return f"{layer}.weight", value.transpose(3, 2, 0, 1)
        if value.ndim == 2:  # Dense (in, out) -> (out, in)
            return f"{layer}.weight", value.T
        raise WeightsError(f"{layer}/{weight_name}: kernel of rank {value.ndim}", path=origin)
    if short == "bias":
        return f"{layer}.bias", value
    if short in _BN_NAMES:
        return f"{layer}.{_BN_NAMES[short]}", value
    raise WeightsError(f"unknown Keras weight {layer}/{weight_name}", path=origin)


def read_keras_h5(path: str | Path, *, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A legacy Keras-2 HDF5 weight file -> a strict state dict for :class:`MobileNetV2`.

    Accepts ``model.save_weights`` files (layer groups at the root) and full-model files (layer
    groups under ``model_weights``). Raises :class:`WeightsError` when the file is not such a
    file or its weights do not match the architecture key for key and shape for shape.
    """
    import h5py

    path = Path(path)
    origin = str(path)
    if not path.is_file():
        raise WeightsError("weight file not found", path=origin)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise WeightsError(
            "not a Keras HDF5 weight file (HDF5 could not open it)", path=origin
        ) from None
    state: dict[str, torch.Tensor] = {}
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsError(
                "not a Keras HDF5 weight file (no 'layer_names' attribute)", path=origin
            )
        for layer in _str_list(root.attrs["layer_names"]):
            if layer not in root:
                raise WeightsError(f"layer group {layer!r} is listed but absent", path=origin)
            group = root[layer]
            for weight_name in _str_list(group.attrs.get("weight_names", [])):
                if weight_name not in group:
                    raise WeightsError(
                        f"missing weight {layer}/{weight_name} (listed in weight_names)",
                        path=origin,
                    )
                value = np.asarray(group[weight_name])
                key, value = _keras_to_torch(layer, weight_name, value, origin)
                if key in state:
                    raise WeightsError(f"duplicate weight {key}", path=origin)
                state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return _check_strict(state, num_classes, origin)


def _torchvision_key_map() -> dict[str, str]:
    """torchvision ``mobilenet_v2`` module paths -> our layer names (weights and BNs)."""
    m = {"features.0.0": "Conv1", "features.0.1": "bn_Conv1"}
    for i, (t, _, _) in enumerate(_BLOCKS):
        p, f = _block_prefix(i), f"features.{i + 1}.conv"
        if t == 1:  # conv: [dw ConvBNReLU, project conv, project BN]
            m.update({f"{f}.0.0": f"{p}_depthwise", f"{f}.0.1": f"{p}_depthwise_BN"})
            m.update({f"{f}.1": f"{p}_project", f"{f}.2": f"{p}_project_BN"})
        else:  # conv: [expand ConvBNReLU, dw ConvBNReLU, project conv, project BN]
            m.update({f"{f}.0.0": f"{p}_expand", f"{f}.0.1": f"{p}_expand_BN"})
            m.update({f"{f}.1.0": f"{p}_depthwise", f"{f}.1.1": f"{p}_depthwise_BN"})
            m.update({f"{f}.2": f"{p}_project", f"{f}.3": f"{p}_project_BN"})
    last = len(_BLOCKS) + 1
    m.update({f"features.{last}.0": "Conv_1", f"features.{last}.1": "Conv_1_bn"})
    m["classifier.1"] = "predictions"
    return m


def read_torchvision_state_dict(
    path_or_dict: str | Path | Mapping[str, torch.Tensor], *, num_classes: int = 1000
) -> dict[str, torch.Tensor]:
    """A torchvision ``mobilenet_v2`` state dict (or ``.pth`` file) -> our names, strictly.

    ``num_batches_tracked`` entries are dropped. Raises :class:`WeightsError` on any key that
    does not map, any key left unfilled, or any shape that differs.
    """
    if isinstance(path_or_dict, Mapping):
        origin, raw = "<state dict>", path_or_dict
    else:
        origin = str(path_or_dict)
        if not Path(path_or_dict).is_file():
            raise WeightsError("weight file not found", path=origin)
        try:
            raw = torch.load(path_or_dict, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds (pickle, zip, runtime) for a bad file
            raise WeightsError(
                f"not a torch state-dict file ({type(e).__name__}: {e})", path=origin
            ) from None
        if not isinstance(raw, Mapping):
            raise WeightsError(f"expected a state dict, found a {type(raw).__name__}", path=origin)
    mapping = _torchvision_key_map()
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        if module not in mapping or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        state[f"{mapping[module]}.{param}"] = value
    if unknown:
        raise WeightsError(
            f"unexpected keys for torchvision mobilenet_v2: {', '.join(unknown[:8])}"
            + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else ""),
            path=origin,
        )
    return _check_strict(state, num_classes, origin)


# --------------------------------------------------------------------------- registry

# Both published files have 1000 outputs in the standard ImageNet class order
# (the order of belka/data/imagenet_classes.txt). Keras's file has no published checksum.
_KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"

SPECS = (   # registered by belka.models.registry on first use
    ModelSpec(
        name="mobilenet_v2",
        build=build_keras,
        preprocessing=Preprocessing(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
        weights=WeightSource(
            filename=_KERAS_FILE,
            url=_KERAS_URL + _KERAS_FILE,
            sha256=None,
            help="Keras Applications MobileNetV2 1.0/224 ImageNet weights (legacy HDF5)",
        ),
        read_weights=read_keras_h5,
        description="MobileNetV2 1.0/224, Keras ImageNet weights, Keras layer names (TF padding)",
    ),
    ModelSpec(
        name="mobilenet_v2_torchvision",
        build=build_torchvision,
        preprocessing=Preprocessing(
            mean=(255 * 0.485, 255 * 0.456, 255 * 0.406),
            std=(255 * 0.229, 255 * 0.224, 255 * 0.225),
        ),
        weights=WeightSource(
            filename="mobilenet_v2-b0353104.pth",
            url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256_prefix="b0353104",
            help="torchvision MobileNet_V2_Weights.IMAGENET1K_V1",
        ),
        read_weights=read_torchvision_state_dict,
        description="MobileNetV2 1.0/224, torchvision ImageNet weights, Keras layer names",
    ),
)

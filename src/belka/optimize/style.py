"""Neural style transfer on belka's model: a picture whose early and middle layers have the
style image's feature statistics (Gram matrices) and whose deeper layer still has the content
photo's features.

How it runs (docs/pictures.md shows what each choice does):

- The picture is plain pixels, started from the content photo, moved by Adam. Before each
  forward pass it is shifted by a few pixels at random (jitter): the stride-2 layers then
  cannot be fed one fixed pixel grid, which is what turns a straight optimisation into
  "confetti" (high-frequency colour noise the network happens to like).
- Multi-scale: the picture is first made at a small size (the longest side halved until it
  is at most 192 px), then enlarged (bilinear) and refined at twice the size, up to the size
  asked for. Most steps run where they are cheap, the large scales only add detail, and a
  1024 px picture never needs more memory than its last stage.
- Losses: style = mean over :data:`STYLE_LAYERS` of ``|G - G_style|^2 / |G_style|^2`` (G is
  the channel Gram matrix divided by the number of positions, so it does not grow with the
  size); content = ``|F - F_content|^2 / |F_content|^2`` at :data:`CONTENT_LAYER`; plus a small
  total-variation term. ``style_weight`` weighs the first against the second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import images
from ..inspect import get_layer
from .common import (MAX_SIZE, MAX_STEPS, MIN_SIZE, check_range, default_model, fit_size,
                     generator, network_input, to_tensor)
from .features import Taps
from .loop import Progress, optimize
from .param import PixelImage
from .transforms import roll

# EfficientNet-Lite0's taps (docs/pictures.md has one picture per choice). Style: the stem
# (edges and colour at 1/2), then the first ReLU6 of blocks 2b, 3b and 4b (textures at 1/4,
# 1/8 and 1/16 of the size). Content: the output of stage 4 (80 channels at 1/16), deep enough
# to hold the shapes and loose enough to let the strokes through.
STYLE_LAYERS = ("stem_activation", "block2b_expand_activation", "block3b_expand_activation",
                "block4b_expand_activation")
CONTENT_LAYER = "block4c_add"
COARSEST = 192          # the first stage's longest side is at most this
DEFAULT_STEPS = 120
DEFAULT_STYLE_WEIGHT = 10.0
TV_WEIGHT = 1.0
LEARNING_RATE = 0.03    # per step, pixels in [0, 1]


@dataclass
class StyleResult:
    """The picture (H x W x 3 uint8) and how far it got: the style loss of the picture and of
    the content photo itself (the start), the cosine between the picture's and the photo's
    content features, the stages' sizes and the seconds it took."""

    image: np.ndarray
    style_loss: float
    style_loss_start: float
    content_cosine: float
    stages: list[tuple[int, int]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    @property
    def style_gain(self) -> float:
        """How many times lower the style loss is than the content photo's own."""
        return self.style_loss_start / max(self.style_loss, 1e-12)

    def to_dict(self) -> dict:
        return {"width": int(self.image.shape[1]), "height": int(self.image.shape[0]),
                "style_loss": self.style_loss, "style_loss_start": self.style_loss_start,
                "style_gain": self.style_gain, "content_cosine": self.content_cosine,
                "stages": [list(s) for s in self.stages], "steps": self.steps,
                "seconds": round(self.seconds, 3)}


def gram(features: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x C channel Gram matrices, divided by H * W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def style_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the style layers of the relative squared Gram error."""
    losses = [((gram(features[k]) - g) ** 2).sum() / (g ** 2).sum().clamp_min(1e-12)
              for k, g in targets.items()]
    return torch.stack(losses).mean()


def stages(height: int, width: int, coarsest: int = COARSEST) -> list[tuple[int, int]]:
    """The sizes of the multi-scale stages, smallest first, ending at (height, width)."""
    sizes = [(height, width)]
    while max(sizes[0]) > coarsest and min(sizes[0]) >= 2 * MIN_SIZE:
        h, w = sizes[0]
        sizes.insert(0, (max(1, round(h / 2)), max(1, round(w / 2))))
    return sizes


def split_steps(steps: int, n: int) -> list[int]:
    """Steps per stage: each stage gets half the steps of the one before it (the first the
    most), and every stage at least one (so there may be more than ``steps`` in all when
    there are more stages than steps)."""
    weights = [2.0 ** (n - 1 - i) for i in range(n)]
    counts = [max(1, int(steps * w / sum(weights))) for w in weights]
    counts[0] += max(0, steps - sum(counts))
    return counts


def style(content, style_image, *, model=None, size: int = 384, steps: int = DEFAULT_STEPS,
          style_weight: float = DEFAULT_STYLE_WEIGHT, seed: int = 0,
          style_layers: Sequence[str] | None = None, content_layer: str | None = None,
          multiscale: bool = True, progress: Progress | None = None) -> StyleResult:
    """Paint ``content`` in the style of ``style_image`` (any image source belka reads).

    ``size`` is the longest side of the result (the content photo's aspect ratio is kept),
    ``steps`` the Adam steps over all stages, ``style_weight`` how much style counts against
    content, ``seed`` the jitter's seed (same seed, same picture, on the same machine).
    ``progress(done, total, preview)`` is called after every step (see
    :data:`belka.optimize.loop.Progress`); raising from it stops the run.
    """
    check_range("size", size, MIN_SIZE, MAX_SIZE)
    check_range("steps", steps, 1, MAX_STEPS)
    check_range("style weight", style_weight, 0, 1e6)
    started = time.perf_counter()
    model = default_model(model)
    device = model.device
    content_rgb = images.decode(content)
    style_rgb = images.decode(style_image)
    style_names = tuple(dict.fromkeys(get_layer(model, k).name
                                      for k in (style_layers or STYLE_LAYERS)))
    content_name = get_layer(model, content_layer or CONTENT_LAYER).name
    taps = Taps(model, [*style_names, content_name])

    height, width = fit_size(*content_rgb.shape[:2], size)
    plan = stages(height, width) if multiscale else [(height, width)]
    counts = split_steps(steps, len(plan))
    gen = generator(seed)
    picture: PixelImage | None = None
    done = 0
    for (h, w), n_steps in zip(plan, counts):
        content_t = to_tensor(content_rgb, (h, w), device)
        style_t = to_tensor(style_rgb, _cover(style_rgb.shape[:2], (h, w)), device)
        with torch.no_grad():
            style_targets = {k: gram(v) for k, v in taps(network_input(model, style_t)).items()
                             if k in style_names}
            content_target = taps(network_input(model, content_t))[content_name]
        start = content_t if picture is None else F.interpolate(
            picture.pixels.detach(), size=(h, w), mode="bilinear", align_corners=False)
        picture = PixelImage(start)
        shift = max(1, round(2 * max(h, w) / 256))

        def loss_fn(step: int, x: torch.Tensor, _ct=content_target, _st=style_targets,
                    _shift=shift) -> torch.Tensor:
            feats = taps(network_input(model, roll(x, _shift, gen)))
            content_loss = ((feats[content_name] - _ct) ** 2).sum() / (_ct ** 2).sum()
            tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                  + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())
            return style_weight * style_loss(feats, _st) + content_loss + TV_WEIGHT * tv

        optimize(picture, loss_fn, n_steps, lr=LEARNING_RATE, progress=progress, offset=done,
                 total=sum(counts))
        done += n_steps

    result = picture.to_uint8()[0]
    with torch.no_grad():
        final = to_tensor(result, (height, width), device)
        ours = taps(network_input(model, final))
        theirs = taps(network_input(model, content_t))
        loss_now = float(style_loss(ours, style_targets))
        loss_start = float(style_loss(theirs, style_targets))
        cosine = float(F.cosine_similarity(ours[content_name].flatten(),
                                           theirs[content_name].flatten(), dim=0))
    return StyleResult(result, loss_now, loss_start, cosine, stages=plan, steps=sum(counts),
                       seconds=time.perf_counter() - started)


def _cover(style_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """The style image's size for a stage: its shorter side equal to the stage's shorter side
    (so its strokes keep their size relative to the picture), aspect ratio kept."""
    sh, sw = style_hw
    short = min(target_hw)
    scale = short / min(sh, sw)
    return max(1, round(sh * scale)), max(1, round(sw * scale))

"""Looking at small objects: the whole image plus overlapping tiles at higher resolution.

A squirrel that fills a twentieth of a park photo is a few dozen pixels wide once the photo is
shrunk to the network's 224 x 224 input, and the network calls the photo "park bench". The gate
therefore looks at *views* of each image, all run through the network in one batch:

* view 0 is the whole image, prepared exactly as without tiling (the model's resize policy), so
  tiling can only add evidence, never lose the whole-image score;
* then, for each grid ``n`` in ``grids`` (default 2 and 3), square tiles whose side is the
  image's shorter side divided by ``n - (n - 1) * overlap`` (``overlap`` 0.25: neighbours share
  a quarter of a tile), laid out evenly along both axes (a 4:3 photo gets 2 x 3 and 3 x 5 tiles,
  a square one 2 x 2 and 3 x 3). Each tile is resized straight to the model's input (it is
  square, so nothing is distorted). A grid whose tiles would be smaller than ``min_tile`` (180)
  pixels is skipped: enlarging a small tile adds no detail, only cost and artefacts. Measured on
  the shared photos: with 112 px tiles allowed, the best tile of Chelsea the cat reached
  P(fox squirrel) 0.079 as a PNG and 0.13 once saved as JPEG (its 120 px corner tile, enlarged
  1.9x); with 180 px the highest non-squirrel score drops to 0.026, the same 17 of 19 squirrels
  still score >= 0.15, and the gate runs 40% fewer forwards.

Forwards per image: 1 + 4 + 9 = 14 for a square photo, 1 + 6 + 15 = 22 for 4:3, when the
shorter side is at least 450 px (2.5 x ``min_tile``); 1 + 4 (square) or 1 + 6 (4:3) down to 315
px; 1 below that.

An image's score for a class is a combination of its views' scores (:func:`combine`): ``max``
(the default) or ``noisy-or`` = 1 - prod(1 - p). Measured on the shared photos
(``docs/training.md``, held-out, <= 2% false accepts): never better; equal with the final
tiling, clearly worse for a trained head with 112 px tiles (15 against 17 of 19 squirrels:
twenty tiles at 0.9 add up to 0.999 on non-squirrels).
The view that decided is reported as a :class:`Box` in the original image's pixels (``None``
for the whole image).

:func:`place_heatmap` and :func:`explain_view` put a heat map computed on the deciding tile back
onto the full image, for any explanation method (a callable: 224 x 224 x 3 uint8 -> heat map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .errors import UsageError
from .features import forward_features
from .scores import COMBINE_METHODS, combine  # noqa: F401  (combine: views -> one score)

@dataclass(frozen=True)
class Box:
    """A rectangle in image pixels: columns ``x0 .. x1 - 1``, rows ``y0 .. y1 - 1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def __str__(self) -> str:
        return f"({self.x0},{self.y0})-({self.x1},{self.y1})"


@dataclass(frozen=True)
class Tiling:
    """How to cut an image into tiles (see the module docstring)."""

    grids: tuple[int, ...] = (2, 3)
    overlap: float = 0.25
    min_tile: int = 180
    combine: str = "max"

    def __post_init__(self):
        if not 0.0 <= self.overlap < 1.0:
            raise UsageError(f"tile overlap must be in [0, 1), got {self.overlap}")
        if any(n < 1 for n in self.grids):
            raise UsageError(f"tile grids must be positive, got {self.grids}")
        if self.combine not in COMBINE_METHODS:
            raise UsageError(f"unknown combination {self.combine!r}; choose one of "
                             f"{', '.join(COMBINE_METHODS)}")

    def boxes(self, height: int, width: int) -> list[Box]:
        """The tiles of an image of this size (whole image not included)."""
        return tile_boxes(height, width, self.grids, self.overlap, self.min_tile)

    def to_dict(self) -> dict:
        return {"grids": list(self.grids), "overlap": self.overlap, "min_tile": self.min_tile,
                "combine": self.combine}

    @classmethod
    def from_dict(cls, data: dict) -> "Tiling":
        return cls(tuple(int(n) for n in data.get("grids", (2, 3))),
                   float(data.get("overlap", 0.25)), int(data.get("min_tile", 180)),
                   str(data.get("combine", "max")))


DEFAULT_TILING = Tiling()


def _positions(length: int, side: float, overlap: float) -> list[float]:
    """Evenly spaced starts of tiles of ``side`` along ``length``, neighbours overlapping by at
    least ``overlap`` of a tile (1% slack, so rounding never adds a tile)."""
    if side >= length - 0.5:
        return [0.0]
    stride = side * (1.0 - overlap)
    count = max(1, math.ceil((length - side) / stride - 0.01)) + 1
    return [i * (length - side) / (count - 1) for i in range(count)]


def tile_boxes(height: int, width: int, grids: Sequence[int] = (2, 3), overlap: float = 0.25,
               min_tile: int = 180) -> list[Box]:
    """Square, overlapping tiles for each grid size, in grid order then row-major."""
    short = min(height, width)
    out: list[Box] = []
    for n in grids:
        side = short / (n - (n - 1) * overlap)
        if n <= 1 or side < min_tile:
            continue
        s = int(round(side))
        for y in _positions(height, side, overlap):
            for x in _positions(width, side, overlap):
                x0, y0 = min(int(round(x)), width - s), min(int(round(y)), height - s)
                out.append(Box(x0, y0, x0 + s, y0 + s))
    return out


def crop_resized(image: np.ndarray | Image.Image, box: Box, size: int) -> np.ndarray:
    """The pixels of ``box`` resized (bilinear, antialiased) to ``size`` x ``size`` x 3 uint8."""
    from .images import resample

    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = resample(pil, (size, size), (box.x0, box.y0, box.x1, box.y1))
    return np.asarray(out, dtype=np.uint8)


def views(image: np.ndarray, preprocessing, tiling: Tiling | None = DEFAULT_TILING,
          policy: str | None = None) -> tuple[np.ndarray, list[Box | None]]:
    """(V x S x S x 3 uint8 views, their boxes): the whole image (box ``None``) then the tiles.

    ``preprocessing`` is the model's (its ``size`` and ``resize``); with ``tiling=None`` only
    the whole image.
    """
    whole = preprocessing.resize(image, policy)
    if tiling is None:
        return whole[np.newaxis], [None]
    boxes = tiling.boxes(image.shape[0], image.shape[1])
    if not boxes:
        return whole[np.newaxis], [None]
    pil = Image.fromarray(image)
    stack = np.empty((1 + len(boxes), *whole.shape), np.uint8)
    stack[0] = whole
    for i, box in enumerate(boxes, start=1):
        stack[i] = crop_resized(pil, box, preprocessing.size)
    return stack, [None, *boxes]


def place_heatmap(heatmap: np.ndarray, box: Box | None, image_shape: tuple[int, ...]) -> np.ndarray:
    """Put a heat map computed on a tile back onto an H x W canvas (zeros outside the tile).

    ``heatmap`` is any h x w float array for the tile (it is resized to the box); ``box`` None
    means it already covers the whole image and is only resized.
    """
    height, width = image_shape[:2]
    box = box or Box(0, 0, width, height)
    tile = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    tile = np.asarray(tile.resize((box.width, box.height), Image.Resampling.BILINEAR))
    canvas = np.zeros((height, width), np.float32)
    canvas[box.y0:box.y1, box.x0:box.x1] = tile
    return canvas


def whole_view_box(image_shape: tuple[int, ...], preprocessing, policy: str | None = None) -> Box:
    """The part of the image the whole-image view shows: the centre square for ``crop``, all
    of it for ``squash`` and ``letterbox``."""
    height, width = image_shape[:2]
    if (policy or preprocessing.policy) != "crop":
        return Box(0, 0, width, height)
    side = min(height, width) * preprocessing.crop_fraction
    x0, y0 = int(round((width - side) / 2)), int(round((height - side) / 2))
    return Box(x0, y0, int(round(x0 + side)), int(round(y0 + side)))


def explain_view(image: np.ndarray, box: Box | None, explain: Callable[[np.ndarray], np.ndarray],
                 preprocessing, policy: str | None = None) -> np.ndarray:
    """An H x W heat map for the view that decided: ``explain`` gets that view as the network
    saw it (S x S x 3 uint8) and returns its heat map, which is placed back on the full image.

    ``box`` None is the whole-image view (the model's resize policy); its heat map lands on
    :func:`whole_view_box`. Any explanation method fits, e.g. ``lambda v: cam(model, v)``.
    """
    if box is None:
        view = preprocessing.resize(image, policy)
        box = whole_view_box(image.shape, preprocessing, policy)
    else:
        view = crop_resized(image, box, preprocessing.size)
    return place_heatmap(explain(view), box, image.shape)


def tiled_probabilities(model, image: np.ndarray, tiling: Tiling = DEFAULT_TILING,
                        policy: str | None = None) -> tuple[np.ndarray, np.ndarray, list[Box | None]]:
    """(per-class best-view probability, per-class index of that view, the views' boxes) for
    one decoded image: every class scored by its best view, as the tiled gate does. The
    probabilities no longer sum to 1 (each class may come from another view)."""
    stack, boxes = views(image, model.preprocessing, tiling, policy)
    probs, _ = forward_features(model, stack)
    return probs.max(axis=0), probs.argmax(axis=0), boxes

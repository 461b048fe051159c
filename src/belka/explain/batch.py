"""Explanations for many images: files and folders in, one result per image out.

:func:`explain_many` expands folders, decodes lazily ``batch_size`` images at a time (so memory
is bounded by the batch, not by the folder), explains each chunk in one batched call of one
:class:`~belka.explain.base.Explainer` (the layer is resolved once), and records a file that
cannot be read as an error in its own :class:`BatchItem` instead of stopping the run.
:func:`map_statistics` summarises a heat map in a few numbers for an index file, and
:func:`contact_sheet` lays many overlays out on one picture.

>>> items = explain_many(model, ["photos/cat", "squirrel.jpg"], method="gradcam")
>>> [(i.name, i.explanation.label if i.ok else i.error) for i in items]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BelkaError, UsageError
from .base import Explanation, get_method


@dataclass
class BatchItem:
    """One image of a batch run: where it came from and its explanation, or why it has none."""

    source: str
    explanation: Explanation | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.explanation is not None

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source else "image"

    def to_dict(self) -> dict:
        """JSON facts: the explanation's scalars and :func:`map_statistics`, or the error."""
        if self.explanation is None:
            return {"path": self.source, "error": self.error, **self.extra}
        return {"path": self.source, **self.explanation.to_dict(),
                "stats": map_statistics(self.explanation), **self.extra}


def map_statistics(explanation: Explanation, threshold: float = 0.5) -> dict[str, Any]:
    """A heat map in a few numbers (all on the heat map at the image's size, values in [0, 1]):

    * ``peak_xy``: the maximum's position as fractions of the width and height (x, y);
    * ``centroid_xy``: the heat-weighted centre, same units;
    * ``mean``: the mean heat (the share of the image that lights up, softly);
    * ``area``: the share of pixels at or above ``threshold`` (0.5);
    * ``spread``: the heat-weighted standard distance from the centroid, as a fraction of the
      image's diagonal (small: one compact spot; large: scattered evidence).
    """
    heat = np.asarray(explanation.heatmap, dtype=np.float64)
    h, w = heat.shape
    total = float(heat.sum())
    peak = explanation.peak
    out: dict[str, Any] = {"peak_xy": [round((peak[1] + 0.5) / w, 4), round((peak[0] + 0.5) / h, 4)],
                           "mean": round(float(heat.mean()), 4),
                           "area": round(float((heat >= threshold).mean()), 4)}
    if total > 0:
        ys = (np.arange(h) + 0.5)[:, None]
        xs = (np.arange(w) + 0.5)[None, :]
        cy, cx = float((heat * ys).sum() / total), float((heat * xs).sum() / total)
        var = float((heat * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum() / total)
        out["centroid_xy"] = [round(cx / w, 4), round(cy / h, 4)]
        out["spread"] = round(float(np.sqrt(var) / np.hypot(h, w)), 4)
    else:
        out["centroid_xy"] = None
        out["spread"] = None
    return out


def _expand(sources) -> list[Any]:
    """Paths and folders -> image files; arrays, bytes and PIL images pass through."""
    from .. import images

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Any] = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            found = images.iter_image_files([source])
            if not found and Path(source).is_dir():
                raise UsageError(f"no images in folder {str(source)!r} (looked for "
                                 f"{', '.join(sorted(images.IMAGE_EXTENSIONS))})")
            out.extend(found)
        else:
            out.append(source)
    return out


def _label(source, i: int) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"image {i}"


class _Bar:
    """Images done: a tqdm bar (``progress`` True/None) or a ``progress(done, total)`` call."""

    def __init__(self, progress, total: int):
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.total, self.done = total, 0
        if self.callback is not None:
            self.callback(0, total)
        elif progress is not False:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="image", desc="explain",
                            disable=None if progress is None else not progress, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        elif self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def explain_many(model, sources, target=None, method: str = "gradcam", layer=None, *,
                 batch_size: int = 16, resize: str | None = None,
                 progress: bool | Callable[[int, int], Any] | None = None,
                 decode: Callable[[Any], np.ndarray] | None = None,
                 on_error: str = "record", **options) -> list[BatchItem]:
    """Explain every image in ``sources`` (files, folders, which are searched recursively for
    image files, or already decoded images / bytes), ``batch_size`` at a time.

    ``target`` is one spec for all images (None: each image's top prediction) or a list with
    one per image after folders are expanded. ``progress`` is a tqdm bar over images (True,
    False, None: on a terminal) or a ``progress(done, total)`` callable called after every
    chunk (an exception it raises stops the run, as the web app's job cancel does). ``decode``
    replaces ``model.decode`` (the server passes its own, with its pixel limit). A file that
    cannot be decoded becomes an item with ``error`` set (``on_error="raise"`` raises instead);
    other errors (an unknown class or layer) raise. Returns one :class:`BatchItem` per image,
    in order.
    """
    if on_error not in ("record", "raise"):
        raise UsageError("on_error is 'record' or 'raise'")
    files = _expand(sources)
    if not files:
        raise UsageError("no images to explain")
    specs = list(target) if isinstance(target, list) else [target] * len(files)
    if len(specs) != len(files):
        raise UsageError(f"got {len(specs)} targets for {len(files)} images: give one target, or "
                         "a list with one per image")
    cls = get_method(method)
    step = 1 if cls.slow else max(1, int(batch_size))
    explainer = cls(model, layer=layer, batch_size=step, progress=False, **options)
    decode = decode or model.decode
    items = [BatchItem(_label(s, i)) for i, s in enumerate(files)]
    bar = _Bar(progress, len(files))
    try:
        for start in range(0, len(files), step):
            chunk = range(start, min(start + step, len(files)))
            decoded, where = [], []
            for i in chunk:
                try:
                    decoded.append(decode(files[i]))
                    where.append(i)
                except BelkaError as err:
                    if on_error == "raise":
                        raise
                    items[i].error = str(err)
            if decoded:
                results = explainer.explain(decoded, [specs[i] for i in where], resize=resize)
                for i, result in zip(where, results):
                    items[i].explanation = result
            bar.update(len(chunk))
    finally:
        bar.close()
    return items


def contact_sheet(items: Sequence[BatchItem], *, columns: int | None = None, tile: int = 224,
                  colormap: str = "turbo", alpha: float = 0.5):
    """Every explained image's overlay as a tile (``tile`` px on its longer side) on one sheet,
    captioned with the file name, class and probability; failed items get a grey tile with
    "unreadable". Returns a PIL image."""
    from PIL import Image, ImageDraw

    from .render import _font

    if not items:
        raise UsageError("a contact sheet needs at least one image")
    columns = columns or max(1, min(8, int(np.ceil(np.sqrt(len(items))))))
    rows = int(np.ceil(len(items) / columns))
    font = _font(12)
    gap, text_h = 6, 34
    sheet = Image.new("RGB", (columns * (tile + gap) + gap, rows * (tile + text_h + gap) + gap),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, item in enumerate(items):
        r, c = divmod(n, columns)
        x0, y0 = gap + c * (tile + gap), gap + r * (tile + text_h + gap)
        if item.ok:
            picture = item.explanation.overlay(colormap=colormap, alpha=alpha)
            picture.thumbnail((tile, tile), Image.Resampling.BILINEAR)
            ex = item.explanation
            lines = [_clip(item.name, tile), _clip(f"{ex.label} {ex.probability:.0%}", tile)]
        else:
            picture = Image.new("RGB", (tile, tile), (200, 200, 200))
            lines = [_clip(item.name, tile), "unreadable"]
        sheet.paste(picture, (x0 + (tile - picture.width) // 2, y0 + (tile - picture.height) // 2))
        for k, line in enumerate(lines):
            draw.text((x0, y0 + tile + 2 + 15 * k), line, fill=(0, 0, 0), font=font)
    return sheet


def _clip(text: str, tile: int) -> str:
    limit = max(8, tile // 7)
    return text if len(text) <= limit else text[:limit - 1] + "…"

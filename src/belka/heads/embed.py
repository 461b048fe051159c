"""Embedding training photos once: every gate view (whole image, tiles) and training view (mirror,
corner crops) of every photo through the backbone, kept as :class:`Embedded`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..features import forward_features
from ..models.model import ImageLike, Model
from ..tiling import DEFAULT_TILING, Box, Tiling, views as tile_views

AUGMENT_CROP = 0.8                   # corner crops keep this share of the shorter side


def augment_views(image: np.ndarray, preprocessing, whole: np.ndarray | None = None) -> np.ndarray:
    """The training views besides the whole image: its mirror image and four corner crops of
    :data:`AUGMENT_CROP` of the shorter side (each resized by the model's policy)."""
    whole = preprocessing.resize(image) if whole is None else whole
    height, width = image.shape[:2]
    side = max(1, int(round(min(height, width) * AUGMENT_CROP)))
    pil = Image.fromarray(image)
    out = [np.ascontiguousarray(whole[:, ::-1])]
    for x, y in ((0, 0), (width - side, 0), (0, height - side), (width - side, height - side)):
        out.append(preprocessing.resize(np.asarray(pil.crop((x, y, x + side, y + side)))))
    return np.stack(out)


@dataclass
class Embedded:
    """Every view of every photo, embedded once: what training and calibration work from."""

    whole: np.ndarray                       # N x D, the whole image as the gate sees it
    augment: list[np.ndarray]               # per photo: A x D (mirror, corner crops)
    tiles: list[np.ndarray]                 # per photo: T x D (may be 0 x D)
    boxes: list[list[Box]]                  # per photo: the tiles' boxes
    forwards: int = 0
    seconds: float = 0.0

    def views(self, i: int, tiles: bool = True) -> np.ndarray:
        """Photo ``i``'s gate views: whole first, then its tiles."""
        return np.concatenate([self.whole[i:i + 1], self.tiles[i]]) if tiles else self.whole[i:i + 1]


def embed_photos(model: Model, photos: Sequence[ImageLike], *, augment: bool = True,
                 tiling: Tiling | None = DEFAULT_TILING, batch_size: int = 32,
                 progress: bool | None = None, desc: str = "embedding") -> Embedded:
    """Run the backbone once over every view of every photo (see :class:`Embedded`).

    Images that cannot be read raise :class:`~belka.errors.ImageError` naming the file.
    """
    started = time.perf_counter()
    from tqdm import tqdm

    pending: list[np.ndarray] = []
    spans: list[tuple[int, int, int, list[Box]]] = []   # per photo: n tiles, n augment, boxes
    whole, augs, tiles_out, boxes_out = [], [], [], []
    forwards = 0

    def flush() -> None:
        nonlocal forwards
        if not pending:
            return
        batch = np.concatenate(pending)
        forwards += len(batch)
        _, emb = forward_features(model, batch, chunk=batch_size)
        at = 0
        for n_tiles, n_aug, boxes in spans:
            whole.append(emb[at])
            tiles_out.append(emb[at + 1:at + 1 + n_tiles])
            augs.append(emb[at + 1 + n_tiles:at + 1 + n_tiles + n_aug])
            boxes_out.append(boxes)
            at += 1 + n_tiles + n_aug
        pending.clear()
        spans.clear()

    disable = (True if len(photos) <= 4 else None) if progress is None else not progress
    with tqdm(photos, desc=desc, unit="photo", disable=disable, leave=False,
              dynamic_ncols=True) as bar:
        for photo in bar:
            image = model.decode(photo)
            stack, boxes = tile_views(image, model.preprocessing, tiling)
            parts = [stack]
            n_aug = 0
            if augment:
                extra = augment_views(image, model.preprocessing, stack[0])
                parts.append(extra)
                n_aug = len(extra)
            pending.append(np.concatenate(parts))
            spans.append((len(stack) - 1, n_aug, [b for b in boxes if b is not None]))
            if sum(len(p) for p in pending) >= batch_size:
                flush()
        flush()
    dim = whole[0].shape[0] if whole else 0
    return Embedded(np.stack(whole) if whole else np.zeros((0, dim), np.float32),
                    augs, [t.reshape(-1, dim) for t in tiles_out], boxes_out, forwards,
                    time.perf_counter() - started)

"""Bursts: which photos are near-repeats of each other, so that cross-validation never puts
one in training and its twin in the held-out fold (every score would flatter).

Two photos are one burst (transitively) when

* their embeddings have cosine similarity >= :data:`NEAR_DUPLICATE` (a resized, re-encoded or
  slightly cropped copy), whatever their names; or
* they have the same :func:`burst_key` (file stem without trailing digits), frame numbers at
  most :data:`BURST_GAP` apart, and were taken at most :data:`BURST_SECONDS` apart (EXIF), or,
  when either has no EXIF time, their embeddings have similarity >= :data:`SAME_SCENE`;
  without embeddings either, the names alone decide.

Numbers alone are not enough: a phone names a month of photos ``IMG_4501`` ... ``IMG_4530``.
``SAME_SCENE`` = 0.8 lies above what unrelated photos of one class reach on the shared photos
(two Persian cats from different sources: 0.76) and below a real burst there (0.85).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = ["BURST_GAP", "BURST_SECONDS", "NEAR_DUPLICATE", "SAME_SCENE", "burst_groups",
           "burst_key", "capture_time", "connected_groups"]

NEAR_DUPLICATE = 0.97                # cosine similarity that joins two photos whatever their names

BURST_GAP = 10                       # frame numbers at most this far apart may be one burst
BURST_SECONDS = 10.0                 # ... and then are, when their EXIF times are this close
SAME_SCENE = 0.8                     # ... or, without EXIF times, when their embeddings are this close
_TRAILING_NUMBERS = re.compile(r"(?:[\s_\-.]*\(?\d+\)?)+$")


def burst_key(name: str | os.PathLike) -> str:
    """The burst name of a photo: its file stem, lower case, without trailing digits and
    the separators before them (``cjmcdd_squirrel14.jpg`` -> ``cjmcdd_squirrel``,
    ``IMG_0042 (2).jpg`` -> ``img``)."""
    stem = Path(name).stem.lower()
    key = _TRAILING_NUMBERS.sub("", stem)
    return key or stem


def _frame_number(name: str | os.PathLike) -> int | None:
    match = _TRAILING_NUMBERS.search(Path(name).stem.lower())
    if not match:
        return None
    numbers = re.findall(r"\d+", match.group(0))
    return int(numbers[0]) if numbers else None


def capture_time(path: str | os.PathLike) -> float | None:
    """When the photo was taken (EXIF ``DateTimeOriginal``, else ``DateTime``), in seconds on
    an arbitrary but consistent scale; None when the file has no such tag or cannot be read.
    Reads the header only."""
    from datetime import datetime

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            text = exif.get_ifd(0x8769).get(36867) or exif.get(306)
        stamp = datetime.strptime(str(text).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:          # no file, not an image, no tag, a malformed date: unknown
        return None
    return (stamp - datetime(1970, 1, 1)).total_seconds()


def _same_burst(time0: float | None, time1: float | None, similarity: float | None) -> bool:
    """Two photos with one burst name and nearby frame numbers: one burst?"""
    if time0 is not None and time1 is not None:
        return abs(time0 - time1) <= BURST_SECONDS
    if similarity is not None:
        return similarity >= SAME_SCENE
    return True                # names are all we know: keep them together, to be safe


def burst_groups(paths: Sequence[str | os.PathLike], embeddings: np.ndarray | None = None,
                 near_duplicate: float = NEAR_DUPLICATE, gap: int = BURST_GAP) -> np.ndarray:
    """A group id per photo (0, 1, ... in order of first appearance): photos in one burst share
    it, by the rules in the module docstring. ``embeddings`` (N x D) are optional."""
    pairs: list[tuple[int, int]] = []
    sims = None
    if embeddings is not None and len(paths) > 1:
        unit = _unit(embeddings)
        sims = unit @ unit.T
    times: dict[int, float | None] = {}

    def time_of(i: int) -> float | None:
        if i not in times:
            times[i] = capture_time(paths[i])
        return times[i]

    by_key: dict[str, list[tuple[int, int]]] = {}
    for i, path in enumerate(paths):
        number = _frame_number(path)
        by_key.setdefault(burst_key(path), []).append((-1 if number is None else number, i))
    for members in by_key.values():
        members.sort()
        for a, (n0, i0) in enumerate(members):
            for n1, i1 in members[a + 1:]:
                if n1 - n0 > gap:
                    break
                if _same_burst(time_of(i0), time_of(i1),
                               None if sims is None else float(sims[i0, i1])):
                    pairs.append((i0, i1))
    if sims is not None:
        pairs.extend(zip(*np.nonzero(np.triu(sims >= near_duplicate, k=1))))
    return connected_groups(len(paths), pairs)


def connected_groups(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A group id per item 0..n-1 (0, 1, ... in order of first appearance) such that the two
    items of every pair share one, transitively: the connected components of the pair graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

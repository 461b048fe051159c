"""Labelled photos: one sub-folder per class (``DATA_DIR/<class>/**``), and which class is the
catch-all (``other``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import images
from ..errors import UsageError

OTHER_NAMES = ("other", "others", "none", "background", "unknown")   # catch-all class names


@dataclass
class LabelledPhotos:
    """Photos with a class each, from one sub-folder per class."""

    paths: list[str]
    labels: list[str]                  # class names, sorted
    y: np.ndarray                      # class index per photo
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    root: str | None = None            # the data folder (its sub-folders name sources)

    def subset(self, keep: np.ndarray) -> "LabelledPhotos":
        keep = np.asarray(keep)
        return LabelledPhotos([p for p, k in zip(self.paths, keep) if k], self.labels,
                              self.y[keep], self.skipped, self.root)

    def sources(self, *, groups_file=None, embeddings: np.ndarray | None = None):
        """Each photo's source group (:func:`belka.sources.photo_groups`)."""
        from ..sources import photo_groups

        return photo_groups(self.paths, root=self.root, labels=[self.labels[i] for i in self.y],
                            groups_file=groups_file, embeddings=embeddings)


def read_folder(data_dir: str | os.PathLike, classes: Sequence[str] | None = None, *,
                min_classes: int = 2, purpose: str = "a head") -> LabelledPhotos:
    """Labelled photos from ``DATA_DIR/<class>/**`` (one sub-folder per class; hidden folders
    are skipped; ``classes`` keeps only those sub-folders). Fewer than ``min_classes`` class
    folders is a :class:`UsageError` that says what ``purpose`` needs."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; expected one sub-folder of photos per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        wanted = {c.lower() for c in classes}
        missing = wanted - {p.name.lower() for p in folders}
        if missing:
            raise UsageError(f"{root}: no sub-folder for {', '.join(sorted(missing))}")
        folders = [p for p in folders if p.name.lower() in wanted]
    paths: list[str] = []
    ys: list[int] = []
    labels = [p.name for p in folders]
    for index, folder in enumerate(folders):
        for file in images.iter_image_files([folder]):
            paths.append(str(file))
            ys.append(index)
    counts = np.bincount(np.array(ys, dtype=np.int64), minlength=len(labels))
    if len(labels) < min_classes:
        example = "squirrel/ and other/" if min_classes > 1 else "squirrel/"
        raise UsageError(f"{root}: found {len(labels)} class folder(s); {purpose} needs at least "
                         f"{min_classes} (e.g. {example}), each holding photos")
    empty = [name for name, n in zip(labels, counts) if n == 0]
    if empty:
        raise UsageError(f"{root}: no images in {', '.join(empty)}")
    return LabelledPhotos(paths, labels, np.array(ys, dtype=np.int64), root=str(root))


def other_class(labels: Sequence[str]) -> int | None:
    """The index of the catch-all class (``other``, ``none``, ...), if the head has one."""
    for i, label in enumerate(labels):
        if label.lower() in OTHER_NAMES:
            return i
    return None

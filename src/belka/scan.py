"""Run a model over many files: folders walked, bad files reported and skipped, batched,
with a progress bar. ``belka classify`` and ``belka check`` are built on :func:`scan`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from . import images
from .errors import BelkaError, ImageError
from .models.model import Model


@dataclass
class ScanItem:
    """One input file's outcome: probabilities, or the error that stopped it."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None


def expand(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | None]]:
    """(file, None) for every image file under ``paths``, or (path, error) for a bad path."""
    for path in paths:
        try:
            for file in images.iter_image_files([path]):
                yield str(file), None
        except BelkaError as err:
            yield str(path), err.message


def scan(model: Model, paths: Sequence[str | os.PathLike], *, batch_size: int = 16,
         resize: str | None = None, progress: bool | None = None) -> Iterator[ScanItem]:
    """Classify every image under ``paths`` in input order, yielding one :class:`ScanItem` each.

    ``progress=None`` shows a bar on a terminal when there are more than a few files.
    """
    entries = list(expand(paths))
    # None lets tqdm decide: a bar on a terminal, nothing when stderr is a pipe or a file.
    disable = (True if len(entries) <= 4 else None) if progress is None else not progress
    bar = tqdm(total=len(entries), unit="img", disable=disable, leave=False, dynamic_ncols=True)
    pending: list[tuple[ScanItem, np.ndarray]] = []

    def flush() -> Iterator[ScanItem]:
        if pending:
            batch = np.stack([model.preprocessing.resize(img, resize) for _, img in pending])
            probs = model.probabilities_from_batch(batch)
            for (item, _), p in zip(pending, probs):
                item.probabilities = p
                yield item
            bar.update(len(pending))
            pending.clear()

    with bar:
        for path, error in entries:
            if error is not None:
                yield from flush()
                bar.update(1)
                yield ScanItem(path, error=error)
                continue
            try:
                image = images.decode(path)
            except ImageError as err:
                yield from flush()
                bar.update(1)
                yield ScanItem(path, error=err.message)
                continue
            pending.append((ScanItem(path), image))
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()

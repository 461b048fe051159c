"""Run a model over many files: folders walked, bad files reported and skipped, batched,
with a progress bar. ``belka classify`` and ``belka check`` are built on :func:`scan`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .images import expand_paths
from .models.model import Model

expand = expand_paths   # the old name: files are listed by belka.images


@dataclass
class ScanItem:
    """One input file's outcome: probabilities, or the error that stopped it."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None


def scan(model: Model, paths: Sequence[str | os.PathLike], *, batch_size: int = 32,
         resize: str | None = None, progress: bool | None = None, workers: int | None = None,
         draft: bool = False) -> Iterator[ScanItem]:
    """Classify every image under ``paths`` in input order, yielding one :class:`ScanItem` each.

    Runs :func:`belka.pipeline.iter_predictions` on the model's engine: files are decoded in
    ``workers`` threads (default: the physical cores) while the previous batch runs, memory
    bounded for any number of files. Every pixel is decoded, as in every other interface;
    ``draft=True`` decodes large JPEGs at a reduced scale (faster, not always the same answer;
    see :mod:`belka.pipeline`). ``progress=None`` shows a bar on a terminal when there are more than a few files.
    """
    from .engine import physical_cores
    from .pipeline import iter_predictions

    entries = list(expand_paths(paths))
    # None lets tqdm decide: a bar on a terminal, nothing when stderr is a pipe or a file.
    disable = (True if len(entries) <= 4 else None) if progress is None else not progress
    bad = {i: error for i, (_, error) in enumerate(entries) if error is not None}
    files = [path for path, error in entries if error is None]
    results = iter_predictions(model, files, batch_size=batch_size, resize=resize, draft=draft,
                               workers=workers or physical_cores())
    with tqdm(total=len(entries), unit="img", disable=disable, leave=False,
              dynamic_ncols=True) as bar:
        try:
            for i, (path, _) in enumerate(entries):
                if i in bad:
                    item = ScanItem(path, error=bad[i])
                else:
                    result = next(results)
                    item = ScanItem(result.path, result.probabilities, result.error)
                bar.update(1)
                yield item
        finally:
            results.close()

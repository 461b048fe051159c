"""The fast path from files to probabilities: parallel decode, then batched inference.

A small thread pool decodes and resizes images (Pillow releases the GIL while it decodes and
resamples) while the calling thread runs the engine on the previous batch (ONNX Runtime and
PyTorch release it too). At most ``batch_size * (prefetch + 1)`` images are in flight, so memory
stays flat whatever the number of files, and results come back in input order.

Every pixel is decoded by default, exactly as ``belka check``, the Python API, the server and the
browser (``belka export web``) decode it, so one file gives one answer everywhere.
``draft=True`` is the explicit fast path: large JPEGs are decoded at a reduced scale (Pillow's
draft mode, i.e. libjpeg's DCT scaling) that is still at least as large as the resize policy
needs, several times cheaper to decode but not the same pixels; its measured agreement with the
full decode is in docs/engine.md ("Fast decoding").
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Union

import numpy as np

from . import images
from .engine import Engine
from .errors import BelkaError
from .models.preprocessing import Preprocessing, draft_size

if TYPE_CHECKING:
    from .models.model import Model

__all__ = ["Result", "draft_size", "iter_predictions", "load_resized"]

StrPath = Union[str, os.PathLike]


class Result(NamedTuple):
    """One input's outcome: probabilities (classes,) or the message of the error that stopped it."""

    path: str
    probabilities: np.ndarray | None
    error: str | None


def load_resized(path: StrPath, preprocessing: Preprocessing, policy: str | None = None,
                 draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one file (at draft size for JPEGs when ``draft`` is given) and resize it to the
    model's S x S x 3 uint8 input."""
    return preprocessing.resize(images.decode(path, draft=draft), policy)


def iter_predictions(model_or_engine: Model | Engine, paths: Iterable[StrPath], *,
                     batch_size: int = 32, workers: int = 2, resize: str | None = None,
                     draft: bool = False, prefetch: int = 2) -> Iterator[Result]:
    """Probabilities for every file in ``paths``, in input order, one :class:`Result` each.

    ``paths`` may be a lazy iterable (millions of files): it is consumed as the pipeline goes.
    A file that cannot be read yields a result with ``error`` set instead of raising.
    Every pixel is decoded (bit-for-bit the serial path's input, and the same numbers as every
    other interface); ``draft=True`` opts into the faster reduced-scale JPEG decode, whose
    answers may differ (see the module docstring). A :class:`~belka.Model` runs on its own engine (``model.engine``) and gives its own classes
    (a head model's, when a head is attached).
    """
    if batch_size < 1 or workers < 1 or prefetch < 0:
        raise ValueError("batch_size and workers must be >= 1 and prefetch >= 0")
    # An engine gives ImageNet probabilities; a model gives its own classes on its engine.
    prep, run = model_or_engine.preprocessing, model_or_engine.probabilities_from_batch
    policy = resize or prep.policy
    draft_to = draft_size(prep, policy) if draft else None

    def load(path: str) -> np.ndarray | str:
        try:
            return load_resized(path, prep, policy, draft_to)
        except BelkaError as exc:
            return exc.message
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a long scan
            return f"unexpected error: {type(exc).__name__}: {exc}"

    window = batch_size * (prefetch + 1)
    pending: deque[tuple[str, Future]] = deque()
    sources = iter(paths)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="belka-decode") as pool:
        def refill() -> None:
            while len(pending) < window:
                path = next(sources, None)
                if path is None:
                    return
                path = os.fspath(path)
                pending.append((path, pool.submit(load, path)))

        try:
            refill()
            chunk: list[tuple[str, np.ndarray | str]] = []
            images_in_chunk = 0
            while pending:
                path, future = pending.popleft()
                refill()
                loaded = future.result()
                chunk.append((path, loaded))
                images_in_chunk += not isinstance(loaded, str)
                if images_in_chunk >= batch_size or len(chunk) >= 4 * batch_size or not pending:
                    yield from _infer(run, chunk)
                    chunk, images_in_chunk = [], 0
        finally:
            for _, future in pending:  # the caller stopped early: drop queued work
                future.cancel()


def _infer(run, chunk: list[tuple[str, np.ndarray | str]]) -> Iterator[Result]:
    """Run one batch and yield the chunk's results in order (errors in place)."""
    arrays = [loaded for _, loaded in chunk if not isinstance(loaded, str)]
    probs = iter(run(np.stack(arrays)) if arrays else ())
    for path, loaded in chunk:
        if isinstance(loaded, str):
            yield Result(path, None, loaded)
        else:
            yield Result(path, next(probs), None)

"""The local runner: a thread pool reads and decodes files while the calling thread runs the
model on the previous batch (the shape of :func:`belka.pipeline.iter_predictions`, with the
bulk task's prepare and score steps). Memory stays bounded whatever the number of files."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

from .tasks import Prepared, Scorer


def iter_rows(scorer: Scorer, paths: Iterable[str], *, batch_size: int = 16, workers: int = 2,
              prefetch: int = 2) -> Iterator[dict]:
    """One row per path, in input order (errors in place)."""
    prepare = scorer.preparer
    window = batch_size * (prefetch + 1)
    pending: deque[Future] = deque()
    sources = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="belka-bulk") as pool:
        def refill() -> None:
            while len(pending) < window:
                path = next(sources, None)
                if path is None:
                    return
                pending.append(pool.submit(prepare, path))

        try:
            refill()
            chunk: list[Prepared] = []
            while pending:
                item = pending.popleft().result()
                refill()
                chunk.append(item)
                good = sum(p.error is None for p in chunk)
                if good >= batch_size or len(chunk) >= 4 * batch_size or not pending:
                    yield from scorer.score(chunk)
                    chunk = []
        finally:
            for future in pending:
                future.cancel()

"""Bulk scans: one task (classify, check, embed) over millions of files, written as resumable
Parquet, run in this process (``runner="local"``) or on a Ray cluster (``runner="ray"``).

>>> from belka import bulk
>>> summary = bulk.scan(["photos/"], "out/", bulk.Task("check", allow="squirrel"))
>>> table = bulk.read("out/")            # pyarrow.Table, one row per file

See docs/scan.md. The runners share the task's prepare step (read, hash, decode, cut views: no
model) and score step (one model per process or actor), so both give the same rows.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

from ..errors import UsageError
from .sources import list_files, read_bytes
from .store import Store, read, schema
from .tasks import TASKS, Preparer, Scorer, Task

__all__ = ["RUNNERS", "TASKS", "ScanSummary", "Task", "iter_rows", "list_files", "read",
           "read_bytes", "scan", "schema"]

RUNNERS = ("local", "ray")
FLUSH_SECONDS = 30.0      # the local runner also checkpoints at least this often


@dataclass
class ScanSummary:
    out: str
    runner: str
    files: int                 # files the sources cover
    already: int               # rows found from earlier runs (skipped)
    written: int               # rows this run wrote
    errors: int                # of which unreadable files
    seconds: float             # this run, from listing the files to the last part
    startup_seconds: float     # model load (and, for Ray, joining or starting the cluster)
    counts: dict              # verdicts (check) this run

    @property
    def rate(self) -> float:
        busy = self.seconds - self.startup_seconds
        return self.written / busy if busy > 0 else 0.0


def _check_runner(runner: str) -> None:
    if runner not in RUNNERS:
        raise UsageError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")


def _driver_model(task: Task, model=None):
    """The driver's model: validates the options (a bad --allow fails before anything is
    written) and, for the ONNX engine, exports the graph once before any worker needs it."""
    model = task.load_model() if model is None else model
    model.engine    # made now: an export happens here, once, not in every actor
    return model


def _workers(runner: str, workers: int | None) -> int:
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    if workers:
        return workers
    if runner == "ray":
        from .ray_runner import cluster_cpus

        return cluster_cpus()
    from ..engine import physical_cores

    return physical_cores()


def scan(sources: Sequence[str | os.PathLike], out: str | os.PathLike, task: Task = Task(), *,
         runner: str = "local", address: str | None = None, workers: int | None = None,
         batch_size: int = 16, checkpoint: int = 1000, glob: str | None = None,
         limit: int | None = None, overwrite: bool = False, progress: bool | None = None,
         model=None, ray_cpus: int | None = None) -> ScanSummary:
    """Run ``task`` over every file under ``sources`` and write one Parquet row per file to the
    folder ``out``, skipping files an earlier run already wrote (see :mod:`belka.bulk.store`).

    ``workers``: decode threads and ONNX Runtime threads (local), or scoring actors (ray);
    default: the physical cores, or the cluster's CPUs. ``checkpoint``: rows per part file
    (the most a killed run loses; the local runner also writes a part every 30 s).
    ``address`` (ray): None starts a one-machine cluster for this call (``ray_cpus`` CPUs),
    ``auto`` joins the one `ray start` runs here, ``ray://host:10001`` a remote one.
    """
    from tqdm import tqdm

    _check_runner(runner)
    if task.kind not in TASKS:
        raise UsageError(f"bulk scans write {', '.join(TASKS)}, not {task.kind!r}")
    if checkpoint < 1 or batch_size < 1:
        raise UsageError("--checkpoint and --batch-size must be at least 1")
    if runner == "ray":
        from .ray_runner import import_ray

        import_ray()              # say how to install it before any work
    started = time.perf_counter()
    files = list_files(sources, glob=glob, limit=limit)
    if not files:
        raise UsageError("no image files in " + ", ".join(map(str, sources))
                         + (f" matching {glob!r}" if glob else ""))
    store = Store(out, task.settings(), schema(task.kind))
    model = _driver_model(task, model)
    _gate(task, model)        # a bad --allow or --policy fails here, before OUT is touched
    done = store.open(overwrite=overwrite)
    todo = [f for f in files if f not in done]
    already = len(files) - len(todo)
    disable = (True if len(files) <= 4 else None) if progress is None else not progress
    counts: dict[str, int] = {}
    written = errors = 0
    writer = store.writer()
    with tqdm(total=len(files), initial=already, unit="img", disable=disable,
              dynamic_ncols=True, smoothing=0.1, desc="scan", file=sys.stderr) as bar:
        if runner == "local":
            n = _workers(runner, workers)
            task = replace(task, threads=task.threads or n)
            scorer = Scorer(task, _with_threads(model, task))
            startup = time.perf_counter() - started
            pending: list[dict] = []
            last = time.perf_counter()
            try:
                for row in _local_rows(scorer, todo, batch_size, n):
                    pending.append(row)
                    errors += row["error"] is not None
                    if row.get("verdict"):
                        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
                    bar.update(1)
                    if len(pending) >= checkpoint or time.perf_counter() - last > FLUSH_SECONDS:
                        written += writer.write(pending, f"{written:010d}")
                        pending, last = [], time.perf_counter()
            except KeyboardInterrupt:
                writer.write(pending, f"{written:010d}")   # Ctrl-C keeps the finished rows
                raise
            written += writer.write(pending, f"{written:010d}")
        else:
            from . import ray_runner

            stop = ray_runner.connect(address, ray_cpus)
            try:
                n = _workers(runner, workers)
                startup = time.perf_counter() - started
                rtask = _actor_task(task)
                for rows in ray_runner.write(rtask, Preparer.of(task, model, _gate(task, model)),
                                             todo, writer, workers=n, batch_size=batch_size,
                                             checkpoint=checkpoint):
                    written += rows
                    bar.update(rows)
            finally:
                if stop:
                    import ray

                    ray.shutdown()
            if todo:
                wanted = ["path", "error"] + (["verdict"] if task.kind == "check" else [])
                table = read(out, wanted)
                new = table.filter(_is_in(table, todo))
                errors = new.num_rows - new.column("error").null_count
                if "verdict" in new.column_names:
                    for v in new.column("verdict").to_pylist():
                        if v:
                            counts[v] = counts.get(v, 0) + 1
    return ScanSummary(str(out), runner, len(files), already, written, errors,
                       time.perf_counter() - started, startup, counts)


def _actor_task(task: Task) -> Task:
    """The task as Ray actors load it: one ONNX Runtime thread each, and with a head the head's
    own backbone (the driver has already refused a --model that does not fit the head)."""
    return replace(task, threads=task.threads or 1,
                   model=None if task.head else task.model)


def _is_in(table, paths):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(table.column("path"), value_set=pa.array(paths, pa.string()))


def _gate(task: Task, model):
    if task.kind != "check":
        return None
    from ..gate import Gate

    return Gate(model, allow=task.allow, threshold=task.threshold, tiles=task.tiles,
                policy=task.policy)


def _with_threads(model, task: Task):
    """The driver's model, on an ONNX engine with ``task.threads`` threads when it runs ONNX."""
    from ..engine import OnnxEngine

    engine = model.engine
    if isinstance(engine, OnnxEngine) and task.threads and engine.threads != task.threads:
        model.engine = OnnxEngine(model, engine.providers, path=engine.path, threads=task.threads)
    return model


def _local_rows(scorer: Scorer, paths, batch_size: int, workers: int) -> Iterator[dict]:
    from .local import iter_rows as local_rows

    return local_rows(scorer, paths, batch_size=batch_size, workers=workers)


def iter_rows(task: Task, paths: Sequence[str], *, runner: str = "local",
              address: str | None = None, workers: int | None = None, batch_size: int = 16,
              model=None, ray_cpus: int | None = None) -> Iterator[dict]:
    """Rows for ``paths`` without writing anything (what `belka train` and `belka evaluate`
    use): in input order on the local runner, in any order on Ray (key them by ``path``)."""
    _check_runner(runner)
    if runner == "ray":
        from . import ray_runner

        ray_runner.import_ray()
    model = _driver_model(task, model)
    if runner == "local":
        n = _workers(runner, workers)
        task = replace(task, threads=task.threads or n)
        yield from _local_rows(Scorer(task, _with_threads(model, task)), paths, batch_size, n)
        return
    from . import ray_runner

    stop = ray_runner.connect(address, ray_cpus)
    try:
        n = _workers(runner, workers)
        yield from ray_runner.iter_rows(_actor_task(task),
                                        Preparer.of(task, model, _gate(task, model)), list(paths),
                                        workers=n, batch_size=batch_size)
    finally:
        if stop:
            import ray

            ray.shutdown()


def embed_for_training(task: Task, paths: Sequence[str], *, runner: str = "local",
                       address: str | None = None, workers: int | None = None,
                       batch_size: int = 16, model=None):
    """:func:`belka.heads.embed_photos` on a runner: every training view of every photo
    (whole, tiles, mirror and corner crops), as the :class:`belka.heads.Embedded` that
    :func:`belka.heads.train` takes. An unreadable photo raises, naming it."""
    import numpy as np

    from ..errors import ImageError
    from ..heads.embed import Embedded
    from ..tiling import Box

    started = time.perf_counter()
    task = replace(task, kind="views")
    rows = {}
    for row in iter_rows(task, [str(p) for p in paths], runner=runner, address=address,
                         workers=workers, batch_size=batch_size, model=model):
        if row["error"] is not None:
            raise ImageError(row["error"], path=row["path"])
        rows[row["path"]] = row
    whole, augs, tiles, boxes, forwards = [], [], [], [], 0
    for path in map(str, paths):
        row = rows[path]
        emb, n_tiles = row["embeddings"], row["n_tiles"]
        whole.append(emb[0])
        tiles.append(emb[1:1 + n_tiles])
        augs.append(emb[1 + n_tiles:])
        boxes.append([Box(*b) for b in row["boxes"]])
        forwards += len(emb)
    dim = whole[0].shape[0] if whole else 0
    return Embedded(np.stack(whole) if whole else np.zeros((0, dim), np.float32), augs,
                    [t.reshape(-1, dim) for t in tiles], boxes, forwards,
                    time.perf_counter() - started)

"""The Ray runner: Ray Data reads the file list, decodes in parallel tasks, scores in a pool of
actors that each load the model once (one ONNX Runtime session per actor), and writes Parquet
parts in parallel tasks. Imported only when ``runner="ray"`` is asked for."""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

from ..errors import UsageError
from .tasks import Preparer, Task, prepared_from_columns, prepared_to_columns

INSTALL = "Ray is not installed; `pip install 'belka[ray]'` (or `pip install 'ray[data]'`)"
log = logging.getLogger("belka.bulk")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--runner ray needs Ray: {INSTALL}") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one `ray start` runs here;
    ``ray://host:10001``: a remote one through Ray Client), or start a one-machine cluster when
    None. Returns True when this call started Ray (the caller shuts it down). An already
    initialised Ray (a notebook, a test) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  configure_logging=True)
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach a Ray cluster at {address} ({exc}); start one with "
                         "`ray start --head`, or leave out --address for a local one") from exc
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError and its own kinds
        raise UsageError(f"Ray could not start ({type(exc).__name__}: {exc})") from exc
    _quiet_data()
    return True


def _quiet_data() -> None:
    import warnings

    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    for attr in ("print_on_execution_start", "enable_operator_progress_bars"):
        if hasattr(ctx, attr):
            setattr(ctx, attr, False)


class _Prepare:
    """Ray task body: a batch of paths -> prepared views as Arrow columns."""

    def __init__(self, preparer: Preparer):
        self.preparer = preparer

    def __call__(self, batch):
        import pyarrow as pa

        items = [self.preparer(p) for p in batch.column("path").to_pylist()]
        return pa.table(prepared_to_columns(items))


class _Score:
    """Ray actor: loads the model once, then scores every batch it is given."""

    def __init__(self, task: Task, schema_):
        self.scorer = task.scorer()
        self.schema = schema_

    def __call__(self, batch):
        from .store import to_table

        rows = self.scorer.score(prepared_from_columns(batch.to_pydict()))
        if self.schema is None:          # in-memory use (train, evaluate): pickled rows
            import pickle

            import pyarrow as pa

            return pa.table({"path": [r["path"] for r in rows],
                             "row": [pickle.dumps(r) for r in rows]})
        return to_table(rows, self.schema)


class _Write:
    def __init__(self, writer):
        self.writer = writer

    def __call__(self, batch):
        import pyarrow as pa

        return pa.table({"rows": [self.writer.write(batch)]})


def _pipeline(task: Task, preparer: Preparer, paths: Sequence[str], *, workers: int,
              batch_size: int, schema_):
    ray = import_ray()
    import pyarrow as pa
    from ray.data import ActorPoolStrategy

    total_cpus = float(ray.cluster_resources().get("CPU", 1))
    # The actors reserve at most 3/4 of the cluster's CPUs, so the decode tasks always have room
    # to run (on 2 CPUs and 2 actors, reserving 1 CPU each would starve them).
    actor_cpus = min(1.0, 0.75 * total_cpus / workers)
    decode_cpus = min(1.0, max(0.25, (total_cpus - actor_cpus * workers) / 2))
    # Enough blocks for every actor to get work, and about 8 files per block on big lists.
    blocks = max(min(len(paths), 2 * workers), min(len(paths) // 8, 32 * int(total_cpus)))
    step = -(-len(paths) // blocks)
    tables = [pa.table({"path": list(paths[i:i + step])}) for i in range(0, len(paths), step)]
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(_Prepare(preparer), batch_size=8, batch_format="pyarrow",
                        num_cpus=decode_cpus)
    return ds.map_batches(_Score, fn_constructor_args=(task, schema_), batch_size=batch_size,
                          batch_format="pyarrow", num_cpus=actor_cpus,
                          compute=ActorPoolStrategy(size=workers))


def write(task: Task, preparer: Preparer, paths: Sequence[str], writer, *, workers: int,
          batch_size: int, checkpoint: int) -> Iterator[int]:
    """Score ``paths`` on the cluster and write them as parts; yields row counts as parts land."""
    if not paths:
        return
    ds = _pipeline(task, preparer, paths, workers=workers, batch_size=batch_size,
                   schema_=writer.schema_)
    ds = ds.map_batches(_Write(writer), batch_size=checkpoint, batch_format="pyarrow",
                        num_cpus=0.1)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for n in batch.column("rows").to_pylist():
            yield n


def iter_rows(task: Task, preparer: Preparer, paths: Sequence[str], *, workers: int,
              batch_size: int) -> Iterator[dict]:
    """Rows (any order) for ``paths``, scored on the cluster, brought back to the caller."""
    import pickle

    if not paths:
        return
    ds = _pipeline(task, preparer, paths, workers=workers, batch_size=batch_size, schema_=None)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in batch.column("row").to_pylist():
            yield pickle.loads(blob)


def cluster_cpus() -> int:
    ray = import_ray()
    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))

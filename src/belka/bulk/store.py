"""The output of a bulk scan: a folder of Parquet files that a rerun resumes.

``OUT/`` holds ``part-*.parquet`` files, each one checkpoint (one row group of up to
``checkpoint`` rows) written to a hidden temporary name and renamed into place, so a part is
either whole or absent, whatever kills the scan. ``OUT/_belka_scan.json`` records the task
settings, so a rerun with other settings is refused rather than mixing answers. A rerun reads the
``path`` column of the parts, skips those files and scores the rest: the folder ends with exactly
one row per file. Readers (``pyarrow.parquet.read_table(OUT)``, pandas, Spark, DuckDB's
``OUT/*.parquet``) skip the hidden and ``_`` names.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import UsageError

META = "_belka_scan.json"
FORMAT = 1


def schema(kind: str, embedding_dim: int | None = None):
    """The Arrow schema of one task's rows (the same for every part file)."""
    import pyarrow as pa

    fields = [("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string()),
              ("error", pa.string())]
    top = [("labels", pa.list_(pa.string())), ("indices", pa.list_(pa.int32())),
           ("probabilities", pa.list_(pa.float64()))]
    if kind == "classify":
        fields += top
    elif kind == "check":
        fields += top + [("verdict", pa.string()), ("score", pa.float64()),
                         ("threshold", pa.float64()), ("known", pa.bool_()),
                         ("box", pa.list_(pa.int32())), ("views", pa.int32()),
                         ("allowed", pa.string())]
    elif kind == "embed":
        emb = pa.list_(pa.float32(), embedding_dim) if embedding_dim else pa.list_(pa.float32())
        fields += top + [("embedding", emb)]
    else:
        raise ValueError(f"no Parquet schema for task {kind!r}")
    return pa.schema(fields)


def to_table(rows: Sequence[dict], schema_):
    import pyarrow as pa

    columns = {name: [row.get(name) for row in rows] for name in schema_.names}
    if "embedding" in columns:
        columns["embedding"] = [None if e is None else list(map(float, e))
                                for e in columns["embedding"]]
    return pa.Table.from_pydict(columns, schema=schema_)


@dataclass(frozen=True)
class PartWriter:
    """Writes one checkpoint as one part file (picklable: Ray's write tasks use it too)."""

    out: str
    run: str
    schema_: object

    def write(self, rows_or_table, name: str | None = None) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = rows_or_table if isinstance(rows_or_table, pa.Table) else to_table(
            rows_or_table, self.schema_)
        if table.num_rows == 0:
            return 0
        name = name or uuid.uuid4().hex[:12]
        final = Path(self.out) / f"part-{self.run}-{name}.parquet"
        temp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table.cast(self.schema_), temp, row_group_size=table.num_rows,
                       compression="zstd")
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
        return table.num_rows


class Store:
    """An output folder: settings check, what is already done, part writers."""

    def __init__(self, out: str | os.PathLike, settings: dict, schema_):
        self.out = Path(out)
        self.settings = settings
        self.schema = schema_
        self.run = uuid.uuid4().hex[:8]

    def open(self, overwrite: bool = False) -> set[str]:
        """Check or create the folder and return the paths already written. Stale temporary
        files of a killed run are removed; a part that cannot be read (it cannot be half
        written, but a disk can fail) is reported, not silently rescored."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} is a file; -o names the output folder (of Parquet files)")
        meta = out / META
        if out.is_dir() and overwrite:
            for p in out.iterdir():
                if p.name == META or p.name.endswith((".parquet", ".parquet.tmp")):
                    p.unlink()
        if out.is_dir() and any(out.iterdir()) and not meta.exists():
            raise UsageError(f"{out} is not empty and is not a belka scan's output; choose "
                             "another -o folder")
        if meta.exists():
            try:
                old = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read {meta}: {exc}") from exc
            if old.get("settings") != self.settings:
                changed = sorted(k for k in set(old.get("settings", {})) | set(self.settings)
                                 if old.get("settings", {}).get(k) != self.settings.get(k))
                raise UsageError(f"{out} holds a scan with other settings ({', '.join(changed)}"
                                 "); rerun with the same options to resume, --overwrite to start "
                                 "again, or choose another -o folder")
        else:
            out.mkdir(parents=True, exist_ok=True)
            temp = meta.with_name(f".{META}.tmp")
            temp.write_text(json.dumps({"format": FORMAT, "settings": self.settings}, indent=2)
                            + "\n", encoding="utf-8")
            os.replace(temp, meta)
        for stale in out.glob(".part-*.parquet.tmp"):
            stale.unlink(missing_ok=True)
        return self.done()

    def parts(self) -> list[Path]:
        return sorted(self.out.glob("part-*.parquet"))

    def done(self) -> set[str]:
        import pyarrow.parquet as pq

        seen: set[str] = set()
        for part in self.parts():
            try:
                seen.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                raise UsageError(f"cannot read {part} ({exc}); move it away and rerun to "
                                 "score its files again") from exc
        return seen

    def writer(self) -> PartWriter:
        return PartWriter(str(self.out), self.run, self.schema)


def read(out: str | os.PathLike, columns: Sequence[str] | None = None):
    """The whole scan as one Arrow table (every part; nothing else in the folder), or only
    ``columns`` of it."""
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob("part-*.parquet"))
    if not parts:
        raise UsageError(f"no scan results in {out}")
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts])

"""Durable storage for uploads: SQLite (WAL) for records, files on disk for the images.

The order of a write is what makes it crash-safe: the image goes to a temporary name, is
fsynced and renamed into place (and the folder fsynced), and only then is its row committed.
A crash before the commit leaves at most a file with no row, which :meth:`Storage.recover`
removes on the next start; it never leaves a row whose file is half-written. A delete goes the
other way: the row first, the file after the commit, so a failure in between (a read-only
folder) leaves a file with no row, again for recovery. A row that cannot be written (disk
full) takes its new file away with it. I/O failures surface as :class:`StorageError` (disk full
or not), which the server answers as 507 or 503. Files are named by
the SHA-256 of their content (which also de-duplicates), never by anything a client sent.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    ext TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    score REAL NOT NULL,
    allowed TEXT NOT NULL,
    predictions TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
TMP_SUFFIX = ".tmp"
log = logging.getLogger("belka.server")


class StorageError(Exception):
    """Storage could not do what was asked; ``full`` when the disk (or quota) is full."""

    def __init__(self, message: str, *, full: bool):
        super().__init__(message)
        self.message, self.full = message, full


def storage_error(err: Exception, doing: str) -> StorageError:
    """A StorageError that says what failed and whether it is a full disk."""
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(err, sqlite3.Error)
        and getattr(err, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13))
    if full:
        return StorageError(f"the disk is full: could not {doing}; free some space on the "
                            "server's --data folder and try again", full=True)
    return StorageError(f"storage is unavailable: could not {doing} ({err}); check that the "
                        "server's --data folder is writable", full=False)


def check_writable(root: str | os.PathLike) -> None:
    """Raise StorageError (with the reason) unless ``root`` can hold the database and files:
    for ``belka serve`` to say so before it starts serving."""
    root = Path(root)
    try:
        (root / "files").mkdir(parents=True, exist_ok=True)
        probe = write_atomic(root / "files" / ".belka-write-probe", b"ok")
        probe.unlink()
        db = sqlite3.connect(root / "belka.db")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS _probe (x)")
            db.execute("DROP TABLE _probe")
            db.commit()
        finally:
            db.close()
    except (OSError, sqlite3.Error) as err:
        raise StorageError(f"cannot write to the data folder {str(root)!r} ({err}); choose a "
                           "writable folder with --data", full=False) from None


@dataclass
class Upload:
    """One stored image and the gate's verdict on it."""

    id: int
    sha256: str
    ext: str
    filename: str
    size: int
    width: int
    height: int
    verdict: str
    score: float
    allowed: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "filename": self.filename,
                "size": self.size, "width": self.width, "height": self.height,
                "verdict": self.verdict, "score": self.score, "allowed": self.allowed,
                "predictions": self.predictions, "created_at": self.created_at,
                "image_url": f"/api/v1/uploads/{self.id}/image"}


@dataclass
class RecoveryReport:
    """What :meth:`Storage.recover` found on start-up."""

    temp_files_removed: int = 0
    orphan_files_removed: int = 0
    rows_without_files: list[int] = field(default_factory=list)


class Storage:
    """Upload records and files under one data folder (``belka.db`` and ``files/``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "belka.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files ---------------------------------------------------------------------------
    def path_for(self, sha256: str, ext: str) -> Path:
        return self.files / sha256[:2] / f"{sha256}.{ext}"

    def _write_file(self, data: bytes, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, suffix=TMP_SUFFIX, sync_dir=True)

    # -- records -------------------------------------------------------------------------
    def add(self, data: bytes, *, ext: str, filename: str, width: int, height: int,
            verdict: str, score: float, allowed: str,
            predictions: list[dict[str, Any]]) -> tuple[Upload, bool]:
        """Store an image and its verdict; returns (record, created). Identical content is stored
        once: a second upload of the same bytes returns the first record with created False."""
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            existing = self._by_sha(sha)
            if existing is not None and self.path_for(existing.sha256, existing.ext).exists():
                return existing, False
            path = self.path_for(sha, ext)
            try:
                self._write_file(data, path)
            except OSError as err:
                raise storage_error(err, "store the image") from None
            if existing is not None:  # the row survived but its file had gone: restored
                return existing, False
            try:
                cur = self._db.execute(
                    "INSERT INTO uploads (sha256, ext, filename, size, width, height, verdict,"
                    " score, allowed, predictions, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (sha, ext, filename[:200], len(data), width, height, verdict, score, allowed,
                     json.dumps(predictions), time.time()))
            except sqlite3.Error as err:  # no row, so no file either
                path.unlink(missing_ok=True)
                raise storage_error(err, "record the upload") from None
            return self._get(cur.lastrowid), True

    def _row(self, row: sqlite3.Row | None) -> Upload | None:
        if row is None:
            return None
        values = dict(row)
        values["predictions"] = json.loads(values["predictions"])
        return Upload(**values)

    def _by_sha(self, sha: str) -> Upload | None:
        return self._row(self._db.execute("SELECT * FROM uploads WHERE sha256 = ?", (sha,)).fetchone())

    def _get(self, upload_id: int) -> Upload | None:
        return self._row(self._db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone())

    def get(self, upload_id: int) -> Upload | None:
        with self._lock:
            return self._get(upload_id)

    def _list(self, offset: int, limit: int, verdict: str | None) -> list[Upload]:
        query, args = "SELECT * FROM uploads", []
        if verdict:
            query, args = query + " WHERE verdict = ?", [verdict]
        rows = self._db.execute(query + " ORDER BY id DESC LIMIT ? OFFSET ?",
                                (*args, limit, offset)).fetchall()
        return [self._row(r) for r in rows]

    def _count(self, verdict: str | None) -> int:
        if verdict:
            return self._db.execute("SELECT COUNT(*) FROM uploads WHERE verdict = ?",
                                    (verdict,)).fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]

    def list(self, *, offset: int = 0, limit: int = 20, verdict: str | None = None) -> list[Upload]:
        """Newest first."""
        with self._lock:
            return self._list(offset, limit, verdict)

    def count(self, verdict: str | None = None) -> int:
        with self._lock:
            return self._count(verdict)

    def page(self, *, offset: int = 0, limit: int = 20,
             verdict: str | None = None) -> tuple[list[Upload], int]:
        """A page of :meth:`list` and the :meth:`count` it is a page of, read together: an
        upload stored meanwhile is in both or in neither."""
        with self._lock:
            return self._list(offset, limit, verdict), self._count(verdict)

    def delete(self, upload_id: int) -> bool:
        """Remove a record, then its file. Returns False when there was no such record.

        The row goes first (committed), then the file; a file that cannot be removed now (a
        read-only folder) is logged and left for :meth:`recover`, which removes files with no
        row on the next start: the upload is gone either way."""
        with self._lock:
            record = self._get(upload_id)
            if record is None:
                return False
            try:
                self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            except sqlite3.Error as err:
                raise storage_error(err, "delete the upload") from None
            try:
                self.path_for(record.sha256, record.ext).unlink(missing_ok=True)
            except OSError as err:
                log.warning("upload %d deleted; its file stays until the next start (%s)",
                            upload_id, err)
            return True

    # -- start-up ------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Remove temp files and files without a row; report rows whose file is missing."""
        report = RecoveryReport()
        with self._lock:
            known = {(r["sha256"], r["ext"]) for r in
                     self._db.execute("SELECT sha256, ext FROM uploads").fetchall()}
            for path in self.files.rglob("*"):
                if not path.is_file():
                    continue
                temp = path.name.endswith(TMP_SUFFIX)
                stem, _, ext = path.name.partition(".")
                if not temp and (stem, ext) in known:
                    continue
                try:
                    path.unlink(missing_ok=True)
                except OSError as err:  # a read-only folder: serve anyway, say so
                    log.warning("could not remove %s (%s)", path, err)
                    continue
                if temp:
                    report.temp_files_removed += 1
                else:
                    report.orphan_files_removed += 1
            for row in self._db.execute("SELECT id, sha256, ext FROM uploads ORDER BY id").fetchall():
                if not self.path_for(row["sha256"], row["ext"]).exists():
                    report.rows_without_files.append(row["id"])
        return report

"""Writing files so that no reader, and no crash, ever sees half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Union

Content = Union[bytes, Callable[[BinaryIO], object]]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, content: Content, *, suffix: str = ".tmp",
                 sync_dir: bool = False) -> Path:
    """Write ``content`` (bytes, or a callable that writes to a binary stream) to ``path``.

    The bytes go to a new hidden file in the same folder (``.NAME.RANDOM<suffix>``, opened with
    O_EXCL so nobody else's file is reused; the umask decides the permissions), are fsynced, and
    the file is renamed over ``path``; ``sync_dir`` also flushes the rename. On any failure the
    temporary file is removed and the exception propagates (``OSError`` for I/O problems), so
    ``path`` is either the old file or the complete new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

"""Which files a bulk scan covers: local folders (walked as every belka command walks them),
single files, text files listing paths or URIs, and URIs that pyarrow's filesystems open
(``s3://bucket/prefix/``, ``gs://``, ``file://``; credentials as pyarrow finds them)."""

from __future__ import annotations

import fnmatch
import os
import threading
from pathlib import PurePosixPath
from typing import Iterable, Sequence

from .. import images
from ..errors import ImageError, UsageError

LIST_SUFFIXES = (".txt", ".lst", ".list")


def is_uri(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1    # not a Windows drive letter


_filesystems: dict[str, object] = {}
_lock = threading.Lock()


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI; filesystems are made once per scheme
    and bucket and shared by the threads of a process."""
    from pyarrow import fs as pafs

    scheme, _, rest = uri.partition("://")   # inside the filesystem: bucket/key, or /path
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    with _lock:
        if key not in _filesystems:
            try:
                _filesystems[key] = pafs.FileSystem.from_uri(uri)[0]
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                raise UsageError(f"cannot open {uri}: {exc}") from exc
        filesystem = _filesystems[key]
    return filesystem, rest


def read_bytes(path: str) -> bytes:
    """The bytes of one file: a local path, or a URI through pyarrow's filesystems."""
    if not is_uri(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError("no such file", path=path) from None
        except IsADirectoryError:
            raise ImageError("is a folder, not an image file", path=path) from None
        except OSError as exc:
            raise ImageError(f"cannot read: {exc.strerror or exc}", path=path) from None
    filesystem, inner = _filesystem(path)
    try:
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    except (OSError, FileNotFoundError) as exc:
        raise ImageError(f"cannot read: {exc}", path=path) from None


def _list_uri(uri: str) -> list[str]:
    from pyarrow import fs as pafs

    filesystem, inner = _filesystem(uri)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"no such file or folder: {uri}")
    if info.type == pafs.FileType.File:
        return [uri]
    scheme = uri.split("://", 1)[0]
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True)):
        parts = PurePosixPath(entry.path).parts
        if entry.type != pafs.FileType.File or any(p.startswith(".") for p in parts):
            continue
        if PurePosixPath(entry.path).suffix.lower() in images.IMAGE_EXTENSIONS:
            found.append(f"{scheme}://{entry.path}")
    return sorted(found)


def _read_list(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the list {path}: {exc}") from exc
    return [line for line in lines if line and not line.startswith("#")]


def list_files(sources: Sequence[str | os.PathLike], *, glob: str | None = None,
               limit: int | None = None) -> list[str]:
    """Every file the scan covers, in a stable order (sources in the order given, each folder
    sorted as :func:`belka.images.iter_image_files` sorts it), without duplicates.

    A ``.txt``/``.lst``/``.list`` file lists one path or URI a line (blank lines and ``#``
    comments skipped); entries are taken as written, not checked here (a missing one gets an
    error row). ``glob`` keeps the files whose path or name matches; ``limit`` the first N.
    A source that does not exist is a :class:`UsageError` (nothing is written).
    """
    out: dict[str, None] = {}

    def add(paths: Iterable[str]) -> None:
        for p in paths:
            if glob is None or fnmatch.fnmatch(p, glob) or fnmatch.fnmatch(
                    p.rsplit("/", 1)[-1], glob):
                out.setdefault(p, None)

    for source in map(os.fspath, sources):
        if is_uri(source):
            add(_list_uri(source))
        elif os.path.isdir(source):
            add(str(p) for p in images.iter_image_files([source]))
        elif os.path.isfile(source):
            add(_read_list(source) if source.lower().endswith(LIST_SUFFIXES) else [source])
        else:
            raise UsageError(f"no such file or folder: {source}")
        if limit is not None and len(out) >= limit:
            break
    files = list(out)
    return files[:limit] if limit is not None else files

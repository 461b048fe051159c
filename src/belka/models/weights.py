"""The one place weight files are found, checked and downloaded.

Order of search in :func:`resolve`: a user-given ``override`` (local path or http(s) URL), weights
shipped inside an installed package (``WeightSource.locate``), the cache
(``$BELKA_CACHE/weights`` or the platform's user cache dir), then the network. ``BELKA_OFFLINE=1``
forbids the network; every failure is a :class:`~belka.errors.WeightsError` that says which file
to put where.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import WeightsError

if TYPE_CHECKING:
    from .spec import WeightSource

__all__ = ["cache_dir", "download", "is_offline", "resolve", "sha256_file"]

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole file


def cache_dir() -> Path:
    """Where downloaded weights live: ``$BELKA_CACHE/weights``, else the user cache dir's."""
    root = os.environ.get("BELKA_CACHE")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("belka")
    return Path(root).expanduser() / "weights"


def is_offline() -> bool:
    """True when ``BELKA_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get("BELKA_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_url(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _checksum_problem(digest: str, sha256: str | None, sha256_prefix: str | None) -> str | None:
    """None when ``digest`` satisfies the expectation, else ``'expected X, got Y'``."""
    if sha256 and digest != sha256.lower():
        return f"expected {sha256.lower()}, got {digest}"
    if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        return f"expected {sha256_prefix.lower()}..., got {digest}"
    return None


def _offline_help(url: str, dest: Path) -> str:
    return f"download {url} on another machine and put it at {dest} (or pass --weights PATH)"


def resolve(
    source: WeightSource,
    *,
    override: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The local path of ``source``'s weight file, downloading it into the cache if needed.

    ``override`` is a local file (used as is, not checksummed) or an http(s) URL (downloaded into
    the cache under its own file name, reused from there on the next call).
    """
    if override is not None:
        if _is_url(override):
            url = str(override)
            name = Path(urllib.parse.urlparse(url).path).name or source.filename
            dest = cache_dir() / name
            if dest.is_file():
                return dest
            return _fetch(url, dest, None, None, progress)
        path = Path(override).expanduser()
        if not path.exists():
            raise WeightsError("weight file not found", path=str(path))
        if not path.is_file():
            raise WeightsError("not a file (expected a weight file)", path=str(path))
        return path

    if source.locate is not None:
        return Path(source.locate())

    dest = cache_dir() / source.filename
    stale = None
    if dest.is_file():
        if not (source.sha256 or source.sha256_prefix):
            return dest
        stale = _checksum_problem(sha256_file(dest), source.sha256, source.sha256_prefix)
        if stale is None:
            return dest
    if source.url is None:
        bad = f" (the file there fails its checksum: {stale})" if stale else ""
        raise WeightsError(
            f"no download address is known for {source.filename}; put the file at {dest}{bad} "
            "(or pass --weights PATH)"
        )
    if stale is not None and is_offline():
        raise WeightsError(
            f"the cached file is corrupt (checksum mismatch: {stale}) and BELKA_OFFLINE is set; "
            + _offline_help(source.url, dest),
            path=str(dest),
        )
    return _fetch(source.url, dest, source.sha256, source.sha256_prefix, progress)


def _fetch(
    url: str, dest: Path, sha256: str | None, sha256_prefix: str | None, progress: bool
) -> Path:
    if is_offline():
        raise WeightsError(
            f"{dest.name} is not in the cache and BELKA_OFFLINE is set; " + _offline_help(url, dest)
        )
    return download(url, dest, sha256=sha256, sha256_prefix=sha256_prefix, progress=progress)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
) -> Path:
    """Stream ``url`` into ``dest``, verifying the checksum before the file appears there.

    The bytes go to a temporary file in ``dest``'s folder that is renamed into place only when
    complete and verified; on any error it is deleted and a :class:`WeightsError` is raised.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise WeightsError(f"cannot write to the cache ({e})", path=str(dest.parent)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                digest = _stream(url, out, desc=dest.name, progress=progress)
            except urllib.error.HTTPError as e:
                raise WeightsError(
                    f"could not download {url}: the server refused (HTTP {e.code} {e.reason}). "
                    + _offline_help(url, dest)
                ) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise WeightsError(
                    f"could not download {url} ({type(e).__name__}: {reason}); this machine "
                    "seems offline, or the server refused or dropped the connection. "
                    "To work offline, " + _offline_help(url, dest)
                ) from None
        problem = _checksum_problem(digest, sha256, sha256_prefix)
        if problem is not None:
            raise WeightsError(
                f"checksum mismatch: {problem}; the file was not saved (downloaded from {url})",
                path=str(dest),
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream(url: str, out: BinaryIO, *, desc: str, progress: bool) -> str:
    """Copy ``url``'s body into ``out`` with a progress bar; returns its hex SHA-256.

    Network failures propagate as urllib/OS/http.client errors; a failed write to ``out``
    is turned into a WeightsError here so that it is not mistaken for a network problem.
    """
    from tqdm import tqdm

    h = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "belka"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isascii() and length.isdigit() else None
        received = 0
        bar_off = not progress or not sys.stderr.isatty()
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=bar_off, leave=False) as bar:  # fmt: skip
            while chunk := response.read(CHUNK):
                try:
                    out.write(chunk)
                except OSError as e:  # a full or read-only disk, not the network
                    raise WeightsError(f"cannot write the downloaded file ({e})") from None
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise http.client.IncompleteRead(b"", total - received)
    return h.hexdigest()

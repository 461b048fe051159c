"""Weight resolution and download, against a local HTTP server (no network is used)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from functools import partial
from pathlib import Path

import platformdirs
import pytest

from belka.errors import WeightsError
from belka.models import weights
from belka.models.registry import WeightSource

PAYLOAD = b"belka weights \x00\x01\x02" * 5000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        if self.path == "/truncated.bin":  # promises more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 2))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"requests": self.requests})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def put(self, name: str, data: bytes = PAYLOAD) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


@pytest.fixture
def cache() -> Path:
    d = weights.cache_dir()
    if d.exists():
        for p in d.iterdir():
            p.unlink()
    return d


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/w.bin"


# --------------------------------------------------------------------------- cache dir


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BELKA_CACHE", str(tmp_path / "c"))
    assert weights.cache_dir() == tmp_path / "c" / "weights"
    monkeypatch.delenv("BELKA_CACHE")
    assert weights.cache_dir() == Path(platformdirs.user_cache_dir("belka")) / "weights"


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert weights.sha256_file(tmp_path / "f") == PAYLOAD_SHA


# --------------------------------------------------------------------------- resolve


def test_download_then_cached(server, cache):
    url = server.put("w.bin")
    source = WeightSource("w.bin", url=url, sha256=PAYLOAD_SHA)
    path = weights.resolve(source, progress=False)
    assert path == cache / "w.bin" and path.read_bytes() == PAYLOAD
    assert _leftovers(cache) == ["w.bin"]
    assert weights.resolve(source, progress=False) == path
    assert server.requests == ["/w.bin"]


def test_wrong_sha256_leaves_nothing(server, cache):
    source = WeightSource("w.bin", url=server.put("w.bin"), sha256="0" * 64)
    with pytest.raises(WeightsError) as info:
        weights.resolve(source, progress=False)
    message = str(info.value)
    assert f"checksum mismatch: expected {'0' * 64}, got {PAYLOAD_SHA}" in message
    assert "the file was not saved" in message
    assert _leftovers(cache) == []


def test_sha256_prefix(server, cache):
    url = server.put("w-abc.bin")
    ok = WeightSource("w-abc.bin", url=url, sha256_prefix=PAYLOAD_SHA[:8])
    assert weights.resolve(ok, progress=False).read_bytes() == PAYLOAD
    (cache / "w-abc.bin").unlink()
    bad = WeightSource("w-abc.bin", url=url, sha256_prefix="b0353104")
    with pytest.raises(WeightsError, match="checksum mismatch: expected b0353104"):
        weights.resolve(bad, progress=False)
    assert _leftovers(cache) == []


def test_corrupt_cached_file_is_downloaded_again(server, cache):
    source = WeightSource("w.bin", url=server.put("w.bin"), sha256=PAYLOAD_SHA)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "w.bin").write_bytes(b"half a file")
    assert weights.resolve(source, progress=False).read_bytes() == PAYLOAD
    assert server.requests == ["/w.bin"]


def test_cached_file_without_checksum_is_trusted(server, cache):
    source = WeightSource("w.bin", url=server.put("w.bin"))
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "w.bin").write_bytes(b"mine")
    assert weights.resolve(source).read_bytes() == b"mine"
    assert server.requests == []


def test_http_404(server, cache):
    source = WeightSource("w.bin", url=f"{server.url}/absent.bin")
    with pytest.raises(WeightsError) as info:
        weights.resolve(source, progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and str(cache / "w.bin") in message
    assert "--weights PATH" in message
    assert _leftovers(cache) == []


def test_truncated_download(server, cache):
    server.put("truncated.bin")
    source = WeightSource("w.bin", url=f"{server.url}/truncated.bin")
    with pytest.raises(WeightsError, match="could not download"):
        weights.resolve(source, progress=False)
    assert _leftovers(cache) == []


def test_unreachable(cache):
    url = closed_port_url()
    source = WeightSource("w.bin", url=url)
    with pytest.raises(WeightsError) as info:
        weights.resolve(source, progress=False)
    message = str(info.value)
    assert "offline" in message
    assert f"download {url} on another machine and put it at {cache / 'w.bin'}" in message
    assert _leftovers(cache) == []


def test_offline_makes_no_request(server, cache, monkeypatch):
    monkeypatch.setenv("BELKA_OFFLINE", "1")
    url = server.put("w.bin")
    with pytest.raises(WeightsError) as info:
        weights.resolve(WeightSource("w.bin", url=url, sha256=PAYLOAD_SHA))
    assert "BELKA_OFFLINE" in str(info.value) and str(cache / "w.bin") in str(info.value)
    with pytest.raises(WeightsError):
        weights.resolve(WeightSource("w.bin"), override=url)
    assert server.requests == []
    # A verified cached file is still used offline.
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "w.bin").write_bytes(PAYLOAD)
    assert weights.resolve(WeightSource("w.bin", url=url, sha256=PAYLOAD_SHA)) == cache / "w.bin"


def test_override_local_path(server, tmp_path, cache):
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"anything")
    source = WeightSource("w.bin", url=server.put("w.bin"), sha256=PAYLOAD_SHA)
    assert weights.resolve(source, override=mine) == mine
    assert weights.resolve(source, override=str(mine)) == mine
    assert server.requests == []


def test_override_missing_path(tmp_path):
    with pytest.raises(WeightsError, match="not found") as info:
        weights.resolve(WeightSource("w.bin"), override=tmp_path / "nope.h5")
    assert str(tmp_path / "nope.h5") in str(info.value)
    with pytest.raises(WeightsError, match="not a file"):
        weights.resolve(WeightSource("w.bin"), override=tmp_path)


def test_override_url(server, cache):
    url = server.put("other.bin")
    path = weights.resolve(WeightSource("w.bin"), override=url, progress=False)
    assert path == cache / "other.bin" and path.read_bytes() == PAYLOAD
    assert weights.resolve(WeightSource("w.bin"), override=url) == path
    assert server.requests == ["/other.bin"]


def test_locate_wins(server, tmp_path):
    packaged = tmp_path / "packaged.bin"
    packaged.write_bytes(b"x")
    source = WeightSource("w.bin", url=server.put("w.bin"), locate=lambda: packaged)
    assert weights.resolve(source) == packaged
    assert server.requests == []


def test_no_url_and_not_cached(cache):
    with pytest.raises(WeightsError, match="put the file at"):
        weights.resolve(WeightSource("w.bin"))


def test_download_function_directly(server, tmp_path):
    dest = tmp_path / "deep" / "dir" / "w.bin"
    out = weights.download(server.put("w.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["w.bin"]

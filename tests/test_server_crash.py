"""Crash safety of the upload store, for real: `belka serve` as a subprocess takes a stream of
uploads and is killed with SIGKILL while requests are in flight, then restarted on the same data
folder, several times over.

After every restart: each upload that was answered 2xx is there with exactly the bytes that were
sent, no temporary file is left, every file's name is the SHA-256 of its content, files and rows
match one to one, and /api/v1/health reports no rows without files. Everything is bounded: at
most MAX_UPLOADS uploads, a timeout on every request and every wait.

A kill rarely lands inside the few milliseconds of a file write (inference dominates a request),
so the test also leaves behind, after the first kill, exactly what such a kill would: a
half-written temporary file and a complete file whose row was never committed. The restart must
remove both.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from belka.server import launch
from belka.server.launch import LiveServer

KILL_AFTER = (10, 25)     # successful uploads in each round before the SIGKILL
THREADS = 3               # uploads in flight at once
MAX_UPLOADS = 200
REQUEST_TIMEOUT_S = 60
START_TIMEOUT_S = 120


# -- the live server ---------------------------------------------------------------------------
@dataclass
class Server:
    live: LiveServer
    api: httpx.Client


def start_server(data: Path, log: Path) -> Server:
    live = launch.start(data, "--allow", "squirrel", "--workers", "2", log=log,
                        wait_s=START_TIMEOUT_S)
    return Server(live, httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S, trust_env=False))


def kill(server: Server) -> None:
    server.api.close()
    server.live.kill()


def jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct small JPEGs (random noise, so the gate warns: uploads use confirm=true)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                                 quality=85)
        out.append(buf.getvalue())
    assert len(set(out)) == n
    return out


# -- the stream --------------------------------------------------------------------------------
class Stream:
    """Uploads images[next...] from THREADS threads until the server dies or the images run
    out; records what was acknowledged and what was in flight when the connection broke."""

    def __init__(self, images: list[bytes], start: int):
        self.images, self.next = images, start
        self.lock = threading.Lock()
        self.acked: dict[int, int] = {}   # upload id -> index into images
        self.broken: list[int] = []       # in flight when the server died: stored or not
        self.unexpected: list[str] = []
        self.reached = threading.Event()
        self.kill_after = 0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.images):
                return None
            self.next += 1
            return self.next - 1

    def worker(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while (i := self.take()) is not None:
                try:
                    r = client.post("/api/v1/uploads?confirm=true",
                                    files={"file": (f"noise-{i}.jpg", self.images[i], "image/jpeg")})
                except httpx.TransportError:
                    with self.lock:
                        self.broken.append(i)
                    return
                with self.lock:
                    if r.status_code == 201:
                        self.acked[r.json()["id"]] = i
                        if len(self.acked) >= self.kill_after:
                            self.reached.set()
                    else:
                        self.unexpected.append(f"{r.status_code} {r.text[:200]}")
                        self.reached.set()
                        return

    def run_until_killed(self, server: Server, kill_after: int) -> None:
        self.kill_after = kill_after
        threads = [threading.Thread(target=self.worker, args=(server.live.url,), daemon=True)
                   for _ in range(THREADS)]
        for t in threads:
            t.start()
        assert self.reached.wait(REQUEST_TIMEOUT_S * 2), "the uploads stalled"
        server.live.proc.send_signal(signal.SIGKILL)  # mid-stream: the other threads are in flight
        server.live.proc.wait(30)
        for t in threads:
            t.join(REQUEST_TIMEOUT_S)
            assert not t.is_alive(), "an upload thread did not stop"
        assert not self.unexpected, self.unexpected


# -- the checks --------------------------------------------------------------------------------
def files_on_disk(data: Path) -> list[Path]:
    return [Path(d) / name for d, _, names in os.walk(data / "files") for name in names]


def assert_consistent(server: Server, data: Path, images: list[bytes], acked: dict[int, int]):
    api = server.api
    health = api.get("/api/v1/health").json()
    assert health["rows_without_files"] == [], health

    for upload_id, i in acked.items():
        r = api.get(f"/api/v1/uploads/{upload_id}")
        assert r.status_code == 200, f"acknowledged upload {upload_id} is gone: {r.text}"
        assert r.json()["sha256"] == hashlib.sha256(images[i]).hexdigest()
        image = api.get(f"/api/v1/uploads/{upload_id}/image")
        assert image.status_code == 200 and image.content == images[i], upload_id

    rows = {}
    for offset in range(0, MAX_UPLOADS + 100, 100):
        page = api.get(f"/api/v1/uploads?offset={offset}&limit=100").json()
        rows.update({item["sha256"]: item["id"] for item in page["items"]})
        if offset + 100 >= page["total"]:
            break
    assert len(rows) == health["uploads"] == api.get("/api/v1/uploads").json()["total"]

    on_disk = files_on_disk(data)
    assert not [p for p in on_disk if p.name.endswith(".tmp")], "temporary files survived"
    for path in on_disk:
        stem = path.name.partition(".")[0]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stem, f"{path} is damaged"
    assert {p.name.partition(".")[0] for p in on_disk} == set(rows), "files and rows differ"


def plant_crash_leftovers(data: Path, image: bytes) -> list[Path]:
    """What a kill inside Storage.add leaves: a temp file cut off mid-write (the storage's own
    naming), and a renamed file whose row was never committed."""
    sha = hashlib.sha256(image).hexdigest()
    folder = data / "files" / sha[:2]
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{sha}.jpg.4242.4242.tmp"
    partial.write_bytes(image[: len(image) // 2])
    other = hashlib.sha256(image + b"x").hexdigest()
    (data / "files" / other[:2]).mkdir(parents=True, exist_ok=True)
    orphan = data / "files" / other[:2] / f"{other}.jpg"
    orphan.write_bytes(image + b"x")
    return [partial, orphan]


def test_kill_9_mid_stream_loses_no_acknowledged_upload(tmp_path):
    data, log = tmp_path / "data", tmp_path / "server.log"
    images = jpegs(MAX_UPLOADS)
    acked: dict[int, int] = {}
    in_flight_at_kill = 0
    next_image = 0
    server = start_server(data, log)
    try:
        for round_no, kill_after in enumerate(KILL_AFTER):
            stream = Stream(images, next_image)
            stream.run_until_killed(server, kill_after)
            next_image = stream.next
            acked |= stream.acked
            in_flight_at_kill += len(stream.broken)
            leftovers = plant_crash_leftovers(data, jpegs(1, seed=7)[0]) if round_no == 0 else []
            server = start_server(data, log)  # same data folder: recovery runs first
            # An upload cut off by the kill may or may not be stored; if it is, it is whole
            # (every file's hash is checked against its name).
            assert_consistent(server, data, images, acked)
            assert not [p for p in leftovers if p.exists()], "recovery left crash debris"
        assert len(acked) >= sum(KILL_AFTER)
        assert in_flight_at_kill >= 1, "no request was in flight at any kill"
        # Still a working server after all that.
        r = server.api.post("/api/v1/uploads?confirm=true",
                            files={"file": ("last.jpg", jpegs(1, seed=99)[0], "image/jpeg")})
        assert r.status_code == 201, r.text
    finally:
        kill(server)

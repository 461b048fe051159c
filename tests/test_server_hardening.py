"""The service under hostile or careless traffic: nothing may freeze it, exhaust its memory, be
sent by another website, or answer a bad request with a 500.

Most cases run on FastAPI's test client; those about time, memory and sockets run against a
real `belka serve` subprocess on 127.0.0.1 (belka.server.launch). Each of them failed before
the hardening it checks (see docs/server.md, "Threat model").
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import belka
from belka.cli import main
from belka.server import ServerConfig, create_app, launch
from belka.server.guard import MemoryBudget, ServiceBusy

skdata = pytest.importorskip("skimage.data")


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bomb_png(side: int = 7000) -> bytes:
    """A 7000 x 7000 RGB PNG of about 140 KB: small to send, 147 MB of pixels once decoded."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[::50] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg(skdata.chelsea())


def make_client(tmp_path, model, **options) -> TestClient:
    config = ServerConfig(data_dir=tmp_path / "data", allow="cat", workers=2, **options)
    return TestClient(create_app(config, model=model))


@pytest.fixture()
def client(tmp_path, model):
    with make_client(tmp_path, model) as c:
        yield c


def files(data: bytes, name: str = "photo.jpg"):
    return {"file": (name, data, "image/jpeg")}


def assert_error(r, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == kind and isinstance(body["detail"], str) and body["detail"]
    return body


# -- who may talk to it -----------------------------------------------------------------------
def test_a_foreign_host_is_refused(client):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    body = assert_error(client.get("/api/v1/uploads", headers={"Host": "evil.example"}),
                        400, "bad_host")
    assert "--allowed-host" in body["detail"]
    assert client.get("/api/v1/uploads", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/api/v1/uploads", headers={"Host": "localhost"}).status_code == 200


def test_cross_site_posts_and_deletes_are_refused(client, cat):
    stored = client.post("/api/v1/uploads", files=files(cat))
    assert stored.status_code == 201
    upload_id = stored.json()["id"]
    # A plain form POST from another site carries its Origin; fetch() adds Sec-Fetch-Site.
    assert_error(client.post("/api/v1/uploads?confirm=true", files=files(jpeg(skdata.astronaut())),
                             headers={"Origin": "http://evil.example"}), 403, "cross_origin")
    assert_error(client.delete(f"/api/v1/uploads/{upload_id}",
                               headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross_origin")
    assert_error(client.delete(f"/api/v1/uploads/{upload_id}", headers={"Origin": "null"}),
                 403, "cross_origin")
    assert client.get("/api/v1/uploads").json()["total"] == 1  # nothing stored, nothing deleted
    # The pages' own requests are same-origin, and scripts without a browser send no Origin.
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.delete(f"/api/v1/uploads/{upload_id}", headers=same).status_code == 204
    # Reading is not a state change: a GET with a foreign Origin is answered (CORS keeps the
    # answer from the foreign page: no Access-Control-Allow-Origin is ever sent).
    r = client.get("/api/v1/uploads", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_the_token_guards_everything_but_health(tmp_path, model, cat):
    token = "s3cret-token-for-tests-only"
    with make_client(tmp_path, model, token=token) as c:
        assert c.get("/api/v1/health").status_code == 200
        assert c.get("/static/style.css").status_code == 200
        for r in (c.get("/api/v1/uploads"), c.get("/"), c.post("/api/v1/check", files=files(cat)),
                  c.get("/api/v1/uploads", headers={"Authorization": "Bearer wrong"})):
            assert_error(r, 401, "unauthorized")
        ok = c.get("/api/v1/uploads", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        # The page link: ?token= sets an HttpOnly, SameSite=Strict cookie and comes back
        # without the token in the URL.
        r = c.get(f"/gallery?token={token}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/gallery"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/gallery").status_code == 200  # the client keeps the cookie
        assert c.post("/api/v1/check?heatmap=false", files=files(cat)).status_code == 200


def test_security_headers_on_every_answer(client, cat):
    for r in (client.get("/"), client.get("/api/v1/health"), client.get("/api/v1/uploads/9"),
              client.post("/api/v1/check", files=files(b"not an image"))):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
    # The pages carry no inline script, so the policy costs them nothing.
    for page in ("/", "/gallery", "/explain", "/lab"):
        html = client.get(page).text
        assert "<script>" not in html and "onclick=" not in html


def test_a_stored_polyglot_is_served_as_an_image_that_cannot_run(client):
    """A GIF whose bytes also read as HTML: served as image/gif, nosniff, sandboxed."""
    gif = io.BytesIO()
    Image.new("P", (8, 8)).save(gif, "GIF", comment=b"<html><script>alert(1)</script></html>")
    data = gif.getvalue()
    assert b"<script>" in data
    stored = client.post("/api/v1/uploads?confirm=true",
                         files={"file": ("x.html", data, "text/html")})
    assert stored.status_code == 201, stored.text
    r = client.get(stored.json()["image_url"])
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["content-disposition"] == f'inline; filename="upload-{stored.json()["id"]}.gif"'


# -- bad parameters are 4xx, never 500 ------------------------------------------------------
@pytest.mark.parametrize("path", [
    f"/api/v1/uploads/{2**63}", f"/api/v1/uploads/{2**64}/image", "/api/v1/uploads/0",
    f"/api/v1/uploads?offset={2**63}", f"/api/v1/lab/pca/reconstruct?upload_id={2**70}",
])
def test_huge_ids_and_offsets(client, path):
    assert_error(client.get(path), 422, "invalid_request")
    assert_error(client.delete(f"/api/v1/uploads/{2**64}"), 422, "invalid_request")


def test_non_ascii_digits_are_not_numbers(client, cat):
    r = client.post("/api/v1/explain", files=files(cat), data={"class": "²"})
    body = assert_error(r, 400, "bad_request")
    assert "²" in body["detail"]
    r = client.post("/api/v1/explain", files=files(cat), data={"layer": "¹²"})
    assert_error(r, 400, "bad_request")


def test_a_deeply_nested_kernel(client, cat):
    r = client.post("/api/v1/lab/filter", files=files(cat),
                    data={"kernel": "[" * 5000 + "]" * 5000})
    assert_error(r, 400, "bad_request")
    r = client.post("/api/v1/lab/filter", files=files(cat), data={"kernel": "[" * 9000})
    assert r.status_code in (400, 422)
    r = client.post("/api/v1/lab/filter", files=files(cat), data={"kernel": "/etc/passwd"})
    assert "unknown kernel" in assert_error(r, 400, "bad_request")["detail"]
    big = json.dumps(np.ones((33, 33)).tolist())
    assert "at most 31" in assert_error(client.post("/api/v1/lab/filter", files=files(cat),
                                                    data={"kernel": big}), 400, "bad_request")["detail"]


def test_two_file_parts_are_refused(client, cat):
    two = [("file", ("a.jpg", cat, "image/jpeg")), ("file", ("b.jpg", b"x", "image/jpeg"))]
    body = assert_error(client.post("/api/v1/check", files=two), 400, "bad_request")
    assert "one image per request" in body["detail"]


def test_too_many_pixels_names_an_option_that_exists(tmp_path, model):
    with make_client(tmp_path, model, max_pixels=10_000) as c:
        body = assert_error(c.post("/api/v1/check", files=files(jpeg(skdata.chelsea()))),
                            413, "image_too_large")
    assert "--max-pixels" in body["detail"]
    assert "--max-pixels" in CliRunner().invoke(main, ["serve", "--help"]).output


def test_lab_requests_are_bounded(client):
    many = ",".join(["1"] * 10_001)
    body = assert_error(client.post("/api/v1/lab/learn", data={"x": many, "y": many}),
                        400, "bad_request")
    assert "at most 10,000" in body["detail"]
    assert_error(client.post("/api/v1/lab/learn", data={"steps": 5001}), 422, "invalid_request")
    assert_error(client.post("/api/v1/lab/learn", data={"lr": "nan"}), 422, "invalid_request")
    assert_error(client.post("/api/v1/lab/pca", data={"size": 1000}), 422, "invalid_request")
    # A run that diverges answers, with null where the numbers left the floats.
    r = client.post("/api/v1/lab/learn", data={"lr": 1000, "steps": 400})
    assert r.status_code == 200 and r.json()["diverged"] is True


# -- background jobs ----------------------------------------------------------------------
def test_300_jobs_get_429_past_the_limit_and_every_accepted_one_stays_addressable(tmp_path, model):
    small = jpeg(np.asarray(Image.fromarray(skdata.chelsea()).resize((96, 64))))
    with make_client(tmp_path, model, max_jobs=32) as c:
        codes, accepted = [], []
        for _ in range(300):
            r = c.post("/api/v1/explain", files=files(small),
                       data={"method": "scorecam", "background": "true"})
            codes.append(r.status_code)
            if r.status_code == 202:
                accepted.append(r.json()["id"])
            else:
                body = assert_error(r, 429, "too_many_jobs")
                assert "the limit is 32" in body["detail"]
                assert r.headers["retry-after"]
        assert len(accepted) >= 32 and codes.count(429) >= 300 - len(accepted) - 0
        assert codes.count(429) > 200
        listed = {j["id"] for j in c.get("/api/v1/jobs").json()["items"]}
        assert set(accepted) <= listed
        # An interactive request is not queued behind them: its own workers answer it.
        assert c.post("/api/v1/classify", files=files(small)).status_code == 200
        for job_id in accepted:
            r = c.delete(f"/api/v1/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] in ("cancelled", "running", "done")
        deadline = time.monotonic() + 120
        while c.get("/api/v1/jobs?active=true").json()["items"]:
            assert time.monotonic() < deadline, "cancelled jobs did not end"
            time.sleep(0.1)
        states = {c.get(f"/api/v1/jobs/{j}").json()["status"] for j in accepted}
        assert states <= {"cancelled", "done"}
        # Room again: a new job is accepted.
        assert c.post("/api/v1/explain", files=files(small),
                      data={"background": "true"}).status_code == 202


def test_the_memory_budget_waits_then_refuses():
    budget = MemoryBudget(100, wait_s=0.05)
    budget.acquire(80)
    budget.acquire(20)                 # fits exactly
    with pytest.raises(ServiceBusy) as busy:
        budget.acquire(1)              # over, and nobody frees room in time
    assert busy.value.status == 503 and busy.value.retry_after
    freed = threading.Timer(0.01, budget.release, args=(80,))
    freed.start()
    budget.acquire(50, wait_s=10)      # waits for the release, then fits
    assert budget.in_flight == 70 and budget.peak == 100
    budget.release(70)
    budget.acquire(10_000)             # alone, anything that passed the pixel limit may run
    budget.release(10_000)


# -- storage faults -----------------------------------------------------------------------
def _mount_tmpfs(where: Path, size: str, readonly: bool = False) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _consistent(data: Path) -> None:
    """Every row has its file and every file its row."""
    import sqlite3

    db = sqlite3.connect(data / "belka.db")
    rows = {(sha, ext) for sha, ext in db.execute("SELECT sha256, ext FROM uploads")}
    db.close()
    on_disk = {tuple(p.name.split(".", 1)) for p in (data / "files").rglob("*") if p.is_file()}
    assert on_disk == rows


def test_a_full_disk_gives_507_json_and_stays_consistent(tmp_path, model):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        rng = np.random.default_rng(0)
        seen = []
        with make_client(disk, model) as c:
            for i in range(40):
                noise = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)  # ~90 KB each
                r = c.post("/api/v1/uploads?confirm=true", files=files(jpeg(noise), f"{i}.jpg"))
                seen.append(r.status_code)
                if r.status_code != 201:
                    break
            assert seen[-1] == 507, seen
            body = assert_error(r, 507, "insufficient_storage")
            assert "disk is full" in body["detail"]
            assert seen.count(201) >= 3
            assert c.get("/api/v1/health").status_code == 200  # still serving
        _consistent(disk / "data")
        with make_client(disk, model) as c:  # a restart finds the same
            assert c.get("/api/v1/health").json()["rows_without_files"] == []
            assert c.get("/api/v1/uploads").json()["total"] == seen.count(201)
        _consistent(disk / "data")
    finally:
        _umount(disk)


def test_delete_on_a_read_only_folder_removes_the_row_and_recovery_the_file(tmp_path, model, cat):
    files_dir = tmp_path / "data" / "files"
    with make_client(tmp_path, model) as c:
        upload_id = c.post("/api/v1/uploads", files=files(cat)).json()["id"]
        ro = subprocess.run(["mount", "--bind", "-o", "ro", str(files_dir), str(files_dir)],
                            capture_output=True)
        if ro.returncode != 0:
            pytest.skip("cannot bind-mount read-only here (needs root with CAP_SYS_ADMIN)")
        try:
            assert c.delete(f"/api/v1/uploads/{upload_id}").status_code == 204
            assert c.get(f"/api/v1/uploads/{upload_id}").status_code == 404
            assert any(p.is_file() for p in files_dir.rglob("*"))  # the file could not go yet
        finally:
            _umount(files_dir)
    with make_client(tmp_path, model) as c:
        assert c.get("/api/v1/uploads").json()["total"] == 0
    assert not any(p.is_file() for p in files_dir.rglob("*"))  # recovery removed it


def test_serve_refuses_a_read_only_data_folder_before_serving(tmp_path):
    disk = tmp_path / "ro"
    if not _mount_tmpfs(disk, "1m", readonly=True):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        result = CliRunner().invoke(main, ["serve", "--data", str(disk / "data"), "--port", "0"])
    finally:
        _umount(disk)
    assert result.exit_code == 2
    assert "serving" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write to the data folder" in lines[0]


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "without a token" in result.output and "serving" not in result.output
    short = CliRunner().invoke(main, ["serve", "--token", "abc", "--data", str(tmp_path)])
    assert short.exit_code == 2 and "too short" in short.output


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port), "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and f"port {port}" in result.output
    assert "already in use" in result.output and "serving" not in result.output


# -- a real server: time, memory and sockets ------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    server = launch.start(root / "data", "--allow", "squirrel", "--workers", "2",
                          "--header-timeout", "1", "--body-timeout", "2",
                          "--max-connections", "24", log=root / "server.log", wait_s=180)
    try:
        yield server
    finally:
        server.stop()


def _vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure (VmRSS, VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def test_health_answers_while_heavy_requests_run(live):
    """Before: lab/learn ran on the event loop (500,000 points x 5,000 steps froze every
    request for 52 s). Now the lab's largest fit, a bomb-sized PNG and a PCA job run on worker
    threads while /health keeps answering."""
    http = httpx.Client(base_url=live.url, timeout=180, trust_env=False)
    huge = ",".join(["1"] * 20_000)  # (500,000 are refused sooner, by the form parser: > 1 MB)
    r = http.post("/api/v1/lab/learn", data={"x": huge, "y": huge, "steps": 5000})
    assert r.status_code == 400 and "at most 10,000" in r.json()["detail"]
    for i in range(3):  # PCA learns from stored uploads
        http.post("/api/v1/uploads?confirm=true", files={"file": (
            f"{i}.jpg", jpeg(np.roll(skdata.astronaut(), 40 * i, axis=1)), "image/jpeg")})
    finished: dict[str, float] = {}
    statuses: dict[str, list[int]] = {"learn": [], "bomb": [], "pca": []}
    bomb = bomb_png()
    most = ",".join(str(i % 97) for i in range(10_000))

    def learn():
        for _ in range(4):
            statuses["learn"].append(http.post("/api/v1/lab/learn", data={
                "x": most, "y": most, "steps": 5000, "lr": 1e-6}).status_code)
        finished["learn"] = time.monotonic()

    def check_bomb():
        statuses["bomb"].append(http.post("/api/v1/check", files={
            "file": ("bomb.png", bomb, "image/png")}).status_code)
        finished["bomb"] = time.monotonic()

    heavy = [threading.Thread(target=learn), threading.Thread(target=check_bomb)]
    for t in heavy:
        t.start()
    job = http.post("/api/v1/lab/pca", data={"k": 2, "size": 128}).json()
    latencies, answered = [], []
    while any(t.is_alive() for t in heavy):
        asked = time.monotonic()
        assert http.get("/api/v1/health").status_code == 200
        answered.append(time.monotonic())
        latencies.append(answered[-1] - asked)
    for t in heavy:
        t.join()
    statuses["pca"].append(http.get(f"/api/v1/jobs/{job['id']}").status_code)
    http.close()
    assert statuses == {"learn": [200] * 4, "bomb": [200], "pca": [200]}
    assert answered[0] < finished["learn"] and answered[0] < finished["bomb"]
    assert len(latencies) >= 5
    # Within 200 ms (the bound that failed by seconds before); one slow answer in twenty is
    # allowed for a machine that is itself busy with other work.
    slow = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    assert slow < 0.2 and max(latencies) < 1.0, f"/health took {slow:.3f} s (95th), " \
        f"{max(latencies):.3f} s (max)"


def test_four_bomb_pngs_at_once_stay_under_1_5_gb(live):
    bomb = bomb_png()
    results = []

    def check():
        with httpx.Client(base_url=live.url, timeout=180, trust_env=False) as http:
            results.append(http.post("/api/v1/check",
                                     files={"file": ("bomb.png", bomb, "image/png")}))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    # Each waits its turn in the memory budget (or, past its wait, is told to come back).
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, [r.text for r in results]
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error"] == "busy"
    peak = _vm(live.pid, "VmHWM")
    assert peak < 1.5 * 2**30, f"server peak RSS {peak / 2**20:.0f} MB"


def _half_sent(port: int, n: int, payload: bytes) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(payload)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket, wait_s: float) -> bytes | None:
    """What the server sent before closing (b"" for a bare close), or None if still open."""
    s.settimeout(wait_s)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        return got


def test_slow_headers_are_timed_out(live):
    socks = _half_sent(live.port, 20, b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        answers = [_closed_by_server(s, 20) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(a is not None for a in answers), "some half-sent requests were never closed"
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers if a)
    assert httpx.get(live.url + "/api/v1/health", trust_env=False).status_code == 200


def test_a_slow_body_is_timed_out(live):
    (s,) = _half_sent(live.port, 1, b"POST /api/v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: multipart/form-data; boundary=x\r\n"
                                    b"Content-Length: 100000\r\n\r\n--x\r\n")
    try:
        answer = _closed_by_server(s, 30)
    finally:
        s.close()
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer


def test_open_connections_are_capped(live):
    socks = _half_sent(live.port, 40, b"")
    try:
        closed = sum(_closed_by_server(s, 0.5) is not None for s in socks[24:])
        still_open = sum(_closed_by_server(s, 0.05) is None for s in socks[:20])
    finally:
        for s in socks:
            s.close()
    assert closed >= 14, f"only {closed} of the 16 connections over the cap were closed"
    assert still_open >= 15
    assert httpx.get(live.url + "/api/v1/health", trust_env=False).status_code == 200

"""The HTTP API with FastAPI's test client: every endpoint and every error status."""

from __future__ import annotations

import io
import random
import re
import threading
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import belka
from belka.server import ServerConfig, create_app

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def model():
    return belka.load()


def jpeg(array: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg(skdata.chelsea())


@pytest.fixture()
def client(tmp_path, model):
    config = ServerConfig(data_dir=tmp_path / "data", allow="cat", max_upload_bytes=2 * 2**20,
                          workers=2)
    with TestClient(create_app(config, model=model)) as c:
        yield c


def files(data: bytes, name: str = "photo.jpg", type_: str = "image/jpeg"):
    return {"file": (name, data, type_)}


def test_health(client):
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["model"] == "efficientnet_lite0"
    assert body["allow"] == "cat" and body["uploads"] == 0


def test_classify(client, cat):
    r = client.post("/api/v1/classify?top=3", files=files(cat))
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == 3 and preds[0]["index"] in range(281, 286)


def test_check_accepts_with_heatmap(client, cat):
    r = client.post("/api/v1/check", files=files(cat))
    assert r.status_code == 200
    body = r.json()
    assert body["verdict"] == "accept" and body["score"] > 0.9
    assert len(body["predictions"]) == 5
    png = client.get(body["heatmap"]["overlay_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(png.content))
    assert overlay.size == (451, 300)  # the heat map comes back at the photo's own size


def test_check_warns_for_other_allow(client, cat):
    body = client.post("/api/v1/check?allow=squirrel&heatmap=false", files=files(cat)).json()
    assert body["verdict"] == "warn"
    assert body["message"].startswith("this does not look like a squirrel")


def test_explain_sync_and_background(client, cat, wait_for_job):
    r = client.post("/api/v1/explain", files=files(cat), data={"method": "gradcam",
                                                              "class": "tiger cat"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "tiger cat" and body["method"] == "gradcam"
    assert client.get(body["heatmap_url"]).status_code == 200
    r = client.post("/api/v1/explain", files=files(cat), data={"background": "true"})
    assert r.status_code == 202
    status = wait_for_job(client, r.json()["id"])
    assert status["status"] == "done", status
    assert client.get(status["result_url"]).json()["label"]


def test_explain_unknown_method_is_400(client, cat):
    r = client.post("/api/v1/explain", files=files(cat), data={"method": "magic"})
    assert r.status_code == 400 and "magic" in r.json()["detail"]


def test_upload_lifecycle(client, cat):
    r = client.post("/api/v1/uploads", files=files(cat, "../../etc/passwd"))
    assert r.status_code == 201, r.text
    record = r.json()
    assert record["stored"] and record["verdict"] == "accept"
    # The client's file name is kept as text only; the file on disk is named by content hash.
    again = client.post("/api/v1/uploads", files=files(cat, "copy.jpg"))
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["id"] == record["id"]
    listing = client.get("/api/v1/uploads").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == record["id"]
    assert client.get(f"/api/v1/uploads/{record['id']}").json()["sha256"] == record["sha256"]
    image = client.get(f"/api/v1/uploads/{record['id']}/image")
    assert image.status_code == 200 and image.content == cat
    thumb = client.get(f"/api/v1/uploads/{record['id']}/image?thumbnail=true")
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 256
    assert client.delete(f"/api/v1/uploads/{record['id']}").status_code == 204
    assert client.get(f"/api/v1/uploads/{record['id']}").status_code == 404
    assert client.delete(f"/api/v1/uploads/{record['id']}").status_code == 404


def test_warned_upload_needs_confirm(client):
    cup = jpeg(skdata.coffee())
    r = client.post("/api/v1/uploads", files=files(cup))
    assert r.status_code == 409
    assert r.json()["verdict"] == "warn" and r.json()["stored"] is False
    assert client.get("/api/v1/uploads").json()["total"] == 0
    r = client.post("/api/v1/uploads?confirm=true", files=files(cup))
    assert r.status_code == 201 and r.json()["verdict"] == "warn"


def test_pagination(client):
    rng = np.random.default_rng(0)
    for i in range(5):
        data = jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        assert client.post("/api/v1/uploads?confirm=true", files=files(data)).status_code == 201
    page = client.get("/api/v1/uploads?offset=2&limit=2").json()
    assert page["total"] == 5 and len(page["items"]) == 2
    ids = [it["id"] for it in client.get("/api/v1/uploads?limit=100").json()["items"]]
    assert ids == sorted(ids, reverse=True)
    assert client.get("/api/v1/uploads?limit=1000").status_code == 422


def test_errors_are_json_with_the_right_status(client, cat):
    # 415: not an image.
    r = client.post("/api/v1/check", files=files(b"hello, I am text\n", "notes.txt", "text/plain"))
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    # 422: a truncated JPEG.
    r = client.post("/api/v1/check", files=files(cat[: len(cat) // 2]))
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    # 422: an empty file.
    assert client.post("/api/v1/classify", files=files(b"")).status_code == 422
    # 413: over the configured body limit (2 MB here).
    r = client.post("/api/v1/check", files=files(b"\xff" * (3 * 2**20)))
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # 422: no file at all; 400: unknown class.
    assert client.post("/api/v1/check").status_code == 422
    r = client.post("/api/v1/check?allow=squirel", files=files(cat))
    assert r.status_code == 400 and "squirrel" in r.json()["detail"]
    assert client.get("/api/v1/uploads/999").status_code == 404
    assert client.get("/api/v1/png/nope").status_code == 404


def test_openapi_and_pages(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/classify", "/api/v1/check", "/api/v1/explain", "/api/v1/uploads",
                 "/api/v1/uploads/{upload_id}", "/api/v1/health"):
        assert path in schema["paths"]
    for page in ("/", "/gallery", "/explain"):
        r = client.get(page)
        assert r.status_code == 200 and "belka" in r.text
    assert "block6a_expand_conv" in client.get("/explain").text


def test_docs_work_offline(client):
    """/docs (Swagger UI) and /redoc load their scripts, styles and icon from this server, not
    from a CDN: they work on a machine with no network."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
        assert any(u.endswith(".js") for u in urls), urls
        if page == "/docs":
            assert any(u.endswith(".css") for u in urls), urls
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page}: {url} is not local"
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert "/openapi.json" in r.text


# -- many requests at once -----------------------------------------------------------------
THREADS = 6
PER_THREAD = 6


def noise_jpeg(seed: int) -> bytes:
    return jpeg(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_concurrent_mixed_requests_match_serial_answers(client, cat):
    """36 mixed requests (check, classify, uploads POST and GET, health) from 6 threads at once:
    every answer is a 2xx with the same content as the same request made alone, identical
    uploads racing each other are stored once, and nothing answers 500."""
    cup = jpeg(skdata.coffee())
    noise = [noise_jpeg(1), noise_jpeg(2)]

    # The answers to compare with, one request at a time.
    def check_of(data, heatmap):
        r = client.post(f"/api/v1/check?heatmap={str(heatmap).lower()}", files=files(data))
        assert r.status_code == 200, r.text
        return r.json()

    serial_check = {("cat", False): check_of(cat, False), ("cup", False): check_of(cup, False)}
    serial_classify = {}
    for name, data in (("cat", cat), ("cup", cup)):
        r = client.post("/api/v1/classify?top=3", files=files(data))
        assert r.status_code == 200, r.text
        serial_classify[name] = r.json()["predictions"]
    assert serial_check[("cat", False)]["verdict"] == "accept"
    assert serial_check[("cup", False)]["verdict"] == "warn"
    assert client.get("/api/v1/uploads").json()["total"] == 0

    images = {"cat": cat, "cup": cup, "noise0": noise[0], "noise1": noise[1]}
    jobs: list[tuple[str, str, object]] = []  # (kind, image name or "", request)
    for i in range(8):  # checks: two with their heat map
        name, heatmap = ("cat", "cup")[i % 2], i < 2
        jobs.append(("check", name, lambda c, n=name, h=heatmap: c.post(
            f"/api/v1/check?heatmap={str(h).lower()}", files=files(images[n]))))
    for i in range(6):
        name = ("cat", "cup")[i % 2]
        jobs.append(("classify", name, lambda c, n=name: c.post(
            "/api/v1/classify?top=3", files=files(images[n]))))
    # Uploads: the same cat four times at once (accepted), the same cup twice and two distinct
    # noise pictures (warned: confirmed).
    for name in ("cat", "cat", "cat", "cat", "cup", "cup", "noise0", "noise1"):
        query = "" if name == "cat" else "?confirm=true"
        jobs.append(("upload", name, lambda c, n=name, q=query: c.post(
            f"/api/v1/uploads{q}", files=files(images[n], f"{n}.jpg"))))
    for _ in range(8):
        jobs.append(("list", "", lambda c: c.get("/api/v1/uploads?limit=100")))
    for _ in range(6):
        jobs.append(("health", "", lambda c: c.get("/api/v1/health")))
    assert len(jobs) == THREADS * PER_THREAD
    random.Random(6).shuffle(jobs)

    answers: list[tuple[str, str, object]] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(mine):
        start.wait(60)
        for kind, name, call in mine:
            try:
                answer = call(client)
            except Exception as err:  # the test client re-raises the server's exceptions
                answer = err
            with lock:
                answers.append((kind, name, answer))

    threads = [threading.Thread(target=worker, args=(jobs[k::THREADS],), daemon=True)
               for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(answers) == len(jobs)
    failed = [(kind, name, a if isinstance(a, Exception) else f"{a.status_code} {a.text[:300]}")
              for kind, name, a in answers
              if isinstance(a, Exception) or not 200 <= a.status_code < 300]
    assert not failed, failed

    upload_ids: dict[str, set[int]] = {}
    created = Counter()
    for kind, name, r in answers:
        body = r.json()
        if kind == "check":
            expected = serial_check[(name, False)]
            assert body["verdict"] == expected["verdict"], (name, body["message"])
            assert body["score"] == pytest.approx(expected["score"], rel=1e-4, abs=1e-6)
            assert [p["index"] for p in body["predictions"][:3]] == \
                [p["index"] for p in expected["predictions"][:3]]
            if "heatmap" in body:
                png = client.get(body["heatmap"]["overlay_url"])
                assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        elif kind == "classify":
            expected = serial_classify[name]
            assert [p["index"] for p in body["predictions"]] == [p["index"] for p in expected]
            for got, want in zip(body["predictions"], expected):
                assert got["probability"] == pytest.approx(want["probability"], rel=1e-4, abs=1e-6)
        elif kind == "upload":
            assert body["stored"] is True and r.status_code in (200, 201)
            assert body["duplicate"] is (r.status_code == 200)
            assert body["verdict"] == ("accept" if name == "cat" else "warn")
            upload_ids.setdefault(name, set()).add(body["id"])
            created[name] += r.status_code == 201
        elif kind == "list":
            assert 0 <= body["total"] <= len(images) and len(body["items"]) == body["total"]
            ids = [item["id"] for item in body["items"]]
            assert ids == sorted(ids, reverse=True)
        else:
            assert body["status"] == "ok" and 0 <= body["uploads"] <= len(images)

    # Identical bytes sent at the same time: stored once, every answer names that one record.
    assert all(len(ids) == 1 for ids in upload_ids.values()), upload_ids
    assert created == Counter({name: 1 for name in images}), created
    listing = client.get("/api/v1/uploads?limit=100").json()
    assert listing["total"] == len(images) == client.get("/api/v1/health").json()["uploads"]
    for name, (upload_id,) in upload_ids.items():
        r = client.get(f"/api/v1/uploads/{upload_id}/image")
        assert r.status_code == 200 and r.content == images[name], name


def test_a_tile_that_decided_is_what_the_heat_map_explains(tmp_path, model, photos_dir):
    """The Upload page said "Looks like a squirrel" over a heat map of the whole park-bench
    photo: when a tile decided, the heat map is of that tile, in its box, and its probability
    is the gate's score for it."""
    config = ServerConfig(data_dir=tmp_path / "data", allow="squirrel", workers=2)
    data = (photos_dir / "squirrel" / "cjmcdd_squirrel1.jpg").read_bytes()
    with TestClient(create_app(config, model=model)) as c:
        body = c.post("/api/v1/check", files=files(data)).json()
        assert body["verdict"] == "accept" and body["tile"] is not None
        assert body["predictions"][0]["label"] == "park bench"   # the whole photo's top guess
        heat = body["heatmap"]
        assert heat["tile"] == body["tile"]
        assert heat["probability"] == pytest.approx(body["score"], abs=1e-4)
        overlay = Image.open(io.BytesIO(c.get(heat["overlay_url"]).content))
        grey = np.asarray(Image.open(io.BytesIO(c.get(heat["heatmap_url"]).content)))
    x0, y0, x1, y1 = heat["tile"]
    scale = overlay.size[0] / 1024  # the photo is 1024 px wide; drawn at most 1024
    inside = grey[int(y0 * scale) + 4:int(y1 * scale) - 4, int(x0 * scale) + 4:int(x1 * scale) - 4]
    outside = grey.copy()
    outside[int(y0 * scale):int(y1 * scale), int(x0 * scale):int(x1 * scale)] = 0
    assert inside.max() >= 250 and outside.max() == 0

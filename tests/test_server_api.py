"""The HTTP API with FastAPI's test client: every endpoint and every error status."""

from __future__ import annotations

import io

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


def test_explain_sync_and_background(client, cat):
    r = client.post("/api/v1/explain", files=files(cat), data={"method": "gradcam",
                                                              "class": "tiger cat"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "tiger cat" and body["method"] == "gradcam"
    assert client.get(body["heatmap_url"]).status_code == 200
    r = client.post("/api/v1/explain", files=files(cat), data={"background": "true"})
    assert r.status_code == 202
    job_id = r.json()["id"]
    for _ in range(600):
        status = client.get(f"/api/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed", "cancelled"):
            break
        import time
        time.sleep(0.05)
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
    assert client.get("/docs").status_code == 200
    for page in ("/", "/gallery", "/explain"):
        r = client.get(page)
        assert r.status_code == 200 and "belka" in r.text
    assert "block6a_expand_conv" in client.get("/explain").text

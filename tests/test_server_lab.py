"""The web app's lab endpoints against the library they wrap."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import belka
from belka.ops.filters import convolve, kernel
from belka.server import ServerConfig, create_app

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("lab"), allow="cat", workers=1)
    with TestClient(create_app(config, model=belka.load())) as c:
        yield c


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def fetch(client, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(url).content)).convert("RGB"))


def test_filter_equals_the_library(client):
    image = skdata.astronaut()[::2, ::2].copy()
    r = client.post("/api/v1/lab/filter", files={"file": ("a.png", png(image))},
                    data={"kernel": "gaussian-blur", "padding": "reflect"})
    assert r.status_code == 200, r.text
    expected = convolve(image, kernel("gaussian-blur"), padding="reflect")
    np.testing.assert_array_equal(fetch(client, r.json()["url"]), expected)
    bad = client.post("/api/v1/lab/filter", files={"file": ("a.png", png(image))},
                      data={"kernel": "[[1,2],[3]]"})
    assert bad.status_code == 400 and "ragged" in bad.json()["detail"]


def test_transform_reports_the_dommatrix(client):
    image = np.zeros((150, 200, 3), np.uint8)
    r = client.post("/api/v1/lab/transform", files={"file": ("a.png", png(image))},
                    data={"css": "rotate(90deg) translateX(100px)"})
    assert r.status_code == 200, r.text
    assert r.json()["m"] == [0, 1, 0, 0, -1, 0, 0, 0, 0, 0, 1, 0, 0, 100, 0, 1]
    bad = client.post("/api/v1/lab/transform", files={"file": ("a.png", png(image))},
                      data={"css": "skewX(1)"})
    assert bad.status_code == 400 and "angle" in bad.json()["detail"]


def test_learn_reaches_the_article_line(client):
    r = client.post("/api/v1/lab/learn", data={"x": "1,2,3,4", "y": "7,9,11,13", "steps": 1000})
    body = r.json()
    assert abs(body["a"] - 2) < 1e-3 and abs(body["b"] - 5) < 1e-3
    assert len(body["trace"]) == 1000 and body["trace"][-1]["loss"] < body["trace"][0]["loss"]


def test_pca_needs_photos_then_reconstructs(client, wait_for_job):
    assert client.post("/api/v1/lab/pca").status_code == 400
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(4):
        data = png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        ids.append(client.post("/api/v1/uploads?confirm=true",
                               files={"file": ("r.png", data)}).json()["id"])
    job = client.post("/api/v1/lab/pca", data={"k": 3, "size": 16}).json()
    status = wait_for_job(client, job["id"])
    assert status["status"] == "done", status
    r = client.get(f"/api/v1/lab/pca/reconstruct?upload_id={ids[0]}&k=3")
    assert r.status_code == 200 and fetch(client, r.json()["url"]).shape == (16, 16, 3)
    assert client.get("/lab").status_code == 200

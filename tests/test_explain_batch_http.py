"""Several files explained as one background job over HTTP (belka.server.explain_batch).

The handler is tested on the real app with a route added here, and through the public route
(``POST /api/v1/explain`` with several ``files`` parts)."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
import pytest
from fastapi import File, Form, Request, UploadFile
from fastapi.testclient import TestClient
from PIL import Image

import belka
from belka.server import ServerConfig, create_app
from belka.server.explain_batch import MAX_FILES, explain_files

skdata = pytest.importorskip("skimage.data")
ROUTE = "/api/v1/test-explain-files"


@pytest.fixture(scope="module")
def model():
    return belka.load()


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture()
def client(tmp_path, model):
    app = create_app(ServerConfig(data_dir=tmp_path / "data", allow="cat", workers=2),
                     model=model)

    async def route(request: Request, files: Annotated[list[UploadFile], File()],
                    method: Annotated[str, Form()] = "gradcam",
                    layer: Annotated[str | None, Form()] = None,
                    target: Annotated[str | None, Form(alias="class")] = None):
        return await explain_files(request, files, method, layer, target)

    app.add_api_route(ROUTE, route, methods=["POST"])
    with TestClient(app) as c:
        yield c


def parts(*named: tuple[str, bytes]):
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


def test_several_files_one_job(client, model, wait_for_job):
    cat, coffee = jpeg(skdata.chelsea()), jpeg(skdata.coffee())
    r = client.post(ROUTE, files=parts(("cat.jpg", cat), ("junk.jpg", b"nope"),
                                       ("coffee.jpg", coffee)), data={"class": ""})
    assert r.status_code == 202, r.text
    status = wait_for_job(client, r.json()["id"])
    assert status["status"] == "done" and status["done"] == status["total"] == 3
    answer = client.get(status["result_url"]).json()
    assert answer["count"] == 3 and answer["failed"] == 1 and answer["layer"] == "top_activation"
    items = answer["items"]
    assert [i["filename"] for i in items] == ["cat.jpg", "junk.jpg", "coffee.jpg"]
    assert "error" in items[1] and "error" not in items[0]
    assert items[0]["classes"][0] in range(281, 286) and items[2]["label"] == "espresso"
    alone = belka.explain(model, cat)                 # the same bytes, decoded the same way
    assert items[0]["probability"] == pytest.approx(alone.probability, abs=1e-3)
    assert set(items[0]["stats"]) == {"peak_xy", "centroid_xy", "mean", "area", "spread"}
    picture = client.get(items[0]["overlay_url"])
    assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(picture.content)) as im:
        assert im.size == (451, 300)                 # chelsea is under the display size


def test_method_layer_and_class_are_checked_before_the_job(client):
    cat = jpeg(skdata.chelsea())
    for data, fragment in (({"method": "gradcan"}, "unknown explanation method"),
                           ({"layer": "top_activaton"}, "unknown layer"),
                           ({"class": "not a class"}, "not a class")):
        r = client.post(ROUTE, files=parts(("cat.jpg", cat)), data=data)
        assert r.status_code == 400 and fragment in r.json()["detail"], r.text
    r = client.post(ROUTE, files=parts(*[(f"{i}.jpg", b"x") for i in range(MAX_FILES + 1)]))
    assert r.status_code == 400 and "at most" in r.json()["detail"]
    assert client.get("/api/v1/jobs").json()["items"] == []


def test_a_group_target_and_another_method(client, wait_for_job):
    r = client.post(ROUTE, files=parts(("a.jpg", jpeg(skdata.chelsea())),
                                       ("b.jpg", jpeg(skdata.chelsea()[:, ::-1].copy()))),
                    data={"class": "cat", "method": "layercam"})
    status = wait_for_job(client, r.json()["id"])
    answer = client.get(status["result_url"]).json()
    assert [i["label"] for i in answer["items"]] == ["cat", "cat"]
    assert answer["method"] == "layercam"


def test_public_route_takes_several_files(tmp_path, model, wait_for_job):
    app = create_app(ServerConfig(data_dir=tmp_path / "data", allow="cat"), model=model)
    with TestClient(app) as client:
        r = client.post("/api/v1/explain", files=parts(("a.jpg", jpeg(skdata.chelsea())),
                                                       ("b.jpg", jpeg(skdata.coffee()))))
        assert r.status_code == 202, r.text
        status = wait_for_job(client, r.json()["id"])
        answer = client.get(status["result_url"]).json()
        assert [i["filename"] for i in answer["items"]] == ["a.jpg", "b.jpg"]


def test_the_public_route_says_what_to_send(tmp_path, model):
    app = create_app(ServerConfig(data_dir=tmp_path / "data", allow="cat"), model=model)
    with TestClient(app) as client:
        r = client.post("/api/v1/explain", data={"method": "gradcam"})
        assert r.status_code == 400 and "'file'" in r.json()["detail"]
        both = [("file", ("a.jpg", jpeg(skdata.chelsea()), "image/jpeg")),
                ("files", ("b.jpg", jpeg(skdata.coffee()), "image/jpeg"))]
        r = client.post("/api/v1/explain", files=both)
        assert r.status_code == 400 and "not both" in r.json()["detail"]

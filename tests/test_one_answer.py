"""One file, one answer: the same photo gets the same numbers from the CLI (`belka classify`,
`belka check`), the Python API (`model.classify`, `model.check`, `belka.scan.scan`) and the HTTP
API (`/api/v1/classify`, `/api/v1/check`). The browser's answers are compared with
`belka check --json` in tests/test_web_export.py.

The photos include the two of issue 15 that used to differ between interfaces: the folder scan
behind `belka classify` decoded large JPEGs at a reduced scale (JPEG draft mode) while
everything else decoded every pixel. The demo's photo must say what the demo said.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import belka
from belka.gate import Gate
from belka.scan import scan
from belka.server import ServerConfig, create_app

PHOTOS = ["squirrel/cjmcdd_squirrel1.jpg", "squirrel/cjmcdd_squirrel13.jpg",
          "squirrel/eli_n02356798_fox_squirrel.jpg", "cat/coral_cat_720p.jpg",
          "other/coral_bird.png"]
TOL = 2e-6   # the CLI and the HTTP API round probabilities to 6 decimals


def _cli(*args: str) -> list[dict]:
    """Run the installed `belka` command; JSON lines back (exit codes 0 and 3 are answers)."""
    exe = Path(sys.executable).with_name("belka")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
    assert done.returncode in (0, 3), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def paths(photos_dir) -> list[str]:
    return [str(photos_dir / p) for p in PHOTOS]


@pytest.fixture(scope="module")
def python_answers(model, paths):
    """The Python API's answers; computed first, so the ONNX export is cached for the CLI."""
    probs = model.probabilities(paths)
    checks = Gate(model).check_many(paths)
    return probs, checks


@pytest.fixture(scope="module")
def http(model, tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("one-answer") / "data",
                          allow="squirrel", workers=1)
    with TestClient(create_app(config, model=model)) as client:
        yield client


def _post(client, route: str, path: str) -> dict:
    with open(path, "rb") as f:
        r = client.post(route, files={"file": (Path(path).name, f.read(), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def _same_predictions(got: list[dict], probs: np.ndarray, where: str) -> None:
    want = np.argsort(-probs, kind="stable")[:len(got)]
    assert [p["index"] for p in got] == want.tolist(), where
    np.testing.assert_allclose([p["probability"] for p in got], probs[want], atol=TOL,
                               err_msg=where)


def test_classify_gives_one_answer_in_every_interface(model, paths, python_answers, http):
    probs, _ = python_answers
    cli = _cli("classify", "--json", "--top", "5", *paths)
    scanned = list(scan(model, paths, progress=False))
    assert [c["path"] for c in cli] == paths
    for i, path in enumerate(paths):
        name = Path(path).name
        # the folder scan (belka classify's path) decodes every pixel, like model.probabilities
        np.testing.assert_array_equal(scanned[i].probabilities, probs[i], err_msg=name)
        _same_predictions(cli[i]["predictions"], probs[i], f"CLI {name}")
        _same_predictions(_post(http, "/api/v1/classify", path)["predictions"], probs[i],
                          f"HTTP {name}")
        ranked = model.classify(path, top=5)
        _same_predictions([p.to_dict() for p in ranked], probs[i], f"model.classify {name}")


def test_check_gives_one_answer_in_every_interface(model, paths, python_answers, http):
    _, checks = python_answers
    cli = _cli("check", "--json", *paths)
    for i, path in enumerate(paths):
        name, want = Path(path).name, checks[i].to_dict()
        for where, got in (("CLI", cli[i]),
                           ("HTTP", _post(http, "/api/v1/check?heatmap=false", path)),
                           ("model.check", model.check(path).to_dict())):
            assert got["verdict"] == want["verdict"], f"{where} {name}"
            assert got["tile"] == want["tile"], f"{where} {name}"
            assert abs(got["score"] - want["score"]) <= TOL, f"{where} {name}"
            assert [p["index"] for p in got["predictions"]] == \
                [p["index"] for p in want["predictions"]], f"{where} {name}"


def test_the_issue_15_photo_says_the_same_in_classify_and_check(model, paths, python_answers):
    """cjmcdd_squirrel1.jpg: `belka classify` used to say park bench 23.1% / fox squirrel 6.3%
    (draft decode) while `belka check` and model.classify said 41.9% / 3.6% (full decode)."""
    probs, checks = python_answers
    cli = _cli("classify", "--json", "--top", "1", paths[0])[0]["predictions"][0]
    top = checks[0].predictions[0]
    assert (cli["index"], cli["probability"]) == (top.index, round(top.probability, 6))
    assert cli["index"] == int(np.argmax(probs[0]))


def test_the_fast_decode_is_opt_in_and_differs(model, paths):
    """--fast-decode (draft) is an explicit option: it gives other pixels, hence other numbers,
    on a large JPEG (which is why it is not the default)."""
    full = next(iter(scan(model, paths[:1], progress=False))).probabilities
    fast = next(iter(scan(model, paths[:1], progress=False, draft=True))).probabilities
    assert np.abs(full - fast).max() > 1e-3


def test_the_demo_photo_says_what_the_demo_said(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([str(Path(sys.executable).with_name("belka")), "demo", "-o", str(out)],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    original = resources.files("belka").joinpath("data/chelsea.jpg").read_bytes()
    assert (out / "photo.jpg").read_bytes() == original   # not re-encoded
    report = json.loads((out / "report.json").read_text())
    again = _cli("classify", "--json", str(out / "photo.jpg"))[0]["predictions"]
    assert [p["index"] for p in again] == [p["index"] for p in report["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in again],
                               [p["probability"] for p in report["predictions"]], atol=TOL)

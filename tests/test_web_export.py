"""`belka export web`: the gate in the browser gives the same answers as `belka check --json`.

* The exported graph (normalisation, softmax, the allowed score, a head and its novelty floor
  inside) gives the Python gate's numbers when ONNX Runtime runs it here.
* In real Chromium (Debian's, driven by Playwright; never a downloaded browser), an exported
  folder served by a local static server with the COOP/COEP headers checks every shared photo:
  the verdict and the deciding tile equal `belka check --json`'s, |score difference| <= 1e-4,
  the top-5 indices are equal; the decoded pixels of every photo, and the views the browser
  builds (Pillow's resampling, tiles), are Python's byte for byte. The same with a head trained here, on a subset.
* fp16 halves the model and keeps the top-1; a missing runtime says what to run.

The browser part is skipped with the reason when Playwright or Chromium is missing (a failure
under CI, as in tests/test_server_e2e.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import belka
from belka import heads, images
from belka.errors import UsageError
from belka.gate import Gate
from belka.web import export, export_web, serve

CHROMIUM = os.environ.get("BELKA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--no-proxy-server"]
SCORE_TOL = 1e-4
TIMEOUT_MS = 300_000
# Photos whose views are compared byte for byte (JPEG 4:2:0 and 4:4:4 sizes, PNG, EXIF-free
# small and large, portrait and landscape).
PIXEL_PHOTOS = ["squirrel/cjmcdd_squirrel1.jpg", "squirrel/eli_n02356798_fox_squirrel.jpg",
                "cat/coral_cat_720p.jpg", "cat/coral_imprinting_cat_train_0.png",
                "other/coral_bird.png", "mixed/d2l_catdog.jpg"]


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


def _need_browser() -> None:
    why = _browser_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {why}", pytrace=False)
        pytest.skip(f"browser test skipped: {why}")


@pytest.fixture(scope="module")
def runtime() -> Path:
    try:
        return export.find_runtime()
    except UsageError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def model():
    return belka.load()


@pytest.fixture(scope="module")
def photo_files(photos_dir) -> list[str]:
    with open(photos_dir / "manifest.csv", newline="") as f:
        return [row["file"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def site(tmp_path_factory, model, runtime, photos_dir):
    """A static server (COOP/COEP headers) over a folder of exports, photos under /photos/."""
    root = tmp_path_factory.mktemp("web")
    export_web(root / "fp32", Gate(model))
    server = serve.start(root, mounts={"/photos/": photos_dir})
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def head_file(tmp_path_factory, model, photos_dir) -> Path:
    """A head trained here on the shared photos (squirrel, cat, other), whole images only."""
    photos = heads.read_folder(photos_dir, ["squirrel", "cat", "other"])
    options = heads.TrainOptions(epochs=15, folds=3, tiling=None)
    result = heads.train(model, photos, options, progress=False)
    return result.head.save(tmp_path_factory.mktemp("head") / "squirrel.belka")


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_gate(browser, url: str):
    """A page on an export's demo, with its gate loaded (window.belka); JS errors collected."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_function("document.documentElement.dataset.belka", timeout=TIMEOUT_MS)
    assert page.evaluate("document.documentElement.dataset.belka") == "ready", \
        page.inner_text("#error")
    return page, errors


def browser_checks(page, files: list[str]) -> list[dict]:
    return page.evaluate("""async (files) => {
        const out = [];
        for (const f of files) out.push(await window.belka.check('/photos/' + f));
        return out;
    }""", files)


def cli_check(photos_dir: Path, files: list[str], *extra: str) -> dict[str, dict]:
    exe = Path(sys.executable).with_name("belka")
    done = subprocess.run([str(exe), "check", "--json", *extra,
                           *[str(photos_dir / f) for f in files]],
                          capture_output=True, text=True, timeout=1200, env=os.environ.copy())
    assert done.returncode in (0, 3), done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {str(Path(r["path"]).relative_to(photos_dir)): r for r in records}


def assert_same_answers(web: list[dict], cli: dict[str, dict], files: list[str]) -> float:
    """Every photo: same verdict, tile and top-5 indices, score within SCORE_TOL. Returns the
    largest score difference."""
    worst = 0.0
    for f, got in zip(files, web):
        want = cli[f]
        assert got["verdict"] == want["verdict"], f
        assert got["box"] == want["tile"] == got["tile"], f
        assert [p["index"] for p in got["predictions"]] == \
            [p["index"] for p in want["predictions"]], f
        worst = max(worst, abs(got["score"] - want["score"]))
        assert abs(got["score"] - want["score"]) <= SCORE_TOL, (f, got["score"], want["score"])
    return worst


# -- the graph, run by ONNX Runtime here ------------------------------------------------------

def _graph_outputs(data: bytes, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probs, score = session.run(["probabilities", "score"], {"pixels": views})
    return probs, score


def test_the_graph_gives_the_python_gates_numbers(model, photos_dir):
    gate = Gate(model)
    data = export.build_graph(model, gate.allow_indices)
    for f in PIXEL_PHOTOS[:3]:
        image = images.decode(photos_dir / f)
        views, boxes = gate.views(image)
        probs, score = _graph_outputs(data, views)
        want = gate.check_decoded([image])[0]
        np.testing.assert_allclose(probs[0][[p.index for p in want.predictions]],
                                   [p.probability for p in want.predictions], atol=1e-5)
        best = int(np.argmax(score))
        assert abs(float(score[best]) - want.score) <= 1e-5
        assert boxes[best] == want.tile


def test_the_head_graph_gives_the_python_gates_numbers(model, head_file, photos_dir):
    head_model = belka.load(head=str(head_file))
    gate = Gate(head_model)
    data = export.build_graph(head_model, gate.allow_indices)
    for f in PIXEL_PHOTOS:
        image = images.decode(photos_dir / f)
        views, boxes = gate.views(image)
        probs, score = _graph_outputs(data, views)
        want = gate.check_decoded([image])[0]
        assert probs.shape[1] == len(head_model.labels)
        np.testing.assert_allclose(probs[0][[p.index for p in want.predictions]],
                                   [p.probability for p in want.predictions], atol=1e-5)
        assert abs(float(score.max()) - want.score) <= 1e-5, f


def test_policy_json_is_a_belka_policy(model, runtime, tmp_path):
    out = export_web(tmp_path / "web", Gate(model, allow="cat", threshold=0.3, tiles=False))
    from belka.calibrate import Policy

    policy = Policy.load(tmp_path / "web" / "policy.json")
    assert policy.allow == ["cat"] and policy.threshold == 0.3 and policy.tiles is False
    assert policy.weights_sha256 == model.weights_sha256
    gate = Gate(model, policy=policy)          # what `belka check --policy` does with it
    assert gate.threshold == 0.3 and gate.tiling is None
    raw = json.loads((tmp_path / "web" / "policy.json").read_text())
    assert raw["allow_indices"] == [int(i) for i in model.class_indices("cat")]
    assert raw["labels"] == model.labels and raw["belka_version"] == belka.__version__
    assert raw["model_sha256"] == hashlib.sha256(
        (tmp_path / "web" / "model.onnx").read_bytes()).hexdigest()
    assert {"belka.js", "index.html", "ort/ort-wasm-simd-threaded.wasm"} <= set(out.files)


def test_fp16_halves_the_model_and_keeps_the_top1(model, photos_dir, photo_files):
    gate = Gate(model)
    fp32 = export.build_graph(model, gate.allow_indices)
    fp16 = export.build_graph(model, gate.allow_indices, fp16=True)
    assert len(fp16) < 0.55 * len(fp32)
    views = np.stack([model.preprocessing.resize(images.decode(photos_dir / f))
                      for f in photo_files[::4]])
    p32, _ = _graph_outputs(fp32, views)
    p16, _ = _graph_outputs(fp16, views)
    agree = (p32.argmax(1) == p16.argmax(1)).mean()
    assert agree >= 0.95, agree
    assert np.abs(p32 - p16).max() < 0.05


def test_a_missing_runtime_says_what_to_run(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "runtime_dirs", lambda: [tmp_path / "nothing"])
    with pytest.raises(UsageError, match="make web-runtime"):
        export.find_runtime()
    with pytest.raises(UsageError, match="lacks"):
        export_web(tmp_path / "web", Gate(model), runtime=tmp_path)


# -- in the browser ---------------------------------------------------------------------------

def test_browser_views_are_pythons_byte_for_byte(browser, site, model, photos_dir,
                                                  photo_files):
    _, url = site
    page, errors = open_gate(browser, f"{url}/fp32/index.html")
    digests = page.evaluate("""async (files) => {
        const m = await import('./belka.js');
        const out = [];
        for (const f of files) {
            const image = await m.decode('/photos/' + f);
            const { batch, count } = window.belka.views(image);
            const digest = await crypto.subtle.digest('SHA-256', batch);
            out.push([count, Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, '0')).join('')]);
        }
        return out;
    }""", PIXEL_PHOTOS)
    gate = Gate(model)
    for f, (count, digest) in zip(PIXEL_PHOTOS, digests):
        views, _ = gate.views(images.decode(photos_dir / f))
        assert count == len(views), f
        assert digest == hashlib.sha256(np.ascontiguousarray(views).tobytes()).hexdigest(), f
    # and the decoded pixels of every shared photo (JPEG decoder, EXIF, no colour management)
    decoded = page.evaluate("""async (files) => {
        const m = await import('./belka.js');
        const out = [];
        for (const f of files) {
            const image = await m.decode('/photos/' + f);
            const digest = await crypto.subtle.digest('SHA-256', image.data);
            out.push(Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, '0')).join(''));
        }
        return out;
    }""", photo_files)
    differ = [f for f, digest in zip(photo_files, decoded)
              if hashlib.sha256(images.decode(photos_dir / f).tobytes()).hexdigest() != digest]
    assert differ == []
    assert page.evaluate("crossOriginIsolated") is True    # the headers let it use threads
    assert page.evaluate("window.belka.threads") == 2
    assert not errors
    page.close()


def test_browser_checks_every_photo_as_belka_check(browser, site, photos_dir, photo_files):
    _, url = site
    page, errors = open_gate(browser, f"{url}/fp32/index.html")
    web = browser_checks(page, photo_files)
    page.close()
    cli = cli_check(photos_dir, photo_files)
    assert len(cli) == len(photo_files)
    worst = assert_same_answers(web, cli, photo_files)
    assert worst <= SCORE_TOL
    assert not errors
    # classify: the whole image's top-5, as the gate's predictions
    page, _ = open_gate(browser, f"{url}/fp32/index.html")
    top = page.evaluate("(f) => window.belka.classify('/photos/' + f, {top: 5})",
                        photo_files[0])
    page.close()
    assert [p["index"] for p in top] == [p["index"] for p in web[0]["predictions"]]


def test_browser_checks_with_a_head_as_belka_check(browser, site, model, head_file, photos_dir,
                                                    photo_files):
    root, url = site
    exe = Path(sys.executable).with_name("belka")      # the command, --head and all
    done = subprocess.run([str(exe), "export", "web", "-o", str(root / "head"),
                           "--head", str(head_file)], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "head cat, other, squirrel" in done.stdout
    files = photo_files[::8]
    page, errors = open_gate(browser, f"{url}/head/index.html")
    assert page.evaluate("window.belka.labels") == ["cat", "other", "squirrel"]
    web = browser_checks(page, files)
    page.close()
    cli = cli_check(photos_dir, files, "--head", str(head_file))
    assert_same_answers(web, cli, files)
    assert not errors


def test_the_demo_page_shows_the_verdict_and_the_top5(browser, site, photos_dir):
    _, url = site
    page, errors = open_gate(browser, f"{url}/fp32/index.html")
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.set_input_files("#file", str(photos_dir / "squirrel/eli_n02356798_fox_squirrel.jpg"))
    page.wait_for_function("document.querySelectorAll('#top5 li').length === 5")
    assert "Looks like a squirrel" in page.inner_text("#verdict")
    assert "fox squirrel" in page.inner_text("#top5 li:first-child")
    assert page.is_hidden("#upload")      # no --upload-url: the demo stops at the verdict
    assert posts == [] and not errors
    page.close()

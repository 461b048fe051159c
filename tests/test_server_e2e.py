"""End to end in a real browser: `belka serve` as a subprocess on 127.0.0.1, driven by Playwright
through Debian's Chromium (/usr/bin/chromium; never a downloaded browser).

Scenarios: a squirrel is accepted, stored and shown in the gallery; a cat is warned about with
its heat map and can still be stored ("upload anyway") and deleted; a text file gets a clear
error; the three pages fit a phone's width; the API docs (/docs, /redoc) draw with no network;
no JavaScript errors anywhere. The server is started by belka.server.launch. Screenshots go to
test-artifacts/e2e/ at the repository root.

Skipped with the reason when Playwright or Chromium is missing, except under CI, where that
is a failure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("BELKA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--no-proxy-server"]
SQUIRREL = "squirrel/eli_n02356798_fox_squirrel.jpg"  # scores 0.93 fox squirrel
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
TIMEOUT_MS = 60_000  # two shared CPU cores: a check with its heat map can take a few seconds


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


_why = _missing()
if _why:
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {_why}", pytrace=False)
    pytest.skip(f"browser tests skipped: {_why}", allow_module_level=True)

import httpx  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from belka.server import launch  # noqa: E402
from belka.server.launch import LiveServer  # noqa: E402

skdata = pytest.importorskip("skimage.data")


# -- the live server ---------------------------------------------------------------------------
@dataclass
class Server:
    live: LiveServer
    api: httpx.Client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    live = launch.start(root / "data", "--allow", "squirrel", "--workers", "2",
                        log=root / "server.log", wait_s=120)
    s = Server(live, httpx.Client(base_url=live.url, timeout=30, trust_env=False))
    try:
        yield s
    finally:
        s.api.close()
        live.stop()


# -- the browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport=DESKTOP)
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)  # expect(...) waits as long as the page does
        try:
            yield context
        finally:
            expect.set_options(timeout=None)  # back to Playwright's default
            context.close()


@dataclass
class Tab:
    """A page and every JavaScript error it has seen (uncaught exceptions, console errors)."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_js_errors(self, *expected: str) -> None:
        """No errors, apart from console lines containing one of ``expected`` (the browser logs
        an HTTP error status that the page itself handles, e.g. the 415 for a text file)."""
        unexpected = [e for e in self.errors if not any(x in e for x in expected)]
        assert not unexpected, f"JavaScript errors: {unexpected}"


@pytest.fixture()
def tab(browser_context):
    page = browser_context.new_page()
    t = Tab(page)
    page.on("pageerror", lambda err: t.errors.append(f"pageerror: {err}"))
    page.on("console", lambda msg: msg.type == "error" and t.errors.append(
        f"console: {msg.text} ({msg.location.get('url', '')})"))
    yield t
    page.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_image_loaded(page: Page, selector: str) -> int:
    """Wait until the <img> has decoded a real picture; its natural width."""
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector, timeout=TIMEOUT_MS)
    return page.eval_on_selector(selector, "i => i.naturalWidth")


def assert_fits_phone(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url}: horizontal scroll at phone width ({width}px)"


@pytest.fixture(scope="module")
def squirrel(photos_dir) -> Path:
    path = photos_dir / SQUIRREL
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="module")
def cat_jpeg(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(path, "JPEG", quality=90)
    return path


def choose(page: Page, server: Server, path: Path | dict) -> None:
    page.goto(server.live.url + "/")
    page.set_input_files("#file", path if isinstance(path, dict) else str(path))


# -- scenarios ---------------------------------------------------------------------------------
def test_squirrel_is_accepted_stored_and_shown_in_the_gallery(tab, server, squirrel):
    page = tab.page
    posts: list[str] = []   # the photo must not be sent before "Upload"
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    choose(page, server, squirrel)
    verdict = page.locator("#verdict")
    expect(verdict).to_have_class(re.compile(r"\baccept\b"), timeout=TIMEOUT_MS)
    expect(verdict).to_contain_text("Looks like a squirrel")
    expect(page.locator("#top5 li")).to_have_count(5)
    expect(page.locator("#top5 li").first).to_contain_text("fox squirrel")
    expect(page.locator("#decided")).to_contain_text("Checked in your browser")
    assert posts == [], f"the photo left the page before upload: {posts}"
    expect(page.locator("#store")).to_be_visible()
    expect(page.locator("#store-anyway")).to_be_hidden()
    shot(page, "upload-squirrel")

    page.click("#store")
    expect(page.locator("#stored")).to_contain_text("Stored as #", timeout=TIMEOUT_MS)
    # uploaded: the server checked it again, and the heat map comes from there
    assert wait_image_loaded(page, "#heatmap") > 0
    expect(page.locator("#decided")).to_contain_text("again by the server on upload: accept")
    upload_id = int(re.search(r"#(\d+)", page.inner_text("#stored")).group(1))
    assert server.api.get(f"/api/v1/uploads/{upload_id}/image").content == squirrel.read_bytes()

    page.click("#stored a")  # "See the gallery"
    expect(page).to_have_url(re.compile(r"/gallery$"))
    card = page.locator(f'#gallery figure.card[data-id="{upload_id}"]')
    expect(card).to_be_visible()
    expect(card).to_have_class(re.compile(r"\baccept\b"))
    expect(card.locator("figcaption")).to_contain_text("fox squirrel")
    assert wait_image_loaded(page, f'#gallery figure.card[data-id="{upload_id}"] img') > 0
    expect(page.locator("#page-info")).to_contain_text("stored")
    shot(page, "gallery")
    tab.assert_no_js_errors()


def test_cat_is_warned_with_a_heat_map_and_can_be_stored_anyway(tab, server, cat_jpeg):
    page = tab.page
    choose(page, server, cat_jpeg)
    verdict = page.locator("#verdict")
    expect(verdict).to_have_class(re.compile(r"\bwarn\b"), timeout=TIMEOUT_MS)
    expect(verdict).to_contain_text("does not look like a squirrel")
    expect(verdict).to_contain_text("cat")  # the top guess is named
    expect(page.locator("#store")).to_be_hidden()
    expect(page.locator("#store-anyway")).to_be_visible()
    shot(page, "upload-cat-warning")

    page.click("#store-anyway")
    expect(page.locator("#stored")).to_contain_text("Stored as #", timeout=TIMEOUT_MS)
    assert wait_image_loaded(page, "#heatmap") > 0
    expect(page.locator("#heatmap-caption")).to_contain_text("where the model saw")
    upload_id = int(re.search(r"#(\d+)", page.inner_text("#stored")).group(1))
    assert server.api.get(f"/api/v1/uploads/{upload_id}").json()["verdict"] == "warn"

    page.goto(server.live.url + "/gallery")
    card = page.locator(f'#gallery figure.card[data-id="{upload_id}"]')
    expect(card).to_have_class(re.compile(r"\bwarn\b"))
    card.get_by_role("button", name="Delete").click()
    # The first click only asks; "Keep" takes it back, and the photo stays.
    expect(card.get_by_role("button", name="Delete for good")).to_be_visible()
    card.get_by_role("button", name="Keep").click()
    expect(card.get_by_role("button", name="Delete", exact=True)).to_be_visible()
    assert server.api.get(f"/api/v1/uploads/{upload_id}").status_code == 200
    card.get_by_role("button", name="Delete").click()
    card.get_by_role("button", name="Delete for good").click()
    expect(card).to_have_count(0)
    assert server.api.get(f"/api/v1/uploads/{upload_id}").status_code == 404
    tab.assert_no_js_errors()


def test_a_text_file_gets_a_clear_error(tab, server):
    page = tab.page
    choose(page, server, {"name": "notes.txt", "mimeType": "text/plain",
                          "buffer": b"shopping list: nuts, more nuts\n"})
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_contain_text("not an image")
    expect(page.locator("#result")).to_be_hidden()
    shot(page, "upload-text-file-error")
    tab.assert_no_js_errors("status of 415")


def test_a_page_without_webassembly_asks_the_server(tab, server, squirrel):
    """No WebAssembly, no in-browser gate: the server checks, with its heat map at once."""
    page = tab.page
    page.add_init_script("delete window.WebAssembly")
    choose(page, server, squirrel)
    expect(page.locator("#verdict")).to_have_class(re.compile(r"\baccept\b"), timeout=TIMEOUT_MS)
    expect(page.locator("#decided")).to_contain_text("Checked by the server")
    assert wait_image_loaded(page, "#heatmap") > 0
    assert page.evaluate("document.body.dataset.gate") == "server"
    tab.assert_no_js_errors()


def test_pages_fit_a_phone(tab, server, squirrel, cat_jpeg):
    page = tab.page
    page.set_viewport_size(PHONE)
    # Something in the gallery, whatever ran before.
    r = server.api.post("/api/v1/uploads", files={"file": (squirrel.name, squirrel.read_bytes(),
                                                           "image/jpeg")})
    assert r.status_code in (200, 201), r.text

    choose(page, server, squirrel)
    expect(page.locator("#verdict")).to_have_class(re.compile(r"\baccept\b"), timeout=TIMEOUT_MS)
    wait_image_loaded(page, "#preview")
    assert_fits_phone(page)
    shot(page, "phone-upload")

    page.goto(server.live.url + "/gallery")
    expect(page.locator("#gallery figure.card").first).to_be_visible()
    wait_image_loaded(page, "#gallery figure.card img")
    assert_fits_phone(page)
    shot(page, "phone-gallery")

    page.goto(server.live.url + "/explain")
    assert_fits_phone(page)
    page.set_input_files("#file", str(cat_jpeg))
    page.select_option("#method", "gradcam")
    page.click("#explain-form button[type=submit]")
    expect(page.locator("#explanation")).to_be_visible(timeout=TIMEOUT_MS)
    wait_image_loaded(page, "#overlay")
    wait_image_loaded(page, "#heat")
    expect(page.locator("#explain-caption")).to_contain_text("gradcam")
    assert_fits_phone(page)
    shot(page, "phone-explain")
    tab.assert_no_js_errors()


def test_api_docs_render_with_no_network(tab, server):
    """Swagger UI (/docs) draws the API from this server alone: every request to anywhere else
    is refused, and the operations still show up. ReDoc (/redoc) too, apart from the Redocly
    logo in its sidebar, an image it always takes from its CDN (missing offline, nothing else)."""
    page = tab.page
    elsewhere: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(server.live.url + "/"):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    page.route("**/*", only_this_server)
    page.goto(server.live.url + "/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/api/v1/check")
           ).to_be_visible()
    shot(page, "api-docs")
    assert not elsewhere, f"/docs asked for outside resources: {elsewhere}"
    tab.assert_no_js_errors()

    page.goto(server.live.url + "/redoc")
    expect(page.get_by_text("/api/v1/uploads").first).to_be_attached()
    assert set(elsewhere) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, elsewhere
    # The logo's URL is hard-coded in ReDoc; the Content-Security-Policy blocks it before the
    # network is asked (and, were it let through, the route above would refuse it).
    tab.assert_no_js_errors("Failed to load resource", "https://cdn.redoc.ly/redoc/logo-mini.svg")


def test_another_site_cannot_store_or_delete(tab, server, cat_jpeg, tmp_path):
    """A page on another origin (a second local server) posts a plain HTML form to belka and
    sends a DELETE with fetch(): both refused, nothing stored, nothing deleted. Before the
    same-origin rule, the form stored the photo."""
    import functools
    import http.server
    import threading

    stored = server.api.post("/api/v1/uploads?confirm=true", files={
        "file": ("keep.jpg", cat_jpeg.read_bytes(), "image/jpeg")}).json()
    before = server.api.get("/api/v1/uploads").json()["total"]
    (tmp_path / "evil.html").write_text(
        "<!doctype html><title>free nuts</title>"
        f'<form method="post" enctype="multipart/form-data" '
        f'action="{server.live.url}/api/v1/uploads?confirm=true">'
        '<input type="file" name="file" id="file"><button id="go">send</button></form>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page = tab.page
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/evil.html")
        page.set_input_files("#file", str(cat_jpeg))
        with page.expect_navigation():
            page.click("#go")
        assert "cross_origin" in page.content()
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/evil.html")
        # fetch() with a body a form could send: it reaches the server, which refuses it, and
        # the page learns nothing (Cross-Origin-Resource-Policy blocks even the opaque answer).
        outcome = page.evaluate("""async url => {
            const form = new FormData();
            form.append("file", new Blob([new Uint8Array(64)], {type: "image/jpeg"}), "x.jpg");
            return fetch(url, {method: "POST", mode: "no-cors", body: form})
                .then(r => "opaque " + r.status, e => "blocked"); }""",
            f"{server.live.url}/api/v1/uploads?confirm=true")
        assert outcome in ("blocked", "opaque 0")
        # A DELETE needs a CORS preflight, which belka never grants.
        outcome = page.evaluate(
            "url => fetch(url, {method: 'DELETE'}).then(r => 'answered ' + r.status, e => 'blocked')",
            f"{server.live.url}/api/v1/uploads/{stored['id']}")
        assert outcome == "blocked"
    finally:
        evil.shutdown()
    assert server.api.get("/api/v1/uploads").json()["total"] == before
    assert server.api.get(f"/api/v1/uploads/{stored['id']}").status_code == 200


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_lab_two_kernel_filters_divergence_and_phone_width(tab, server, cat_jpeg, viewport):
    """The lab after a one-kernel filter applies a two-kernel one (sobel) without a script error
    and captions the new kernels; a diverging fit says so in words; nothing shows a broken
    image before any action, and the page fits a phone."""
    page = tab.page
    page.set_viewport_size(viewport)
    page.goto(server.live.url + "/lab")
    broken = page.evaluate("""() => [...document.images].filter(
        i => i.getBoundingClientRect().width > 0 && !(i.complete && i.naturalWidth > 0)).length""")
    assert broken == 0, "an image with nothing to show takes room (a broken-image icon)"
    if viewport is PHONE:
        assert_fits_phone(page)
    page.set_input_files("#lab-file", str(cat_jpeg))
    for kernel, caption in (("gaussian-blur", "kernel [["), ("sobel", "kernels x [["),
                            ("prewitt", "kernels x [[")):
        page.select_option("#kernel", kernel)
        page.click("#kernel-form button[type=submit]")
        expect(page.locator("#kernel-caption")).to_contain_text(caption)
        if kernel != "gaussian-blur":
            expect(page.locator("#kernel-caption")).to_contain_text("sqrt(x² + y²)")
        wait_image_loaded(page, "#kernel-out")
    page.fill("#learn-lr", "0.5")
    page.click("#learn-form button[type=submit]")
    status = page.locator("#learn-status")
    expect(status).to_contain_text("The run diverged")
    expect(status).to_contain_text("too large")
    assert "e+" not in status.inner_text().split("too large")[1]
    if viewport is PHONE:
        assert_fits_phone(page)
    shot(page, f"lab-{'phone' if viewport is PHONE else 'desktop'}")
    tab.assert_no_js_errors()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_explain_page_clears_stale_results_and_says_cancelled(tab, server, cat_jpeg, viewport):
    page = tab.page
    page.set_viewport_size(viewport)
    page.goto(server.live.url + "/explain")
    # Only layers an explanation accepts are offered; input-level methods have no layer.
    offered = page.eval_on_selector_all("#layer option", "os => os.map(o => o.value)")
    assert "avg_pool" not in offered and "predictions" not in offered and "top_conv" in offered
    page.select_option("#method", "saliency")
    expect(page.locator("#layer")).to_be_disabled()
    page.select_option("#method", "gradcam")
    expect(page.locator("#layer")).to_be_enabled()
    page.set_input_files("#file", str(cat_jpeg))
    page.click("#explain-form button[type=submit]")
    expect(page.locator("#explanation")).to_be_visible(timeout=TIMEOUT_MS)
    wait_image_loaded(page, "#overlay")
    # A new photo: the old picture goes at once.
    page.set_input_files("#file", {"name": "other.jpg", "mimeType": "image/jpeg",
                                   "buffer": cat_jpeg.read_bytes()})
    expect(page.locator("#explanation")).to_be_hidden()
    # A slow method, cancelled: said as a status, not shown as an error, no stale picture.
    page.select_option("#method", "scorecam")
    page.click("#explain-form button[type=submit]")
    expect(page.locator("#cancel")).to_be_visible()
    page.click("#cancel")
    expect(page.locator("#status")).to_contain_text("Cancelled", timeout=TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#explanation")).to_be_hidden()
    if viewport is PHONE:
        assert_fits_phone(page)
    tab.assert_no_js_errors()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_gallery_thumbnail_opens_the_photo_its_verdict_and_heat_map(tab, server, squirrel,
                                                                       viewport):
    page = tab.page
    page.set_viewport_size(viewport)
    stored = server.api.post("/api/v1/uploads", files={"file": (
        squirrel.name, squirrel.read_bytes(), "image/jpeg")}).json()
    page.goto(server.live.url + "/gallery")
    card = page.locator(f'#gallery figure.card[data-id="{stored["id"]}"]')
    card.locator("button.thumb").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-verdict")).to_contain_text("Accepted as a squirrel")
    expect(page.locator("#viewer-top5 li").first).to_contain_text("fox squirrel")
    assert wait_image_loaded(page, "#viewer-photo") > 0
    assert wait_image_loaded(page, "#viewer-heat") > 0
    expect(page.locator("#viewer-heat-caption")).to_contain_text("where the model saw")
    if viewport is PHONE:
        assert_fits_phone(page)
    shot(page, f"gallery-viewer-{'phone' if viewport is PHONE else 'desktop'}")
    page.click("#viewer-close")
    expect(viewer).to_be_hidden()
    tab.assert_no_js_errors()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_upload_page_shows_the_tile_that_decided(tab, server, photos_dir, viewport):
    """A small squirrel on a park bench: accepted by a tile while the whole photo's top guess
    is "park bench". The page says so, and draws the tile's box on the photo."""
    photo = photos_dir / "squirrel" / "cjmcdd_squirrel1.jpg"
    expected = server.api.post("/api/v1/check?heatmap=false", files={
        "file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
    assert expected["verdict"] == "accept" and expected["tile"]
    page = tab.page
    page.set_viewport_size(viewport)
    choose(page, server, photo)
    verdict = page.locator("#verdict")
    expect(verdict).to_have_class(re.compile(r"\baccept\b"), timeout=TIMEOUT_MS)
    expect(verdict).to_contain_text("the part of the photo in the box scores")
    expect(verdict).to_contain_text("looks most like park bench")
    expect(page.locator("#top5-caption")).to_have_text("the whole photo's top 5")
    frame = page.locator("#preview-box")
    expect(frame).to_be_visible()
    wait_image_loaded(page, "#preview")
    img = page.locator("#preview").bounding_box()
    box = frame.bounding_box()
    x0, y0, x1, y1 = expected["tile"]
    width, height = page.eval_on_selector("#preview", "i => [i.naturalWidth, i.naturalHeight]")
    assert abs((box["x"] - img["x"]) / img["width"] - x0 / width) < 0.02
    assert abs((box["y"] - img["y"]) / img["height"] - y0 / height) < 0.02
    assert abs(box["width"] / img["width"] - (x1 - x0) / width) < 0.02
    if viewport is PHONE:
        assert_fits_phone(page)
    shot(page, f"upload-tile-{'phone' if viewport is PHONE else 'desktop'}")
    tab.assert_no_js_errors()

"""Screenshots of every page of the web app, at a desktop width and at a phone's 390 px, for
docs/pages.md: `python tools/screenshots.py [--out docs/screenshots]`.

Starts `belka serve --allow cat` on 127.0.0.1 with a fresh data folder and drives Debian's
Chromium with Playwright (never a downloaded browser). The photos are scikit-image's sample
pictures (the cat "chelsea", coffee, a rocket, an astronaut), so every picture in the
screenshots may be published. Each page is shown after one real action: a checked photo, a
stored gallery, an explanation, a filtered photo, a short feature visualisation. Fails on any
JavaScript error, like the browser tests.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
TIMEOUT_MS = 120_000


def sample_jpeg(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()

    import httpx
    from playwright.sync_api import expect, sync_playwright

    from belka.server import launch

    args.out.mkdir(parents=True, exist_ok=True)
    photos = {name: sample_jpeg(name) for name in ("chelsea", "coffee", "rocket", "astronaut")}
    work = Path(tempfile.mkdtemp(prefix="belka-shots-"))
    for name, data in photos.items():
        (work / f"{name}.jpg").write_bytes(data)
    errors: list[str] = []
    with launch.start(work / "data", "--allow", "cat", log=work / "server.log") as server:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=120) as api:
            for name, data in photos.items():
                api.post("/api/v1/uploads?confirm=true",
                         files={"file": (f"{name}.jpg", data, "image/jpeg")})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            expect.set_options(timeout=TIMEOUT_MS)
            for width, viewport in WIDTHS.items():
                page = browser.new_page(viewport=viewport)
                page.set_default_timeout(TIMEOUT_MS)
                page.on("pageerror", lambda err: errors.append(str(err)))
                page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))

                def shot(name: str) -> None:
                    path = args.out / f"{name}-{width}.jpg"
                    page.screenshot(path=str(path), full_page=True, type="jpeg", quality=80)
                    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

                page.goto(server.url + "/")
                page.set_input_files("#file", str(work / "chelsea.jpg"))
                expect(page.locator("#verdict")).to_contain_text("Looks like a cat")
                page.wait_for_function("() => document.querySelector('#preview').complete")
                shot("upload")

                page.goto(server.url + "/gallery")
                expect(page.locator("#gallery figure.card")).to_have_count(4)
                page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)")
                shot("gallery")

                page.goto(server.url + "/explain")
                page.set_input_files("#file", str(work / "chelsea.jpg"))
                page.click("#explain-form button[type=submit]")
                expect(page.locator("#explanation")).to_be_visible()
                page.wait_for_function("() => document.querySelector('#overlay').naturalWidth > 0")
                shot("explain")

                page.goto(server.url + "/lab")
                page.set_input_files("#lab-file", str(work / "coffee.jpg"))
                page.select_option("#kernel", "sobel")
                page.click("#kernel-form button[type=submit]")
                page.wait_for_function("() => document.querySelector('#kernel-out').naturalWidth > 0")
                page.click("#learn-form button[type=submit]")
                expect(page.locator("#learn-status")).to_contain_text("final a")
                shot("lab")

                page.goto(server.url + "/pictures")
                page.set_input_files("#style-content", str(work / "chelsea.jpg"))
                page.select_option("#style-pattern", "strokes")
                page.fill("#style-size", "128")
                page.fill("#style-steps", "30")
                page.click("#style-form button[type=submit]")
                expect(page.locator("#job-caption")).not_to_be_empty()
                page.wait_for_function("() => document.querySelector('#job-picture').naturalWidth > 0")
                shot("pictures")
                page.close()
            browser.close()
    if errors:
        print("JavaScript errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

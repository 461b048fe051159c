"""The gate in the browser against native ONNX Runtime and the server round trip, in one run.

Side by side, in interleaved rounds over the same photos (each photo's bytes already in memory
on every side, so the time is decode + views + inference + verdict):

* ``browser, 1 thread`` / ``browser, 2 threads``: ``gate.check(blob)`` of ``belka.js`` on
  onnxruntime-web (WebAssembly, SIMD) in Debian's Chromium, headless, from an exported folder
  served with the COOP/COEP headers (two pages, one per thread count);
* ``native onnxruntime, 1/2 threads``: ``images.decode`` + ``Gate.check_decoded`` in Python on
  the ONNX engine with that many intra-op threads (what ``belka check`` runs);
* ``server round trip``: ``POST /api/v1/check?heatmap=false`` to ``belka serve`` on loopback.

Then: the first load of the demo page in a fresh browser context (time to a ready gate, bytes
transferred, and what they weigh gzipped), fp16 against fp32 (top-1 on the whole image and the
gate's verdict with tiles, on every shared photo), and the fast JPEG decode (draft) against the
full one on the folder scan (top-1 agreement and the largest probability change).

No asserts: the numbers are for reading (docs/client.md has them).

    python bench/client.py [--quick] [--photos DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

CHROMIUM = os.environ.get("BELKA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--no-proxy-server"]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def shared_photos(folder: Path) -> list[str]:
    with open(folder / "manifest.csv", newline="") as f:
        return [row["file"] for row in csv.DictReader(f)]


def gz(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), 6))


# -- the contenders -----------------------------------------------------------------------------

class BrowserGate:
    """One page with a gate loaded at ``threads``; the photos as Blobs in the page."""

    def __init__(self, browser, url: str, threads: int, files: list[str]):
        self.page = browser.new_page()
        self.page.set_default_timeout(600_000)
        self.page.goto(f"{url}/fp32/blank")       # any page of the site: same origin, headers
        self.threads = self.page.evaluate("""async ([threads, files]) => {
            const m = await import('/fp32/belka.js');
            window.gate = await m.load('/fp32/', { threads });
            window.blobs = await Promise.all(files.map(
                (f) => fetch('/photos/' + f).then((r) => r.blob())));
            await window.gate.check(window.blobs[0]);    // warm-up
            return window.gate.threads;
        }""", [threads, files])

    def run(self) -> tuple[list[float], list[int]]:
        times, views, self.parts = self.page.evaluate("""async () => {
            const times = [], views = [], parts = [];
            for (const blob of window.blobs) {
                const t = performance.now();
                await window.gate.check(blob);
                times.push(performance.now() - t);
                const s = window.gate.lastTiming;
                views.push(s.views);
                parts.push([s.decode, s.preprocess, s.inference]);
            }
            return [times, views, parts];
        }""")
        self.breakdown = getattr(self, "breakdown", []) + self.parts
        return times, views


class NativeGate:
    def __init__(self, threads: int, data: list[bytes]):
        import belka
        from belka.engine import OnnxEngine
        from belka.gate import Gate

        model = belka.load()
        model.engine = OnnxEngine(model, threads=threads)
        self.gate, self.data = Gate(model), data
        self.run()  # warm-up

    def run(self) -> tuple[list[float], list[int]]:
        from belka import images

        times, views = [], []
        for data in self.data:
            t = time.perf_counter()
            result = self.gate.check_decoded([images.decode(data)])[0]
            times.append(1000 * (time.perf_counter() - t))
            views.append(result.views)
        return times, views


class ServerGate:
    def __init__(self, data: list[bytes], names: list[str], root: Path):
        import httpx

        from belka.server import launch

        self.live = launch.start(root / "data", "--allow", "squirrel", "--workers", "1",
                                 log=root / "server.log", wait_s=300)
        self.client = httpx.Client(base_url=self.live.url, timeout=120, trust_env=False)
        self.data, self.names = data, names
        self.run()

    def run(self) -> tuple[list[float], list[int]]:
        times = []
        for data, name in zip(self.data, self.names):
            t = time.perf_counter()
            r = self.client.post("/api/v1/check?heatmap=false",
                                 files={"file": (name, data, "image/jpeg")})
            times.append(1000 * (time.perf_counter() - t))
            r.raise_for_status()
        return times, []

    def close(self) -> None:
        self.client.close()
        self.live.stop()


# -- sections -----------------------------------------------------------------------------------

def speed(browser, url: str, photos: Path, files: list[str], rounds: int, root: Path) -> list[dict]:
    data = [(photos / f).read_bytes() for f in files]
    log(f"per-check times on {len(files)} photos, {rounds} interleaved rounds")
    contenders = {
        "browser (onnxruntime-web wasm), 1 thread": BrowserGate(browser, url, 1, files),
        "browser (onnxruntime-web wasm), 2 threads": BrowserGate(browser, url, 2, files),
        "native onnxruntime, 1 thread": NativeGate(1, data),
        "native onnxruntime, 2 threads": NativeGate(2, data),
        "server round trip (POST /api/v1/check)": ServerGate(data, [Path(f).name for f in files],
                                                             root),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    views: list[int] = []
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, v = contenders[name].run()
            times[name] += t
            views = views or v
    contenders["server round trip (POST /api/v1/check)"].close()
    base = statistics.median(times["native onnxruntime, 2 threads"])
    rows = []
    for name in names:
        ms = statistics.median(times[name])
        rows.append({"contender": name, "median_ms": round(ms, 1),
                     "p90_ms": round(float(np.percentile(times[name], 90)), 1),
                     "vs_native_2t": round(ms / base, 2),
                     "threads_used": getattr(contenders[name], "threads", None)})
        parts = getattr(contenders[name], "breakdown", None)
        if parts:   # median ms of decode, JS preprocessing (views), inference
            rows[-1]["decode_views_inference_ms"] = [round(float(np.median(c)), 1)
                                                     for c in zip(*parts)]
    rows.append({"views_per_check_mean": round(float(np.mean(views)), 1)})
    return rows


def first_load(browser, url: str, root: Path) -> dict:
    context = browser.new_context()
    page = context.new_page()
    received: dict[str, int] = {}
    folder = root / "fp32"

    def on_finished(request):   # what the page fetched: the served files' sizes
        from urllib.parse import urlparse

        local = folder / urlparse(request.url).path.removeprefix("/fp32/")
        if local.is_file():
            received[request.url] = local.stat().st_size

    page.on("requestfinished", on_finished)
    t = time.perf_counter()
    page.goto(f"{url}/fp32/index.html")
    page.wait_for_function("document.documentElement.dataset.belka", timeout=600_000)
    seconds = time.perf_counter() - t
    threads = page.evaluate("window.belka && window.belka.threads")
    context.close()
    files = {"runtime (ort/*)": [folder / "ort" / n for n in os.listdir(folder / "ort")],
             "model.onnx": [folder / "model.onnx"],
             "policy.json + belka.js + page": [folder / n for n in ("policy.json", "belka.js",
                                                                    "index.html", "demo.js",
                                                                    "demo.css")]}
    sizes = {k: {"bytes": sum(p.stat().st_size for p in v), "gzip": sum(gz(p) for p in v)}
             for k, v in files.items()}
    fp16 = root / "fp16" / "model.onnx"
    sizes["model.onnx (fp16)"] = {"bytes": fp16.stat().st_size, "gzip": gz(fp16)}
    return {"seconds_to_ready": round(seconds, 2), "threads": threads,
            "bytes_transferred": sum(received.values()), "requests": len(received),
            "sizes": sizes}


def canvas_scaling(browser, url: str, files: list[str]) -> dict:
    """What the browser's own scaling would do: the whole-image view made by
    createImageBitmap's resize (quality high) and a centre crop, instead of belka.js's port of
    Pillow's resampling; top-1 compared with belka.js's (which equals Python's)."""
    page = browser.new_page()
    page.set_default_timeout(600_000)
    page.goto(f"{url}/fp32/blank")
    differ = page.evaluate("""async (files) => {
        const m = await import('/fp32/belka.js');
        const gate = await m.load('/fp32/');
        const size = 224, short = 256, out = [];
        for (const f of files) {
            const blob = await (await fetch('/photos/' + f)).blob();
            const ours = (await gate.classify(blob, { top: 1 }))[0].index;
            const probe = await createImageBitmap(blob, { imageOrientation: 'from-image' });
            const scale = short / Math.min(probe.width, probe.height);
            const w = probe.width <= probe.height ? short : m.pyRound(probe.width * scale);
            const h = probe.width <= probe.height ? m.pyRound(probe.height * scale) : short;
            const bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image',
                colorSpaceConversion: 'none', resizeWidth: w, resizeHeight: h,
                resizeQuality: 'high' });
            const canvas = new OffscreenCanvas(size, size);
            const ctx = canvas.getContext('2d', { willReadFrequently: true });
            ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, size, size);
            ctx.drawImage(bitmap, -m.pyRound((w - size) / 2), -m.pyRound((h - size) / 2));
            const rgba = ctx.getImageData(0, 0, size, size).data;
            const rgb = new Uint8Array(size * size * 3);
            for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) rgb.set(rgba.subarray(i, i + 3), j);
            const { probs } = await gate.run(rgb, 1);
            let best = 0;
            for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i;
            if (best !== ours) out.push(f);
        }
        return out;
    }""", files)
    page.close()
    return {"photos": len(files), "top1_differ": len(differ), "files": differ}


def fp16_agreement(photos: Path, files: list[str]) -> dict:
    import onnxruntime as ort

    import belka
    from belka import images
    from belka.gate import Gate
    from belka.tiling import combine
    from belka.web import build_graph

    model = belka.load()
    gate = Gate(model)
    sessions = {p: ort.InferenceSession(build_graph(model, gate.allow_indices, fp16=p == "fp16"),
                                        providers=["CPUExecutionProvider"])
                for p in ("fp32", "fp16")}
    top1 = verdict = 0
    worst = 0.0
    for f in files:
        views, _ = gate.views(images.decode(photos / f))
        out = {p: s.run(["probabilities", "score"], {"pixels": views})
               for p, s in sessions.items()}
        top1 += int(out["fp32"][0][0].argmax() == out["fp16"][0][0].argmax())
        scores = {p: combine(o[1], "max")[0] for p, o in out.items()}
        verdict += int((scores["fp32"] >= gate.threshold) == (scores["fp16"] >= gate.threshold))
        worst = max(worst, abs(scores["fp32"] - scores["fp16"]))
    return {"photos": len(files), "top1_agree": top1, "verdict_agree": verdict,
            "max_score_diff": round(worst, 5)}


def draft_agreement(photos: Path, files: list[str]) -> dict:
    import belka
    from belka.pipeline import iter_predictions

    model = belka.load()
    paths = [str(photos / f) for f in files]
    out = {}
    for draft in (False, True):
        t = time.perf_counter()
        out[draft] = [r.probabilities for r in iter_predictions(model, paths, draft=draft)]
        out[f"s{draft}"] = time.perf_counter() - t
    full, fast = np.stack(out[False]), np.stack(out[True])
    differ = [f for f, a, b in zip(files, full, fast) if a.argmax() != b.argmax()]
    jpegs = [i for i, f in enumerate(files) if f.lower().endswith((".jpg", ".jpeg"))]
    changed = int((np.abs(full - fast).max(axis=1) > 1e-6)[jpegs].sum())
    return {"photos": len(files), "top1_agree": len(files) - len(differ),
            "top1_differ": differ, "jpegs_with_other_numbers": changed,
            "max_prob_diff": round(float(np.abs(full - fast).max()), 4),
            "scan_seconds_full": round(out["sFalse"], 2),
            "scan_seconds_draft": round(out["sTrue"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 photos, 1 round")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    import belka
    from belka.gate import Gate
    from belka.web import export_web, serve

    files = shared_photos(args.photos)
    subset = files[::9] if args.quick else files[::3]
    rounds = 1 if args.quick else args.rounds
    results: dict = {"machine": {"cpus": os.cpu_count(),
                                 "load": [round(x, 1) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = belka.load()
        export_web(root / "fp32", Gate(model))
        export_web(root / "fp16", Gate(model), fp16=True)
        server = serve.start(root, mounts={"/photos/": args.photos})
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_ARGS)
            log("first load")
            results["first_load"] = first_load(browser, url, root)
            results["speed"] = speed(browser, url, args.photos, subset, rounds, root)
            log("the browser's own scaling instead of belka.js's")
            results["canvas"] = canvas_scaling(browser, url, files)
            browser.close()
        server.shutdown()
    log("fp16 against fp32")
    results["fp16"] = fp16_agreement(args.photos, files if not args.quick else subset)
    log("draft decode against full decode")
    results["draft"] = draft_agreement(args.photos, files)

    print(f"\n## Per check ({len(subset)} photos, {rounds} rounds; whole image + tiles, "
          f"{results['speed'][-1]['views_per_check_mean']} views on average)\n")
    print("| contender | median ms | p90 ms | / native 2 threads | wasm threads |")
    print("|---|---|---|---|---|")
    for row in results["speed"][:-1]:
        print(f"| {row['contender']} | {row['median_ms']} | {row['p90_ms']} | "
              f"{row['vs_native_2t']} | {row['threads_used'] or ''} |")
    for row in results["speed"][:-1]:
        if "decode_views_inference_ms" in row:
            d, v, i = row["decode_views_inference_ms"]
            print(f"\n{row['contender']}: median decode {d} ms, views (JS resampling) {v} ms, "
                  f"inference {i} ms")
    fl = results["first_load"]
    print(f"\n## First load: {fl['seconds_to_ready']} s to a ready gate ({fl['threads']} threads), "
          f"{fl['bytes_transferred'] / 2**20:.1f} MB in {fl['requests']} requests\n")
    print("| part | bytes | gzipped |")
    print("|---|---|---|")
    for name, size in fl["sizes"].items():
        print(f"| {name} | {size['bytes'] / 2**20:.2f} MB | {size['gzip'] / 2**20:.2f} MB |")
    c = results["canvas"]
    print(f"\n## The browser's own scaling (createImageBitmap resize, quality high) instead of "
          f"belka.js's port of Pillow's: top-1 differs on {c['top1_differ']}/{c['photos']}")
    f16 = results["fp16"]
    print(f"\n## fp16 weights: top-1 {f16['top1_agree']}/{f16['photos']}, gate verdict "
          f"{f16['verdict_agree']}/{f16['photos']}, largest score change {f16['max_score_diff']}")
    d = results["draft"]
    print(f"## Draft JPEG decode (belka classify --fast-decode): top-1 {d['top1_agree']}/"
          f"{d['photos']} (differ: {', '.join(d['top1_differ']) or 'none'}), "
          f"{d['jpegs_with_other_numbers']} JPEGs get other numbers, largest probability change "
          f"{d['max_prob_diff']}; scan {d['scan_seconds_full']} s full, "
          f"{d['scan_seconds_draft']} s draft")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

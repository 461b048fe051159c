"""Load on the web service: throughput, latency and memory of `belka serve` under concurrent checks.

Starts `belka serve` as a subprocess on 127.0.0.1 (a free port, a temporary --data folder),
then N client threads (httpx, one keep-alive connection each) post real photos to
/api/v1/check (with its heat map, as the Upload page does) until a fixed number of requests
has been answered. Prints the throughput, p50/p90/p99 latency, the error count (anything but a
200 is an error; it must be 0) and the server's resident memory (VmRSS from /proc/PID/status)
at start, after warm-up, at every 10% and at the end, to show that it stays flat.

    python bench/serve_load.py                      # 2,000 requests, 8 clients
    python bench/serve_load.py --requests 10000     # the soak
    python bench/serve_load.py --clients 16 --workers 4 --no-heatmap --folders squirrel

Photos come from ../shared/data/photos/{squirrel,cat,other} (--photos, --folders); without
them, scikit-image's sample pictures. Only 127.0.0.1 is used. Bounded: it stops after
--requests answers or --max-seconds, whichever comes first. Exit status 1 when any error.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from belka.server import launch

ROOT = Path(__file__).resolve().parents[1]
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
        ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}


def load_photos(root: Path, folders: list[str], max_bytes: int) -> list[tuple[str, bytes, str]]:
    photos = []
    for folder in folders:
        for path in sorted((root / folder).glob("*")):
            if path.suffix.lower() in MIME and path.stat().st_size <= max_bytes:
                photos.append((path.name, path.read_bytes(), MIME[path.suffix.lower()]))
    if photos:
        return photos
    from PIL import Image
    from skimage import data

    for name in ("chelsea", "coffee", "astronaut", "rocket", "cat"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        photos.append((f"{name}.jpg", buf.getvalue(), "image/jpeg"))
    return photos


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (less swayed by a busy machine than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="answers to wait for")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=None,
                        help="the server's inference threads [its default: CPU count, max 4]")
    parser.add_argument("--warmup", type=int, default=16, help="requests before measuring")
    parser.add_argument("--no-heatmap", action="store_true", help="check with heatmap=false")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--folders", default="squirrel,cat,other")
    parser.add_argument("--max-photo-mb", type=float, default=2.0, help="skip larger photos")
    parser.add_argument("--timeout", type=float, default=120, help="per request, seconds")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop issuing after this")
    args = parser.parse_args()

    photos = load_photos(args.photos, args.folders.split(","), int(args.max_photo_mb * 2**20))
    mean_kb = statistics.mean(len(p[1]) for p in photos) / 1024
    data_dir = Path(tempfile.mkdtemp(prefix="belka-load-"))
    log_path = data_dir / "server.log"
    serve_args = ["--workers", str(args.workers)] if args.workers else []
    endpoint = "/api/v1/check" + ("?heatmap=false" if args.no_heatmap else "")
    stop = threading.Event()  # set on the way out (Ctrl-C included): the clients stop issuing
    try:
        live = launch.start(data_dir / "data", *serve_args, log=log_path, wait_s=180)
    except launch.ServerStartError as err:
        print(err, file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)
        return 2
    server, url = live.proc, live.url
    try:
        print(f"server pid {server.pid} on {url}; {os.cpu_count()} CPUs on this machine; "
              f"workers {args.workers or 'default'}; {args.clients} clients; {args.requests} "
              f"requests to {endpoint}; {len(photos)} photos (mean {mean_kb:.0f} KB)")
        samples: list[tuple[str, int, float, float]] = []

        def sample(when: str, n: int, t: float) -> None:
            samples.append((when, n, t, rss_mb(server.pid)))
            print(f"{when:>6} {n:>9} {t:>8.1f} {samples[-1][3]:>14.1f}", flush=True)

        print(f"\n{'when':>6} {'answered':>9} {'seconds':>8} {'server RSS MB':>14}")
        sample("start", 0, 0.0)

        # Warm-up: not measured.
        with httpx.Client(base_url=url, timeout=args.timeout, trust_env=False) as client:
            for i in range(args.warmup):
                name, body, mime = photos[i % len(photos)]
                client.post(endpoint, files={"file": (name, body, mime)})
        sample("warm", 0, 0.0)
        cpu_start = cpu_seconds(server.pid)

        lock = threading.Lock()
        issued = answered = 0
        latencies: list[float] = []
        errors: list[str] = []
        verdicts: dict[str, int] = {}
        next_mark = 1
        started = time.perf_counter()

        def client_loop(offset: int) -> None:
            nonlocal issued, answered, next_mark
            with httpx.Client(base_url=url, timeout=args.timeout, trust_env=False) as client:
                while True:
                    with lock:
                        if (stop.is_set() or issued >= args.requests
                                or time.perf_counter() - started > args.max_seconds):
                            return
                        i = issued
                        issued += 1
                    name, body, mime = photos[(i + offset) % len(photos)]
                    t0 = time.perf_counter()
                    try:
                        r = client.post(endpoint, files={"file": (name, body, mime)})
                        problem = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                        verdict = r.json().get("verdict") if problem is None else None
                    except (httpx.HTTPError, ValueError) as err:
                        problem, verdict = f"{type(err).__name__}: {err}", None
                    elapsed = time.perf_counter() - t0
                    with lock:
                        answered += 1
                        latencies.append(elapsed)
                        if problem:
                            errors.append(f"{name}: {problem}")
                        else:
                            verdicts[verdict] = verdicts.get(verdict, 0) + 1
                        while next_mark <= 10 and answered >= next_mark * args.requests / 10:
                            sample(f"{next_mark * 10}%", answered, time.perf_counter() - started)
                            next_mark += 1

        threads = [threading.Thread(target=client_loop, args=(k * 7,), daemon=True)
                   for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        sample("end", answered, wall)
        cpu_used = cpu_seconds(server.pid) - cpu_start
        if server.poll() is not None:
            errors.append(f"the server exited with {server.returncode}")

        lat = sorted(latencies)
        after_warm = samples[1][3]
        print(f"\nanswered {answered} in {wall:.1f} s: {answered / wall:.1f} requests/s")
        print(f"latency ms: p50 {percentile(lat, 50) * 1000:.0f}, p90 {percentile(lat, 90) * 1000:.0f}, "
              f"p99 {percentile(lat, 99) * 1000:.0f}, max {lat[-1] * 1000 if lat else float('nan'):.0f}")
        print(f"server CPU: {cpu_used:.0f} s, {cpu_used / max(answered, 1) * 1000:.0f} ms a request; "
              f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"verdicts: {dict(sorted(verdicts.items()))}")
        print(f"server RSS MB: start {samples[0][3]:.0f}, after warm-up {after_warm:.0f}, "
              f"end {samples[-1][3]:.0f} ({samples[-1][3] - after_warm:+.0f} since warm-up; "
              f"10%..end range {min(s[3] for s in samples[2:]):.0f}..{max(s[3] for s in samples[2:]):.0f})")
        print(f"errors: {len(errors)}")
        for line in errors[:10]:
            print(f"  {line}")
        return 1 if errors else 0
    finally:
        stop.set()
        live.stop(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Load on the web service: throughput, latency and memory of `belka serve` under concurrent checks.

Starts `belka serve` as a subprocess on 127.0.0.1 (a free port, a temporary --data folder),
then N client threads (httpx, one keep-alive connection each) post real photos to
/api/v1/check (with its heat map, as the Upload page does) until a fixed number of requests
has been answered. Prints the throughput, p50/p90/p99 latency, the error count (anything but a
200 is an error; it must be 0) and the server's resident memory (VmRSS from /proc/PID/status)
at start, after warm-up, at every 10% and at the end, to show that it stays flat.

``--mix`` makes the clients behave like the web app's users: checks with heat maps (6 in 10),
stored uploads, gallery listings, background explain jobs polled to the end, and classifies.
``--hostile`` adds one attacker beside them, cycling through what docs/server.md's threat model
names: 7000 x 7000 PNG "bombs", 40 half-sent requests held open, cross-site POSTs, a flood of
background jobs, a foreign Host, an oversized body. Its answers are counted by status; a 5xx
other than the memory budget's 503 is an error. ``--compare`` runs the same requests twice on
one server, without and then with the attacker, and prints /check's latency side by side.

    python bench/serve_load.py                      # 2,000 requests, 8 clients
    python bench/serve_load.py --requests 10000     # the soak
    python bench/serve_load.py --clients 16 --workers 4 --no-heatmap --folders squirrel
    python bench/serve_load.py --mix --compare --requests 600     # with and without an attacker
    python bench/serve_load.py --mix --hostile --requests 10000   # the hostile soak

Photos come from ../shared/data/photos/{squirrel,cat,other} (--photos, --folders); without
them, scikit-image's sample pictures. Only 127.0.0.1 is used. Bounded: it stops after
--requests answers or --max-seconds, whichever comes first. Exit status 1 when any error.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
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


def bomb_png(side: int = 7000) -> bytes:
    """A 7000 x 7000 PNG of about 140 KB: 147 MB of pixels once decoded."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[::50] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", optimize=True)
    return buf.getvalue()


class Attacker:
    """One hostile client: cycles through the threat model's attacks until stopped, counting
    the answers by attack and status. Traffic goes to the bench's own 127.0.0.1 server only."""

    def __init__(self, url: str, port: int, photo: tuple[str, bytes, str]):
        self.url, self.port, self.photo = url, port, photo
        self.bomb = bomb_png()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._held: list[socket.socket] = []

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self._held:
            s.close()

    def _note(self, attack: str, status: int, ok: set[int]) -> None:
        self.counts[f"{attack} {status}"] += 1
        if status not in ok:
            self.errors.append(f"{attack}: unexpected {status}")

    def _run(self) -> None:
        name, body, mime = self.photo
        with httpx.Client(base_url=self.url, timeout=120, trust_env=False) as http:
            while not (self.stop.is_set() or STOP.is_set()):
                try:
                    r = http.post("/api/v1/check", files={"file": ("bomb.png", self.bomb, "image/png")})
                    self._note("bomb png", r.status_code, {200, 503})
                    self._hold_half_sent(40)
                    r = http.post("/api/v1/uploads?confirm=true", files={"file": (name, body, mime)},
                                  headers={"Origin": "http://evil.example"})
                    self._note("cross-site POST", r.status_code, {403})
                    accepted = []
                    for _ in range(50):
                        r = http.post("/api/v1/explain", files={"file": (name, body, mime)},
                                      data={"method": "scorecam", "background": "true"})
                        self._note("job flood", r.status_code, {202, 429})
                        if r.status_code == 202:
                            accepted.append(r.json()["id"])
                    for job_id in accepted:
                        self._note("job cancel", http.delete(f"/api/v1/jobs/{job_id}").status_code, {200})
                    r = http.get("/api/v1/uploads", headers={"Host": "evil.example"})
                    self._note("foreign Host", r.status_code, {400})
                    r = http.post("/api/v1/check", content=b"x" * (25 * 2**20),
                                  headers={"Content-Type": "application/octet-stream"})
                    self._note("oversized body", r.status_code, {413})
                except httpx.HTTPError as err:
                    self.errors.append(f"attacker: {type(err).__name__}: {err}")

    def _hold_half_sent(self, n: int) -> None:
        """Keep n connections that never finish their headers (the server closes them after
        --header-timeout; they are opened again each round)."""
        for s in self._held:
            s.close()
        self._held = []
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                s.sendall(b"POST /api/v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                self._held.append(s)
            except OSError as err:
                self.counts[f"half-sent refused ({type(err).__name__})"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="answers to wait for")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=None,
                        help="the server's inference threads [its default: CPU count, max 4]")
    parser.add_argument("--warmup", type=int, default=16, help="requests before measuring")
    parser.add_argument("--no-heatmap", action="store_true", help="check with heatmap=false")
    parser.add_argument("--mix", action="store_true",
                        help="uploads, listings, explain jobs and classifies beside the checks")
    parser.add_argument("--hostile", action="store_true", help="one attacker beside the clients")
    parser.add_argument("--compare", action="store_true",
                        help="run twice on one server: without, then with the attacker")
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
    check_path = "/api/v1/check" + ("?heatmap=false" if args.no_heatmap else "")
    try:
        live = launch.start(data_dir / "data", *serve_args, "--header-timeout", "5",
                            log=log_path, wait_s=180)
    except launch.ServerStartError as err:
        print(err, file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)
        return 2
    server, url = live.proc, live.url
    try:
        print(f"server pid {server.pid} on {url}; {os.cpu_count()} CPUs on this machine; "
              f"workers {args.workers or 'default'}; {args.clients} clients; {args.requests} "
              f"requests ({'mixed' if args.mix else check_path}); {len(photos)} photos "
              f"(mean {mean_kb:.0f} KB)")
        samples: list[tuple[str, int, float, float]] = []

        def sample(when: str, n: int, t: float) -> None:
            samples.append((when, n, t, rss_mb(server.pid)))
            print(f"{when:>6} {n:>9} {t:>8.1f} {samples[-1][3]:>14.1f}", flush=True)

        print(f"\n{'when':>6} {'answered':>9} {'seconds':>8} {'server RSS MB':>14}")
        sample("start", 0, 0.0)
        with httpx.Client(base_url=url, timeout=args.timeout, trust_env=False) as client:
            for i in range(args.warmup):  # not measured
                name, body, mime = photos[i % len(photos)]
                client.post(check_path, files={"file": (name, body, mime)})
        sample("warm", 0, 0.0)

        phases = [False, True] if args.compare else [args.hostile]
        reports = []
        for hostile in phases:
            if args.compare:
                print(f"\n-- {'with' if hostile else 'without'} the attacker --")
            reports.append(run_phase(args, url, photos, check_path, server, hostile, sample))
        if server.poll() is not None:
            reports[-1]["errors"].append(f"the server exited with {server.returncode}")

        after_warm = samples[1][3]
        print(f"\nserver RSS MB: start {samples[0][3]:.0f}, after warm-up {after_warm:.0f}, "
              f"end {samples[-1][3]:.0f} ({samples[-1][3] - after_warm:+.0f} since warm-up; "
              f"range after warm-up {min(s[3] for s in samples[2:]):.0f}.."
              f"{max(s[3] for s in samples[2:]):.0f}); peak (VmHWM) {hwm_mb(server.pid):.0f}")
        if len(reports) == 2:
            print(f"\n{'/check latency, ms':<22} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}")
            for label, report in zip(("without the attacker", "with the attacker"), reports):
                lat = report["check"]
                print(f"{label:<22} " + " ".join(
                    f"{percentile(lat, q) * 1000:>6.0f}" for q in (50, 90, 99, 100)))
        errors = [e for r in reports for e in r["errors"]]
        print(f"\nerrors: {len(errors)}")
        for line in errors[:10]:
            print(f"  {line}")
        return 1 if errors else 0
    finally:
        STOP.set()
        live.stop(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


STOP = threading.Event()  # set on the way out (Ctrl-C included): clients stop issuing


def run_phase(args, url, photos, check_path, server, hostile: bool, sample) -> dict:
    """One measured run of ``args.requests`` client requests; returns latencies and errors."""
    lock = threading.Lock()
    issued = answered = 0
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    verdicts: Counter[str] = Counter()
    next_mark = 1
    cpu_start = cpu_seconds(server.pid)
    attacker = Attacker(url, int(url.rsplit(":", 1)[1]), photos[0]) if hostile else None
    if attacker:
        attacker.start()
    started = time.perf_counter()

    def one(client: httpx.Client, i: int, photo) -> tuple[str, str | None, str | None]:
        """(kind, problem, verdict) of request number i."""
        name, body, mime = photo
        kind = ("check", "check", "check", "check", "check", "check", "upload", "gallery",
                "explain job", "classify")[i % 10] if args.mix else "check"
        if kind == "check":
            r = client.post(check_path, files={"file": (name, body, mime)})
            ok = r.status_code == 200
            return kind, None if ok else f"{r.status_code} {r.text[:200]}", (
                r.json().get("verdict") if ok else None)
        if kind == "upload":
            r = client.post("/api/v1/uploads?confirm=true", files={"file": (name, body, mime)})
            ok = r.status_code in (200, 201)
        elif kind == "gallery":
            r = client.get("/api/v1/uploads?limit=12")
            ok = r.status_code == 200
        elif kind == "classify":
            r = client.post("/api/v1/classify", files={"file": (name, body, mime)})
            ok = r.status_code == 200
        else:  # a background Grad-CAM, polled to its end as the Explain page does
            r = client.post("/api/v1/explain", files={"file": (name, body, mime)},
                            data={"background": "true"})
            ok = r.status_code in (202, 429)  # 429: the attacker filled the queue; a fair answer
            if r.status_code == 202:
                job_id = r.json()["id"]
                while True:
                    state = client.get(f"/api/v1/jobs/{job_id}").json()["status"]
                    if state not in ("queued", "running"):
                        ok = state == "done"
                        break
                    time.sleep(0.05)
        return kind, None if ok else f"{kind}: {r.status_code} {r.text[:200]}", None

    def client_loop(offset: int) -> None:
        nonlocal issued, answered, next_mark
        with httpx.Client(base_url=url, timeout=args.timeout, trust_env=False) as client:
            while True:
                with lock:
                    if (STOP.is_set() or issued >= args.requests
                            or time.perf_counter() - started > args.max_seconds):
                        return
                    i = issued
                    issued += 1
                photo = photos[(i + offset) % len(photos)]
                t0 = time.perf_counter()
                try:
                    kind, problem, verdict = one(client, i, photo)
                except (httpx.HTTPError, ValueError) as err:
                    kind, problem, verdict = "error", f"{type(err).__name__}: {err}", None
                elapsed = time.perf_counter() - t0
                with lock:
                    answered += 1
                    latencies.setdefault(kind, []).append(elapsed)
                    if problem:
                        errors.append(f"{photo[0]}: {problem}")
                    elif verdict:
                        verdicts[verdict] += 1
                    while next_mark <= 10 and answered >= next_mark * args.requests / 10:
                        sample(f"{next_mark * 10}%", answered, time.perf_counter() - started)
                        next_mark += 1

    threads = [threading.Thread(target=client_loop, args=(k * 7,), daemon=True)
               for k in range(args.clients)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # in slices, so Ctrl-C reaches the main thread
    except KeyboardInterrupt:
        STOP.set()
        raise
    wall = time.perf_counter() - started
    if attacker:
        attacker.join()
        errors.extend(attacker.errors)
    sample("end", answered, wall)
    cpu_used = cpu_seconds(server.pid) - cpu_start
    print(f"\nanswered {answered} in {wall:.1f} s: {answered / wall:.1f} requests/s; server CPU "
          f"{cpu_used:.0f} s ({cpu_used / max(answered, 1) * 1000:.0f} ms a request); load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for kind, values in sorted(latencies.items()):
        lat = sorted(values)
        print(f"  {kind:<12} {len(lat):>6}  p50 {percentile(lat, 50) * 1000:>6.0f} ms  p90 "
              f"{percentile(lat, 90) * 1000:>6.0f}  p99 {percentile(lat, 99) * 1000:>6.0f}  max "
              f"{lat[-1] * 1000:>6.0f}")
    print(f"verdicts: {dict(sorted(verdicts.items()))}")
    if attacker:
        print("attacker's answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(attacker.counts.items())))
    return {"check": sorted(latencies.get("check", [])), "errors": errors}


if __name__ == "__main__":
    sys.exit(main())

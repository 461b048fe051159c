"""belka scan: the local runner against the Ray runner, at 1 and 2 workers, on N files.

For each configuration a fresh process lists N files (the shared photos repeated by symbolic
link in a temporary folder), scans them into Parquet, and reports:

* img/s over the whole 2,000-file scan (model load, listing and writing included);
* the fixed cost: a 16-file scan's wall time (model load, and for Ray the actor pool starting
  and loading one model per actor), plus for Ray ``ray.init`` of a one-machine cluster;
* CPU seconds per image: user + system time of the process and all its descendants (sampled
  per process every 0.2 s, so a worker that exits keeps what it used), which, unlike img/s, does
  not depend on how busy the machine is with other work;
* peak memory: the largest summed RSS of the process and all its descendants (Ray's GCS,
  raylet and workers included), sampled every 0.2 s from /proc (shared pages count once per
  process, so this overstates Ray a little).

Run: ``python bench/bulk_scan.py [--files 2000] [--task classify] [--only local ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scan import repeat_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(os.environ.get("BELKA_SHARED", ROOT.parent / "shared")) / "data" / "photos"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


TICK = os.sysconf("SC_CLK_TCK")


def tree_sample(root: int) -> tuple[float, dict[int, float]]:
    """(summed RSS in MiB, {pid: CPU seconds}) of ``root`` and its descendants."""
    tree, todo, total, cpu = _children(), [root], 0, {}
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            pass
    return total / 1024, cpu


class PeakSampler(threading.Thread):
    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, 0.0, threading.Event()
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        rss, cpu = tree_sample(os.getpid())
        self.peak = max(self.peak, rss)
        self.cpu.update(cpu)

    def cpu_seconds(self) -> float:
        self.sample()
        return sum(self.cpu.values())

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)


def child(runner: str, workers: int, folder: str, out: str, task: str) -> dict:
    from belka import bulk

    sampler = PeakSampler()
    sampler.start()
    result: dict = {"runner": runner, "workers": workers}
    if runner == "ray":
        from belka.bulk import ray_runner

        started = time.perf_counter()
        ray_runner.connect(None, num_cpus=os.cpu_count())
        result["init_s"] = time.perf_counter() - started
    job = bulk.Task(task, allow="squirrel" if task == "check" else None)
    started = time.perf_counter()
    bulk.scan([folder], f"{out}/small", job, runner=runner, workers=workers, limit=16,
              progress=False)
    result["first16_s"] = time.perf_counter() - started
    cpu_before = sampler.cpu_seconds()
    result["load_before"] = os.getloadavg()[0]
    started = time.perf_counter()
    summary = bulk.scan([folder], f"{out}/all", job, runner=runner, workers=workers,
                        progress=False)
    result["scan_s"] = time.perf_counter() - started
    result["cpu_ms_per_img"] = 1000 * (sampler.cpu_seconds() - cpu_before) / summary.written
    result["load_after"] = os.getloadavg()[0]
    result["files"] = summary.written
    result["img_s"] = summary.written / result["scan_s"]
    sampler.stop.set()
    sampler.join()
    result["peak_rss_mb"] = sampler.peak
    if runner == "ray":
        import ray

        ray.shutdown()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--task", choices=["classify", "check", "embed"], default="classify")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--only", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--child", nargs=4, metavar=("RUNNER", "WORKERS", "FOLDER", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runner, workers, folder, out = args.child
        print(json.dumps(child(runner, int(workers), folder, out, args.task)), flush=True)
        return

    import belka
    from belka.engine import physical_cores

    belka.load().engine         # the ONNX export, once, before any timed run
    sources = sorted(p for p in args.photos.rglob("*")
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with tempfile.TemporaryDirectory(prefix="belka-bulk-bench-") as tmp:
        folder = Path(tmp) / "photos"
        repeat_files(sources, args.files, folder)
        rows = []
        for runner in args.only:
            for workers in args.workers:
                out = Path(tmp) / f"out-{runner}-{workers}"
                print(f"... {runner} runner, {workers} worker(s)", file=sys.stderr, flush=True)
                done = subprocess.run([sys.executable, __file__, "--task", args.task, "--child",
                                       runner, str(workers), str(folder), str(out)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{runner} with {workers} worker(s) failed")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nbelka scan --task {args.task}, {args.files} files ({len(sources)} photos repeated), "
          f"{os.cpu_count()} CPUs ({physical_cores()} physical cores)\n")
    print("| runner | workers | img/s | scan s | CPU ms/img | 16-file scan s | ray.init s | "
          "peak RSS MiB | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        init = f"{r['init_s']:.1f}" if "init_s" in r else "-"
        print(f"| {r['runner']} | {r['workers']} | {r['img_s']:.1f} | {r['scan_s']:.1f} | "
              f"{r['cpu_ms_per_img']:.0f} | {r['first16_s']:.1f} | {init} | "
              f"{r['peak_rss_mb']:.0f} | {r['load_before']:.1f}-{r['load_after']:.1f} |")


if __name__ == "__main__":
    main()

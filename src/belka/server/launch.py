"""Run `belka serve` in a subprocess on a free 127.0.0.1 port and wait until it answers
``/api/v1/health``: for the crash and browser tests and the load bench.

    with start(Path("belka-data"), "--allow", "squirrel", log=Path("server.log")) as server:
        ...  # server.url, server.proc, server.log_tail()

Standard output and standard error both go to ``log``; when the server does not come up in
``wait_s`` seconds (or exits first), :class:`ServerStartError` says so with the tail of that log.
Uses only the standard library (no httpx), so it works wherever belka is installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HEALTH = "/api/v1/health"
LOG_TAIL_CHARS = 3000


class ServerStartError(RuntimeError):
    """`belka serve` did not answer /api/v1/health in time, or exited first."""


def belka_command() -> list[str]:
    """The `belka` console script of this interpreter's environment (or the same via -c)."""
    script = Path(sys.executable).with_name("belka")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from belka.cli import main; sys.exit(main())"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# No proxy, whatever the environment says: the server is on this machine.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str, timeout: float) -> bool:
    try:
        with _opener.open(url + HEALTH, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class LiveServer:
    """A running `belka serve` subprocess."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    command: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, timeout: float = 2) -> bool:
        return _healthy(self.url, timeout)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> int | None:
        """Ctrl-C (SIGINT, a clean shutdown), then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self, timeout: float = 30) -> int | None:
        """SIGKILL at once (a crash), and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(data_dir: Path | str, *args: str, log: Path | str | None = None,
          host: str = "127.0.0.1", port: int | None = None, wait_s: float = 120,
          env: dict[str, str] | None = None, tries: int = 3) -> LiveServer:
    """`belka serve --host HOST --port PORT --data DATA_DIR *args`, answering /api/v1/health.

    ``port`` defaults to a free one; if another process takes it before the server binds it,
    a fresh port is tried (``tries`` times in all). ``log`` (appended to; a temporary file when
    not given) receives the server's stdout and stderr. Raises :class:`ServerStartError` with
    the log's tail when the server exits or is not healthy within ``wait_s`` seconds."""
    if log is None:
        fd, name = tempfile.mkstemp(prefix="belka-serve-", suffix=".log")
        os.close(fd)
        log = name
    log = Path(log)
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    for attempt in range(1, max(1, tries) + 1):
        chosen = port or free_port(host)
        command = [*belka_command(), "serve", "--host", host, "--port", str(chosen),
                   "--data", str(data_dir), *args]
        log_start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = LiveServer(f"http://{host}:{chosen}", chosen, proc, log, command)
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if server.healthy():
                    return server
                time.sleep(0.2)
        except BaseException:  # Ctrl-C while waiting: leave no server behind
            server.kill()
            raise
        exited = proc.poll() is not None
        server.kill()
        this_run = log.read_bytes()[log_start:].decode(errors="replace")
        if (exited and port is None and attempt < tries
                and "already in use" in this_run.lower()):
            continue  # lost the race for the port: pick another
        why = (f"exited with status {proc.returncode}" if exited
               else f"did not answer {HEALTH} within {wait_s:g} s")
        raise ServerStartError(f"belka serve on {server.url} {why}\ncommand: {' '.join(command)}"
                               f"\nlog {log} (last {LOG_TAIL_CHARS} characters):\n"
                               f"{this_run[-LOG_TAIL_CHARS:]}")
    raise AssertionError("unreachable")

"""Shared test fixtures: where ../shared lives, and skipping with a message when it is absent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BELKA_SHARED", ROOT.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") and SHARED.exists():
            pytest.fail(f"{path} is missing from ../shared in CI")
        pytest.skip(f"{path} not present: these tests need the shared photos and fixtures "
                    "(../shared beside the repository, or BELKA_SHARED=/path/to/shared)")
    return path


def _wait_for_job(client, job_id: str, timeout_s: float = 120.0) -> dict:
    """Poll ``GET /api/v1/jobs/{id}`` until the job is no longer queued or running; its status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/jobs/{job_id}").json()
        if status["status"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end within {timeout_s:g} s")


@pytest.fixture
def wait_for_job():
    """``wait_for_job(client, job_id)``: a server job's final status (tests of HTTP jobs)."""
    return _wait_for_job


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _need(SHARED / "fixtures")


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return _need(SHARED / "data" / "photos")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's weight cache; the session gets its own, set before any
    module-scoped fixture builds a model or an engine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BELKA_CACHE", str(tmp_path_factory.getbasetemp() / "belka-cache"))
        # FastAPI's test client calls itself "testserver"; the server answers only to the
        # names it is told (loopback ones by default), so the tests name it.
        mp.setenv("BELKA_ALLOWED_HOSTS", "testserver")
        mp.delenv("BELKA_TOKEN", raising=False)
        yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One plain line per reason when tests were skipped, so `make test` says what it needs."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    needs = {"shared": 0, "browser": 0, "other": 0}
    for report in skipped:
        text = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if "BELKA_SHARED" in text or "../shared" in text:
            needs["shared"] += 1
        elif "Chromium" in text or "Playwright" in text or "browser" in text:
            needs["browser"] += 1
        else:
            needs["other"] += 1
    write = terminalreporter.write_line
    if needs["shared"]:
        write(f"belka: {needs['shared']} test(s) skipped because ../shared (the photos and "
              "fixtures) was not found; put it beside the repository or set BELKA_SHARED")
    if needs["browser"]:
        write(f"belka: {needs['browser']} test(s) skipped because Chromium or Playwright is "
              "missing: apt-get install -y chromium (Debian's; .ci/run does this)")
    if needs["other"]:
        write(f"belka: {needs['other']} test(s) skipped for other reasons (listed above)")

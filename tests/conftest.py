"""Shared test fixtures: where ../shared lives, and skipping with a message when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BELKA_SHARED", ROOT.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") and SHARED.exists():
            pytest.fail(f"{path} is missing from ../shared in CI")
        pytest.skip(f"{path} not present (../shared is absent on this machine)")
    return path


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

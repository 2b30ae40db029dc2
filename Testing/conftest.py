"""Shared fixtures. Tests that need ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = Path(os.environ.get("RTRAI_TEST_ARTIFACTS", REPO / "test-artifacts"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set RTRAI_SHARED_DATA or put ../shared/data beside the repo)")
    return path


def process_alive(pid: int) -> bool:
    """Is process ``pid`` running: not gone, and (where /proc tells) not a zombie waiting to be reaped? POSIX."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS), or gone meanwhile
        return True


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


@pytest.fixture
def openkbp_pt201() -> Path:
    return shared_path("openkbp", "validation-pats", "pt_201")


@pytest.fixture
def artifacts() -> Path:
    """A folder kept after the run (screenshots, reports) for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

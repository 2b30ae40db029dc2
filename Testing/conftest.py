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


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc; None when gone or unknown): with its pid, it
    names one process, so that a test never mistakes (or signals) another process that reused the number."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """The live processes below ``pid`` (its children, theirs, ...), each with its start time (Linux, /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = (int(fields[1]), int(fields[19]))
    found, frontier = {}, {pid}
    while frontier:
        frontier = {child for child, (parent, _) in parents.items() if parent in frontier and child not in found}
        found.update({child: parents[child][1] for child in frontier})
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` (pid -> start time, as :func:`descendants` gives) that are the same processes, alive."""
    return [pid for pid, started in processes.items() if process_alive(pid) and process_started(pid) == started]


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

"""Atomic outputs: nothing half-written is ever left where a user looks.

- :func:`atomic_file` writes to a temporary file beside the target and renames it into place.
- :func:`output_folder` builds a whole result folder in a hidden temporary sibling and moves it into place only when
  the block succeeds; on error the temporary folder is removed and the target is left as it was. Into an existing
  folder its ``provenance.json`` (the mark of a finished result) is removed first and moved in last, so a folder
  interrupted half-way through the move never looks finished.

Temporaries are named ``.<target name>.<pid>.<random>.tmp[<suffix>]``. A process killed while writing (``kill -9``)
leaves its temporary behind; the next write of the same target removes those of its own naming whose process is
gone and that are older than this run (and those of the older naming ``.<name>.<random>.tmp`` that are older than
this run). Nothing else in the folder is touched: not a file of another name, not a temporary of a process still
running, not a symbolic link.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rtrai.core.errors import InputError

# The file whose presence marks a finished output folder (rtrai.core.provenance writes it last).
FINISHED_MARK = "provenance.json"

_RUN_STARTED = time.time()  # "older than this run": temporaries last written before this process imported us
_OURS: set[Path] = set()  # temporary folders this process made: nothing stale can be inside them


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _tag(name: str) -> str:
    """The target's name as it appears in its temporaries (shortened, with a hash, when very long)."""
    if len(name) <= 120:
        return name
    return f"{name[:80]}~{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` if the block succeeds.

    ``suffix`` defaults to the target's own (so writers that choose a format by extension keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{_tag(path.name)}.{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared like any other file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success its files are moved into ``path`` (created if needed).

    Existing files in ``path`` that the block did not write are kept; files it wrote replace theirs. A folder of the
    user's is never replaced by a file (nor a file by a folder): that refuses with :class:`InputError`, before
    anything is moved.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path, None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_tag(path.name)}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)
    _OURS.add(tmp)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        else:
            _merge_into(tmp, path)
    finally:
        _OURS.discard(tmp)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _merge_into(src: Path, dst: Path) -> None:
    """Move ``src``'s files into the existing folder ``dst``; ``dst``'s finished mark goes first and comes back last."""
    if not dst.is_dir():
        raise InputError(f"cannot write the output folder {dst}: a file of that name is in the way")
    conflict = _kind_conflict(src, dst)
    if conflict is not None:
        ours, theirs = conflict
        raise InputError(f"cannot write {theirs}: the existing {'folder' if theirs.is_dir() else 'file'} there would "
                         f"be replaced by a {'folder' if ours.is_dir() else 'file'} of the new output; move it away "
                         "or choose another output")
    mark = src / FINISHED_MARK
    if mark.is_file() and (dst / FINISHED_MARK).is_file() and not (dst / FINISHED_MARK).is_symlink():
        (dst / FINISHED_MARK).unlink()  # unfinished from here on, until the new mark is moved in
    _move_all(src, dst, skip=mark if mark.is_file() else None)
    if mark.is_file():
        os.replace(mark, dst / FINISHED_MARK)


def _kind_conflict(src: Path, dst: Path) -> tuple[Path, Path] | None:
    """The first (new item, existing item) where one is a folder and the other not, or None."""
    for item in src.iterdir():
        target = dst / item.name
        if not os.path.lexists(target):
            continue
        if item.is_dir() != target.is_dir():
            return item, target
        if item.is_dir():
            found = _kind_conflict(item, target)
            if found is not None:
                return found
    return None


def _move_all(src: Path, dst: Path, skip: Path | None = None) -> None:
    for item in src.iterdir():
        if item == skip:
            continue
        target = dst / item.name
        if item.is_dir() and target.is_dir():
            _move_all(item, target)
        else:
            os.replace(item, target)


# ------------------------------------------------------------------------------------- stale temporaries of a kill

def remove_stale_temporaries(path: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Remove the temporaries that a killed process left for the target ``path``: of our naming for that very
    target (``suffix``: the one :func:`atomic_file` uses; None for :func:`output_folder`'s folders), last written
    before this run began, and made by a process that is gone (or, for the older naming without a process id, of
    any). Returns what was removed."""
    path = Path(path)
    parent = path.parent
    if any(parent == ours or ours in parent.parents for ours in _OURS):
        return []  # inside a temporary folder of ours: made by this run, nothing stale in it
    tag = _tag(path.name)
    end = r"\.tmp" + (re.escape(suffix) if suffix is not None else "") + "$"
    current = re.compile(r"^\." + re.escape(tag) + r"\.\d+\.[a-z0-9_]{8}" + end)
    legacy_name = tag if suffix is None else path.name.split(".")[0]
    legacy = re.compile(r"^\." + re.escape(legacy_name) + r"\.[a-z0-9_]{8}" + end)
    owner = re.compile(r"\.(\d+)\.[a-z0-9_]{8}" + end)  # any name that may carry a process id is treated as such
    prefixes = (f".{tag}.", f".{legacy_name}.")
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefixes)]
    except OSError:
        return []
    for entry in entries:
        if not current.match(entry.name) and not legacy.match(entry.name):
            continue
        try:
            if entry.is_symlink() or entry.is_dir(follow_symlinks=False) != (suffix is None):
                continue  # we make folders for folders and files for files, never links
            written = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if written >= _RUN_STARTED:
            continue  # may belong to a run going on now
        pid = owner.search(entry.name)
        if pid is not None and not _owner_gone(int(pid.group(1)), written):
            continue
        target = Path(entry.path)
        try:
            if suffix is None:
                shutil.rmtree(target)
            else:
                target.unlink()
        except FileNotFoundError:
            continue  # someone else removed it meanwhile
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        removed.append(target)
    return removed


def _owner_gone(pid: int, written: float) -> bool:
    """Has process ``pid``, which last wrote a temporary at time ``written``, gone? A zombie has; so has a pid that
    now belongs to a process started after the temporary was written (the number was reused)."""
    if pid == os.getpid():
        return False
    if os.name == "nt":
        return _gone_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, someone else's
    except OSError:
        return False
    state, started = _proc_state(pid)
    if state == "Z":
        return True
    return started is not None and started > written + 2.0


def _proc_state(pid: int) -> tuple[str | None, float | None]:
    """(state letter, start time in seconds since the epoch) from /proc, or None where it cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None


def _gone_windows(pid: int) -> bool:
    import ctypes

    query_limited_information = 0x1000
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return kernel32.GetLastError() == 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        still_active = 259
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value != still_active
    finally:
        kernel32.CloseHandle(handle)

"""Where a command may write: the one check that keeps inputs untouched and outputs inside the folder a user named.

:func:`check_output` is called by the command line for every command before it runs (``rtrai.cli``), with the
command's ``-o`` and every path it was given: an output that is an input, lies inside an input folder or contains an
input is refused, and so is an output that cannot be created (a path through a file, a read-only or virtual file
system), each with one clear line instead of a traceback half-way through the work.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from rtrai.core.errors import InputError

# File systems that hold no user data: nothing is ever written under them.
_VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), option: str = "-o",
                 may_lie_inside: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output that would modify an input or cannot be written; returns the resolved output path.

    Inputs that do not exist are ignored (they are names, not paths: zoo models, presets). ``may_lie_inside`` are
    inputs that may sit inside the output but must not be it (a training run's own earlier model in its work folder).
    """
    out = _resolved(output)
    inside_ok = {_resolved(p) for p in may_lie_inside if p and os.path.lexists(p)}
    for given in list(inputs) + list(may_lie_inside):
        if not given or not os.path.lexists(given):
            continue
        source = _resolved(given)
        if out == source:
            raise InputError(f"{option} {output} is the input {given}: inputs are never overwritten; choose "
                             "another output")
        if source.is_dir() and _inside(out, source):
            raise InputError(f"{option} {output} lies inside the input folder {given}: inputs are never modified; "
                             "choose an output outside it")
        if _inside(source, out) and source not in inside_ok:
            raise InputError(f"the input {given} lies inside the output {option} {output}: writing there could "
                             "replace it; choose an output that does not contain the input")
    check_writable(out, output, option)
    return out


def check_writable(out: Path, shown: str | os.PathLike | None = None, option: str = "-o") -> None:
    """Raise InputError when ``out`` (file or folder, existing or not) cannot be created or written."""
    shown = out if shown is None else shown
    if any(out == root or root in out.parents for root in _VIRTUAL_ROOTS):
        raise InputError(f"{option} {shown}: cannot write under {out.parts[0]}{out.parts[1]}, a virtual file system")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor != out and not ancestor.is_dir():
        raise InputError(f"{option} {shown}: cannot create it, {ancestor} is a file, not a folder")
    folder = ancestor if ancestor.is_dir() else ancestor.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {shown}: {folder} is not writable")
    try:
        stats = os.statvfs(folder)
    except OSError:
        return
    if stats.f_flag & os.ST_RDONLY:
        raise InputError(f"{option} {shown}: {folder} is on a read-only file system")


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error met while writing or reading (what, where, why)."""
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
    return f"cannot access{where}: {reason}"

"""Worker processes that never outlive their command.

A process pool's workers are children of the command that started them. When that command is killed (``kill -9``,
``kill``, a Cancel that reaches only it) nothing tells them: they would go on computing unseen, holding hundreds of
megabytes each, writing into folders that the next run is using. Ctrl-C is different (it reaches the whole process
group), but a killed parent is not. Every process pool of the library is therefore made by :func:`process_pool`,
whose workers exit within about a second of their parent going:

- on Linux the kernel kills a worker when its parent dies (``PR_SET_PDEATHSIG``), even in the middle of a long C call;
- everywhere a thread in each worker checks twice a second that its parent is still there (on POSIX an orphan's parent
  becomes another process; on Windows the thread waits on the parent's process handle).

A worker's own work is lost with it; what it was computing for is redone by the next run (the commands resume).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

WATCH_SECONDS = 0.5


def process_pool(workers: int, start_method: str | None = None, initializer: Callable | None = None,
                 initargs: Iterable = ()) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes (started with ``start_method``: "fork", "spawn", or None
    for the platform's default) that exit when this process is gone; ``initializer(*initargs)`` then runs in each
    worker as usual. With "spawn" the initializer must be importable (a module-level function).

    Submit work from the thread that made the pool (on Linux a worker is also stopped when the thread that started
    it ends, so the kernel's watch is used only for pools made on the main thread)."""
    context = multiprocessing.get_context(start_method)
    on_main_thread = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(max(1, int(workers)), mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), on_main_thread, initializer, tuple(initargs)))


def _start_worker(parent: int, kernel_watch: bool, initializer, initargs) -> None:
    exit_with_parent(parent, kernel_watch=kernel_watch)
    if initializer is not None:
        initializer(*initargs)


def exit_with_parent(parent: int | None = None, every: float = WATCH_SECONDS, kernel_watch: bool = True) -> None:
    """In a worker process: exit (status 1, at once, without cleanup) when ``parent`` (default: the current parent)
    is gone. Call it first thing in the worker; returns immediately."""
    parent = os.getppid() if parent is None else int(parent)
    if kernel_watch:
        _die_with_parent_linux()
    if os.name == "nt":
        target = _wait_windows
    else:
        target = _watch_posix
    threading.Thread(target=target, args=(parent, every), name="rtrai-exit-with-parent", daemon=True).start()
    if os.name != "nt" and os.getppid() != parent:  # the parent died before the watch began
        os._exit(1)


def _watch_posix(parent: int, every: float) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _wait_windows(parent: int, every: float) -> None:
    import ctypes

    synchronize, infinite = 0x00100000, 0xFFFFFFFF
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, parent)
    if not handle:  # already gone (or not ours to watch: then we cannot tell, and keep working)
        if kernel32.GetLastError() == 87:  # ERROR_INVALID_PARAMETER: no such process
            os._exit(1)
        return
    kernel32.WaitForSingleObject(handle, infinite)
    os._exit(1)


def _die_with_parent_linux() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only; quietly nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl (musl without it, sandboxes): the thread still watches
        pass

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

Cohort commands run their cases through :func:`run_cases`: in this process, in such a pool (``--jobs N``), or on a
Dask cluster (``--scheduler ADDRESS`` / ``--scheduler local``), one case per task, the same function everywhere.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
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


# ------------------------------------------------------------------------------------------------ cohorts of cases
# One case per task, wherever the cases run: in this process (no flag, --jobs 1), in a pool of local processes
# (--jobs N), or on a Dask cluster (--scheduler ADDRESS, or --scheduler local for a LocalCluster of N processes).
# The task function gets one item and returns a small value; whatever it writes it writes atomically and skips when
# already finished, so a case that Dask reruns after a worker was lost is never written twice.

LOCAL = "local"
_READY: dict = {}  # per worker process: the initialisers that have run, by (function, arguments)
_READY_LOCK = threading.Lock()


def add_cluster_arguments(parser, jobs: bool = True) -> None:
    """``--scheduler`` and ``--worker-memory`` (and ``--jobs`` unless the command has its own) for a command that
    runs a cohort: the same words on every such command."""
    import argparse

    group = parser  # an argument group of the command's already (argparse does not nest groups)
    if isinstance(parser, argparse.ArgumentParser):
        group = parser.add_argument_group("cluster (Dask; pip install 'rtradiomicsai[cluster]')")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run each case as one task on the Dask cluster at ADDRESS (tcp://host:port), or 'local' "
                            "for a LocalCluster of --jobs single-threaded worker processes; the workers must see "
                            "the same paths as this command")
    group.add_argument("--worker-memory", metavar="BYTES",
                       help="with --scheduler local: memory limit of each worker (e.g. 4GB; default: the machine's "
                            "memory shared out); a worker above it is restarted and its case retried")
    if jobs:
        group.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")


def run_cases(fn: Callable, items: list, jobs: int = 1, scheduler: str | None = None,
              worker_memory: str | None = None, initializer: Callable | None = None, initargs: Iterable = (),
              start_method: str | None = None, progress=None, names: list[str] | None = None) -> Iterator:
    """Run ``fn(item)`` for every item, one task each; yields ``(index, value, error)`` as cases finish (in
    completion order), ``error`` being "" or the reason the case failed (its exception, or the worker lost too
    often): a failing case never stops the others. ``initializer(*initargs)`` runs once per worker process before
    its first case. Without ``scheduler``: in this process (``jobs`` <= 1) or a :func:`process_pool` of ``jobs``.
    ``progress`` (optional) hears the fraction of cases finished, named by ``names``."""
    from rtrai.core.progress import silent

    report = progress or silent
    names = names or [str(i) for i in range(len(items))]
    if scheduler and items:  # connected here, before the caller writes anything: a scheduler not there is said at once
        client = dask_client(scheduler, jobs, worker_memory)
        return _run_on_dask(client, fn, items, initializer, tuple(initargs), report, names)
    return _run_here(fn, items, jobs, initializer, tuple(initargs), start_method, report, names)


def _run_here(fn, items, jobs, initializer, initargs, start_method, report, names):
    done = 0
    if jobs <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for index, item in enumerate(items):
            value, error = _call_catching(fn, item)
            done += 1
            report(done / len(items), f"{names[index]} ({done}/{len(items)})")
            yield index, value, error
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    with process_pool(min(jobs, len(items)), start_method, initializer, initargs) as pool:
        pending = {pool.submit(_call_catching, fn, item): index for index, item in enumerate(items)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    value, error = future.result()  # a broken pool (a killed worker) stops the cohort, as before
                    done += 1
                    report(done / len(items), f"{names[index]} ({done}/{len(items)})")
                    yield index, value, error
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _call_catching(fn: Callable, item):
    """(value, "") or (None, the reason): an RTRAIError's message, or the unexpected exception named."""
    from rtrai.core.errors import RTRAIError

    try:
        return fn(item), ""
    except RTRAIError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a cohort records any per-case failure and goes on
        return None, f"unexpected {type(exc).__name__}: {exc}"


def _on_worker(fn: Callable, item, initializer: Callable | None, initargs: tuple):
    """The task Dask runs: the worker process's initializer (once per process and arguments), then ``fn(item)``
    as :func:`_call_catching` (a case's exception is its result, not retried: it would fail again)."""
    if initializer is not None:
        import pickle

        key = (getattr(initializer, "__module__", ""), getattr(initializer, "__qualname__", repr(initializer)),
               pickle.dumps(initargs))
        with _READY_LOCK:
            if key not in _READY:
                initializer(*initargs)
                _READY[key] = True
    return _call_catching(fn, item)


def dask_client(scheduler: str, jobs: int = 1, worker_memory: str | None = None):
    """A ``distributed.Client`` on the cluster at ``scheduler``, or (``"local"``) on a new LocalCluster of ``jobs``
    single-threaded worker processes, each limited to ``worker_memory``. The LocalCluster's workers exit with this
    process. Close the client (and ``client.cluster`` for a local one) when done."""
    from rtrai.core.errors import InputError, require

    require("distributed", "cluster")
    import logging

    import dask
    import distributed

    if scheduler == LOCAL:
        memory = "auto"
        if worker_memory:
            try:
                memory = dask.utils.parse_bytes(worker_memory)
            except (ValueError, TypeError):
                raise InputError(f"--worker-memory {worker_memory!r}: not an amount of memory (e.g. 4GB, 512MiB)") \
                    from None
        with dask.config.set({"distributed.worker.daemon": False}), warnings.catch_warnings():
            # not daemonic: a worker may start its own processes (radiomics --jobs); the dashboard moves to a free
            # port when 8787 is taken (the note names the link), without a warning about it
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = distributed.LocalCluster(n_workers=max(1, int(jobs)), threads_per_worker=1, processes=True,
                                               memory_limit=memory, silence_logs=logging.ERROR,
                                               dashboard_address=":8787")
        return distributed.Client(cluster)
    if worker_memory:
        raise InputError("--worker-memory sets the workers of --scheduler local; a cluster's workers have their own "
                         "limit (dask worker --memory-limit, or the memory of a dask-jobqueue job)")
    try:
        return distributed.Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there "
                         f"({' '.join(str(exc).split()) or type(exc).__name__})") from None


def _run_on_dask(client, fn, items, initializer, initargs, report, names):
    import uuid

    from distributed import LocalCluster, as_completed
    from distributed.scheduler import KilledWorker

    try:
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        link = f"; dashboard {client.dashboard_link}" if _has_dashboard(client) else ""
        note = f"{len(items)} cases on {workers} Dask workers at {client.scheduler.address}{link}"
        print(f"rtrai: note: {note}", file=sys.stderr, flush=True)
        report(0.0, note)
        run = uuid.uuid4().hex[:8]  # task keys unique to this run: a shared scheduler may hold other runs' tasks
        futures = {client.submit(_on_worker, fn, item, initializer, initargs, key=f"rtrai-{run}-{index}",
                                 pure=False): index for index, item in enumerate(items)}
        done = 0
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    value, error = future.result()
                except KilledWorker as exc:  # its workers died under it, again and again (out of memory?)
                    value, error = None, f"the workers running this case were lost too often ({exc}); out of memory?"
                except Exception as exc:  # noqa: BLE001 - the cluster's own failure (e.g. a worker without rtrai)
                    value, error = None, f"the Dask cluster could not run this case: {type(exc).__name__}: {exc}"
                future.release()
                done += 1
                report(done / len(items), f"{names[index]} ({done}/{len(items)})")
                yield index, value, error
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        cluster = client.cluster if isinstance(client.cluster, LocalCluster) else None  # ours: started for this run
        client.close()
        if cluster is not None:
            cluster.close()


def _has_dashboard(client) -> bool:
    """Does the scheduler serve its dashboard (it does where bokeh is installed)?"""
    try:
        return "dashboard" in client.scheduler_info(n_workers=0).get("services", {})
    except Exception:  # noqa: BLE001 - only a link in a message
        return False


def finished_result(folder, command: str, inputs: list, models: list[dict], parameters: dict | None = None) -> bool:
    """Does ``folder`` hold a finished result of ``command`` (its provenance.json, written last) from these very
    inputs (same checksums) and models (same sha256), with these ``parameters``? Then a cohort skips the case: a
    rerun, or a case Dask runs again after a worker was lost, never writes it twice."""
    import json
    from pathlib import Path

    from rtrai.core.provenance import sha256_path

    try:
        record = json.loads((Path(folder) / "provenance.json").read_text(encoding="utf-8"))
        recorded_inputs = [i["sha256"] for i in record["inputs"]]
        recorded_models = [m.get("sha256") for m in record["models"]]
        recorded_parameters = record["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if record.get("command") != command or recorded_models != [m.get("sha256") for m in models]:
        return False
    if any(recorded_parameters.get(k) != v for k, v in (parameters or {}).items()):
        return False
    return recorded_inputs == [sha256_path(p) for p in inputs if Path(p).exists()]

"""Background jobs: run the ``rtrai`` command (or any command) in a child process and follow it without blocking.

The Slicer modules use this to keep the application responsive during long work: they start a :class:`Job`, call
:meth:`Job.poll` from a ``qt.QTimer`` on the main thread, show the fraction and message in a progress bar, append
the new log lines to a text box, and offer a Cancel button wired to :meth:`Job.cancel`. Nothing here imports Qt, so
the same class runs (and is tested) outside Slicer.

The child is started with ``RTRAI_PROGRESS=lines`` so that :func:`rtrai.core.progress.default` prints the
``<filter-progress>F</filter-progress>`` / ``<filter-comment>M</filter-comment>`` lines (Slicer's convention for
processes it follows) that :meth:`Job.poll` turns into a fraction and a message, and ``rtrai run`` prints one
``<rtrai-step>{JSON}</rtrai-step>`` line per change of a step's status, which :meth:`Job.poll` hands over as
``JobUpdate.steps`` (dicts: case, name, title, status, seconds, summary, reason). Two reader threads drain stdout and
stderr so that a chatty child never blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)

_PROGRESS = re.compile(r"^\s*<filter-progress>\s*([-+0-9.eE]+)\s*</filter-progress>\s*$")
_COMMENT = re.compile(r"^\s*<filter-comment>(.*)</filter-comment>\s*$")
_STEP = re.compile(r"^\s*<rtrai-step>(.*)</rtrai-step>\s*$")

# Folder that holds the ``rtrai`` package: put on the child's PYTHONPATH so ``-m rtrai`` works even when the
# interpreter we start does not have it on its path (PythonSlicer started from an extension folder).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


@dataclass
class JobUpdate:
    """What :meth:`Job.poll` reports: current state, latest fraction (0..1) and message, the log lines (stdout and
    stderr, progress markup and step events removed) printed since the previous poll, and the step events (dicts, see
    :mod:`rtrai.pipeline.runner`) received since the previous poll, in order."""

    state: str
    fraction: float
    message: str
    lines: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


def _step_event(line: str) -> dict | None:
    """The event of a ``<rtrai-step>{JSON}</rtrai-step>`` line; None for any other line (a line that only looks like
    one stays a log line)."""
    match = _STEP.match(line)
    if not match:
        return None
    try:
        event = json.loads(match.group(1))
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def python_executable() -> str:
    """The Python interpreter that can run ``-m rtrai``.

    Outside Slicer this is ``sys.executable``. Inside the Slicer application ``sys.executable`` is the application
    itself, so we use ``PythonSlicer`` (Slicer's own Python launcher, on the application's PATH or beside it).
    """
    name = Path(sys.executable).name.lower()
    if name.startswith(("python", "pythonslicer")):
        return sys.executable
    beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
    found = shutil.which("PythonSlicer") or (str(beside) if beside.exists() else None)
    return found or sys.executable


def rtrai_argv(*args: str) -> list[str]:
    """The argv that runs ``rtrai ARGS`` in a child process."""
    return [python_executable(), "-m", "rtrai", *[str(a) for a in args]]


@contextlib.contextmanager
def job_folder(prefix: str):
    """A new temporary folder for a background job's inputs and outputs (patient data): removed here when the block
    fails (the job could not be started), else handed to the job (``temporary=``) to be removed when it is done."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


class Job:
    """One child process followed without blocking.

    >>> job = Job.rtrai("convert", "in", "out").start()     # doctest: +SKIP
    >>> update = job.poll()  # from a timer: state, fraction, message, new log lines

    ``env`` is the base environment (default: this process's); inside Slicer pass
    ``slicer.util.startupEnvironment()`` so the child does not inherit the application's launcher settings.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 temporary: Sequence[str | os.PathLike] = ()):
        if not argv:
            raise ValueError("a job needs a command to run")
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.temporary = [Path(p) for p in temporary]  # folders of patient data removed when the job is done with
        self._env = dict(os.environ if env is None else env)
        self._env["RTRAI_PROGRESS"] = "lines"
        self._env["PYTHONUNBUFFERED"] = "1"  # progress must arrive as it happens, not when the child exits
        self._env["PYTHONIOENCODING"] = "utf-8"
        self._env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, self._env.get("PYTHONPATH")) if p)
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._cancelled = False
        self._fraction = 0.0
        self._message = ""
        self._last_error = ""
        self.log: list[str] = []
        self.steps: list[dict] = []  # every step event received, in order

    @classmethod
    def rtrai(cls, *args: str, env: Mapping[str, str] | None = None, cwd=None, temporary=()) -> Job:
        """A job running ``rtrai ARGS`` with the right interpreter."""
        return cls(rtrai_argv(*args), env=env, cwd=cwd, temporary=temporary)

    def remove_temporary(self) -> None:
        """Remove the job's temporary folders (exported patient data, results already loaded); the caller does this
        once the job ended and its results were read, or when it gives the job up. Stops a running job first."""
        self.cancel()
        for folder in self.temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self.temporary = []

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> Job:
        if self._process is not None:
            raise RuntimeError("this job was already started")
        kwargs: dict = {}
        if os.name == "nt":
            # No console window flashing up from a GUI application; a group of its own so we can stop it alone.
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel() stops its children too
        self._process = subprocess.Popen(
            self.argv, env=self._env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            reader = threading.Thread(target=self._read, args=(stream, name), daemon=True, name=f"rtrai-job-{name}")
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream, name: str) -> None:
        for line in stream:
            self._queue.put((name, line.rstrip("\r\n")))
        stream.close()

    def poll(self) -> JobUpdate:
        """Drain what the child printed since the last call; never blocks. Safe to call after it finished."""
        lines, steps = [], []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if name == "stdout":
                progress = _PROGRESS.match(line)
                if progress:
                    self._fraction = min(max(float(progress.group(1)), 0.0), 1.0)
                    continue
                comment = _COMMENT.match(line)
                if comment:
                    self._message = comment.group(1)
                    continue
                event = _step_event(line)
                if event is not None:
                    steps.append(event)
                    continue
            elif line.strip():
                self._last_error = line.strip()
            lines.append(line)
        self.log.extend(lines)
        self.steps.extend(steps)
        state = self.state
        if state == SUCCEEDED:
            self._fraction = 1.0
        return JobUpdate(state, self._fraction, self._message, lines, steps)

    @property
    def state(self) -> str:
        if self._process is None:
            return PENDING
        # Finished only once the child exited AND its output is fully read, so the last poll sees every line.
        if self._process.poll() is None or any(r.is_alive() for r in self._readers) or not self._queue.empty():
            return RUNNING
        if self._cancelled:
            return CANCELLED
        return SUCCEEDED if self._process.returncode == 0 else FAILED

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def last_error(self) -> str:
        """The last non-empty stderr line (``rtrai: error: ...`` for a refused input)."""
        return self._last_error

    def wait(self, timeout: float | None = None) -> JobUpdate:
        """Block until the child exits and its output is read (for scripts and tests), then poll once."""
        if self._process is None:
            raise RuntimeError("the job was not started")
        self._process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return self.poll()

    def cancel(self, grace_seconds: float = 5.0) -> None:
        """Ask the child to stop (SIGTERM to its process group), then kill it if it is still there after the grace
        period. Does nothing when it already finished."""
        if self._process is None or self._process.poll() is not None:
            return
        self._cancelled = True
        self._signal(kill=False)
        try:
            self._process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal(kill=True)
            self._process.wait()

    def _signal(self, kill: bool) -> None:
        try:
            if os.name != "nt":
                os.killpg(self._process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            elif kill:
                self._process.kill()
            else:
                self._process.terminate()
        except (ProcessLookupError, PermissionError):
            pass  # exited between the check and the signal

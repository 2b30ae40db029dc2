"""Progress reporting that serves a terminal bar, a Slicer progress callback and a background process alike.

Library functions take ``progress: Progress | None``. A :class:`Progress` is a callable ``(fraction, message)``:
- :func:`terminal` draws a tqdm bar on stderr;
- :func:`callback` adapts any ``f(percent: int, message: str)`` (a Slicer progress dialog, a log);
- :func:`machine_lines` prints ``<filter-progress>F</filter-progress>`` and ``<filter-comment>M</filter-comment>``
  lines on stdout, the convention Slicer uses to follow a process it started (our modules parse the same lines).
``rtrai`` picks :func:`machine_lines` when ``RTRAI_PROGRESS=lines`` is set (the modules set it), else a terminal bar.
With machine lines, work made of named steps (``rtrai run``) also prints one ``<rtrai-step>{JSON}</rtrai-step>`` line
per change of a step's status (:func:`print_step_event`), which :class:`rtrai.core.jobs.Job` hands over as events.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
Progress = Callable[[float, str], None]


def silent(fraction: float, message: str = "") -> None:
    """A progress sink that ignores everything."""


def callback(fn: Callable[[int, str], object]) -> Progress:
    """Adapt ``fn(percent, message)`` (e.g. a Slicer progress bar setter)."""
    return lambda fraction, message="": fn(int(round(100 * min(max(fraction, 0.0), 1.0))), message)


def machine_lines(stream=None) -> Progress:
    out = stream or sys.stdout

    def report(fraction: float, message: str = "") -> None:
        if message:
            print(f"<filter-comment>{message}</filter-comment>", file=out)
        print(f"<filter-progress>{min(max(fraction, 0.0), 1.0):.4f}</filter-progress>", file=out, flush=True)

    return report


class terminal:  # noqa: N801 - used like a function: progress=terminal("Converting")
    """A tqdm bar on stderr (silent when stderr is not a terminal and RTRAI_PROGRESS is unset)."""

    def __init__(self, desc: str = "", total: int = 100):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="%", file=sys.stderr, leave=False,
                         disable=None, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self._total = total

    def __call__(self, fraction: float, message: str = "") -> None:
        target = int(round(min(max(fraction, 0.0), 1.0) * self._total))
        self._bar.update(target - self._bar.n)
        if message:
            self._bar.set_postfix_str(message, refresh=True)
        if target >= self._total:
            self._bar.close()


def machine_lines_enabled() -> bool:
    """True when progress goes out as machine lines (``RTRAI_PROGRESS=lines``: a Slicer module follows the process)."""
    return os.environ.get("RTRAI_PROGRESS") == "lines"


def default(desc: str = "") -> Progress:
    """The progress sink the command line uses: machine lines for Slicer, a tqdm bar for people."""
    if machine_lines_enabled():
        return machine_lines()
    return terminal(desc)


STEP_EVENT_TAG = "rtrai-step"  # <rtrai-step>{JSON}</rtrai-step>: one step event (rtrai.pipeline.runner)


def print_step_event(event: dict, stream=None) -> None:
    """Print a step event as one ``<rtrai-step>{JSON}</rtrai-step>`` line (JSON on one line, never a newline)."""
    import json

    text = json.dumps(event, ensure_ascii=True, separators=(",", ":"))
    print(f"<{STEP_EVENT_TAG}>{text}</{STEP_EVENT_TAG}>", file=stream or sys.stdout, flush=True)


def track(items: Iterable[T], progress: Progress | None, total: int | None = None, message: str = "",
          start: float = 0.0, stop: float = 1.0) -> Iterator[T]:
    """Iterate while reporting progress from ``start`` to ``stop``; the item's str is the message."""
    items = list(items) if total is None else items
    total = len(items) if total is None else total
    report = progress or silent
    for i, item in enumerate(items):
        report(start + (stop - start) * i / max(total, 1), message or str(item))
        yield item
    report(stop, message or "done")


def sub(progress: Progress | None, start: float, stop: float) -> Progress:
    """A progress sink mapping 0..1 onto ``start..stop`` of ``progress`` (for steps of a longer job)."""
    report = progress or silent
    return lambda fraction, message="": report(start + (stop - start) * fraction, message)

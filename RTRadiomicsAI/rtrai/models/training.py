"""The bookkeeping every training loop does (segmentation's and dose's): a log, CPU-hour accounting across resumed
chunks, checkpoints written atomically and read back as tensors only, and a timer that says when to write the next.

What a checkpoint holds is the loop's own business (each keeps its keys: runs written earlier resume unchanged);
this module only writes and reads it safely.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class Logger:
    """Lines ``YYYY-mm-dd HH:MM:SS message`` appended to a log file (``train.log``) and printed on stdout;
    ``prefix`` marks the stdout lines of runs that share one terminal."""

    def __init__(self, path: str | os.PathLike, prefix: str = ""):
        self.path, self.prefix = Path(path), prefix

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(self.prefix + line, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class CpuClock:
    """CPU time of a run made of chunks (``--resume``): this process's CPU time (all its threads) since the clock
    was made, plus ``before``, what the earlier chunks recorded in their checkpoint. CPU time, not wall time: on a
    shared machine it measures the work, whatever the load."""

    def __init__(self, before: float = 0.0):
        self.before = float(before)
        self._start = time.process_time()

    @property
    def seconds(self) -> float:
        return self.before + time.process_time() - self._start

    @property
    def hours(self) -> float:
        return self.seconds / 3600


class Every:
    """True once ``seconds`` have passed since it was made or last :meth:`reset` (when a checkpoint is due)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self._last = time.time()

    def due(self) -> bool:
        return time.time() - self._last > self.seconds

    def reset(self) -> None:
        self._last = time.time()


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) with ``torch.save``, atomically: a run
    killed while saving keeps its previous checkpoint."""
    import torch

    from rtrai.core.outputs import atomic_file

    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint back onto the CPU, as tensors and plain data only (``weights_only=True``: never pickle)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)

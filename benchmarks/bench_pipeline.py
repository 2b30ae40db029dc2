"""`rtrai demo` and `rtrai run` (one OpenKBP case): wall time, the per-step split and peak memory.

Goals (pipeline issue), on 2 cores: `rtrai demo` < 2 minutes; `rtrai run` on one OpenKBP case < 30 s; peak memory
<= 4 GiB. Each command runs as its own child process, as a user runs it (Python start-up and imports included); its
peak resident memory is the child's own (``os.wait4``), and the per-step seconds come from the provenance.json it
writes. There is no reference tool doing the same chain, so this prints the goals instead of a ratio.

    python benchmarks/bench_pipeline.py [PATIENT_FOLDER]     (default: ../shared/data/openkbp/validation-pats/pt_201)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats" / "pt_201"
GOALS = {"demo": 120.0, "run": 30.0}
MEMORY_GOAL_GIB = 4.0


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak resident memory of the child in GiB, exit status) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, kB on Linux
    if process.returncode:
        print(process.stderr.read().decode(errors="replace")[-2000:])
    return seconds, usage.ru_utime + usage.ru_stime, peak, process.returncode


def report(name: str, seconds: float, cpu: float, peak: float, folder: Path) -> bool:
    record = json.loads((folder / "provenance.json").read_text())
    steps = record["steps"]
    inside = sum(s["seconds"] for s in steps)
    split = ", ".join(f"{s['name']} {s['seconds']:.1f}" + ("" if s["status"] == "done" else f" ({s['status']})")
                      for s in steps)
    outside = record.get("demo", {}).get("outcome_model_seconds")  # demos that fit a synthetic outcome model
    extra = "" if outside is None else f"; synthetic cohort + outcome fit {outside:.1f} s"
    ok = seconds < GOALS[name] and peak <= MEMORY_GOAL_GIB
    print(f"rtrai {name}: {seconds:.1f} s wall (goal < {GOALS[name]:.0f} s), peak memory {peak:.2f} GiB "
          f"(goal <= {MEMORY_GOAL_GIB:g}) -> {'met' if ok else 'NOT met'}; {cpu:.1f} CPU seconds (the work: on 2 "
          f"otherwise idle cores the wall time lies between {cpu / 2:.0f} and {cpu:.0f} s)")
    print("  CPU seconds per step: " + ", ".join(f"{s['name']} {s.get('cpu_seconds', float('nan')):.1f}"
                                                  for s in steps))
    print(f"  steps {inside:.1f} s: {split}{extra}; start-up, imports and the rest "
          f"{seconds - inside - (outside or 0.0):.1f} s")
    return ok


def main() -> int:
    patient = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpus} CPUs, load average {load:.1f} before the runs (other work on the machine slows both down)")
    rtrai = [sys.executable, "-m", "rtrai"]
    ok = True  # noqa: SIM222
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        out = Path(tmp) / "demo"
        seconds, cpu, peak, code = measure(rtrai + ["demo", "-o", str(out)])
        if code:
            return code
        ok &= report("demo", seconds, cpu, peak, out)
        if not patient.is_dir():
            print(f"rtrai run: skipped, OpenKBP patient not found at {patient}")
            return 0
        out = Path(tmp) / "run"
        seconds, cpu, peak, code = measure(rtrai + ["run", str(patient), "-o", str(out)])
        if code:
            return code
        ok &= report("run", seconds, cpu, peak, out)
    print("all goals met" if ok else "some goals NOT met (see above)")
    return 0  # a missed goal is a finding to read, not a failed benchmark run (make bench goes on)


if __name__ == "__main__":
    sys.exit(main())

"""One cohort three ways: serially, on ``--scheduler local`` with 2 workers, and on a two-worker Dask cluster that this
script starts (``dask scheduler`` and two ``dask worker --nthreads 1``, the installed console scripts).

    python benchmarks/bench_cohort.py [--patients 6] [--kind CT|dose] [--workers 2]

The cohort: the first ``--patients`` OpenKBP training patients (../shared/data/openkbp/train-pats), the features of
``rtrai run`` (the CT preset, every class) in every structure each patient has, through ``rtrai radiomics --cohort``
(written as NRRD files before the clock starts, as benchmarks/bench_radiomics_cohort.py does). Prints, for each way,
the wall time, cases (patients) per minute and the speed-up over the serial run, checks that the three tables are
byte-identical (exit status 1 if not), and what to expect for 1000 patients on N workers from the measured per-patient
cost and the cluster's start-up time. One BLAS thread per process everywhere.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_radiomics_cohort import openkbp_cohort  # the same cohort files as the radiomics benchmark


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtrai(batch: Path, params: Path, output: Path, env: dict, *extra: str) -> float:
    command = [sys.executable, "-m", "rtrai", "radiomics", "--cohort", str(batch), "--params", str(params),
               "-o", str(output), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


def start_cluster(workers: int, env: dict, logs: Path) -> tuple[str, list[subprocess.Popen], float]:
    """A ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes on 127.0.0.1; returns the
    address, the processes and the seconds until every worker had joined."""
    from distributed import Client

    dask = shutil.which("dask") or sys.exit("no `dask` command: pip install 'rtradiomicsai[cluster]'")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = time.perf_counter()
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    commands += [[dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                  "--name", f"w{i + 1}"] for i in range(workers)]
    processes = []
    for i, command in enumerate(commands):
        with open(logs / f"dask-{i}.log", "w") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, processes, time.perf_counter() - started


def local_cluster_startup(workers: int, env: dict) -> float:
    """Seconds to start (and close) a LocalCluster of ``workers`` as ``--scheduler local`` does, in a new process."""
    code = ("import time; t = time.perf_counter(); from rtrai.core.workers import dask_client\n"
            f"if __name__ == '__main__':\n c = dask_client('local', {workers}); c.submit(sum, [1]).result()\n"
            " print(time.perf_counter() - t); k = c.cluster; c.close(); k.close()")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--kind", choices=("CT", "dose"), default="CT", help="the CT rows or the dose rows")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "RTRAI_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        work = Path(tmp)
        batch, params = openkbp_cohort(work, args.patients)[0 if args.kind == "CT" else 1]
        times, tables = {}, {}
        times["serial"] = rtrai(batch, params, work / "serial.csv", env)
        times[f"--scheduler local --jobs {args.workers}"] = rtrai(
            batch, params, work / "local.csv", env, "--scheduler", "local", "--jobs", str(args.workers))
        address, processes, startup = start_cluster(args.workers, env, work)
        try:
            times[f"--scheduler tcp:// ({args.workers} dask workers)"] = rtrai(
                batch, params, work / "cluster.csv", env, "--scheduler", address)
        finally:
            for process in processes[::-1]:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
        for name in ("serial", "local", "cluster"):
            tables[name] = (work / f"{name}.csv").read_bytes()
        local_startup = local_cluster_startup(args.workers, env)
    n = args.patients
    serial = times["serial"]
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work shares "
          "the cores: a speed-up needs as many free cores as workers)")
    print(f"\n{'run':42s} {'seconds':>9s} {'cases/min':>10s} {'speed-up':>9s}")
    for name, seconds in times.items():
        print(f"{name:42s} {seconds:9.1f} {60 * n / seconds:10.2f} {serial / seconds:8.2f}x")
    print(f"(the two-worker cluster took {startup:.1f} s to start before its run; not counted above)")
    identical = tables["serial"] == tables["local"] == tables["cluster"]
    print(f"tables byte-identical to the serial run: {identical}")
    per_case = serial / n  # includes the command's own start-up, spread over the cases: an upper bound
    print(f"\nper-patient cost (serial, one core): {per_case:.1f} s; a LocalCluster of {args.workers} workers starts "
          f"in {local_startup:.1f} s, the script's two-worker cluster joined in {startup:.1f} s")
    print("1000 patients, one task each, on N single-threaded workers with a free core each (each worker also "
          "loads pyradiomics once, a few seconds):")
    for workers in (1, 8, 32, 128):
        hours = (1000 * per_case / workers + local_startup) / 3600
        print(f"  N = {workers:3d}: {hours:6.2f} h ({1000 / (hours * 60):6.1f} cases/min)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

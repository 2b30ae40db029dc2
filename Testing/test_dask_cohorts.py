"""Cohorts on Dask (``--scheduler``): a real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (the
installed console scripts), and ``--scheduler local``; the results equal a serial run's byte for byte, a worker
killed (-9) while it holds a case loses nothing and duplicates nothing, a failing case is recorded and the cohort
goes on, each local worker gets the memory limit asked for, and no process outlives the command."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import descendants, shared_path, still_running
from rtrai import cli

TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RTRAI_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """Ten rows of pyradiomics' own sample cases (each case twice, under its own ID) and one that fails (an image
    and a mask on different grids) in the middle."""
    data = shared_path("pyradiomics", "data")
    folder = tmp_path_factory.mktemp("dask-batch")
    rows = ["ID,Image,Mask"]
    for copy in (1, 2):
        for name in ("brain1", "brain2", "breast1"):
            rows.append(f"{name}-{copy},{data / f'{name}_image.nrrd'},{data / f'{name}_label.nrrd'}")
        if copy == 1:
            rows.append(f"bad,{data / 'brain1_image.nrrd'},{data / 'brain2_label.nrrd'}")
    rows += [f"prostate-{copy},{data / 'prostate_phantom_subvolume.nrrd'},"
             f"{data / 'prostate_phantom_subvolume-label.nrrd'}" for copy in (1, 2, 3)]
    path = folder / "cohort.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def serial(batch, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("serial") / "features.csv"
    assert cli.main(["radiomics", "--cohort", str(batch), "-o", str(out)]) == 2  # the bad row
    return out.read_text()


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` (without nanny: a killed worker stays dead) on free ports."""
    dask = shutil.which("dask") or pytest.fail("the `dask` command is not installed (pip install "
                                               "'rtradiomicsai[cluster]')")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = {"scheduler": [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]}
    for name in ("w1", "w2"):
        commands[name] = [dask, "worker", address, "--name", name, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                          "--memory-limit", "2GB", "--host", "127.0.0.1"]
    processes = {}
    for name, command in commands.items():
        with open(tmp_path / f"{name}.log", "w") as log:
            processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment())
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address, processes, tmp_path
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _start_rtrai(args: list[str], folder: Path) -> tuple[subprocess.Popen, Path]:
    err = folder / "rtrai.err"
    with open(err, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "rtrai", *args], stdout=subprocess.DEVNULL, stderr=handle,
                                   env=_environment())
    return process, err


def _kill_a_worker_holding_a_case(address: str, pid_of, rtrai: subprocess.Popen) -> str:
    """Wait until a worker holds one of the cohort's cases, then kill -9 that worker; returns the case's task key.
    ``pid_of(client, worker_address)`` gives the process to kill."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and rtrai.poll() is None:
            for worker, keys in client.processing().items():
                ours = [k for k in keys if str(k).startswith("rtrai-")]
                if ours:
                    os.kill(pid_of(client, worker), signal.SIGKILL)
                    return str(ours[0])
            time.sleep(0.02)
    pytest.fail(f"no worker held a case before the command ended (exit {rtrai.poll()})")


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


def _check_same_as_serial(out: Path, serial: str) -> None:
    text = out.read_text()
    ids = [r["ID"] for r in _rows(text)]
    assert len(ids) == len(set(ids)) == 10  # nothing lost, nothing twice
    failed = {r["ID"]: r["error"] for r in _rows(text) if r["error"]}
    assert list(failed) == ["bad"] and "different grids" in failed["bad"]
    assert text == serial  # bit for bit: the same features, in the batch file's order


def test_scheduler_address_equals_serial_and_survives_a_killed_worker(batch, serial, dask_cluster):
    address, processes, folder = dask_cluster
    out = folder / "features.csv"
    rtrai, err = _start_rtrai(["radiomics", "--cohort", str(batch), "-o", str(out), "--scheduler", address], folder)
    names = {}

    def pid_of(client, worker):
        names.update({w: info["name"] for w, info in client.scheduler_info(n_workers=-1)["workers"].items()})
        return processes[names[worker]].pid

    key = _kill_a_worker_holding_a_case(address, pid_of, rtrai)
    assert rtrai.wait(timeout=TIMEOUT) == 2, err.read_text()[-3000:]  # 2: the bad row, recorded
    killed = [n for n in ("w1", "w2") if processes[n].poll() is not None]
    assert len(killed) == 1 and processes[killed[0]].returncode == -signal.SIGKILL
    _check_same_as_serial(out, serial)
    messages = err.read_text()
    assert f"on 2 Dask workers at {address}" in messages and "bad: " in messages
    # The scheduler saw the worker go while it held the case (the case then ran on the other worker).
    log = (folder / "scheduler.log").read_text()
    assert f"name: {killed[0]} " in log.split("Remove worker", 1)[-1].split("\n", 1)[0], log[-3000:]
    assert key.startswith("rtrai-")
    assert not (folder / "features.partial.csv").exists()

    # Run again with --resume over the finished table: only the failed row is tried again, the rest are kept.
    again = subprocess.run([sys.executable, "-m", "rtrai", "radiomics", "--cohort", str(batch), "-o", str(out),
                            "--resume", "--scheduler", address], capture_output=True, text=True, timeout=TIMEOUT,
                           env=_environment(), check=False)
    assert again.returncode == 2 and "0 extracted, 1 failed, 9 kept from before" in again.stdout
    assert out.read_text() == serial


def test_scheduler_local_equals_serial_honours_memory_and_survives_a_killed_worker(batch, serial, tmp_path):
    out = tmp_path / "features.csv"
    rtrai, err = _start_rtrai(["radiomics", "--cohort", str(batch), "-o", str(out), "--scheduler", "local",
                               "--jobs", "2", "--worker-memory", "1500MB"], tmp_path)
    deadline = time.time() + TIMEOUT
    found = None
    while found is None and time.time() < deadline and rtrai.poll() is None:
        found = re.search(r"on 2 Dask workers at (tcp://\S+)", err.read_text())
        time.sleep(0.1)
    assert found, err.read_text()[-3000:]
    address = found.group(1).rstrip(";")
    from distributed import Client

    with Client(address, timeout="30s") as client:
        limits = [info["memory_limit"] for info in client.scheduler_info(n_workers=-1)["workers"].values()]
        assert limits == [1_500_000_000] * 2
        workers_before = client.run(os.getpid)
    below = descendants(rtrai.pid)
    assert set(workers_before.values()) <= set(below)  # the workers are this command's own processes

    def pid_of(client, worker):
        return workers_before[worker]

    _kill_a_worker_holding_a_case(address, pid_of, rtrai)
    assert rtrai.wait(timeout=TIMEOUT) == 2, err.read_text()[-3000:]
    _check_same_as_serial(out, serial)
    time.sleep(1.0)
    assert still_running(below) == []  # the command is gone, and so is every worker it started


def test_a_scheduler_that_is_not_there_is_one_line_and_exit_2(batch, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"
    code = cli.main(["radiomics", "--cohort", str(batch), "-o", str(tmp_path / "f.csv"), "--scheduler", address])
    err = capsys.readouterr().err
    assert code == 2 and f"--scheduler {address}: cannot reach a Dask scheduler there" in err
    assert "Traceback" not in err
    assert cli.main(["radiomics", "--cohort", str(batch), "-o", str(tmp_path / "g.csv"), "--scheduler", "local",
                     "--worker-memory", "lots"]) == 2
    assert "--worker-memory 'lots': not an amount of memory" in capsys.readouterr().err


def test_robustness_cohort_on_a_local_cluster_equals_serial(tmp_path):
    """``rtrai radiomics robustness --cohort``: each case's perturbations one task; the ICC table is the serial one."""
    data = shared_path("pyradiomics", "data")
    batch = tmp_path / "c.csv"
    batch.write_text("Image,Mask\n" + "".join(f"{data / f'{n}_image.nrrd'},{data / f'{n}_label.nrrd'}\n"
                                              for n in ("breast1", "brain1", "brain2")))
    params = tmp_path / "small.yaml"
    params.write_text("imageType: {Original: {}}\nfeatureClass: {firstorder: [Mean, Entropy], glcm: [Contrast]}\n"
                      "setting: {binWidth: 25}\n")
    common = ["radiomics", "robustness", "--cohort", str(batch), "--params", str(params), "--perturbations", "4"]
    assert cli.main([*common, "-o", str(tmp_path / "serial.csv")]) == 0
    assert cli.main([*common, "-o", str(tmp_path / "local.csv"), "--scheduler", "local", "--jobs", "2"]) == 0
    assert (tmp_path / "local.csv").read_text() == (tmp_path / "serial.csv").read_text()
    assert len(_rows((tmp_path / "serial.csv").read_text())) == 3


def test_segment_folder_on_a_local_cluster_equals_serial_and_skips_finished(tmp_path):
    """``rtrai segment PATIENTS --scheduler local``: each worker loads the model itself; the structures equal the
    serial run's voxel for voxel; run again, the finished patients are kept untouched and no cluster is started."""
    import numpy as np
    import SimpleITK as sitk

    from rtrai.io.case_io import write_case
    from rtrai.io.segfile import read_segmentation
    from rtrai.phantom import make_phantom

    for seed in (0, 1):
        write_case(make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0)), tmp_path / "pats" / f"p{seed}")
    serial, cluster = tmp_path / "serial", tmp_path / "cluster"
    assert cli.main(["segment", str(tmp_path / "pats"), "-o", str(serial)]) == 0
    command = ["segment", str(tmp_path / "pats"), "-o", str(cluster), "--scheduler", "local", "--jobs", "2"]
    assert cli.main(command) == 0
    for patient in ("p0", "p1"):
        ours, _ = read_segmentation(cluster / patient / "Structures.seg.nrrd")
        theirs, _ = read_segmentation(serial / patient / "Structures.seg.nrrd")
        assert sorted(ours) == sorted(theirs) and len(ours) >= 5
        for name in ours:
            np.testing.assert_array_equal(sitk.GetArrayFromImage(ours[name]), sitk.GetArrayFromImage(theirs[name]))
    stamps = {p: (cluster / p / "provenance.json").stat().st_mtime_ns for p in ("p0", "p1")}
    started = time.perf_counter()
    assert cli.main(command) == 0
    assert time.perf_counter() - started < 60  # nothing to do: no cluster was started
    assert stamps == {p: (cluster / p / "provenance.json").stat().st_mtime_ns for p in ("p0", "p1")}

"""rtrai.core.jobs: real child processes, real progress lines, real cancellation."""

from __future__ import annotations

import os
import sys
import time

import pytest
from conftest import process_alive

from rtrai.core import jobs
from rtrai.core.jobs import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, Job


def _poll_until_finished(job: Job, timeout: float = 60.0) -> list:
    """Poll like the Slicer QTimer does; return every update seen."""
    updates = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        update = job.poll()
        updates.append(update)
        if update.finished:
            return updates
        time.sleep(0.02)
    job.cancel(grace_seconds=1)
    pytest.fail(f"job did not finish within {timeout} s: {job.argv}")


def test_progress_lines_are_parsed_from_the_real_progress_sink():
    # The child reports through rtrai.core.progress.default, which must pick machine lines from RTRAI_PROGRESS.
    script = (
        "from rtrai.core import progress\n"
        "report = progress.default('test')\n"
        "print('plain log line', flush=True)\n"
        "for i, name in enumerate(['alpha', 'beta', 'gamma']):\n"
        "    report(i / 4, f'step {name}')\n"
        "report(0.75, 'almost')\n"
        "import sys; print('a warning on stderr', file=sys.stderr, flush=True)\n"
    )
    job = Job([sys.executable, "-c", script])
    assert job.state == PENDING
    job.start()
    updates = _poll_until_finished(job)
    final = updates[-1]
    assert final.state == SUCCEEDED
    assert job.returncode == 0
    assert final.fraction == 1.0  # success completes the bar even if the child stopped at 0.75
    assert final.message == "almost"
    seen_messages = [u.message for u in updates]
    assert set(seen_messages) <= {"", "step alpha", "step beta", "step gamma", "almost"}
    # Progress markup never reaches the log; ordinary lines from both streams do, each exactly once.
    assert sorted(job.log) == ["a warning on stderr", "plain log line"]
    assert not any("<filter-" in line for line in job.log)
    assert sum(len(u.lines) for u in updates) == 2
    assert job.last_error == "a warning on stderr"


def test_fractions_arrive_while_the_child_still_runs():
    # The child waits for a file we create only after we have seen its first progress line: proves streaming.
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        gate = os.path.join(folder, "go")
        script = (
            "import os, time\n"
            "print('<filter-comment>halfway</filter-comment>', flush=True)\n"
            "print('<filter-progress>0.5</filter-progress>', flush=True)\n"
            f"while not os.path.exists({gate!r}): time.sleep(0.01)\n"
        )
        job = Job([sys.executable, "-c", script]).start()
        deadline = time.monotonic() + 30
        update = job.poll()
        while update.fraction < 0.5 and time.monotonic() < deadline:
            time.sleep(0.02)
            update = job.poll()
        assert (update.state, update.fraction, update.message) == (RUNNING, 0.5, "halfway")
        open(gate, "w").close()
        assert job.wait(30).state == SUCCEEDED


def test_rtrai_help_runs_as_a_module_with_the_right_interpreter():
    job = Job.rtrai("--help").start()
    final = job.wait(60)
    assert final.state == SUCCEEDED, job.log
    assert any(line.startswith("usage: rtrai") for line in job.log)
    assert job.argv[1:3] == ["-m", "rtrai"]


def test_a_refused_input_fails_with_its_one_error_line():
    script = "import sys; print('rtrai: error: the CT is missing', file=sys.stderr); sys.exit(2)"
    job = Job([sys.executable, "-c", script]).start()
    final = job.wait(30)
    assert final.state == FAILED
    assert job.returncode == 2
    assert job.last_error == "rtrai: error: the CT is missing"


@pytest.mark.skipif(os.name == "nt", reason="process-group signals are POSIX")
def test_cancel_stops_a_sleeping_child_and_its_children():
    # The child starts a grandchild that also sleeps; cancel must stop both (process group), quickly.
    script = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    job = Job([sys.executable, "-c", script]).start()
    deadline = time.monotonic() + 30
    while not job.log and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    grandchild_pid = int(job.log[0])
    started = time.monotonic()
    job.cancel(grace_seconds=5)
    final = _poll_until_finished(job, timeout=10)[-1]
    assert time.monotonic() - started < 5
    assert final.state == CANCELLED
    assert job.returncode != 0
    # The grandchild got SIGTERM too; give the kernel a moment to reap it, then it must be gone.
    for _ in range(100):
        if not process_alive(grandchild_pid):
            break
        time.sleep(0.02)
    else:
        pytest.fail("grandchild survived cancel()")


def test_cancel_kills_a_child_that_ignores_terminate():
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    job = Job([sys.executable, "-c", script]).start()
    deadline = time.monotonic() + 30
    while "ready" not in job.log and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    started = time.monotonic()
    job.cancel(grace_seconds=0.5)
    assert job.wait(10).state == CANCELLED
    assert time.monotonic() - started < 5


def test_cancel_after_finishing_changes_nothing():
    job = Job([sys.executable, "-c", "pass"]).start()
    assert job.wait(30).state == SUCCEEDED
    job.cancel()
    assert job.poll().state == SUCCEEDED


def test_environment_and_python_path_reach_the_child(tmp_path):
    # A bare environment (as Slicer's startup environment may be): the child must still find rtrai.
    env = {"PATH": os.environ.get("PATH", ""), "MARKER": "42"}
    script = ("import os, rtrai, sys; print(os.environ['RTRAI_PROGRESS'], os.environ['MARKER'], "
              "rtrai.__file__)")
    job = Job([sys.executable, "-c", script], env=env, cwd=tmp_path).start()
    final = job.wait(30)
    assert final.state == SUCCEEDED, job.log
    progress_mode, marker, location = job.log[0].split(" ", 2)
    assert (progress_mode, marker) == ("lines", "42")
    assert os.path.samefile(os.path.dirname(location), os.path.dirname(jobs.__file__).rsplit(os.sep, 1)[0])


def test_misuse_is_reported():
    with pytest.raises(ValueError):
        Job([])
    job = Job([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError):
        job.wait(1)
    job.start()
    with pytest.raises(RuntimeError):
        job.start()
    job.wait(30)


def test_python_executable_outside_slicer_is_this_interpreter():
    assert jobs.python_executable() == sys.executable
    assert jobs.rtrai_argv("info", 3) == [sys.executable, "-m", "rtrai", "info", "3"]


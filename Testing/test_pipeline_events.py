"""Structured step events of ``rtrai run``: the ``on_step`` callback in process, and ``<rtrai-step>{JSON}</rtrai-step>``
lines through a real background job (:class:`rtrai.core.jobs.Job`), which hands them over as ``JobUpdate.steps``."""

from __future__ import annotations

import json
import sys
import time

import pytest

from rtrai.core.jobs import FAILED, SUCCEEDED, Job
from rtrai.io.case_io import write_case
from rtrai.phantom import make_phantom
from rtrai.pipeline import STEP_TITLES, STEPS, Options, run_case

KEYS = {"case", "name", "title", "status", "seconds", "summary", "reason"}


def _small_case(seed: int = 0, targets: bool = True):
    case = make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))
    if not targets:  # no target: DosePredict is skipped (fast), the input dose is dropped so the DVH is skipped too
        for name in ("PTV70", "PTV56"):
            del case.structures[name]
        case.dose, case.prescription = None, {}
    return case


def _poll(job: Job, timeout: float = 300.0) -> list:
    updates = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        update = job.poll()
        updates.append(update)
        if update.finished:
            return updates
        time.sleep(0.05)
    job.cancel(grace_seconds=1)
    pytest.fail(f"job did not finish within {timeout} s: {job.argv}")


def _check_sequence(events: list[dict], provenance_steps: list[dict], case) -> None:
    """Each step: one 'running' event, then one final event that says what provenance.json says."""
    assert all(set(e) == KEYS for e in events)
    assert [e["name"] for e in events] == [n for n in STEPS for _ in (0, 1)]
    final = {s["name"]: s for s in provenance_steps}
    for running, ended in zip(events[::2], events[1::2]):
        assert running["status"] == "running" and running["seconds"] is None
        assert running["summary"] is None and running["reason"] is None
        assert running["title"] == ended["title"] == STEP_TITLES[ended["name"]]
        assert running["case"] == ended["case"] == case
        record = final[ended["name"]]
        assert ended["status"] == record["status"] in ("done", "skipped")
        assert isinstance(ended["seconds"], float) and ended["seconds"] == pytest.approx(record["seconds"], abs=2e-3)
        assert ended["summary"] == (record["summary"] or None)
        assert ended["reason"] == (record["reason"] or None)
        assert (ended["reason"] is not None) == (ended["status"] == "skipped")


def test_on_step_is_called_at_every_status_change(tmp_path, monkeypatch):
    monkeypatch.delenv("RTRAI_PROGRESS", raising=False)
    events = []
    out = tmp_path / "out"
    run = run_case(_small_case(1, targets=False), out, Options(keep_structures=True, scene=False),
                   on_step=events.append)
    record = json.loads((out / "provenance.json").read_text())
    _check_sequence(events, record["steps"], None)
    by_name = {e["name"]: e for e in events[1::2]}
    assert by_name["segment"]["status"] == "skipped" and "--keep-structures" in by_name["segment"]["reason"]
    assert by_name["dose"]["status"] == "skipped" and "no target" in by_name["dose"]["reason"]
    assert by_name["radiomics"]["status"] == "done" and "features" in by_name["radiomics"]["summary"]
    assert by_name["report"]["status"] == "done" and by_name["report"]["summary"] == run.steps["report"].summary
    # The report's own step is in its provenance and run.log as done, timed once (by the runner).
    assert record["steps"][-1]["status"] == "done" and record["steps"][-1]["seconds"] > 0
    assert (out / "run.log").read_text().splitlines() == run.log and run.log[-1].startswith("report: done in")


def test_a_background_run_hands_over_its_step_events(tmp_path):
    write_case(_small_case(0, targets=False), tmp_path / "cases" / "pt_a")
    (tmp_path / "cases.txt").write_text("cases/pt_a\n")
    out = tmp_path / "out"
    job = Job.rtrai("run", "--cohort", tmp_path / "cases.txt", "-o", out, "--keep-structures", "--no-scene").start()
    updates = _poll(job)
    assert updates[-1].state == SUCCEEDED, job.log
    events = [e for u in updates for e in u.steps]
    assert events == job.steps
    assert sum(1 for u in updates if u.steps) >= 2  # they arrive while the job runs, not all at its end
    record = json.loads((out / "pt_a" / "provenance.json").read_text())
    _check_sequence(events, record["steps"], "pt_a")  # a cohort's events name their case
    assert not any("rtrai-step" in line for line in job.log)
    assert any(line.startswith("1 cases run, 0 finished before, 0 failed") for line in job.log)  # plain output


def test_a_refused_input_ends_with_a_failed_load_event(tmp_path):
    write_case(_small_case(0), tmp_path / "case")
    job = Job.rtrai("run", tmp_path / "case", "-o", tmp_path / "out", "--prescription", "PTV99=70").start()
    updates = _poll(job)
    assert updates[-1].state == FAILED and job.returncode == 2
    assert [(e["name"], e["status"]) for e in job.steps] == [("load", "running"), ("load", "failed")]
    assert "PTV99" in job.steps[-1]["reason"] and job.steps[-1]["reason"] in job.last_error
    assert isinstance(job.steps[-1]["seconds"], float) and job.steps[-1]["case"] is None
    assert not (tmp_path / "out").exists()


def test_only_well_formed_step_lines_become_events():
    script = ("from rtrai.core.progress import print_step_event\n"
              "print_step_event({'case': None, 'name': 'load', 'status': 'running', 'summary': 'a <b> \\u00e9'})\n"
              "print('<rtrai-step>{not json</rtrai-step>')\n"
              "print('<rtrai-step>[1, 2]</rtrai-step>')\n"
              "print('said: <rtrai-step>{}</rtrai-step> in a sentence')\n")
    job = Job([sys.executable, "-c", script]).start()
    update = job.wait(60)
    assert update.state == SUCCEEDED
    assert update.steps == [{"case": None, "name": "load", "status": "running", "summary": "a <b> \u00e9"}]
    assert update.lines == ["<rtrai-step>{not json</rtrai-step>", "<rtrai-step>[1, 2]</rtrai-step>",
                            "said: <rtrai-step>{}</rtrai-step> in a sentence"]

"""Killing a command loses nothing, leaves no worker alive, and no truncated file that looks finished.

Each test starts a real ``rtrai`` command (``python -m rtrai``, in a session of its own) on real OpenKBP patients,
kills it with SIGKILL at a moment chosen from what it has written (while its pool's workers compute, or while a
result is half-built in a temporary), checks that every process it started is gone within seconds, runs it again and
checks the result: every case finished, each once, no ``.tmp`` temporaries left, nothing cut under a final name.
Only processes these tests started are ever signalled (pid and start time checked).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import descendants, shared_path, still_running

from rtrai.core.jobs import rtrai_argv

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(),
                                reason="follows the command's processes through /proc (Linux)")

PATIENTS = ("pt_201", "pt_202", "pt_203")
GONE_WITHIN = 5.0  # seconds for a killed command's workers to exit
TEMPORARY = re.compile(r"^\..+\.tmp(\.[^/]*)?$")  # rtrai.core.outputs' temporaries (and their older naming)


def _patients(tmp_path: Path) -> Path:
    """A folder of three OpenKBP validation patients (links to ../shared/data), or skip."""
    folder = tmp_path / "patients"
    folder.mkdir()
    for name in PATIENTS:
        (folder / name).symlink_to(shared_path("openkbp", "validation-pats", name), target_is_directory=True)
    return folder


def _temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Temporaries anywhere under ``folder`` (of target ``name`` only, directly in ``folder``, when given)."""
    if not folder.is_dir():
        return []
    if name is not None:
        return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and TEMPORARY.match(p.name)]
    return [p for p in folder.rglob(".*") if TEMPORARY.match(p.name)]


class Command:
    """``rtrai ARGS`` in a session of its own, its output in a log file; the processes it starts are tracked (pid
    and start time) so that the test can check them, and kill them, once the command itself is killed."""

    count = 0

    def __init__(self, tmp_path: Path, *args):
        Command.count += 1
        self.log_path = tmp_path / f"command-{Command.count}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(rtrai_argv(*args), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        self.seen: dict[int, int] = {}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[int, int]:
        now = descendants(self.process.pid)
        self.seen.update(now)
        return now

    def kill_when(self, condition, what: str, timeout: float = 300, every: float = 0.02) -> dict[int, int]:
        """SIGKILL the command (itself only, as ``kill -9 PID`` does) as soon as ``condition()`` holds; returns the
        processes it had started then."""
        deadline, last_scan = time.monotonic() + timeout, 0.0
        while True:
            assert self.process.poll() is None, f"the command ended (status {self.process.returncode}) before " \
                                                f"{what}:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.log[-3000:]}"
            if time.monotonic() - last_scan > 0.25:
                self.children()
                last_scan = time.monotonic()
            if condition():
                break
            time.sleep(every)
        children = self.children()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.killed = time.monotonic()
        return children

    def assert_all_gone(self) -> float:
        """Every process the command started exits within GONE_WITHIN seconds of the kill; returns how long it took."""
        while still_running(self.seen) and time.monotonic() < self.killed + 30:
            time.sleep(0.1)
        took = time.monotonic() - self.killed
        left = still_running(self.seen)
        assert not left, f"processes of the killed command still running after {took:.0f} s: {left}"
        assert took < GONE_WITHIN, f"its workers took {took:.1f} s to exit"
        return took

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the command did not finish within {timeout} s:\n{self.log[-3000:]}")
        assert not still_running(self.seen)
        return code

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in still_running(self.seen):  # ours: started by our command, same start time
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a CSV that must be whole: every row has the header's length, the file ends with a line."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} is cut"
    rows = list(csv.reader(text.splitlines(keepends=True)))
    assert rows and all(len(r) == len(rows[0]) for r in rows), f"{path} has a cut row"
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def _assert_whole_run_folder(folder: Path) -> None:
    """A finished ``rtrai run`` folder whose files all read back in full."""
    from rtrai.io.case_io import read_case
    from rtrai.pipeline import is_finished

    assert is_finished(folder), folder
    record = json.loads((folder / "provenance.json").read_text())
    for name in record["outputs"]:
        path = folder / name
        if name.endswith(".csv"):
            _csv_rows(path)
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".html"):
            assert path.read_text().rstrip().endswith("</html>"), f"{path} is cut"
    case = read_case(folder)  # CT.nrrd, Structures.seg.nrrd, Dose.nrrd in full
    assert case.ct is not None and case.dose is not None and case.structures


def test_killed_run_over_a_folder_loses_nothing(tmp_path):
    """`rtrai run FOLDER` killed while the second case's radiomics workers compute, then again in its report step,
    then run to the end: no worker outlives a kill, cohort.csv never stands finished before the cohort is, no case
    is recorded as done without its finished folder, and the last run leaves every case finished once."""
    from rtrai.pipeline import is_finished

    patients = _patients(tmp_path)
    out = tmp_path / "out"
    args = ("run", patients, "-o", out, "--keep-structures", "--no-scene", "--jobs", "2")
    partial, table = out / "cohort.partial.csv", out / "cohort.csv"

    first = Command(tmp_path, *args)
    try:
        workers = first.kill_when(lambda: partial.is_file() and len(first.children()) >= 2,
                                  "radiomics workers of the second case", every=0.1)
        assert len(workers) >= 2
        first.assert_all_gone()
    finally:
        first.cleanup()
    assert not table.exists(), "an unfinished cohort's table has its final name"
    _, rows = _csv_rows(partial)
    assert [(r["case"], r["status"]) for r in rows] == [("pt_201", "done")]
    assert is_finished(out / "pt_201") and not is_finished(out / "pt_202")

    second = Command(tmp_path, *args)
    try:
        second.kill_when(lambda: bool(_temporaries(out, "pt_202")), "report step of the second case")
        second.assert_all_gone()
    finally:
        second.cleanup()
    assert _temporaries(out, "pt_202"), "the kill was meant to leave the half-built folder's temporary"
    assert not is_finished(out / "pt_202") and not table.exists()
    _, rows = _csv_rows(partial)
    assert [(r["case"], r["status"]) for r in rows] == [("pt_201", "finished before")]

    third = Command(tmp_path, *args)
    try:
        assert third.finish() == 0, third.log[-3000:]
    finally:
        third.cleanup()
    assert not partial.exists() and not _temporaries(out), _temporaries(out)
    _, rows = _csv_rows(table)
    assert [(r["case"], r["status"]) for r in rows] == [("pt_201", "finished before"), ("pt_202", "done"),
                                                       ("pt_203", "done")]
    for name in PATIENTS:
        _assert_whole_run_folder(out / name)
    _, features = _csv_rows(out / "cohort_features.csv")
    assert sorted(r["ID"] for r in features) == sorted(PATIENTS)


def test_killed_radiomics_cohort_resumes_without_loss_or_duplicates(tmp_path):
    """`rtrai radiomics --cohort --jobs 2` killed while its workers compute: they exit too, the rows so far are in
    NAME.partial.csv (no file under the final name), and --resume finishes the rest, each ID once."""
    patients = _patients(tmp_path)
    structures = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "PTV70")
    ids = [f"{p}-{s}" for p in PATIENTS for s in structures]
    batch = tmp_path / "batch.csv"
    batch.write_text("ID,Image,Mask,Structure\n" + "".join(f"{p}-{s},{patients / p},,{s}\n" for p in PATIENTS
                                                           for s in structures))
    out = tmp_path / "out" / "features.csv"
    partial = out.with_name("features.partial.csv")

    first = Command(tmp_path, "radiomics", "--cohort", batch, "--jobs", "2", "-o", out)
    try:
        workers = first.kill_when(lambda: partial.is_file() and partial.read_text().count("\n") >= 2
                                  and len(first.children()) >= 2, "a first row and running workers", every=0.05)
        assert len(workers) >= 2
        first.assert_all_gone()
    finally:
        first.cleanup()
    assert not out.exists(), "an unfinished cohort has its final name"
    assert 1 <= partial.read_text().count("\n") - 1 < len(ids), "the kill was meant to come half-way"

    second = Command(tmp_path, "radiomics", "--cohort", batch, "--jobs", "2", "--resume", "-o", out)
    try:
        assert second.finish() == 0, second.log[-3000:]
    finally:
        second.cleanup()
    kept = int(re.search(r"(\d+) kept from before", second.log).group(1))
    assert kept >= 1
    header, rows = _csv_rows(out)
    assert [r["ID"] for r in rows] == ids  # each once, in the batch's order
    assert all(r["error"] == "" for r in rows), [r["error"] for r in rows if r["error"]]
    feature = "original_firstorder_Mean"
    assert feature in header and all(r[feature] for r in rows)
    assert not partial.exists() and not _temporaries(out.parent)
    json.loads(out.with_name("features.csv.provenance.json").read_text())


def _fast_tiny_model(folder: Path) -> Path:
    """An untrained tiny AutoSegment model that sees the image at a quarter of its resolution (one window)."""
    pytest.importorskip("torch")
    from test_segmentation import OARS, tiny_config

    from rtrai.models import write_model
    from rtrai.segmentation.networks import build_network
    from rtrai.segmentation.train import manifest_for

    config = tiny_config(labels=OARS, patch=[32, 32, 32], downsample=4)
    config["spacing_mm"] = [[3.5, 3.5, 2.0], [5.5, 5.5, 3.5]]
    write_model(folder, build_network(config["network"], 1, len(OARS)).state_dict(),
                manifest_for(config, "synthetic", 0))
    return folder


def test_killed_segment_folder_leaves_no_half_result(tmp_path):
    """`rtrai segment FOLDER` killed while it writes the second patient's result: the half-built result stays a
    hidden temporary, which the next run removes; that run segments every patient into a whole folder."""
    from rtrai.io.segfile import read_segmentation

    model = _fast_tiny_model(tmp_path / "model")
    patients = _patients(tmp_path)
    out = tmp_path / "out"
    args = ("segment", patients, "-o", out, "--model", model, "--device", "cpu")

    first = Command(tmp_path, *args)
    try:
        first.kill_when(lambda: bool(_temporaries(out, "pt_202")) or (out / "pt_202").exists(),
                        "the second patient's result")
        first.assert_all_gone()
    finally:
        first.cleanup()
    assert (out / "pt_201" / "provenance.json").is_file()
    assert not (out / "pt_202").exists() or (out / "pt_202" / "provenance.json").is_file(), \
        "a result folder under its final name without its provenance"

    second = Command(tmp_path, *args)
    try:
        assert second.finish() == 0, second.log[-3000:]
    finally:
        second.cleanup()
    assert not _temporaries(out), _temporaries(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(PATIENTS)
    for name in PATIENTS:
        record = json.loads((out / name / "provenance.json").read_text())
        assert record["command"] == "segment" and record["parameters"]["input"] == str(patients / name)
        read_segmentation(out / name / "Structures.seg.nrrd")  # reads in full


def test_a_rerun_removes_only_the_stale_temporaries_of_its_own_targets(tmp_path):
    """A writer killed inside output_folder / atomic_file leaves its hidden temporaries; the next write of the same
    targets removes them, and nothing else: not another target's, not a running process's, not a link, not a file
    of the user's that merely looks alike."""
    import sys

    writer = ("import sys, time\n"
              "from rtrai.core.outputs import atomic_file, output_folder\n"
              "with output_folder(sys.argv[1] + '/case') as tmp, atomic_file(sys.argv[1] + '/cohort.csv') as f:\n"
              "    (tmp / 'CT.nrrd').write_text('half')\n"
              "    f.write_text('half')\n"
              "    print('writing', flush=True)\n"
              "    time.sleep(600)\n")
    killed = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "writing"
    finally:
        killed.kill()
        killed.wait()
    stale = sorted(p.name for p in _temporaries(tmp_path))
    assert len(stale) == 2 and all(f".{killed.pid}." in name for name in stale), stale
    kept = {f".case.{os.getpid()}.abcdefgh.tmp": "dir",  # a live process's (this one's)
            f".cases.{killed.pid}.abcdefgh.tmp": "dir",  # another target's
            f".cohort.csv.{killed.pid}.abcdefgh.tmp.json": "file",  # another suffix: another writer
            ".case.notes.tmp": "dir",  # the user's
            f".case.{killed.pid}.zzzzzzzz.tmp": "link"}
    for name, kind in kept.items():
        if kind == "dir":
            (tmp_path / name).mkdir()
        elif kind == "file":
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).symlink_to(tmp_path / ".case.notes.tmp")
    (tmp_path / ".case.abcdefgh.tmp").mkdir()  # the older naming (no pid), older than the run: stale
    rerun = ("import sys\n"
             "from rtrai.core.outputs import output_folder, write_text\n"
             "with output_folder(sys.argv[1] + '/case') as tmp:\n"
             "    (tmp / 'CT.nrrd').write_text('whole')\n"
             "write_text(sys.argv[1] + '/cohort.csv', 'whole')\n")
    subprocess.run([sys.executable, "-c", rerun, str(tmp_path)], check=True)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == sorted(kept), left
    assert (tmp_path / "case" / "CT.nrrd").read_text() == "whole" and (tmp_path / "cohort.csv").read_text() == "whole"


def test_merging_never_replaces_a_folder_of_the_user_by_a_file(tmp_path):
    """An existing output folder with a folder where the new output has a file (or a file where it has a folder):
    refused with one clear error before anything is moved; the user's files and the old result stay as they were."""
    from rtrai.core.errors import InputError
    from rtrai.core.outputs import output_folder

    out = tmp_path / "out"
    with output_folder(out) as tmp:
        (tmp / "report.html").write_text("old")
        (tmp / "provenance.json").write_text("old")
    (out / "dvh.csv").mkdir()
    (out / "dvh.csv" / "notes.txt").write_text("the user's")
    (out / "tables").write_text("the user's file")
    for name, make in (("dvh.csv", lambda p: p.write_text("new")), ("tables", lambda p: p.mkdir())):
        with pytest.raises(InputError, match=f"{name}.*would be replaced"):
            with output_folder(out) as tmp:
                (tmp / "report.html").write_text("new")
                make(tmp / name)
                (tmp / "provenance.json").write_text("new")
    assert (out / "dvh.csv" / "notes.txt").read_text() == "the user's"
    assert (out / "tables").read_text() == "the user's file"
    assert (out / "report.html").read_text() == "old" and (out / "provenance.json").read_text() == "old"
    assert not _temporaries(tmp_path)
    with output_folder(out) as tmp:  # without the clash: merged, the finished mark replaced last
        (tmp / "report.html").write_text("new")
        (tmp / "provenance.json").write_text("new")
    assert (out / "report.html").read_text() == "new" and (out / "provenance.json").read_text() == "new"
    assert (out / "dvh.csv" / "notes.txt").is_file()

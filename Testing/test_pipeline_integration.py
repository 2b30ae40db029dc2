"""What ``rtrai run`` takes from the libraries beside it: a bring-your-own segmentation model (a TorchScript file
with its manifest, run through rtrai.segmentation.engines), the contour QA step (rtrai.segmentation.qa), and
``--plan``: a fluence plan (rtrai.plan, pyRadPlan) and its QA (rtrai.dose.qa), shown in the report.

Every case is a small phantom (7 mm voxels); the plan uses the coarse setting of Testing/test_plan.py (5 beams,
10 mm bixels and dose grid, 100 iterations), seconds of CPU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from rtrai import cli
from rtrai.io.case_io import read_case, write_case
from rtrai.io.images import read_image
from rtrai.io.segfile import read_segmentation
from rtrai.phantom import make_phantom
from rtrai.pipeline import is_finished

COARSE = ["--beams", "5", "--bixel", "10", "--grid", "10", "--iterations", "100"]


def _phantom(seed: int = 0):
    return make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))


def _provenance(folder) -> dict:
    return json.loads((folder / "provenance.json").read_text())


def _steps(folder) -> dict:
    return {s["name"]: s for s in _provenance(folder)["steps"]}


def _csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def quiet_torch(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RTRAI_THREADS", "1")


def test_a_torchscript_model_segments_in_the_run_as_in_rtrai_segment(tmp_path, quiet_torch):
    """A TorchScript file whose one label is CT above 0 HU (its logit is 20 x the windowed CT): the run's structure
    is voxel for voxel what ``rtrai segment --model`` writes, and provenance records the engine's own entry."""
    torch = pytest.importorskip("torch")
    from rtrai.core.provenance import sha256_file

    class AboveZeroHU(torch.nn.Module):
        def forward(self, x):
            return 20.0 * x

    model = tmp_path / "ct-above-0.pt"
    torch.jit.trace(AboveZeroHU(), torch.zeros(1, 1, 16, 16, 16)).save(str(model))
    (tmp_path / "ct-above-0.json").write_text(json.dumps(
        {"name": "ct-above-0", "version": "1", "labels": ["Brainstem"], "inputs": [{"window": [-1000, 1000]}],
         "patch": [32, 32, 32], "inference": {"mirror": False}, "sha256": sha256_file(model)}))
    write_case(_phantom(0), tmp_path / "case")
    out, seg = tmp_path / "out", tmp_path / "seg"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--segmentation-model", str(model),
                     "--no-scene", "--device", "cpu"]) == 0
    assert cli.main(["segment", str(tmp_path / "case"), "-o", str(seg), "--model", str(model), "--device", "cpu"]) == 0
    ours, _ = read_segmentation(out / "Structures.seg.nrrd")
    theirs, _ = read_segmentation(seg / "Structures.seg.nrrd")
    mask = sitk.GetArrayFromImage(ours["Brainstem"])
    np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(theirs["Brainstem"]))
    assert mask.sum() > 1000  # the phantom's body: a real contour, not an empty one
    model_entry = {m["role"]: m for m in _provenance(out)["models"]}["segmentation"]
    expected = {k: v for k, v in _provenance(seg)["models"][0].items() if k != "role"}
    assert {k: v for k, v in model_entry.items() if k != "role"} == expected
    assert model_entry["engine"] == "torchscript" and model_entry["files"]["ct-above-0.pt"] == sha256_file(model)
    steps = _steps(out)
    assert "1 organs by ct-above-0 (torchscript)" in steps["segment"]["summary"]
    # The given Brainstem is kept as the reference, and the report says where the run's one came from.
    assert "Brainstem" in read_segmentation(out / "InputStructures.seg.nrrd")[0]
    assert "AutoSegment ct-above-0" in (out / "report.html").read_text()
    for name in ("plan", "plan_qa"):  # no --plan: skipped, saying how to ask for it
        assert steps[name]["status"] == "skipped" and "rtrai run --plan" in steps[name]["reason"]


def test_contour_qa_step_flags_swapped_parotids_and_the_report_shows_them(tmp_path, quiet_torch):
    from rtrai.segmentation.qa import COLUMNS, check_case

    case = _phantom(1)
    case.structures["Parotid_L"], case.structures["Parotid_R"] = case.structures["Parotid_R"], \
        case.structures["Parotid_L"]
    write_case(case, tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--keep-structures", "--no-scene"]) == 0
    rows = {r["structure"]: r for r in _csv(out / "contour_qa.csv")}
    assert list(_csv(out / "contour_qa.csv")[0]) == list(COLUMNS)
    for name in ("Parotid_L", "Parotid_R"):
        assert rows[name]["laterality"] == "1" and rows[name]["flagged"] == "1", rows[name]
    # The table is the checks of the structures the case ends with, computed here on their own.
    expected = check_case(read_case(tmp_path / "case"))
    assert {r["structure"]: r["flagged"] for r in expected} == {n: int(r["flagged"]) for n, r in rows.items()}
    flagged = sorted(n for n, r in rows.items() if r["flagged"] == "1")
    step = _steps(out)["qa"]
    assert step["status"] == "done" and step["summary"].endswith(f"{len(flagged)} flagged: " + ", ".join(
        r["structure"] for r in expected if r["flagged"]))
    assert _provenance(out)["contour_qa"]["flagged"] == [r["structure"] for r in expected if r["flagged"]]
    page = (out / "report.html").read_text()
    section = page.split("<h2>Contour QA</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"{len(flagged)} of {len(rows)} structures flagged" in section
    assert "Parotid_L</td><td>input</td><td>laterality" in section
    assert is_finished(out)


def test_plan_step_plans_and_checks_the_plan_against_the_input_dose(tmp_path, quiet_torch):
    """``--plan`` on a phantom with its own dose (the shipped dose model refuses 7 mm voxels, so the plan mimics the
    input's dose): the plan follows it, qa.csv is rtrai.dose.qa's check of PlanDose.nrrd against the input's dose
    computed here, and the report shows the comparison and the verdict."""
    pytest.importorskip("pyRadPlan", reason="rtrai run --plan needs pyRadPlan (Utilities/install.sh installs it)")
    from rtrai.dose.qa import DEFAULT_MARGIN_GY, qa_case, structure_metrics

    write_case(_phantom(0), tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--keep-structures", "--no-scene", "--plan",
                     *COARSE]) == 0
    steps = _steps(out)
    assert steps["plan"]["status"] == "done" and "5 beams" in steps["plan"]["summary"]
    assert "mimicking the dose of the input" in steps["plan"]["summary"]
    assert steps["plan_qa"]["status"] == "done" and "against the dose of the input" in steps["plan_qa"]["summary"]
    case = read_case(tmp_path / "case")
    plan = read_image(out / "plan" / "PlanDose.nrrd")
    body = sitk.GetArrayViewFromImage(case.structures["External"]) > 0
    error = np.abs(sitk.GetArrayViewFromImage(plan) - sitk.GetArrayViewFromImage(case.dose))[body]
    assert float(error.mean()) < 6.0  # as Testing/test_plan.py asks of the same setting
    expected = qa_case(case, plan, case.dose, DEFAULT_MARGIN_GY)
    assert (out / "plan" / "qa.csv").read_text() == expected.csv()
    assert expected.verdict in steps["plan_qa"]["summary"]
    own = structure_metrics(case, case.dose)
    comparison = _csv(out / "plan" / "dvh_comparison.csv")
    assert len(comparison) == len(own)
    for row in comparison:  # the input column is the input's own dose; planned is the plan's
        assert float(row["input"]) == pytest.approx(own[(row["structure"], row["metric"])], abs=1e-3)
    record = _provenance(out)
    assert record["parameters"]["plan"] is True and record["parameters"]["plan_beams"] == 5
    assert record["plan"]["qa"]["reference"] == "the dose of the input"
    assert {"plan/PlanDose.nrrd", "plan/plan.json", "plan/qa.csv", "plan/qa.png"} <= set(record["outputs"])
    assert is_finished(out)
    page = (out / "report.html").read_text()
    section = page.split("<h2>Treatment plan and plan QA</h2>", 1)[1].split("<h2>", 1)[0]
    assert "Plan QA against the dose of the input" in section and expected.verdict.split(":")[0] in section
    assert section.count('src="data:image/png;base64,') == 2  # the DVH comparison and the QA bars
    assert "<th>input</th>" in section and "PTV70</td><td>D95%" in section


def test_plan_steps_say_why_they_are_skipped_and_bad_plan_options_exit_2(tmp_path, capsys):
    case = _phantom(0)
    for name in ("PTV70", "PTV56"):
        del case.structures[name]
    case.dose, case.prescription = None, {}
    write_case(case, tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--keep-structures", "--no-scene", "--plan"]) == 0
    steps = _steps(out)
    assert steps["plan"]["status"] == "skipped" and "no dose to mimic" in steps["plan"]["reason"]
    assert steps["plan_qa"]["status"] == "skipped" and "no plan (no dose to mimic" in steps["plan_qa"]["reason"]
    section = (out / "report.html").read_text().split("<h2>Treatment plan and plan QA</h2>", 1)[1]
    assert "Planning skipped: no dose to mimic" in section.split("<h2>", 1)[0]
    capsys.readouterr()
    for bad, words in ((["--beams", "0"], "--beams must be between 1 and 72"),
                       (["--iterations", "0"], "--iterations must be at least 1")):
        assert cli.main(["run", str(tmp_path / "case"), "-o", str(tmp_path / "bad"), "--plan", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and not (tmp_path / "bad").exists()

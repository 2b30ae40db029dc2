"""``rtrai run`` and ``rtrai demo``: one case end to end on the real components (AutoSegment's shipped model, a tiny
dose model trained here, pyradiomics, the outcome models, MRML), the report in headless Chromium, cohorts that
resume and go on after a failing case, and skipped steps that say why."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai import cli
from rtrai.io.case_io import read_case, write_case
from rtrai.io.segfile import read_segmentation
from rtrai.phantom import make_phantom
from rtrai.pipeline import OUTPUT_FILES, STEPS

# A throw-away dose model, trained as Testing/test_dose_prediction.py does (the shipped one is trained elsewhere).
TINY = {"network": {"type": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch": [32, 32, 32], "batch": 1, "steps": 12, "validate_every": 6, "validation_cases": 1, "seed": 3}


def _image(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _provenance(folder) -> dict:
    return json.loads((folder / "provenance.json").read_text())


def _steps(folder) -> dict:
    return {s["name"]: s for s in _provenance(folder)["steps"]}


@pytest.fixture(scope="module")
def tiny_dose_model(tmp_path_factory):
    """A throw-away dose model, trained as Testing/test_dose_prediction.py does (12 steps: its doses are not good,
    which is not what these tests look at)."""
    from rtrai.dose import export
    from rtrai.dose import train as training

    folder = tmp_path_factory.mktemp("tiny-dose")
    for seed in (0, 1):
        write_case(_small_case(seed), folder / "patients" / f"p{seed}")
    result = training.train(folder / "patients", folder / "work", dict(TINY))
    return export.export_model(folder / "work", {**TINY, "name": "tiny-dose"}, result, command="test").parent


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """The phantom demo (synthetic case and outcome model), the case with known answers."""
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    assert cli.main(["demo", "--phantom", "-o", str(out)]) == 0
    return out


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def readme_demo(tmp_path_factory):
    """The README's first command exactly as written, from the root of a copy of the repository (the installed
    rtrai runs; the copy carries the install stamp, as a checkout where `make` has installed once does)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```bash\n(.*?)\n", readme).group(1).split("#")[0].strip()
    assert command == "make demo"
    if shutil.which("make") is None:
        pytest.fail("make is not installed (Debian: apt-get install make)")
    copy = tmp_path_factory.mktemp("clone") / "RTRadiomicsAI copy"  # a space in the path, as users have
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    (copy / ".install.stamp").touch()  # installed: this test runs inside that installation
    result = subprocess.run(command.split(), cwd=copy, capture_output=True, text=True, timeout=900)
    return copy, result


# ------------------------------------------------------------------------------------------ the README's demo

def test_readme_demo_writes_the_report_of_the_real_builtin_case(readme_demo):
    from rtrai.demo import BUILTIN_CASE
    from rtrai.mrml import load_scene

    copy, result = readme_demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = copy / "demo-output"  # the relative folder the README names
    for name in OUTPUT_FILES + ("InputStructures.seg.nrrd", "InputDose.nrrd"):
        assert (out / name).is_file(), name
    assert "open demo-output/report.html" in result.stdout
    record = _provenance(out)
    steps = _steps(out)
    assert record["command"] == "demo" and record["status"] == "complete" and not record["synthetic_data"]
    for name in ("load", "segment", "dose", "dvh", "radiomics", "report"):
        assert steps[name]["status"] == "done", (name, steps[name]["reason"])
    assert steps["outcome"]["status"] == "skipped" and "no outcome model" in steps["outcome"]["reason"]
    assert "Outcome model skipped" in result.stderr
    # The real patient, its plan's own contours and dose kept beside what the models made of it.
    original = read_case(BUILTIN_CASE)
    assert original.patient_id == "pt_236" and len(original.structures) == 10
    np.testing.assert_array_equal(_image(out / "InputDose.nrrd"), sitk.GetArrayFromImage(original.dose))
    assert record["dose_comparison"]["dose_score_gy"] < 3.5  # held out: the model never saw this patient
    masks, _ = read_segmentation(out / "Structures.seg.nrrd")
    given, _ = read_segmentation(out / "InputStructures.seg.nrrd")
    assert set(given) == set(steps_organs()) <= set(masks)
    dice = [2 * ((a := _image_of(masks[n])) & (b := _image_of(given[n]))).sum() / (a.sum() + b.sum()) for n in given]
    assert np.median(dice) > 0.7 and min(dice) > 0.4
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "pt_236" in page and "MIT" in page and "Synthetic data" not in page
    scene = load_scene(out / "scene.mrb")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _image_of(mask) -> np.ndarray:
    return sitk.GetArrayFromImage(mask) > 0


def test_demo_with_a_relative_output_folder_with_spaces(tmp_path, monkeypatch):
    """MRML refused a relative folder for the scene bundle, the report step was skipped and the demo exited 0."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "-o", "my demo/out"]) == 0
    for name in ("report.html", "scene.mrb", "provenance.json"):
        assert (tmp_path / "my demo" / "out" / name).is_file(), name


# ------------------------------------------------------------------------------------------------ rtrai run, OpenKBP

def test_run_openkbp_patient_writes_every_file(openkbp_pt201, tmp_path, capsys):
    from rtrai.core.provenance import sha256_path
    from rtrai.models import read_manifest
    from rtrai.mrml import load_scene
    from rtrai.radiomics.extract import Inputs, extract, make_extractor

    out = tmp_path / "pt_201"
    assert cli.main(["run", str(openkbp_pt201), "-o", str(out)]) == 0
    for name in OUTPUT_FILES + ("InputStructures.seg.nrrd", "dvh_metrics.csv", "constraints.csv", "run.log",
                                "case.json"):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert "Outcome model skipped: no outcome model given" in capsys.readouterr().err

    record = _provenance(out)
    steps = _steps(out)
    assert record["command"] == "run" and record["status"] == "complete" and not record["synthetic_data"]
    for name in ("load", "segment", "qa", "dvh", "radiomics", "report"):
        assert steps[name]["status"] == "done", (name, steps[name]["reason"])
    assert steps["outcome"]["status"] == "skipped"
    assert steps["plan"]["status"] == steps["plan_qa"]["status"] == "skipped"  # no --plan
    assert all(s["seconds"] >= 0 and s["peak_rss_mib"] > 0 for s in record["steps"])
    models = {m["role"]: m for m in record["models"]}
    assert models["segmentation"]["sha256"] == read_manifest("hn-oar-ct")["sha256"]
    assert record["inputs"][0]["sha256"] == sha256_path(openkbp_pt201)

    original = read_case(openkbp_pt201)
    dose = _image(out / "Dose.nrrd")
    pdm = sitk.GetArrayFromImage(original.possible_dose_mask) > 0
    # The shipped dose model predicts; the input's (the plan's) dose is kept beside it and compared.
    assert steps["dose"]["status"] == "done", steps["dose"]["reason"]
    assert models["dose"]["sha256"] == read_manifest("hn-dose-openkbp")["sha256"]
    np.testing.assert_array_equal(_image(out / "InputDose.nrrd"), sitk.GetArrayFromImage(original.dose))
    assert dose.min() >= 0 and np.all(dose[~pdm] == 0) and 60 < dose.max() < 90
    assert record["dose_comparison"]["dose_score_gy"] < 4.0  # with AutoSegment organs (manifest: 3.12 Gy, 33 patients)

    # Structures: AutoSegment's organs, the input's targets; the replaced input organs kept voxel for voxel.
    masks, _ = read_segmentation(out / "Structures.seg.nrrd")
    assert {"PTV56", "PTV63", "PTV70"} <= set(masks) and len(set(masks) & set(steps_organs())) >= 6
    with open(out / "contour_qa.csv", newline="") as handle:  # contour QA of every structure the run ends with
        assert {r["structure"] for r in csv.DictReader(handle)} == set(masks)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(masks["PTV70"]),
                                  sitk.GetArrayFromImage(original.structures["PTV70"]))
    given, _ = read_segmentation(out / "InputStructures.seg.nrrd")
    assert set(given) == set(steps_organs())
    for name, mask in given.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(original.structures[name]))
    dice = {}
    for name in set(masks) & set(given):
        a, b = sitk.GetArrayFromImage(masks[name]) > 0, sitk.GetArrayFromImage(given[name]) > 0
        dice[name] = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert np.median(list(dice.values())) > 0.6  # the shipped model on a validation patient it never saw

    # DVH: Dmean equals the voxel mean of the dose in each mask; every curve starts at 100 %.
    metrics = pd.read_csv(out / "dvh_metrics.csv")
    for name in ("PTV70", "Parotid_L"):
        mean = metrics.query("structure == @name and metric == 'Dmean'")["value"].item()
        assert mean == pytest.approx(dose[sitk.GetArrayFromImage(masks[name]) > 0].mean(), abs=1e-4)
    dvh = pd.read_csv(out / "dvh.csv")
    first = dvh.groupby("structure").first()
    assert np.allclose(first["volume_pct"], 100.0) and set(first.index) == set(metrics["structure"])
    constraints = pd.read_csv(out / "constraints.csv")
    cord = constraints.query("structure == 'SpinalCord'").iloc[0]
    assert cord["metric"] == "D0.03cc" and cord["passed"] == (cord["value_gy"] <= 45.0)

    # Radiomics: one CT and one dose row per structure; values equal pyradiomics on the whole image (our crop to
    # the structure's box changes nothing).
    features = pd.read_csv(out / "features.csv")
    assert len(features) == 2 * 10 and set(features["Image"]) == {"CT", "dose"}
    assert features["error"].isna().all()
    row = features.query("Structure == 'Parotid_L' and Image == 'CT'").iloc[0]
    ct = sitk.ReadImage(str(out / "CT.nrrd"))
    reference = extract(make_extractor(preset="CT", resampledPixelSpacing=None),
                        Inputs(ct, masks["Parotid_L"], 1, "x", "", ""))
    compared = [k for k in reference if not k.startswith("diagnostics_")]
    assert len(compared) > 100
    for key in compared:
        assert row[key] == pytest.approx(float(reference[key]), rel=1e-9, abs=1e-12), key
    dose_row = features.query("Structure == 'PTV70' and Image == 'dose'").iloc[0]
    assert dose_row["dvh_Dmean_Gy"] == pytest.approx(dose[sitk.GetArrayFromImage(masks["PTV70"]) > 0].mean(),
                                                     rel=1e-6)

    # Report and scene.
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2  # slices and DVH (no outcome model: no KM curve)
    assert "no outcome model given" in page and "hn-oar-ct" in page and 'src="http' not in page
    scene = load_scene(out / "scene.mrb")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") >= 2  # CT and dose
    tables = [scene.GetNthNodeByClass(i, "vtkMRMLTableNode").GetName()
              for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    assert {"Workflow steps", "DVH constraints", "DVH metrics", "Radiomics features"} <= set(tables)


def steps_organs():
    from rtrai.models import read_manifest

    return read_manifest("hn-oar-ct")["labels"]


# ---------------------------------------------------------------------------------------------------------- demo

def test_phantom_demo_runs_the_whole_pipeline_on_synthetic_data(demo_output):
    from lifelines import KaplanMeierFitter

    from rtrai.outcome.models import OutcomeModel
    from rtrai.radiomics.case_features import wide_features

    out = demo_output
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    record = _provenance(out)
    steps = _steps(out)
    assert record["command"] == "demo" and record["synthetic_data"] is True
    assert record["demo"]["cohort_size"] == 40
    for name in ("load", "segment", "dvh", "radiomics", "outcome", "report"):
        assert steps[name]["status"] == "done", (name, steps[name]["reason"])
    phantom = make_phantom(seed=0)
    if steps["dose"]["status"] == "skipped":  # no shipped dose model: the phantom's own dose is used, unchanged
        assert "hn-dose-openkbp" in steps["dose"]["reason"]
        np.testing.assert_array_equal(_image(out / "Dose.nrrd"), sitk.GetArrayFromImage(phantom.dose))
    else:
        np.testing.assert_array_equal(_image(out / "InputDose.nrrd"), sitk.GetArrayFromImage(phantom.dose))

    # The outcome model: fitted on the synthetic cohort, with its training risk groups stored.
    model = OutcomeModel.load(out / "outcome-model")
    cohort = pd.read_csv(out / "outcome-model" / "cohort.csv")
    assert len(cohort) == 40 and 0.3 < cohort["failure"].mean() < 0.95
    assert "CT_PTV70_original_shape_MeshVolume" in model.features  # the strongest planted feature is found
    stored = model.state["training"]["risk_groups"]
    assert sum(c["n"] for c in stored["curves"].values()) == 40 and 0 <= stored["logrank_p"] < 0.05
    groups = model.risk_group(cohort)
    for name, curve in stored["curves"].items():  # our stored curves equal lifelines' Kaplan-Meier estimate
        rows = (groups == name).to_numpy()
        km = KaplanMeierFitter().fit(cohort["months_to_failure"][rows], cohort["failure"][rows])
        np.testing.assert_allclose(curve["survival"], km.survival_function_at_times(curve["time"]).to_numpy(),
                                   atol=1e-12)

    # The predicted group equals the model applied to the written features, independently of the pipeline.
    features = pd.read_csv(out / "features.csv", dtype={"ID": str})
    prediction = model.predict(wide_features(features)).iloc[0]
    assert record["outcome"]["risk_group"] == prediction["risk_group"]
    assert record["outcome"]["risk_score"] == pytest.approx(prediction["risk_score"], rel=1e-9)

    page = (out / "report.html").read_text()
    assert "Synthetic data, not a patient" in page and "rtrai run" in page and "OpenKBP" in page and "DICOM" in page
    assert page.count('src="data:image/png;base64,') == 3  # slices, DVH, Kaplan-Meier
    assert f"<strong>{prediction['risk_group']} risk group</strong>" in page
    assert model.state["description"][:60] in page


CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 0);
  document.title = "IMAGES " + ok.length + "/" + images.length + " " +
    images.map(i => i.naturalWidth + "x" + i.naturalHeight).join(",");
});
</script>"""


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    message = "headless Chromium not found (Debian: apt-get install chromium; Utilities/install.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_report_in_headless_chromium(demo_output, tmp_path, artifacts):
    """Every image of the report decodes in a real browser at its PNG size; a screenshot is kept."""
    browser = _browser()
    page = (demo_output / "report.html").read_text()
    expected = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        header = base64.b64decode(data[:64])
        expected.append("{}x{}".format(*struct.unpack(">II", header[16:24])))
    assert len(expected) == 3
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"))
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title, dom.stderr[-2000:]
    assert title.group(1) == f"IMAGES 3/3 {','.join(expected)}"

    shot = artifacts / "demo-report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(flags + ["--window-size=1200,6000", f"--screenshot={shot}", (demo_output / "report.html").as_uri()],
                   capture_output=True, text=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (6000, 1200) and pixels.std() > 0.1  # a page, not a blank window
    shutil.copy(demo_output / "report.html", artifacts / "demo-report.html")


def test_run_output_loads_into_a_scene(demo_output):
    from rtrai.mrml import is_dose_volume
    from rtrai.pipeline import load_results

    nodes = load_results(demo_output)
    assert tuple(nodes["ct"].GetImageData().GetDimensions()) == (128, 128, 128)
    segmentation = nodes["structures"].GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names == set(read_segmentation(demo_output / "Structures.seg.nrrd")[0])
    assert is_dose_volume(nodes["dose"])
    tables = nodes["tables"]
    assert tables["Workflow steps"].GetNumberOfRows() == len(STEPS)
    assert tables["Radiomics features"].GetNumberOfRows() == len(pd.read_csv(demo_output / "features.csv"))
    assert tables["DVH constraints"].GetNumberOfRows() == len(pd.read_csv(demo_output / "constraints.csv"))
    assert [s["status"] for s in nodes["steps"]][0] == "done" and nodes["report"].is_file()
    sh = nodes["scene"].GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(tables["DVH constraints"])) == nodes["study_item"]


# ------------------------------------------------------------------------------------- dose step, cohorts, skips

def _small_case(seed: int = 0):
    return make_phantom(seed=seed, size=(64, 64, 48), spacing=(7.0, 7.0, 5.0))


def test_dose_step_predicts_keeps_the_input_dose_and_compares(tiny_dose_model, tmp_path):
    from rtrai.dose.inference import DosePredictor
    from rtrai.models import read_manifest

    write_case(_small_case(2), tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--keep-structures", "--dose-model",
                     str(tiny_dose_model), "--prescription", "PTV70=66"]) == 0
    steps = _steps(out)
    record = _provenance(out)
    assert steps["dose"]["status"] == "done" and "PTV70 66 Gy" in steps["dose"]["summary"]
    assert {m["role"]: m["sha256"] for m in record["models"]}["dose"] == read_manifest(str(tiny_dose_model))["sha256"]
    # Dose.nrrd is exactly what the model predicts for the case with that prescription, computed here on its own.
    case = read_case(tmp_path / "case")
    case.prescription["PTV70"] = 66.0
    expected = sitk.GetArrayFromImage(DosePredictor(str(tiny_dose_model), "cpu").predict(case))
    dose = _image(out / "Dose.nrrd")
    np.testing.assert_allclose(dose, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(_image(out / "InputDose.nrrd"), sitk.GetArrayFromImage(case.dose))
    body = sitk.GetArrayFromImage(case.possible_dose_mask) > 0
    score = np.abs(dose.astype(np.float64) - sitk.GetArrayFromImage(case.dose)).sum() / body.sum()
    assert record["dose_comparison"]["dose_score_gy"] == pytest.approx(score, rel=1e-5)
    # Twelve training steps give a poor model: a dose over 150 Gy is refused by the DVH step, with the reason.
    if dose.max() > 150:
        assert steps["dvh"]["status"] == "skipped" and "implausible in Gy" in steps["dvh"]["reason"]
    else:
        assert steps["dvh"]["status"] == "done"


def test_cohort_goes_on_after_a_failing_case_and_resumes(tmp_path, capsys):
    patients = tmp_path / "patients"
    write_case(_small_case(0), patients / "good")
    (patients / "bad").mkdir(parents=True)
    (patients / "bad" / "CT.nrrd").write_bytes(b"NRRD0004\nnot really an image\n")
    out = tmp_path / "out"
    # The shipped dose model refuses these 7 mm phantoms (trained at ~3.5 mm): a step skipped with its reason.
    args = ["run", str(patients), "-o", str(out), "--keep-structures"]
    assert cli.main(args) == 2
    assert "bad: cannot read image" in capsys.readouterr().err
    cohort = pd.read_csv(out / "cohort.csv").set_index("case")
    assert cohort.loc["good", "status"] == "done" and cohort.loc["bad", "status"] == "failed"
    assert "cannot read image" in cohort.loc["bad", "error"] and not (out / "bad").exists()
    for name in OUTPUT_FILES:
        assert (out / "good" / name).is_file(), name
    steps = _steps(out / "good")
    assert steps["segment"]["status"] == "skipped" and "--keep-structures" in steps["segment"]["reason"]
    assert steps["dose"]["status"] == "skipped" and "trained at about" in steps["dose"]["reason"]
    table = pd.read_csv(out / "cohort_features.csv")
    assert list(table["ID"]) == ["phantom-0"] and "dose_PTV70_dvh_Dmean_Gy" in table.columns

    # Again: the finished case is skipped (its files untouched), the failed one is tried again.
    stamp = (out / "good" / "provenance.json").stat().st_mtime_ns
    assert cli.main(args) == 2
    cohort = pd.read_csv(out / "cohort.csv").set_index("case")
    assert cohort.loc["good", "status"] == "finished before" and cohort.loc["bad", "status"] == "failed"
    assert (out / "good" / "provenance.json").stat().st_mtime_ns == stamp

    # --cohort LIST: paths relative to the list file.
    (tmp_path / "list.txt").write_text("# one case\npatients/good\n")
    assert cli.main(["run", "--cohort", str(tmp_path / "list.txt"), "-o", str(tmp_path / "out2"),
                     "--keep-structures", "--no-scene"]) == 0
    assert (tmp_path / "out2" / "good" / "report.html").is_file()
    assert not (tmp_path / "out2" / "good" / "scene.mrb").exists()


def test_steps_that_cannot_run_are_skipped_with_their_reason(tmp_path, capsys):
    case = _small_case(0)
    for name in ("PTV70", "PTV56"):
        del case.structures[name]
    case.dose, case.prescription = None, {}
    write_case(case, tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--keep-structures"]) == 0
    err = capsys.readouterr().err
    steps = _steps(out)
    assert steps["dose"]["status"] == "skipped" and "no target" in steps["dose"]["reason"]
    assert steps["dvh"]["status"] == "skipped" and "no dose" in steps["dvh"]["reason"]
    assert steps["radiomics"]["status"] == "done"
    assert steps["outcome"]["status"] == "skipped" and "no outcome model given" in steps["outcome"]["reason"]
    assert "DosePredict skipped: the case has no target" in err
    features = pd.read_csv(out / "features.csv")
    assert set(features["Image"]) == {"CT"} and "PTV70" not in set(features["Structure"])
    page = (out / "report.html").read_text()
    log = (out / "run.log").read_text()
    for reason in (steps["dose"]["reason"], steps["dvh"]["reason"], steps["outcome"]["reason"]):
        assert reason.split(";")[0] in log
        assert reason.split(";")[0].replace("'", "&#x27;") in page
    assert not (out / "Dose.nrrd").exists() and not (out / "dvh.csv").exists()


def test_dicom_input_takes_the_prescription_from_the_rtplan(tmp_path):
    case = _small_case(0)
    case.prescription = {"PTV70": 66.0, "PTV56": 54.0}  # not the levels in the names: they must come from the RTPLAN
    write_case(case, tmp_path / "case")
    assert cli.main(["export-dicom", str(tmp_path / "case"), str(tmp_path / "dicom")]) == 0
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "dicom"), "-o", str(out), "--keep-structures", "--no-scene"]) == 0
    record = _provenance(out)
    assert record["case"]["prescription_gy"] == {"PTV70": 66.0, "PTV56": 54.0}
    assert "dicom" in _steps(out)["load"]["summary"]
    goals = pd.read_csv(out / "constraints.csv").set_index(["structure", "metric"])["goal"]
    assert goals[("PTV70", "D95%")] == ">= 62.7 Gy (95% of 66 Gy)"
    assert goals[("PTV70", "D2%")] == "<= 70.6 Gy (107% of 66 Gy)"


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    write_case(_small_case(0), tmp_path / "case")
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "case"), "-o", str(out), "--prescription", "PTV99=70"]) == 2
    assert "PTV99" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["run", str(tmp_path / "empty"), "-o", str(out)]) == 2
    assert cli.main(["run", "-o", str(out)]) == 2
    assert "--cohort" in capsys.readouterr().err and not out.exists()

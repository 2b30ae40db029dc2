"""``rtrai plan``: a photon IMRT plan (pyRadPlan pencil beams, fluence mimicking) of a small synthetic patient.

CI plans the phantom (rtrai.phantom, 7 mm CT voxels) on a coarse setting (5 beams, 10 mm bixels and dose grid, 100
iterations) so that it runs in seconds of CPU; the OpenKBP figures (5 validation patients at 24 beams, 7 mm, 6 mm)
come from benchmarks/bench_plan.py (benchmarks/results/plan_validation.txt).
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("pyRadPlan", reason="rtrai plan needs pyRadPlan (Utilities/install.sh installs it)")

from rtrai import cli  # noqa: E402
from rtrai.core.image import from_array  # noqa: E402
from rtrai.dose.qa import structure_metrics  # noqa: E402
from rtrai.io.case_io import write_case  # noqa: E402
from rtrai.io.images import read_image, write_image  # noqa: E402
from rtrai.phantom import make_phantom  # noqa: E402

COARSE = ["--beams", "5", "--bixel", "10", "--grid", "10", "--iterations", "100"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    case = make_phantom(0, size=(64, 64, 40), spacing=(7.0, 7.0, 6.25))
    folder = tmp_path_factory.mktemp("phantom")
    write_case(case, folder / "case")
    write_image(case.dose, folder / "dose.nrrd")
    return case, folder


@pytest.fixture(scope="module")
def planned(phantom, tmp_path_factory):
    case, folder = phantom
    out = tmp_path_factory.mktemp("plan") / "out"
    code = cli.main(["plan", str(folder / "case"), "--dose", str(folder / "dose.nrrd"), *COARSE,
                     "--format", "dicom", "-o", str(out)])
    assert code == 0
    return out


def test_plan_outputs(phantom, planned):
    case, _ = phantom
    for name in ("PlanDose.nrrd", "plan.json", "fluence.png", "dvh.png", "dvh_comparison.csv", "provenance.json",
                 "dicom/RTDOSE.dcm", "dicom/RTPLAN.dcm"):
        assert (planned / name).is_file(), name
    dose = read_image(planned / "PlanDose.nrrd")
    assert dose.GetSize() == case.ct.GetSize() and np.allclose(dose.GetSpacing(), case.ct.GetSpacing())
    plan = json.loads((planned / "plan.json").read_text())
    assert [b["gantry_deg"] for b in plan["beams"]] == [0, 72, 144, 216, 288]
    assert plan["bixel_mm"] == 10 and plan["dose_grid_mm"] == 10 and plan["engine"]["name"] == "pyRadPlan"
    weights = [x["weight"] for b in plan["beams"] for x in b["bixels"]]
    assert min(weights) >= 0 and max(weights) > 0 and len(weights) > 100
    iso = np.array(plan["beams"][0]["isocentre_mm_lps"])
    assert all(np.allclose(b["isocentre_mm_lps"], iso) for b in plan["beams"])
    with open(planned / "dvh_comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["structure", "metric", "predicted", "planned", "input"]
    assert {(r["structure"], r["metric"]) for r in rows} >= {("PTV70", "D95%"), ("SpinalCord", "D0.1cc")}
    from rtrai.dose.dvh import metric, samples_from_mask
    from rtrai.io.dicomrt import read_rtdose

    rtdose = read_rtdose(planned / "dicom" / "RTDOSE.dcm")[0]
    d95 = metric(samples_from_mask(dose, case.structures["PTV70"]), "D95%")
    assert metric(samples_from_mask(rtdose, case.structures["PTV70"]), "D95%") == pytest.approx(d95, abs=0.05)


def test_plan_mimics_the_dose(phantom, planned):
    """Even this coarse plan follows the dose it mimics: PTV70 covered near its prescription, a small mean error in
    the body, and no OAR mean far above the mimicked dose."""
    case, _ = phantom
    dose = read_image(planned / "PlanDose.nrrd")
    plan, given = sitk.GetArrayViewFromImage(dose), sitk.GetArrayViewFromImage(case.dose)
    body = sitk.GetArrayViewFromImage(case.structures["External"]) > 0
    mae = float(np.abs(plan - given)[body].mean())
    assert mae < 6.0, mae
    mp, mg = structure_metrics(case, dose), structure_metrics(case, case.dose)
    assert mp[("PTV70", "D95%")] > 0.9 * 70
    assert mp[("PTV70", "D1%")] < 1.35 * 70
    for (name, m), value in mp.items():
        if m == "Dmean" and name not in case.targets():
            assert value <= mg[(name, m)] + 4.0, (name, value, mg[(name, m)])


def _bad(args, capsys, words):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtrai: error:") and words in err[0], err


def test_plan_bad_inputs(phantom, tmp_path, capsys):
    case, folder = phantom
    dose = ["--dose", str(folder / "dose.nrrd")]

    no_target = dataclasses.replace(case, structures={n: m for n, m in case.structures.items() if "PTV" not in n},
                                    prescription={})
    write_case(no_target, tmp_path / "no_target")
    _bad(["plan", str(tmp_path / "no_target"), *dose, "-o", str(tmp_path / "o1")], capsys, "needs a target")

    renamed = {("PTV_boost" if n == "PTV70" else n): m for n, m in case.structures.items()}
    unprescribed = dataclasses.replace(case, structures=renamed, prescription={"PTV56": 56.0})
    write_case(unprescribed, tmp_path / "unprescribed")
    _bad(["plan", str(tmp_path / "unprescribed"), *dose, "-o", str(tmp_path / "o2")], capsys, "no prescription")

    shifted = sitk.Image(case.dose)
    shifted.SetSpacing((5.0, 5.0, 5.0))
    write_image(shifted, tmp_path / "other_grid.nrrd")
    _bad(["plan", str(folder / "case"), "--dose", str(tmp_path / "other_grid.nrrd"), "-o", str(tmp_path / "o3")],
         capsys, "spacing")

    air = from_array(np.full(sitk.GetArrayViewFromImage(case.ct).shape, -1000, np.int16), case.ct)
    bodiless = dataclasses.replace(case, ct=air, structures={n: m for n, m in case.structures.items()
                                                             if n != "External"})
    write_case(bodiless, tmp_path / "bodiless")
    _bad(["plan", str(tmp_path / "bodiless"), *dose, "-o", str(tmp_path / "o4")], capsys, "no body")

    _bad(["plan", str(folder / "case"), *dose, "--beams", "0", "-o", str(tmp_path / "o5")], capsys, "--beams")
    _bad(["plan", str(folder / "case"), *dose, "--prescription", "PTV70=7000", "-o", str(tmp_path / "o6")],
         capsys, "cGy")


def test_mimicking_objective_known_answers():
    """With an identity dose-influence matrix (one bixel per voxel, dose grid = CT grid) the optimum is known:
    - outside the possible-dose mask the dose to mimic is undefined (OpenKBP stores zeros there), so those voxels are
      not pulled to zero: they keep their starting weight;
    - an OAR half inside the target, where the dose to mimic (40 Gy) is below the coverage bound (0.97 x 60 Gy):
      coverage raises the overlap, so the OAR's mean can only stay at the mean to mimic if its other half goes below
      its 20 Gy: the OAR term acts on the whole organ's mean, as its DVH reports it."""
    import scipy.sparse

    from rtrai.core.case import Case
    from rtrai.plan.engine import InfluenceMatrix
    from rtrai.plan.mimicking import optimise

    shape = (4, 6, 6)
    ct = from_array(np.zeros(shape, np.float32), spacing=(5.0, 5.0, 5.0))
    ptv, oar, possible = (np.zeros(shape, np.uint8) for _ in range(3))
    ptv[1:3, 1:3, 1:3] = 1
    oar[1:3, 1:3, 2:4] = 1  # x = 2 inside the PTV, x = 3 outside
    possible[:, :, :5] = 1  # x = 5 is outside the possible-dose mask
    mimic = np.where(ptv > 0, 60.0, 0.0).astype(np.float32)
    mimic[(ptv > 0) & (oar > 0)] = 40.0
    mimic[(oar > 0) & (ptv == 0)] = 20.0
    mimic[:, :, 5] = 0.0
    masks = {name: from_array(a, reference=ct) for name, a in (("PTV60", ptv), ("Parotid_L", oar))}
    case = Case(ct=ct, structures=masks, possible_dose_mask=from_array(possible, reference=ct),
                prescription={"PTV60": 60.0})
    n = int(np.prod(shape))
    dose_grid = sitk.Image(ct.GetSize(), sitk.sitkFloat32)
    dose_grid.CopyInformation(ct)
    influence = InfluenceMatrix(scipy.sparse.identity(n, np.float32, format="csc"), np.arange(n), dose_grid, ct, [],
                                np.zeros(n, int), 5.0, 5.0, 0.0)
    weights, _, _ = optimise(influence, mimic, np.ones(shape, bool), case, {"PTV60": 60.0}, iterations=2000)
    dose = weights.reshape(shape)
    assert np.allclose(dose[:, :, 5], 60.0)  # the start: uniform weights scaled to the prescription in the PTV
    free = (possible > 0) & (ptv == 0) & (oar == 0)
    assert np.abs(dose[free] - mimic[free]).max() < 0.05
    overlap, rest = (ptv > 0) & (oar > 0), (oar > 0) & (ptv == 0)
    assert dose[overlap].mean() > 50.0  # coverage wins over mimicking's 40 Gy
    assert dose[rest].mean() < 18.0  # the organ's other half compensates
    assert dose[oar > 0].mean() < mimic[oar > 0].mean() + 2.0


def test_influence_matrix_rows_and_threaded_products(monkeypatch):
    """pyRadPlan's matrix (a row per dose-grid voxel, int64 indices) keeps only its rows with dose, in int32, with the
    same values; the threaded products over column blocks equal scipy's own."""
    import scipy.sparse

    from rtrai.plan import engine

    rng = np.random.default_rng(3)
    full = scipy.sparse.random_array((50, 13), density=0.2, format="csc", dtype=np.float32, rng=rng)
    full = scipy.sparse.csc_array((full.data, full.indices.astype(np.int64), full.indptr.astype(np.int64)),
                                  shape=full.shape)
    matrix, voxels = engine._body_rows(full)
    dense = full.toarray()
    assert np.array_equal(voxels, np.flatnonzero((dense != 0).any(axis=1)))
    assert matrix.indices.dtype == np.int32 and matrix.shape == (voxels.size, 13)
    assert np.array_equal(matrix.toarray(), dense[voxels])
    monkeypatch.setenv("RTRAI_THREADS", "3")  # three column blocks of about equal entries
    grid = sitk.Image(50, 1, 1, sitk.sitkFloat32)
    influence = engine.InfluenceMatrix(matrix, voxels, grid, grid, [], np.zeros(13, int), 7.0, 6.0, 0.0)
    assert len(influence._blocks()) == 3
    w, g = rng.random(13, dtype=np.float32), rng.random(voxels.size, dtype=np.float32)
    assert np.allclose(influence.forward(w), matrix @ w, rtol=1e-6)
    assert np.allclose(influence.adjoint(g), matrix.T @ g, rtol=1e-6)
    assert np.allclose(influence.dose_on_dose_grid(w).ravel(), dense @ w, rtol=1e-5, atol=1e-7)


def test_influence_matrix_without_tails():
    """Dropping each column's entries below a fraction of its largest keeps the rest exactly, empty columns too."""
    import scipy.sparse

    from rtrai.plan.engine import InfluenceMatrix

    dense = np.array([[1.0, 0.0, 0.0, 0.5], [0.001, 0.0, 2.0, 0.0], [0.5, 0.0, 0.003, 0.0005]], np.float32)
    grid = sitk.Image(3, 1, 1, sitk.sitkFloat32)
    influence = InfluenceMatrix(scipy.sparse.csc_array(dense), np.arange(3), grid, grid, [], np.zeros(4, int), 7.0,
                                6.0, 0.0)
    kept = influence.without_tails(0.01)
    expected = np.where(dense >= 0.01 * dense.max(axis=0), dense, 0.0)
    assert np.array_equal(kept.matrix.toarray(), expected)
    assert kept.matrix.nnz == 4 and influence.matrix.nnz == 7  # the original is untouched
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    assert np.allclose(kept.forward(w), expected @ w)

"""Dose evaluation: gamma vs pymedphys, DVH vs closed form and dicompyler-core, OpenKBP scores vs upstream's rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from rtrai import cli
from rtrai.core.errors import GeometryError, InputError
from rtrai.dose import dvh_phantoms as phantoms
from rtrai.dose.dvh import metric, samples_from_contours, samples_from_mask
from rtrai.dose.gamma import gamma_index
from rtrai.dose.scores import openkbp_dvh_metrics, score_patient
from rtrai.io.dicomrt_export import write_contours_and_dose


@pytest.fixture
def rtrai_cli():
    """The real ``rtrai`` entry point."""
    return cli.main


# ---------------------------------------------------------------- a tiny OpenKBP reader (raw upstream arrays)

def _openkbp_array(folder, name, values=True):
    df = pd.read_csv(folder / f"{name}.csv.gz", header=0)
    flat = np.zeros(128 ** 3, dtype=np.float64)
    flat[df.iloc[:, 0].to_numpy()] = df.iloc[:, 1].to_numpy() if values else 1
    return flat.reshape(128, 128, 128)


def _upstream_scores(ref, pred, pdm, masks, voxel_mm3):
    """Direct re-implementation of upstream dose_evaluation_class (dose score, DVH metrics, DVH score)."""
    dose_score = np.sum(np.abs(ref - pred)) / np.sum(pdm)
    errors = []
    for name, mask in masks.items():
        for dose_ref, dose_pred in ((ref[mask > 0], pred[mask > 0]),):
            if name.startswith("PTV"):
                for q in (1, 5, 99):
                    errors.append(abs(np.percentile(dose_ref, q) - np.percentile(dose_pred, q)))
            else:
                n = np.maximum(1, np.round(100 / voxel_mm3))
                frac = 100 - n / mask.sum() * 100
                errors.append(abs(np.percentile(dose_ref, frac) - np.percentile(dose_pred, frac)))
                errors.append(abs(dose_ref.mean() - dose_pred.mean()))
    return dose_score, float(np.nanmean(errors))


@pytest.fixture
def pt201(openkbp_pt201):
    vd = np.loadtxt(openkbp_pt201 / "voxel_dimensions.csv.gz")
    ref = _openkbp_array(openkbp_pt201, "dose")
    pdm = _openkbp_array(openkbp_pt201, "possible_dose_mask", values=False)
    names = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
             "PTV56", "PTV63", "PTV70")
    masks = {n: _openkbp_array(openkbp_pt201, n, values=False) for n in names
             if (openkbp_pt201 / f"{n}.csv.gz").exists()}
    return ref, pdm, masks, float(np.prod(vd)), vd


def test_openkbp_sanity(pt201, openkbp_pt201):
    ref, _, _, _, _ = pt201
    assert len(pd.read_csv(openkbp_pt201 / "dose.csv.gz")) == 116576  # rows listed (a few hold 0 Gy)
    assert ref.max() == pytest.approx(72.3, abs=0.05)


def test_scores_known_answer_and_upstream(pt201):
    from rtrai.core.structures import to_tg263

    ref, pdm, masks, voxel_mm3, _ = pt201
    tg_masks = {to_tg263(n): m > 0 for n, m in masks.items()}
    # Known answer: +1 Gy everywhere moves every DVH metric by 1 Gy; the dose score is 128^3 / mask voxels.
    shifted = ref + 1.0
    result = score_patient("pt_201", ref, shifted, tg_masks, voxel_mm3, pdm > 0, 70.0)
    assert result.dose_score == pytest.approx(128 ** 3 / pdm.sum(), rel=1e-12)
    assert all(abs(row["error"] - 1.0) < 1e-6 for row in result.dvh_rows)
    assert len(result.dvh_rows) == 3 * 3 + 2 * 7
    # A non-trivial perturbation against the direct re-implementation of upstream.
    rng = np.random.default_rng(0)
    pred = np.clip(ndimage.gaussian_filter(ref, 1.5) * 0.97 + rng.normal(0, 0.5, ref.shape) * pdm, 0, None) * pdm
    result = score_patient("pt_201", ref, pred, tg_masks, voxel_mm3, pdm > 0, 70.0)
    dose_score, dvh_score = _upstream_scores(ref, pred, pdm, masks, voxel_mm3)
    assert result.dose_score == pytest.approx(dose_score, rel=1e-12)
    assert np.mean(result.dvh_abs_errors) == pytest.approx(dvh_score, rel=1e-12)
    assert result.isodose[100] < result.isodose[50] <= 1.0
    assert openkbp_dvh_metrics(ref, np.zeros_like(ref, bool), voxel_mm3, False) == {}


def test_dose_evaluate_cli_on_openkbp(pt201, openkbp_pt201, tmp_path, rtrai_cli):
    from rtrai.io.case_io import read_case

    case = read_case(openkbp_pt201)
    ref = sitk.GetArrayFromImage(case.dose)
    pdm_count = int((sitk.GetArrayFromImage(case.possible_dose_mask) > 0).sum())
    pred = sitk.GetImageFromArray(ref + np.float32(1.0))
    pred.CopyInformation(case.dose)
    sitk.WriteImage(pred, str(tmp_path / "Dose.nrrd"))
    assert rtrai_cli(["dose", "evaluate", "--pred", str(tmp_path / "Dose.nrrd"), "--ref", str(openkbp_pt201),
                      "-o", str(tmp_path / "out")]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["dose_score_gy"] == pytest.approx(128 ** 3 / pdm_count, rel=1e-5)
    assert scores["dvh_score_gy"] == pytest.approx(1.0, abs=1e-4)
    metrics = pd.read_csv(tmp_path / "out" / "dvh_metrics.csv")
    assert set(metrics.structure) >= {"PTV70", "Parotid_L", "Bone_Mandible"}
    assert (tmp_path / "out" / "provenance.json").exists()
    # OpenKBP's submission layout (PRED/pt_201/dose.csv, nothing else) against the folder of patients, as
    # `rtrai dose predict --format openkbp` writes it: placed on the reference patient's grid, same scores.
    from rtrai.core.case import Case
    from rtrai.io.openkbp import write_openkbp

    write_openkbp(Case(dose=pred), tmp_path / "pred" / openkbp_pt201.name, what=("dose",))
    assert [p.name for p in (tmp_path / "pred" / openkbp_pt201.name).iterdir()] == ["dose.csv"]
    assert rtrai_cli(["dose", "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(openkbp_pt201.parent),
                      "-o", str(tmp_path / "out_csv")]) == 0
    folder_scores = json.loads((tmp_path / "out_csv" / "scores.json").read_text())
    assert folder_scores["patients"] == 1
    assert folder_scores["dose_score_gy"] == pytest.approx(scores["dose_score_gy"], rel=1e-6)
    # cGy where Gy is expected: a clear error, exit 2, no output folder.
    sitk.WriteImage(pred * 100, str(tmp_path / "cgy.nrrd"))
    assert rtrai_cli(["dose", "evaluate", "--pred", str(tmp_path / "cgy.nrrd"), "--ref", str(openkbp_pt201),
                      "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------------- gamma

def _pt201_pair(pt201, crop):
    ref, _, _, _, vd = pt201
    ev = np.clip(ndimage.shift(ndimage.gaussian_filter(ref, 1.0) * 1.02, (0.4, -0.3, 0.5), order=1), 0, None)
    ref, ev = ref[crop], ev[crop]
    images = []
    for arr in (ref, ev):
        image = sitk.GetImageFromArray(arr.astype(np.float32))
        image.SetSpacing((vd[2], vd[1], vd[0]))  # array axes (0, 1, 2) have spacings vd[0], vd[1], vd[2]
        images.append(image)
    return ref, ev, images, vd


@pytest.mark.parametrize("local", [False, True])
def test_gamma_matches_pymedphys(pt201, local):
    import pymedphys  # the reference implementation (test extra)
    crop = (slice(45, 73), slice(55, 79), slice(65, 89))  # a high-gradient region, small enough for pymedphys
    ref, ev, (r_img, e_img), vd = _pt201_pair(pt201, crop)
    axes = tuple(np.arange(n) * s for n, s in zip(ref.shape, vd))
    expected = pymedphys.gamma(axes, ref, axes, ev, 3, 3, lower_percent_dose_cutoff=10, interp_fraction=10,
                               max_gamma=2, local_gamma=local, global_normalisation=float(ref.max()))
    valid = ~np.isnan(expected)
    expected_rate = 100 * np.mean(expected[valid] <= 1)
    result = gamma_index(r_img, e_img, 3, 3, local=local, cutoff_percent=10, max_gamma=2)
    assert result.evaluated_points == int(valid.sum())
    assert abs(result.pass_rate_pct - expected_rate) <= 0.5
    assert 20 < expected_rate < 99  # the pair is a real test, not all pass
    mine = sitk.GetArrayFromImage(result.gamma)
    assert np.nanmean(np.abs(mine[valid] - expected[valid])) < 0.02


def test_gamma_identity_and_grids():
    dose = phantoms.linear_dose((30, 20, 10), (2.0, 2.0, 3.0), (0, 0, 0), (1.0, 0, 0), 5.0)
    result = gamma_index(dose, dose, 3, 3)
    assert result.pass_rate_pct == 100.0 and result.mean_gamma == 0.0
    # A 2 Gy offset on a 1 Gy/mm gradient: gamma = distance from the origin to the line 3u + DD v = 2 in
    # (distance / DTA, dose / DD) space = 2 / sqrt(9 + DD^2), DD = 3 % of the maximum.
    shifted = phantoms.linear_dose((30, 20, 10), (2.0, 2.0, 3.0), (0, 0, 0), (1.0, 0, 0), 3.0)
    g = sitk.GetArrayFromImage(gamma_index(dose, shifted, 3, 3, cutoff_percent=30).gamma)
    dd = 0.03 * float(sitk.GetArrayViewFromImage(dose).max())
    assert np.nanmedian(g) == pytest.approx(2 / np.sqrt(9 + dd ** 2), abs=0.03)
    far = sitk.Image(dose)
    far.SetOrigin((1000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="unrelated"):
        gamma_index(dose, far)
    with pytest.raises(InputError, match="cGy"):
        gamma_index(dose * 100, dose)
    with pytest.raises(InputError, match="negative"):
        gamma_index(dose - 100, dose)


def test_gamma_cli(tmp_path, rtrai_cli):
    a = phantoms.linear_dose((30, 20, 10), (2.0, 2.0, 3.0), (0, 0, 0), (1.0, 0, 0), 5.0)
    sitk.WriteImage(a, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(a * 1.3, str(tmp_path / "b.nrrd"))
    assert rtrai_cli(["gamma", "--reference", str(tmp_path / "a.nrrd"), "--evaluated", str(tmp_path / "b.nrrd"),
                      "--dd", "3", "--dta", "3", "-o", str(tmp_path / "g")]) == 0
    out = json.loads((tmp_path / "g" / "gamma.json").read_text())
    assert 0 < out["pass_rate_pct"] < 100 and out["parameters"]["dta_mm"] == 3
    assert sitk.ReadImage(str(tmp_path / "g" / "gamma.nrrd")).GetSize() == a.GetSize()
    nan = sitk.GetArrayFromImage(a)
    nan[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(nan)
    bad.CopyInformation(a)
    sitk.WriteImage(bad, str(tmp_path / "nan.nrrd"))
    assert rtrai_cli(["gamma", "--reference", str(tmp_path / "nan.nrrd"), "--evaluated", str(tmp_path / "b.nrrd"),
                      "-o", str(tmp_path / "g2")]) == 2
    assert not (tmp_path / "g2").exists()


# ----------------------------------------------------------------------------------------------------- DVH

GRAD = 0.2  # Gy/mm along x
DOSE_ARGS = ((60, 50, 30), (2.5, 2.5, 3.0), (-75.0, -62.5, -45.0), (GRAD, 0.0, 0.0), 40.0)
SPHERES = {"S1": ((-20.0, 0.0, 0.0), 18.0), "S2": ((25.0, 5.0, 6.0), 9.0)}


def _sphere_phantom():
    dose = phantoms.linear_dose(*DOSE_ARGS)
    planes = np.arange(-44.0, 45.0, 1.5)
    contours = {n: phantoms.sphere_contours(c, r, planes) for n, (c, r) in SPHERES.items()}
    return dose, contours


def test_dvh_sphere_closed_form():
    dose, contours = _sphere_phantom()
    for name, (centre, radius) in SPHERES.items():
        s = samples_from_contours(dose, contours[name])
        centre_dose = 40.0 + GRAD * centre[0]
        volume = 4 / 3 * np.pi * radius ** 3 / 1000
        assert s.total_cc == pytest.approx(volume, rel=0.01)
        assert metric(s, "Dmean") == pytest.approx(centre_dose, abs=0.02)
        for m, frac in (("D95%", 0.95), ("D50%", 0.5), ("D2%", 0.02)):
            exact = phantoms.sphere_dose_at_volume(frac, centre_dose, GRAD, radius)
            assert metric(s, m) == pytest.approx(exact, abs=0.1), m
        exact_2cc = phantoms.sphere_dose_at_volume(2.0 / volume, centre_dose, GRAD, radius)
        assert metric(s, "D2cc") == pytest.approx(exact_2cc, abs=0.1)
        # V at 1.03 Gy above the centre dose (a level off the sub-point lattice): a spherical cap.
        exact_v = 100 * phantoms.sphere_cap_fraction(1.03 / GRAD, radius)
        # Sub-points are 0.5 mm apart: one column of them is ~2 % of this sphere, 0.1 Gy at 0.2 Gy/mm.
        assert metric(s, f"V{centre_dose + 1.03:g}Gy") == pytest.approx(exact_v, abs=1.0)


def test_dvh_box_partial_voxels():
    """A box whose faces cut voxels in half: the volume counts partial voxels by their covered fraction."""
    dose = phantoms.linear_dose(*DOSE_ARGS)
    low, high = (-30.0, -20.0, -15.0), (10.0, 20.0, 15.0)  # x, y faces on voxel centres: half-voxel cuts
    s = samples_from_contours(dose, phantoms.box_contours(low, high, np.arange(-13.5, 15.0, 3.0)))
    assert s.total_cc == pytest.approx(40 * 40 * 30 / 1000, rel=1e-3)
    # The coldest sub-point lies up to one sub-step (0.5 mm = 0.1 Gy here) inside the face.
    assert metric(s, "Dmin") == pytest.approx(40 + GRAD * low[0], abs=0.11)
    # Uniform distribution of dose between the faces: D95% is 95 % of the way down from the hot face.
    assert metric(s, "D95%") == pytest.approx(40 + GRAD * (high[0] - 0.95 * 40), abs=0.1)


def test_dvh_matches_dicompyler(tmp_path):
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):  # dicompyler-core 0.5.6 still imports pydicom 2's name
        pydicom.dicomio.read_file = pydicom.dcmread
    from dicompylercore import dvhcalc  # the reference implementation (test extra)
    from rtrai.io.dicomrt import read_rtdose, read_rtstruct

    dose, contours = _sphere_phantom()
    dose_path, struct_path = write_contours_and_dose(tmp_path, dose, contours)
    rois, _ = read_rtstruct(struct_path)
    rt_dose = read_rtdose(dose_path)[0]
    for number, roi in enumerate(rois, start=1):
        centre, radius = SPHERES[roi.name]
        exact_d95 = phantoms.sphere_dose_at_volume(0.95, 40 + GRAD * centre[0], GRAD, radius)
        ours = samples_from_contours(rt_dose, roi.contours)
        # dicompyler-core's default: whole dose voxels whose centre is inside, 1 cGy bins.
        theirs = dvhcalc.get_dvh(str(struct_path), str(dose_path), number)
        assert metric(ours, "Dmean") == pytest.approx(theirs.mean, abs=0.05)
        assert metric(ours, "D95%") == pytest.approx(theirs.D95.value, abs=0.5)
        assert metric(ours, "Volume") == pytest.approx(theirs.volume, rel=0.03)
        # ... and ours is at least as close to the closed form.
        assert abs(metric(ours, "D95%") - exact_d95) <= max(abs(theirs.D95.value - exact_d95), 0.05)


def test_dvh_mask_and_cli(tmp_path, rtrai_cli):
    dose, contours = _sphere_phantom()
    dose_path, struct_path = write_contours_and_dose(tmp_path / "rt", dose, contours)
    assert rtrai_cli(["dvh", "--dose", str(dose_path), "--structures", str(struct_path),
                      "--metrics", "Dmean,D95%,D2cc,V40Gy", "-o", str(tmp_path / "out")]) == 0
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    dmean = metrics[(metrics.structure == "S1") & (metrics.metric == "Dmean")].value.item()
    assert dmean == pytest.approx(40 + GRAD * SPHERES["S1"][0][0], abs=0.05)
    dvh = pd.read_csv(tmp_path / "out" / "dvh.csv")
    assert list(dvh.columns) == ["structure", "dose_gy", "volume_pct", "volume_cc"]
    first = dvh[dvh.structure == "S1"].iloc[0]
    assert first.volume_pct == pytest.approx(100.0) and first.dose_gy == 0
    assert (tmp_path / "out" / "dvh.png").stat().st_size > 1000
    # A fractional mask on the dose grid weights voxels by their fraction.
    arr = np.zeros(sitk.GetArrayViewFromImage(dose).shape, np.float32)
    arr[10:12, 20:22, 30:32] = 0.5
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(dose)
    s = samples_from_mask(dose, mask)
    assert s.total_cc == pytest.approx(8 * 0.5 * 2.5 * 2.5 * 3.0 / 1000)
    assert rtrai_cli(["dvh", "--dose", str(dose_path), "--structures", str(struct_path), "--metrics", "D95",
                      "-o", str(tmp_path / "bad")]) == 2


def test_shipped_model_reproduces_its_validation_scores(openkbp_pt201, tmp_path, rtrai_cli):
    """`hn-dose-openkbp` on two validation patients gives the per-patient scores recorded when it was shipped."""
    from rtrai.models import read_manifest

    assert read_manifest("hn-dose-openkbp")["version"] == "6"  # the numbers below belong to version 6
    recorded = {"pt_201": (2.7589, 2.4324), "pt_202": (3.3464, 1.6543)}  # (dose, DVH score) in Gy
    for patient in recorded:
        source, pred = openkbp_pt201.parent / patient, tmp_path / "pred" / patient
        assert rtrai_cli(["dose", "predict", str(source), "-o", str(pred), "--format", "openkbp"]) == 0
    assert rtrai_cli(["dose", "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(openkbp_pt201.parent),
                      "-o", str(tmp_path / "eval")]) == 0
    scores = {p["patient"]: p for p in json.loads((tmp_path / "eval" / "scores.json").read_text())["per_patient"]}
    assert sorted(scores) == sorted(recorded)
    for patient, (dose_score, dvh_score) in recorded.items():
        assert scores[patient]["dose_score_gy"] == pytest.approx(dose_score, abs=0.01)
        assert scores[patient]["dvh_score_gy"] == pytest.approx(dvh_score, abs=0.02)

"""rtrai.radiomics: pyradiomics-identical extraction, cohorts, voxel maps, dosiomics, robustness, IBSI-1."""

from __future__ import annotations

import argparse
import ast
import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path
from rtrai.core.errors import GeometryError, InputError, RTRAIError

CASES = ("brain1", "brain2", "breast1")


def run_cli(*argv: str) -> int:
    """Run `rtrai radiomics/ibsi ...` through our register() exactly as the rtrai command does."""
    from rtrai.radiomics import commands

    parser = argparse.ArgumentParser(prog="rtrai")
    commands.register(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    try:
        return args.func(args)
    except RTRAIError as exc:
        print(f"rtrai: error: {exc}")
        return exc.exit_code


def read_row(path) -> dict:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.DictReader(handle))


def assert_same_features(ours: dict, theirs: dict, rtol: float = 1e-6) -> int:
    compared = 0
    for key, value in theirs.items():
        if key.startswith("diagnostics_"):
            continue
        expected, got = float(value), float(ours[key])
        assert math.isclose(got, expected, rel_tol=rtol, abs_tol=1e-12), f"{key}: {got} != {expected}"
        compared += 1
    return compared


@pytest.fixture(scope="module")
def pyrad():
    return shared_path("pyradiomics")


@pytest.mark.parametrize("case", CASES)
def test_cli_matches_direct_pyradiomics(pyrad, tmp_path, case):
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    radiomics.setVerbosity(40)
    image, mask = pyrad / "data" / f"{case}_image.nrrd", pyrad / "data" / f"{case}_label.nrrd"
    params = pyrad / "exampleSettings" / "Params.yaml"
    assert run_cli("radiomics", "--image", image, "--mask", mask, "--params", params, "-o", tmp_path / "f.csv") == 0
    ours = read_row(tmp_path / "f.csv")
    theirs = RadiomicsFeatureExtractor(str(params)).execute(str(image), str(mask))
    assert [k for k in ours if k not in ("ID", "Image", "Mask", "Label")] == list(theirs)  # same columns, same order
    assert assert_same_features(ours, theirs) > 90
    assert (tmp_path / "f.csv.provenance.json").is_file()


def _baseline(pyrad, cls):
    with open(pyrad / "data" / "baseline" / f"baseline_{cls}.csv", newline="") as handle:
        rows = {r[0]: r[1:] for r in csv.reader(handle)}
    header = rows.pop("featureName")
    return header, rows


@pytest.mark.parametrize("cls", ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm", "shape"])
def test_pyradiomics_baseline_tables_agree(pyrad, cls):
    """Our extraction with each baseline's own general_info settings reproduces upstream's baseline values, to the
    tolerance of pyradiomics' own regression test (3% relative: the baseline was made by older pyradiomics versions
    whose shape mesh and numerics differ slightly); most agree to 1e-6."""
    from rtrai.radiomics.extract import extract, load_inputs, make_extractor

    header, rows = _baseline(pyrad, cls)
    compared = exact = 0
    for case in CASES:
        column = header.index(case)
        settings = ast.literal_eval(rows["diagnostics_Configuration_Settings"][column])
        settings = {k: v for k, v in settings.items() if k not in ("additionalInfo",)}
        extractor = make_extractor({"imageType": {"Original": {}}, "featureClass": {cls: []}, "setting": settings})
        inputs = load_inputs(pyrad / "data" / f"{case}_image.nrrd", pyrad / "data" / f"{case}_label.nrrd")
        values = extract(extractor, inputs)
        for name, cells in rows.items():
            if not name.startswith("original_") or not cells[column]:
                continue
            got, expected = float(values[name]), float(cells[column])
            assert math.isclose(got, expected, rel_tol=0.03, abs_tol=1e-9), f"{case} {name}: {got} vs {expected}"
            compared += 1
            exact += math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    assert compared > 10 and exact >= 0.8 * compared


def test_bad_inputs_give_clear_errors(pyrad, tmp_path):
    from rtrai.radiomics.extract import load_inputs, make_extractor

    data = pyrad / "data"
    with pytest.raises(GeometryError, match="different grids.*--resample-mask"):
        load_inputs(data / "brain1_image.nrrd", data / "brain2_label.nrrd")
    with pytest.raises(InputError, match="no voxel with label 3"):
        load_inputs(data / "breast1_image.nrrd", data / "breast1_label.nrrd", label=3)
    with pytest.raises(InputError, match="binWidthX"):
        make_extractor({"setting": {"binWidthX": 3}})
    image = sitk.ReadImage(str(data / "breast1_image.nrrd"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="NaN"):
        load_inputs(tmp_path / "nan.nrrd", data / "breast1_label.nrrd")
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    with pytest.raises(InputError, match="it is empty"):
        load_inputs(data / "breast1_image.nrrd", tmp_path / "empty.nrrd")
    assert run_cli("radiomics", "--image", data / "brain1_image.nrrd", "--mask", data / "brain2_label.nrrd",
                   "-o", tmp_path / "x.csv") == 2
    assert not (tmp_path / "x.csv").exists()


def _small_params(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("imageType: {Original: {}}\nfeatureClass: {firstorder: [Mean, Entropy], glcm: [Contrast]}\n"
                    "setting: {binWidth: 25}\n")
    return path


def test_cohort_records_failures_resumes_and_matches_serial(pyrad, tmp_path):
    data = pyrad / "data"
    batch = tmp_path / "cohort.csv"
    batch.write_text("ID,Image,Mask\n"
                     f"b2,{data / 'breast1_image.nrrd'},{data / 'breast1_label.nrrd'}\n"
                     f"bad,{data / 'brain1_image.nrrd'},{data / 'brain2_label.nrrd'}\n"
                     f"p,{data / 'prostate_phantom_subvolume.nrrd'},{data / 'prostate_phantom_subvolume-label.nrrd'}\n")
    params = _small_params(tmp_path)
    out2 = tmp_path / "par.csv"
    assert run_cli("radiomics", "--cohort", batch, "--params", params, "--jobs", "2", "-o", out2) == 2  # one failed
    with open(out2, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["ID"] for r in rows] == ["b2", "bad", "p"]
    assert "different grids" in rows[1]["error"] and rows[0]["error"] == ""
    assert rows[0]["original_firstorder_Mean"]
    out1 = tmp_path / "serial.csv"
    run_cli("radiomics", "--cohort", batch, "--params", params, "--jobs", "1", "-o", out1)
    assert out1.read_text() == out2.read_text()
    # Simulate a kill after the first row (plus a half-written line), then resume: no duplicates, same result.
    lines = out2.read_text().splitlines(keepends=True)
    (tmp_path / "killed.csv").write_text(lines[0] + lines[1] + lines[3][:20])
    assert run_cli("radiomics", "--cohort", batch, "--params", params, "--resume", "-o", tmp_path / "killed.csv") == 2
    assert (tmp_path / "killed.csv").read_text() == out2.read_text()
    assert run_cli("radiomics", "--cohort", batch, "--params", params, "-o", out2) == 2  # refuses to overwrite


def test_voxel_maps_parallel_identical_to_pyradiomics(pyrad, tmp_path):
    from rtrai.radiomics.extract import load_inputs
    from rtrai.radiomics.voxel_maps import voxel_maps

    params = {"imageType": {"Original": {}}, "featureClass": {"firstorder": ["Mean"], "glcm": ["Contrast"]},
              "setting": {"binWidth": 25, "force2D": True}, "voxelSetting": {"kernelRadius": 1, "initValue": 0}}
    inputs = load_inputs(pyrad / "data" / "breast1_image.nrrd", pyrad / "data" / "breast1_label.nrrd")
    serial = voxel_maps(inputs.image, inputs.mask, 1, params, jobs=1)
    parallel = voxel_maps(inputs.image, inputs.mask, 1, params, jobs=2)
    assert set(serial) == {"original_firstorder_Mean", "original_glcm_Contrast"}
    for name in serial:
        a, b = sitk.GetArrayFromImage(serial[name]), sitk.GetArrayFromImage(parallel[name])
        assert np.array_equal(a, b) and np.count_nonzero(a) > 50
        assert serial[name].GetOrigin() == parallel[name].GetOrigin()


def test_dvh_features_known_answer():
    from rtrai.radiomics.extract import dvh_features

    dose = np.zeros((1, 10, 10), np.float32)
    dose[0] = np.arange(100, dtype=np.float32).reshape(10, 10)  # 0..99 Gy, one voxel each
    mask = np.ones((1, 10, 10), np.uint8)
    out = dvh_features(sitk.GetImageFromArray(dose), sitk.GetImageFromArray(mask))
    assert out["dvh_Dmean_Gy"] == pytest.approx(49.5)
    assert out["dvh_D50%_Gy"] == pytest.approx(49.5)
    # Volume-weighted, as `rtrai dvh`: the hottest 2 % are the 99 and 98 Gy voxels, D2% lies between 98 and 97 Gy.
    assert out["dvh_D2%_Gy"] == pytest.approx(97.5)
    assert out["dvh_D98%_Gy"] == pytest.approx(1.5)
    assert out["dvh_V70Gy_%"] == pytest.approx(30.0)
    assert out["dvh_V5Gy_%"] == pytest.approx(95.0)


def test_case_folder_with_structure_and_dose_preset(tmp_path):
    from rtrai.core.case import Case
    from rtrai.io.case_io import write_case

    rng = np.random.default_rng(1)
    ct = sitk.GetImageFromArray(rng.normal(0, 50, (12, 16, 16)).astype(np.float32))
    ct.SetSpacing((2.0, 2.0, 3.0))
    dose = sitk.GetImageFromArray(rng.uniform(0, 70, (12, 16, 16)).astype(np.float32))
    dose.CopyInformation(ct)
    mask = np.zeros((12, 16, 16), np.uint8)
    mask[3:9, 4:12, 4:12] = 1
    case = Case(ct=ct, dose=dose, metadata={"patient_id": "P1"})
    case.add_structure("PTV70", mask)
    write_case(case, tmp_path / "P1")
    out = tmp_path / "dose.csv"
    assert run_cli("radiomics", "--image", tmp_path / "P1", "--structure", "PTV70", "--dose", "--preset", "dose",
                   "-o", out) == 0
    row = read_row(out)
    inside = sitk.GetArrayFromImage(dose)[mask == 1]
    assert float(row["dvh_Dmean_Gy"]) == pytest.approx(inside.mean(), rel=1e-6)
    assert float(row["original_firstorder_Mean"]) == pytest.approx(inside.mean(), rel=1e-5)
    assert run_cli("radiomics", "--image", tmp_path / "P1", "--structure", "Heart", "-o", out) == 2


def test_icc_3_1_shrout_fleiss_example():
    from rtrai.radiomics.robustness import icc_3_1

    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(3,1) = 0.71.
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_3_1(ratings) == pytest.approx(0.7148, abs=5e-4)
    assert icc_3_1(np.tile(np.arange(5.0)[:, None], (1, 3))) == pytest.approx(1.0)


def test_robustness_cohort(pyrad, tmp_path):
    data = pyrad / "data"
    batch = tmp_path / "c.csv"
    batch.write_text("Image,Mask\n"
                     f"{data / 'breast1_image.nrrd'},{data / 'breast1_label.nrrd'}\n"
                     f"{data / 'brain1_image.nrrd'},{data / 'brain1_label.nrrd'}\n"
                     f"{data / 'brain2_image.nrrd'},{data / 'brain2_label.nrrd'}\n")
    out = tmp_path / "icc.csv"
    assert run_cli("radiomics", "robustness", "--cohort", batch, "--params", _small_params(tmp_path),
                   "--perturbations", "4", "-o", out) == 0
    with open(out, newline="") as handle:
        rows = {r["feature"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"original_firstorder_Mean", "original_firstorder_Entropy", "original_glcm_Contrast"}
    assert 0.9 < float(rows["original_firstorder_Mean"]["icc"]) <= 1.0  # means differ far more between cases


def test_ibsi_digital_phantom_compliance(tmp_path):
    from rtrai.radiomics import ibsi

    phantom = shared_path("ibsi", "digital_phantom")
    reference = shared_path("ibsi", "reference_values", "ibsi_1_reference_values_digital_phantom.csv")
    out = tmp_path / "ibsi.csv"
    assert run_cli("ibsi", "--config", "digital", "--image", phantom / "phantom.nii.gz", "--mask",
                   phantom / "mask.nii.gz", "--reference", reference, "-o", out) == 0
    with open(out, newline="") as handle:
        values = {r["tag"]: float(r["value"]) for r in csv.DictReader(handle)}
    comparison = ibsi.compare(values, ibsi.reference_table(reference))
    assert sum(r["within"] for r in comparison) / len(comparison) >= 0.9
    assert values["morph_volume"] == pytest.approx(556, abs=4)
    assert (tmp_path / "ibsi.report.csv").is_file()


@pytest.mark.parametrize("config", ["A", "B"])
def test_ibsi_diagnostics_ct_phantom(config):
    from rtrai.radiomics import ibsi

    phantom = shared_path("ibsi", "ct_radiomics_phantom")
    reference = shared_path("ibsi", "reference_values", f"ibsi_1_reference_values_config_{config}.csv")
    values = ibsi.diagnostics(phantom / "phantom.nii.gz", phantom / "mask.nii.gz", config)
    rows = [r for r in ibsi.compare(values, ibsi.reference_table(reference)) if r["family"].startswith("Diag")]
    assert len(rows) == 60 and all(r["within"] for r in rows)


def test_ibsi_tag_mapping():
    from rtrai.radiomics.ibsi import ibsi_tag

    assert ibsi_tag("cm_joint_max_d1_2.5d_d_mrg_fbs_w25.0") == "cm_joint_max_2_5D_avg"
    assert ibsi_tag("rlm_sre_3d_v_mrg_fbn_n32") == "rlm_sre_3D_comb"
    assert ibsi_tag("szm_sze_2d") == "szm_sze_2D"
    assert ibsi_tag("morph_volume") == "morph_volume"


@pytest.mark.parametrize("config", ["A", "B"])
def test_ibsi_ct_phantom_compliance(config):
    """The issue's acceptance: >= 90% of the referenced features within tolerance (about 30 s each)."""
    from rtrai.radiomics import ibsi

    phantom = shared_path("ibsi", "ct_radiomics_phantom")
    reference = shared_path("ibsi", "reference_values", f"ibsi_1_reference_values_config_{config}.csv")
    comparison = ibsi.compare(ibsi.compute(phantom / "phantom.nii.gz", phantom / "mask.nii.gz", config),
                              ibsi.reference_table(reference))
    assert sum(r["within"] for r in comparison) / len(comparison) >= 0.9

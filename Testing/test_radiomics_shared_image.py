"""The structures of one image computed together (rtrai.radiomics.shared_image, glcm_mcc) against pyradiomics' own
per-pair ``execute``: same columns in the same order, diagnostics as pyradiomics writes them, feature values within
1e-9 relative (observed: identical, MCC within 1e-15)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path

pytest.importorskip("radiomics")

RTOL = 1e-9  # the contract is 1e-6; only MCC's sum over grey levels is rounded differently


def assert_same_vector(ours, theirs) -> int:
    """pyradiomics' vector (or refusal) against ours; returns the number of feature values compared."""
    if isinstance(theirs, ValueError):
        assert isinstance(ours, ValueError) and str(ours) == str(theirs)
        return 0
    assert not isinstance(ours, Exception), ours
    assert list(ours) == list(theirs)
    compared = 0
    for key, expected in theirs.items():
        got = ours[key]
        if key.startswith("diagnostics_"):
            assert str(got) == str(expected), key  # hashes, bounding boxes, centres of mass, settings
            continue
        expected, got = float(expected), float(got)
        assert (math.isnan(expected) and math.isnan(got)) or \
            math.isclose(got, expected, rel_tol=RTOL, abs_tol=1e-300), f"{key}: {got!r} != {expected!r}"
        compared += 1
    return compared


def per_pair(extractor, image, masks):
    out = []
    for mask, label in masks:
        try:
            out.append(extractor.execute(image, mask, label=label))
        except ValueError as exc:
            out.append(exc)
    return out


@pytest.fixture(scope="module")
def pt201():
    from rtrai.io.openkbp import read_openkbp

    return read_openkbp(shared_path("openkbp", "validation-pats", "pt_201"))


@pytest.fixture(scope="module")
def pyrad_data():
    return shared_path("pyradiomics", "data")


STRUCTURES = ("PTV70", "PTV56", "Parotid_L", "SpinalCord", "Bone_Mandible")


@pytest.mark.parametrize("kind", ["CT", "dose"])
def test_structures_of_an_openkbp_image_equal_pyradiomics_pairs(pt201, kind):
    """Every class of the shipped presets (CT on its own grid, dose), diagnostics on, five structures of a real
    head-and-neck case from targets to the cord."""
    from rtrai.radiomics.extract import make_extractor
    from rtrai.radiomics.shared_image import extract_structures, shares_image_work

    extractor = make_extractor(preset=kind, **({"resampledPixelSpacing": None} if kind == "CT" else {}))
    assert shares_image_work(extractor)
    image = pt201.ct if kind == "CT" else sitk.Cast(pt201.dose, sitk.sitkFloat32)
    masks = [(pt201.structures[name], 1) for name in STRUCTURES]
    ours = extract_structures(extractor, image, masks)
    compared = sum(assert_same_vector(o, t) for o, t in zip(ours, per_pair(extractor, image, masks)))
    assert compared >= len(STRUCTURES) * 90


def test_filters_normalisation_resegmentation_and_refusals(pyrad_data):
    """LoG and Square images filtered once for all masks, normalisation, resegmentation, a second label value, and
    pyradiomics' refusals (single voxel, absent label, empty mask) with its own words."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from rtrai.radiomics.shared_image import extract_structures

    image = sitk.ReadImage(str(pyrad_data / "brain1_image.nrrd"))
    label = sitk.ReadImage(str(pyrad_data / "brain1_label.nrrd"))
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(label)
    x, y, _, sx, sy, _ = shape.GetBoundingBox(1)  # a 12-voxel margin round the tumour keeps the test quick
    image, label = (v[max(x - 12, 0):x + sx + 12, max(y - 12, 0):y + sy + 12, :] for v in (image, label))
    dilated = sitk.BinaryDilate(label, [2, 2, 1])
    relabelled = sitk.Cast(dilated, sitk.sitkUInt8) * 2 - sitk.Cast(label, sitk.sitkUInt8)  # ring = 2, core = 1
    single = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    single.CopyInformation(label)
    single[5, 5, 10] = 1
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label)
    two_parts = sitk.Image(label)
    two_parts[2:5, 2:5, 8:11] = 1  # one more component
    masks = [(label, 1), (dilated, 1), (relabelled, 2), (relabelled, 1), (two_parts, 1), (single, 1), (label, 3),
             (empty, 1)]
    extractor = RadiomicsFeatureExtractor({
        "imageType": {"Original": {}, "LoG": {"sigma": [3.0]}, "Square": {}},
        "featureClass": {"shape": ["VoxelVolume", "Sphericity"], "firstorder": ["Mean", "Entropy", "Median"],
                         "glcm": ["Contrast", "MCC", "Idmn"], "glszm": ["ZoneEntropy"]},
        "setting": {"binWidth": 20, "normalize": True, "resegmentRange": [-2, 3], "resegmentMode": "sigma",
                    "label": 1}})
    ours = extract_structures(extractor, image, masks)
    theirs = per_pair(extractor, image, masks)
    assert [type(v).__name__ for v in theirs] == ["OrderedDict"] * 5 + ["ValueError"] * 3
    assert theirs[4]["diagnostics_Mask-original_VolumeNum"] > theirs[0]["diagnostics_Mask-original_VolumeNum"]
    assert sum(assert_same_vector(o, t) for o, t in zip(ours, theirs)) == 5 * (3 * (3 + 3 + 1) + 2)  # 3 images


def test_resampling_goes_through_execute(pyrad_data):
    """Resampled grids are anchored at each mask's box, so each pair runs pyradiomics' execute (image read once)."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from rtrai.radiomics.shared_image import extract_structures, shares_image_work

    image = sitk.ReadImage(str(pyrad_data / "breast1_image.nrrd"))
    label = sitk.ReadImage(str(pyrad_data / "breast1_label.nrrd"))
    extractor = RadiomicsFeatureExtractor({"featureClass": {"firstorder": ["Mean"], "glcm": ["MCC"]},
                                           "setting": {"resampledPixelSpacing": [2, 2, 2],
                                                       "interpolator": "sitkBSpline"}})
    assert not shares_image_work(extractor)
    masks = [(label, 1), (sitk.BinaryErode(label, [1, 1, 0]), 1)]
    ours = extract_structures(extractor, image, masks)
    assert sum(assert_same_vector(o, t) for o, t in zip(ours, per_pair(extractor, image, masks))) == 4


@pytest.mark.parametrize("pixel", [sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkFloat32,
                                   sitk.sitkFloat64])
def test_sha1_is_simpleitk_hash(pixel):
    from rtrai.radiomics.shared_image import _sha1

    array = np.random.default_rng(pixel).integers(0, 200, (7, 9, 11))
    image = sitk.Cast(sitk.GetImageFromArray(array.astype(np.int32)), pixel)
    assert _sha1(image) == sitk.Hash(image)


def test_mcc_engine_equals_pyradiomics(pyrad_data):
    """glcm_mcc's MCC against pyradiomics' getMCCFeatureValue on real ROIs at several bin widths and on the edge
    cases: one grey level (flat: 1), two levels, a single slice (angles out of plane have no pairs)."""
    from radiomics import glcm, imageoperations

    from rtrai.radiomics import glcm_mcc

    cases = []
    for name in ("brain1", "brain2", "breast1"):
        image = sitk.ReadImage(str(pyrad_data / f"{name}_image.nrrd"))
        mask = sitk.ReadImage(str(pyrad_data / f"{name}_label.nrrd"))
        cases += [(image, mask, width) for width in (5, 25, 100)]
    rng = np.random.default_rng(1)
    for levels, depth in ((1, 6), (2, 6), (40, 1)):
        array = rng.integers(0, levels, (depth, 12, 12)).astype(np.float32) * 10
        mask_array = np.zeros(array.shape, np.uint8)
        mask_array[:, 2:10, 2:10] = 1
        cases.append((sitk.GetImageFromArray(array), sitk.GetImageFromArray(mask_array), 10))
    ours_class = glcm_mcc.glcm_class()
    values = []
    for image, mask, width in cases:
        mask = imageoperations.getMask(mask)
        mask.CopyInformation(image)
        box, _ = imageoperations.checkMask(image, mask, minimumROIDimensions=2)
        image, mask = imageoperations.cropToTumorMask(image, mask, box)
        theirs = glcm.RadiomicsGLCM(image, mask, binWidth=width)
        theirs.enableFeatureByName("MCC")
        ours = ours_class(image, mask, binWidth=width)
        ours.enableFeatureByName("MCC")
        expected, got = float(theirs.execute()["MCC"]), float(ours.execute()["MCC"])
        assert math.isclose(got, expected, rel_tol=1e-12), (got, expected, theirs.P_glcm.shape)
        values.append(got)
    assert values[-3] == 1 and all(0 < v <= 1 for v in values) and len(set(values)) > 8  # flat region: 1


def test_cohort_rows_of_one_image_equal_pyradiomics_pairs(pt201, tmp_path):
    """`rtrai radiomics --cohort` on a case's CT and dose rows (masks as files, a refused row among them): every
    row as pyradiomics' execute gives it for that pair, serial and with 2 workers (each image's rows split)."""
    from test_radiomics import run_cli

    from rtrai.radiomics.cohort import image_groups
    from rtrai.radiomics.extract import extract_row, format_value, load_inputs, make_extractor

    sitk.WriteImage(pt201.ct, str(tmp_path / "CT.nrrd"))
    names = ("PTV70", "Parotid_R", "Brainstem")
    for name in names:
        sitk.WriteImage(pt201.structures[name], str(tmp_path / f"{name}.nrrd"))
    tiny = sitk.Image(pt201.ct.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(pt201.ct)
    tiny[60, 60, 60] = 1
    sitk.WriteImage(tiny, str(tmp_path / "tiny.nrrd"))
    batch = tmp_path / "cohort.csv"
    rows = [(f"pt_201_{n}", tmp_path / "CT.nrrd", tmp_path / f"{n}.nrrd") for n in (*names, "tiny")]
    batch.write_text("ID,Image,Mask\n" + "".join(f"{i},{a},{b}\n" for i, a, b in rows))
    params = tmp_path / "ct.yaml"
    params.write_text("featureClass: {shape: [Sphericity], firstorder: [Mean, Entropy], glcm: [MCC, Idmn], "
                      "glrlm: [RunEntropy], glszm: [ZoneEntropy], gldm: [DependenceEntropy], ngtdm: [Busyness]}\n"
                      "setting: {binWidth: 25, voxelArrayShift: 1000}\n")
    assert [len(g) for g in image_groups([{"ID": i, "Image": str(a)} for i, a, _ in rows], 2)] == [2, 2]
    extractor = make_extractor(params)
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.csv"
        assert run_cli("radiomics", "--cohort", batch, "--params", params, "--jobs", jobs, "-o", out) == 2
        with open(out, newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
        assert [r["ID"] for r in table] == [r[0] for r in rows]
        assert "pyradiomics refused" in table[-1]["error"] and "1 segmented voxel" in table[-1]["error"]
        for (case_id, image, mask), row in zip(rows[:-1], table):
            assert row["error"] == ""
            reference = extract_row(extractor, load_inputs(image, mask))
            for key in [k for k in reference if k not in ("ID", "Image", "Mask", "Label")]:
                if key.startswith("diagnostics_"):
                    assert row[key] == format_value(reference[key]), key
                else:
                    assert math.isclose(float(row[key]), float(reference[key]), rel_tol=RTOL), key


def test_case_features_equal_pyradiomics_pairs(pt201):
    """`rtrai run`'s radiomics step (case_features): CT and dose of every structure, together per image, in 2
    processes, against pyradiomics' execute per pair with the same settings."""
    from rtrai.radiomics.case_features import case_features
    from rtrai.radiomics.extract import make_extractor

    classes = ["shape", "firstorder", "glcm"]
    frame = case_features(pt201, structures=["PTV63", "Larynx", "Esophagus"], feature_classes=classes, jobs=2)
    assert len(frame) == 6 and not frame["error"].fillna("").any()
    extractors = {"CT": make_extractor(preset="CT", resampledPixelSpacing=None), "dose": make_extractor(preset="dose")}
    for extractor in extractors.values():
        extractor.disableAllFeatures()
        for name in classes:
            extractor.enableFeatureClassByName(name)
    extractors["dose"].enabledFeatures.pop("shape")
    images = {"CT": pt201.ct, "dose": sitk.Cast(pt201.dose, sitk.sitkFloat32)}
    compared = 0
    for _, row in frame.iterrows():
        reference = extractors[row["Image"]].execute(images[row["Image"]], pt201.structures[row["Structure"]])
        for key, value in reference.items():
            if not key.startswith("diagnostics_"):
                assert math.isclose(row[key], float(value), rel_tol=RTOL), (row["Structure"], row["Image"], key)
                compared += 1
        assert (row["Image"] == "dose") == (row.get("dvh_Dmean_Gy") == row.get("dvh_Dmean_Gy"))  # DVH: dose rows
    assert compared == 3 * (14 + 18 + 24) + 3 * (18 + 24)

"""Voxel-wise feature maps: our firstorder/GLCM engine against pyradiomics' voxel mode, and the fallbacks to it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path

pytest.importorskip("radiomics")

RTOL = 1e-6  # required
# Beyond that, our engine adds the same terms in the same order as numpy does in pyradiomics: the maps are
# bit-identical, and the engine tests check it (a failure there with the 1e-6 check passing means a numpy/pyradiomics
# change moved a summation order: values still within the requirement, the README's "bit-identical" no longer true).
EXACT_MESSAGE = "within 1e-6 but no longer bit-identical to pyradiomics"
BOTH = {"firstorder": [], "glcm": []}


def params(setting=None, voxel=None, classes=None, image_types=None) -> dict:
    return {"imageType": image_types or {"Original": {}}, "featureClass": classes or BOTH,
            "setting": {"binWidth": 25, **(setting or {})}, "voxelSetting": {"kernelRadius": 1, **(voxel or {})}}


def pyradiomics_maps(image, mask, label, p) -> dict[str, sitk.Image]:
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    radiomics.setVerbosity(50)  # MCC's expected failure (NaN of empty angles) is logged as an error
    result = RadiomicsFeatureExtractor(p).execute(image, mask, label=label, voxelBased=True)
    return {k: v for k, v in result.items() if isinstance(v, sitk.Image)}


def max_relative_difference(ours: dict, theirs: dict) -> float:
    """Same maps in the same order on the same grid, NaN where pyradiomics has NaN; the largest relative difference."""
    assert list(ours) == list(theirs)
    worst = 0.0
    for name, reference in theirs.items():
        got = ours[name]
        for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(got, attribute)() == getattr(reference, attribute)(), (name, attribute)
        a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(reference)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaN at other voxels"
        finite = ~np.isnan(b)
        scale = np.maximum(np.abs(a[finite]), np.abs(b[finite]))
        diff = np.abs(a[finite] - b[finite])
        relative = np.divide(diff, scale, out=np.zeros_like(diff), where=diff > 0)
        if relative.size:
            worst = max(worst, float(relative.max()))
        assert worst <= RTOL, f"{name}: relative difference {relative.max():.3g}"
    return worst


@pytest.fixture
def engine_only(monkeypatch):
    """Fail if voxel_maps hands any class to pyradiomics."""
    from rtrai.radiomics import voxel_maps

    def refuse(*args, **kwargs):
        raise AssertionError("pyradiomics was used")

    monkeypatch.setattr(voxel_maps, "_pyradiomics_maps", refuse)


@pytest.fixture(scope="module")
def pyrad_data():
    return shared_path("pyradiomics", "data")


def images(values: np.ndarray, mask: np.ndarray, spacing=(0.8, 0.9, 2.5)):
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 3.0, 40.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    labels = sitk.GetImageFromArray(mask.astype(np.uint8))
    labels.CopyInformation(image)
    return image, labels


def _ball(shape, centre, radius2):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius2


def synthetic(case: str):
    """(image, mask, label, params) of small edge cases."""
    rng = np.random.default_rng(sum(map(ord, case)))
    shape = (6, 11, 10)
    values = (rng.integers(0, 12, size=shape) * 10).astype(np.int16)
    ball = _ball(shape, (3, 5, 5), 10)
    if case == "blob":
        return (*images(values, ball), 1, params())
    if case == "tiny ROI":  # three voxels, two of them touching
        mask = np.zeros(shape, bool)
        mask[2, 3, 3] = mask[2, 3, 4] = mask[2, 5, 6] = True
        return (*images(values, mask), 1, params({"binWidth": 10}))
    if case == "single grey level":
        return (*images(np.full(shape, 130, np.int16), ball), 1, params())
    if case == "single grey level, binCount":  # one bin in the middle of binCount bins: Ng > 1 level present
        return (*images(np.full(shape, 7, np.int16), ball), 1, params({"binCount": 7}))
    if case == "ROI touching the image border":
        mask = np.zeros(shape, bool)
        mask[0:3, 0:5, 6:] = True
        mask[-1, -2:, :3] = True
        return (*images(values, mask), 1, params({"binWidth": 20}, {"kernelRadius": 2}))
    if case == "binCount":
        return (*images(values, ball), 1, params({"binCount": 9}))
    if case == "random ROI, no masked kernel, initValue NaN":
        return (*images(values, rng.random(shape) < 0.35), 1,
                params({"binWidth": 15}, {"maskedKernel": False, "initValue": float("nan")}))
    if case == "asymmetric GLCM, distances 1 and 2, shift":
        return (*images(values, ball), 1,
                params({"symmetricalGLCM": False, "distances": [1, 2], "voxelArrayShift": 300}))
    if case == "force2D":
        return (*images(values, ball), 1, params({"binWidth": 10, "force2D": True, "force2Ddimension": 0}))
    if case == "single slice, one empty grey level":  # a layout where numpy sums pairwise: dense path
        levels = np.array([1, 2, 3, 5, 6, 7, 8, 9, 10, 11]) * 10
        slab = rng.choice(levels, size=shape).astype(np.int16)
        mask = np.zeros(shape, bool)
        mask[3, 1:10, 1:9] = True
        assert set(np.unique(slab[mask])) == set(levels)
        return (*images(slab, mask), 1, params({"binWidth": 10}))
    if case == "single slice, MCC computed":  # 9 empty angles: pyradiomics' MCC array is voxel-innermost
        grey = (np.random.default_rng(0).integers(0, 12, size=(7, 10, 9)) * 10).astype(np.int16)
        mask = np.zeros(grey.shape, bool)
        mask[3, 3:8, 2:] = True
        return (*images(grey, mask), 1, params({"binCount": 7}))
    if case == "cube ROI (MCC computed)":  # no kernel with an empty angle: MCC is not left at initValue
        mask = np.zeros(shape, bool)
        mask[1:5, 2:8, 3:8] = True
        return (*images(values, mask), 1, params({"binWidth": 20}))
    if case == "float image, label 2, binWidth 0.5":
        noise = rng.normal(-3.0, 2.0, size=shape).astype(np.float32)
        labels = np.where(ball, 2, 0)
        labels[0, 0, 0] = 1
        return (*images(noise, labels), 2, params({"binWidth": 0.5}, {"kernelRadius": 2}))
    if case == "diagonal line (one angle left)":
        mask = np.zeros(shape, bool)
        for k in range(4):
            mask[2, 3 + k, 2 + k] = True
        return (*images(values, mask), 1, params({"binWidth": 10}))
    raise KeyError(case)


CASES = ["blob", "tiny ROI", "single grey level", "single grey level, binCount", "ROI touching the image border",
         "binCount", "random ROI, no masked kernel, initValue NaN", "asymmetric GLCM, distances 1 and 2, shift",
         "force2D", "single slice, one empty grey level", "single slice, MCC computed", "cube ROI (MCC computed)",
         "float image, label 2, binWidth 0.5", "diagonal line (one angle left)"]


@pytest.mark.parametrize("case", CASES)
def test_engine_equals_pyradiomics_edge_cases(case, engine_only):
    from rtrai.radiomics.voxel_maps import voxel_maps

    image, mask, label, p = synthetic(case)
    ours = voxel_maps(image, mask, label, p)
    theirs = pyradiomics_maps(image, mask, label, p)
    assert len(ours) == 18 + 24
    assert max_relative_difference(ours, theirs) == 0.0, EXACT_MESSAGE
    roi = sitk.GetArrayFromImage(mask)
    if "MCC computed" in case:
        assert np.count_nonzero(sitk.GetArrayFromImage(ours["original_glcm_MCC"])) == np.count_nonzero(roi)


def test_engine_equals_pyradiomics_on_brain2(pyrad_data, engine_only):
    from rtrai.radiomics.voxel_maps import voxel_maps

    image = sitk.ReadImage(str(pyrad_data / "brain2_image.nrrd"))
    mask = sitk.ReadImage(str(pyrad_data / "brain2_label.nrrd"))
    p = params()
    ours = voxel_maps(image, mask, 1, p)
    theirs = pyradiomics_maps(image, mask, 1, p)
    assert max_relative_difference(ours, theirs) == 0.0, EXACT_MESSAGE
    assert np.count_nonzero(sitk.GetArrayFromImage(ours["original_glcm_Contrast"])) > 300


@pytest.mark.parametrize("case", ["brain1 part", "cube ROI (MCC computed)", "single slice, one empty grey level"])
def test_small_chunks_same_maps(case, monkeypatch, pyrad_data, engine_only):
    """Chunk boundaries (the memory bound) change nothing, MCC and the dense path included: chunks of a few voxels
    on a part of brain1 (the ROI cut by the crop) and on synthetic cases."""
    from rtrai.radiomics import voxel_glcm, voxel_plan
    from rtrai.radiomics.voxel_maps import voxel_maps

    if case == "brain1 part":
        image = sitk.ReadImage(str(pyrad_data / "brain1_image.nrrd"))[160:195, 100:130, 9:16]
        mask = sitk.ReadImage(str(pyrad_data / "brain1_label.nrrd"))[160:195, 100:130, 9:16]
        label, p = 1, params({"binWidth": 20})
    else:
        image, mask, label, p = synthetic(case)
    monkeypatch.setattr(voxel_plan, "CHUNK_ENTRIES", 3000)
    monkeypatch.setattr(voxel_glcm, "DENSE_CHUNK_ELEMENTS", 5000)
    ours = voxel_maps(image, mask, label, p)
    assert max_relative_difference(ours, pyradiomics_maps(image, mask, label, p)) == 0.0, EXACT_MESSAGE


def test_other_classes_from_pyradiomics_in_order(monkeypatch):
    """firstorder + GLCM by the engine, GLRLM by pyradiomics, maps in pyradiomics' order."""
    from rtrai.radiomics import voxel_maps as module
    from rtrai.radiomics.voxel_maps import voxel_maps

    image, mask, label, _ = synthetic("blob")
    p = params(classes={"glrlm": ["RunEntropy", "ShortRunEmphasis"], "firstorder": ["Median", "Mean"],
                        "glcm": ["Idmn"]})
    used = []
    compute = module.compute
    monkeypatch.setattr(module, "compute", lambda *a: used.append(a[-1].engine_classes) or compute(*a))
    ours = voxel_maps(image, mask, label, p)
    assert used == [["firstorder", "glcm"]]
    assert list(ours) == ["original_glrlm_RunEntropy", "original_glrlm_ShortRunEmphasis",
                          "original_firstorder_Median", "original_firstorder_Mean", "original_glcm_Idmn"]
    max_relative_difference(ours, pyradiomics_maps(image, mask, label, p))


@pytest.mark.parametrize("change", [
    {"image_types": {"Original": {}, "LoG": {"sigma": [1.0]}}},
    {"setting": {"weightingNorm": "euclidean"}},
    {"classes": {"firstorder": ["StandardDeviation"]}},  # deprecated: pyradiomics leaves it at initValue
    {"voxel": {"voxelBatch": 50}},  # several batches (declined by compute(), once the ROI size is known)
])
def test_unsupported_settings_fall_back_to_pyradiomics(change):
    from rtrai.radiomics import voxel_plan
    from rtrai.radiomics.voxel_maps import voxel_maps

    image, mask, label, _ = synthetic("blob")
    p = params(**change)
    if "voxel" not in change:
        with pytest.raises(voxel_plan.Unsupported):
            voxel_plan.plan(p)
    max_relative_difference(voxel_maps(image, mask, label, p), pyradiomics_maps(image, mask, label, p))


def test_voxel_batch_smaller_than_roi_declined():
    from rtrai.radiomics.voxel_maps import compute
    from rtrai.radiomics.voxel_plan import Unsupported, plan

    image, mask, label, _ = synthetic("blob")
    with pytest.raises(Unsupported, match="voxelBatch"):
        compute(image, mask, label, plan(params(voxel={"voxelBatch": 50})))
    big = plan(params(voxel={"voxelBatch": 10_000}))  # one batch: the engine computes it
    assert compute(image, mask, label, big)


def test_resampling_preset_settings_use_pyradiomics_preprocessing(engine_only):
    """Resampling (as in the CT preset) is pyradiomics' own pre-processing, then our engine."""
    from rtrai.radiomics.voxel_maps import voxel_maps

    image, mask, label, _ = synthetic("blob")
    p = params({"resampledPixelSpacing": [1.5, 1.5, 1.5], "interpolator": "sitkBSpline", "voxelArrayShift": 1000})
    max_relative_difference(voxel_maps(image, mask, label, p), pyradiomics_maps(image, mask, label, p))


def test_invalid_input_still_reported():
    from rtrai.core.errors import InputError
    from rtrai.radiomics.voxel_maps import voxel_maps

    image, mask, _, _ = synthetic("blob")
    with pytest.raises(InputError, match="invalid radiomics parameters"):
        voxel_maps(image, mask, 1, params({"binWidth": -5}))
    with pytest.raises(InputError, match="refused"):
        voxel_maps(image, mask, 3, params())  # no voxel with label 3


def test_pyradiomics_path_parallel_identical(monkeypatch, pyrad_data):
    """The pyradiomics path (RTRAI_VOXEL_ENGINE=pyradiomics) split over 2 processes gives its maps bit for bit."""
    from rtrai.radiomics.voxel_maps import voxel_maps

    monkeypatch.setenv("RTRAI_VOXEL_ENGINE", "pyradiomics")
    image = sitk.ReadImage(str(pyrad_data / "breast1_image.nrrd"))
    mask = sitk.ReadImage(str(pyrad_data / "breast1_label.nrrd"))
    p = params({"force2D": True}, classes={"firstorder": ["Mean"], "glszm": ["ZoneEntropy"]})
    serial = voxel_maps(image, mask, 1, p, jobs=1)
    parallel = voxel_maps(image, mask, 1, p, jobs=2)
    assert list(serial) == ["original_firstorder_Mean", "original_glszm_ZoneEntropy"]
    for name in serial:
        assert np.array_equal(sitk.GetArrayFromImage(serial[name]), sitk.GetArrayFromImage(parallel[name]))

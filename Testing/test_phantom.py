"""The synthetic head-and-neck phantom: determinism, LPS anatomy, HU per tissue, volumes, targets and dose.

Plausible ranges below come from the OpenKBP validation patients in ../shared/data (volumes measured with
``rtrai.io.openkbp`` on pt_201..pt_209: brainstem 17-34 cc, cord 12-29 cc, parotids 14-51 cc, larynx 2-24 cc,
mandible 74-85 cc, PTV70 5-918 cc) and from clinical dose constraints (cord max < 50 Gy).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from rtrai.core.errors import InputError
from rtrai.core.image import mask_array, physical_centroid
from rtrai.phantom import OARS, TISSUE_HU, TISSUES, make_cohort, make_phantom, tissue_map

SEEDS = (0, 1, 2, 3, 7)
# (min, max) cc for every seed; documented in the README's phantom section.
VOLUME_RANGES_CC = {
    "Brainstem": (15, 35),
    "SpinalCord": (12, 35),
    "Parotid_L": (14, 40),
    "Parotid_R": (14, 40),
    "Esophagus": (8, 25),
    "Larynx": (10, 35),
    "Bone_Mandible": (40, 80),
    "PTV70": (50, 300),
    "PTV56": (100, 500),
    "External": (3000, 9000),
}


@pytest.fixture(scope="module")
def phantoms():
    return {seed: make_phantom(seed) for seed in SEEDS}


def arr(image):
    return sitk.GetArrayFromImage(image)


def centroid(case, name):
    return physical_centroid(case.structures[name])


def dvh_percentile(case, name, percent):
    """D``percent`` as OpenKBP defines it: the (100 - percent)th percentile of the dose in the structure."""
    return float(np.percentile(arr(case.dose)[mask_array(case.structures[name])], 100 - percent))


def test_same_seed_gives_identical_arrays_and_other_seeds_other_patients(phantoms):
    again = make_phantom(3)
    first = phantoms[3]
    assert np.array_equal(arr(again.ct), arr(first.ct))
    assert np.array_equal(arr(again.dose), arr(first.dose))
    assert np.array_equal(arr(again.possible_dose_mask), arr(first.possible_dose_mask))
    assert sorted(again.structures) == sorted(first.structures)
    for name in first.structures:
        assert np.array_equal(arr(again.structures[name]), arr(first.structures[name])), name
    assert again.metadata == first.metadata
    # Other seeds are other patients: different noise and different anatomy.
    other = phantoms[1]
    assert not np.array_equal(arr(other.ct), arr(first.ct))
    assert abs(other.volume_cc("Parotid_L") - first.volume_cc("Parotid_L")) > 0.1


def test_case_content_grid_and_types(phantoms):
    case = phantoms[0]
    case.validate()
    assert case.ct.GetSize() == (128, 128, 128)
    assert case.ct.GetSpacing() == pytest.approx((3.5, 3.5, 2.5))
    assert case.ct.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    # Centred on the origin, as rtrai.io.openkbp places OpenKBP patients.
    assert case.ct.TransformContinuousIndexToPhysicalPoint((63.5, 63.5, 63.5)) == pytest.approx((0, 0, 0))
    assert arr(case.ct).dtype == np.int16
    assert arr(case.dose).dtype == np.float32
    assert set(case.structures) == {*OARS, "PTV70", "PTV56", "External"}
    assert all(arr(m).dtype == np.uint8 for m in case.structures.values())
    assert case.prescription == {"PTV70": 70.0, "PTV56": 56.0}
    assert case.fractions == 35
    assert case.targets() == ["PTV70", "PTV56"]
    assert case.metadata["patient_id"] == "phantom-0" and case.patient_id == "phantom-0"
    assert case.metadata["synthetic"] is True
    assert case.metadata["seed"] == 0 and case.metadata["ptv70_side"] == "right"


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomy_follows_lps_axes(phantoms, seed):
    """+x patient left, +y posterior, +z superior (LPS), checked by centroids in physical space."""
    case = phantoms[seed]
    c = {name: centroid(case, name) for name in case.structures}
    assert c["Parotid_L"][0] > 30 and c["Parotid_R"][0] < -30  # lateral, on their own side
    assert c["Parotid_L"][0] - c["Parotid_R"][0] > 80
    assert c["Bone_Mandible"][1] < c["SpinalCord"][1] - 40  # mandible anterior of the cord
    assert c["Bone_Mandible"][1] < c["Parotid_L"][1] and c["Bone_Mandible"][1] < c["Parotid_R"][1]
    assert c["Larynx"][1] < c["Esophagus"][1] < c["SpinalCord"][1]  # larynx, then oesophagus, then cord
    assert c["Brainstem"][2] > c["Larynx"][2] + 80  # brainstem superior of the larynx
    assert c["Brainstem"][2] > c["SpinalCord"][2]
    assert c["Esophagus"][2] < c["Larynx"][2]  # the oesophagus continues below the larynx
    assert abs(c["Brainstem"][0]) < 5 and abs(c["SpinalCord"][0]) < 5 and abs(c["Bone_Mandible"][0]) < 6
    # The primary target is on the side the metadata says (right = -x).
    side = case.metadata["ptv70_side"]
    assert (c["PTV70"][0] < 0) == (side == "right")


def test_mandible_is_an_anterior_horseshoe(phantoms):
    case = phantoms[0]
    mandible = mask_array(case.structures["Bone_Mandible"])
    centre = case.structures["Bone_Mandible"].TransformPhysicalPointToIndex(
        [float(v) for v in centroid(case, "Bone_Mandible")])
    assert not mandible[centre[2], centre[1], centre[0]]  # hollow: the centroid lies in the open part of the U
    z = centre[2]
    ys, xs = np.nonzero(mandible[z])
    front = ys.min()  # the most anterior row is at the chin, in the midline
    assert abs(case.ct.TransformIndexToPhysicalPoint((int(np.mean(xs[ys == front])), 0, 0))[0]) < 4
    # The two arms reach back on both sides, with nothing in between behind the chin.
    back = ys.max()
    arms_x = [case.ct.TransformIndexToPhysicalPoint((int(x), 0, 0))[0] for x in xs[ys == back]]
    assert min(arms_x) < -35 and max(arms_x) > 35


def test_cord_runs_in_a_bony_canal_and_larynx_holds_air(phantoms):
    case = phantoms[0]
    labels = arr(tissue_map(0))
    cord = mask_array(case.structures["SpinalCord"])
    assert np.all(labels[cord] == TISSUES["nervous"])
    bone = np.isin(labels, (TISSUES["cortical_bone"], TISSUES["cancellous_bone"]))
    vertebra_slices = 0
    for z in np.flatnonzero(cord.any(axis=(1, 2))):
        ys, xs = np.nonzero(cord[z])
        x = int(round(xs.mean()))
        column = bone[z, :, x]
        if column.any() and column[: ys.min()].any() and column[ys.max() + 1:].any():
            vertebra_slices += 1  # vertebral body in front, arch behind
        assert not bone[z][cord[z]].any()
    assert vertebra_slices > 0.6 * cord.any(axis=(1, 2)).sum()
    # The cord joins the brainstem above it: one connected structure, no voxel in both.
    assert not (cord & mask_array(case.structures["Brainstem"])).any()
    joined = sitk.ConnectedComponent(case.structures["SpinalCord"] | case.structures["Brainstem"])
    assert arr(joined).max() == 1
    larynx = mask_array(case.structures["Larynx"])
    assert (labels[larynx] == TISSUES["airway"]).mean() > 0.05
    assert arr(case.ct)[larynx].min() < -900


def test_noise_free_ct_is_exactly_the_tissue_table():
    ct = arr(make_phantom(0, noise_hu=0).ct)
    labels = arr(tissue_map(0))
    expected = np.array(list(TISSUE_HU.values()))[labels]
    assert np.array_equal(ct, np.clip(expected, -1024, 3071).astype(np.int16))


def test_hu_ranges_per_tissue(phantoms):
    case = phantoms[0]
    ct = arr(case.ct).astype(np.float64)
    labels = arr(tissue_map(0))

    def median(tissue):
        return float(np.median(ct[labels == TISSUES[tissue]]))

    outside = ~mask_array(case.structures["External"])
    assert np.median(ct[outside]) == pytest.approx(-1000, abs=5)
    assert median("fat") == pytest.approx(-100, abs=5)
    assert median("soft_tissue") == pytest.approx(40, abs=5)
    assert median("nervous") == pytest.approx(35, abs=5)
    assert 700 <= median("cortical_bone") <= 1200
    assert median("airway") < -950
    # Noise: about noise_hu (10 HU) in a homogeneous tissue.
    assert np.std(ct[labels == TISSUES["soft_tissue"]]) == pytest.approx(10, rel=0.1)
    # Per structure, as a user would look at them.
    mean = {name: float(ct[mask_array(m)].mean()) for name, m in case.structures.items()}
    assert 700 <= mean["Bone_Mandible"] <= 1200
    assert 20 <= mean["Brainstem"] <= 50 and 20 <= mean["SpinalCord"] <= 50
    assert -20 <= mean["Parotid_L"] <= 30 and -20 <= mean["Parotid_R"] <= 30
    assert mean["Larynx"] < 0  # air lumen inside


@pytest.mark.parametrize("seed", SEEDS)
def test_structure_volumes_are_plausible(phantoms, seed):
    case = phantoms[seed]
    for name, (low, high) in VOLUME_RANGES_CC.items():
        assert low <= case.volume_cc(name) <= high, (name, case.volume_cc(name))


@pytest.mark.parametrize("seed", SEEDS)
def test_targets_do_not_overlap_and_stay_inside_the_skin(phantoms, seed):
    case = phantoms[seed]
    ptv70, ptv56 = mask_array(case.structures["PTV70"]), mask_array(case.structures["PTV56"])
    body = mask_array(case.structures["External"])
    assert not (ptv70 & ptv56).any()
    assert not ((ptv70 | ptv56) & ~body).any()
    skin_distance = arr(sitk.SignedMaurerDistanceMap(case.structures["External"], insideIsPositive=True,
                                                     squaredDistance=False, useImageSpacing=True))
    assert skin_distance[ptv70 | ptv56].min() >= 4.9
    # PTV56 wraps PTV70: elective volume adjacent to the boost.
    assert (sitk.GetArrayFromImage(sitk.BinaryDilate(case.structures["PTV70"], [1, 1, 1])).astype(bool) & ptv56).any()


def test_ptv70_side_override_mirrors_the_target():
    right = make_phantom(0, ptv70_side="right", noise_hu=0)
    left = make_phantom(0, ptv70_side="left", noise_hu=0)
    for name in ("PTV70", "PTV56"):  # the grid is symmetric about x = 0, so the mirror image is exact
        assert np.array_equal(arr(left.structures[name]), arr(right.structures[name])[:, :, ::-1])
    assert centroid(left, "PTV70")[0] > 0 > centroid(right, "PTV70")[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_dose_is_plausible(phantoms, seed):
    case = phantoms[seed]
    dose = arr(case.dose)
    assert np.isfinite(dose).all() and dose.min() >= 0
    possible = mask_array(case.possible_dose_mask)
    assert np.array_equal(possible, mask_array(case.structures["External"]))
    assert not dose[~possible].any()
    assert dvh_percentile(case, "PTV70", 95) >= 66
    assert dose.max() <= 80
    assert 53 <= dvh_percentile(case, "PTV56", 95) <= 60
    cord = arr(case.dose)[mask_array(case.structures["SpinalCord"])]
    assert cord.max() < 50
    assert dose[mask_array(case.structures["Brainstem"])].max() < 54
    for oar in ("Parotid_L", "Parotid_R"):
        assert dose[mask_array(case.structures[oar])].mean() < 40


def test_dose_falls_off_over_a_few_centimetres(phantoms):
    case = phantoms[0]
    dose = arr(case.dose)
    body = mask_array(case.structures["External"])
    targets = sitk.Or(case.structures["PTV70"], case.structures["PTV56"])
    distance = arr(sitk.SignedMaurerDistanceMap(targets, insideIsPositive=False, squaredDistance=False,
                                                useImageSpacing=True))
    shells = [dose[body & (distance > lo) & (distance <= lo + 10)].mean() for lo in (0, 10, 20, 30, 40, 60)]
    assert all(a > b for a, b in zip(shells, shells[1:]))
    assert shells[0] > 35  # steep penumbra just outside the targets
    assert shells[-1] < 15  # low dose 6 cm away


def test_coarse_sampling_gives_the_same_anatomy(phantoms):
    """The anatomy lives in mm: another grid samples the same patient."""
    fine = phantoms[0]
    coarse = make_phantom(0, size=(64, 64, 64), spacing=(7.0, 7.0, 5.0))
    assert coarse.ct.GetSize() == (64, 64, 64)
    for name in ("Brainstem", "Parotid_L", "Bone_Mandible", "PTV70", "External"):
        assert coarse.volume_cc(name) == pytest.approx(fine.volume_cc(name), rel=0.25), name
        assert np.allclose(centroid(coarse, name), centroid(fine, name), atol=4.0), name


def test_structures_outside_a_small_field_of_view_are_absent():
    neck_only = make_phantom(0, size=(64, 64, 16), spacing=(3.5, 3.5, 2.5))  # 40 mm around z = 0
    assert "Brainstem" not in neck_only.structures and "Esophagus" not in neck_only.structures
    assert "Parotid_L" in neck_only.structures
    assert all(mask_array(m).any() for m in neck_only.structures.values())


def test_cohort_is_a_series_of_seeds():
    cohort = make_cohort(3, seed=10, size=(64, 64, 64), spacing=(7.0, 7.0, 5.0))
    assert [c.patient_id for c in cohort] == ["phantom-10", "phantom-11", "phantom-12"]
    single = make_phantom(11, size=(64, 64, 64), spacing=(7.0, 7.0, 5.0))
    assert np.array_equal(arr(cohort[1].ct), arr(single.ct))
    assert len({round(c.volume_cc("External"), 1) for c in cohort}) == 3


@pytest.mark.parametrize("call", [
    lambda: make_phantom(-1),
    lambda: make_phantom(1.5),
    lambda: make_phantom(0, size=(128, 128)),
    lambda: make_phantom(0, size=(128, 0, 128)),
    lambda: make_phantom(0, spacing=(3.5, -1, 2.5)),
    lambda: make_phantom(0, noise_hu=-1),
    lambda: make_phantom(0, ptv70_side="middle"),
    lambda: make_cohort(0),
])
def test_bad_arguments_raise_input_error(call):
    with pytest.raises(InputError):
        call()


def test_phantom_round_trips_through_openkbp_files(phantoms, tmp_path):
    """The default grid is OpenKBP's: the phantom is a valid OpenKBP patient for models trained on OpenKBP."""
    from rtrai.io.openkbp import read_openkbp, write_openkbp

    case = phantoms[0]
    folder = tmp_path / "pt_phantom"
    folder.mkdir()
    # The dense 128^3 CT takes ~15 s to write as text (the io tests cover it): a one-voxel ct.csv stands in.
    write_openkbp(case, folder, what=("dose", "structures", "possible_dose_mask", "voxel_dimensions"))
    (folder / "ct.csv").write_text(",data\n0,24\n")
    back = read_openkbp(folder)
    assert back.ct.GetSize() == case.ct.GetSize() and back.ct.GetSpacing() == pytest.approx(case.ct.GetSpacing())
    assert back.ct.GetOrigin() == pytest.approx(case.ct.GetOrigin())
    assert np.allclose(arr(back.dose), arr(case.dose), atol=1e-5)
    assert np.array_equal(arr(back.possible_dose_mask), arr(case.possible_dose_mask))
    for name in (*OARS, "PTV70", "PTV56"):
        assert np.array_equal(arr(back.structures[name]), arr(case.structures[name])), name
    assert back.prescription_for("PTV70") == 70.0


def test_phantom_layout_matches_real_openkbp_anatomy(phantoms):
    """Same axis convention as real patients read by rtrai.io.openkbp, and distances of the same order."""
    from rtrai.io.openkbp import read_openkbp

    real = read_openkbp(shared_path("openkbp", "validation-pats", "pt_201"))
    phantom = phantoms[0]

    def layout(case):
        c = {n: centroid(case, n) for n in ("Parotid_L", "Parotid_R", "Bone_Mandible", "SpinalCord", "Brainstem",
                                            "Larynx")}
        return np.array([c["Parotid_L"][0] - c["Parotid_R"][0],  # left-right parotid separation
                         c["SpinalCord"][1] - c["Bone_Mandible"][1],  # cord behind mandible
                         c["Brainstem"][2] - c["Larynx"][2]])  # brainstem above larynx

    real_layout, phantom_layout = layout(real), layout(phantom)
    assert np.all(real_layout > 0) and np.all(phantom_layout > 0)
    assert np.allclose(phantom_layout, real_layout, rtol=0.4), (phantom_layout, real_layout)

"""One DVH definition (rtrai.core.dvh): `rtrai dvh`, the workflow's DVH step and the radiomics dose features agree;
and a body-sized structure from contours counts its whole voxels whole, as accurately as the organ-sized ones."""

import csv

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai import cli
from rtrai.core.case import Case
from rtrai.dose import dvh as dose_dvh
from rtrai.dose import dvh_phantoms
from rtrai.dose.dvh import metric, samples_from_contours
from rtrai.io.case_io import write_case


def test_dvh_command_and_dose_features_report_the_same_numbers(tmp_path):
    rng = np.random.default_rng(3)
    ct = sitk.GetImageFromArray(rng.normal(0, 50, (12, 16, 16)).astype(np.float32))
    ct.SetSpacing((2.0, 2.0, 3.0))
    dose = sitk.GetImageFromArray(rng.uniform(0, 70, (12, 16, 16)).astype(np.float32))
    dose.CopyInformation(ct)
    mask = np.zeros((12, 16, 16), np.uint8)
    mask[3:9, 4:12, 4:12] = 1
    case = Case(ct=ct, dose=dose, metadata={"patient_id": "P1"})
    case.add_structure("PTV70", mask)
    write_case(case, tmp_path / "P1")
    assert cli.main(["radiomics", "--image", str(tmp_path / "P1"), "--structure", "PTV70", "--dose", "--preset",
                     "dose", "-o", str(tmp_path / "features.csv")]) == 0
    with open(tmp_path / "features.csv", newline="", encoding="utf-8") as handle:
        features = next(csv.DictReader(handle))
    names = ["Dmean", "Dmin", "Dmax", "D2%", "D50%", "D98%", "V20Gy"]
    assert cli.main(["dvh", "--dose", str(tmp_path / "P1"), "--structures", str(tmp_path / "P1"),
                     "--metrics", ",".join(names), "-o", str(tmp_path / "dvh")]) == 0
    metrics = pd.read_csv(tmp_path / "dvh" / "metrics.csv")
    for name in names:
        column = f"dvh_{name}_%" if name.startswith("V") else f"dvh_{name}_Gy"
        ours = metrics[(metrics.structure == "PTV70") & (metrics.metric == name)].value.item()
        assert float(features[column]) == pytest.approx(ours, abs=1e-4), name  # metrics.csv keeps 4-5 decimals
    # Volume-weighted, not numpy's percentile: 384 voxels, the hottest 2 % is 7.68 of them.
    inside = np.sort(sitk.GetArrayFromImage(dose)[mask == 1])[::-1]
    assert float(features["dvh_D2%_Gy"]) == pytest.approx(np.interp(7.68, np.arange(384) + 0.5, inside), rel=1e-6)


def _ellipse(axes, planes, points=720):
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return [np.column_stack([axes[0] * np.cos(t), axes[1] * np.sin(t), np.full(points, z)]) for z in planes]


def test_a_body_sized_structure_counts_whole_voxels_whole_and_stays_accurate():
    gx, gz = 0.2, 0.05
    dose = dvh_phantoms.linear_dose((136, 86, 40), (2.5, 2.5, 3.0), (-170.0, -107.5, -60.0), (gx, 0.0, gz), 40.0)
    planes = np.arange(-45.0, 45.0, 3.0) + 1.5  # slabs from -45 to 45 mm
    a, b = 150.0, 100.0
    body = samples_from_contours(dose, _ellipse((a, b), planes))
    voxels = np.pi * a * b * 90.0 / (2.5 * 2.5 * 3.0)
    assert body.total_cc == pytest.approx(np.pi * a * b * 90.0 / 1000, rel=2e-3)
    # One sample per whole voxel plus the sub-points of the voxels the contour crosses, not 5 x 5 x 3 per voxel.
    assert len(body.dose) < 3 * voxels
    assert metric(body, "Dmean") == pytest.approx(40.0, abs=0.01)

    def above(d):  # closed form: segment areas of the ellipse, integrated along z
        z = np.linspace(-45, 45, 2001)
        u = np.clip((d - 40.0 - gz * z) / gx / a, -1, 1)
        return np.trapezoid(a * b * (np.arccos(u) - u * np.sqrt(1 - u ** 2)), z) / 1000

    from scipy.optimize import brentq

    for name, cc in (("D95%", 0.95 * above(-1e9)), ("D2cc", 2.0), ("D50%", 0.5 * above(-1e9))):
        exact = brentq(lambda d: above(d) - cc, 0.0, 80.0, xtol=1e-6)
        assert metric(body, name) == pytest.approx(exact, abs=0.1), name


def test_small_structures_are_sampled_at_every_sub_point():
    dose = dvh_phantoms.linear_dose((60, 50, 30), (2.5, 2.5, 3.0), (-75.0, -62.5, -45.0), (0.2, 0.0, 0.0), 40.0)
    contours = dvh_phantoms.sphere_contours((25.0, 5.0, 6.0), 9.0, np.arange(-44.0, 45.0, 1.5))
    every = samples_from_contours(dose, contours)
    exact = dvh_phantoms.sphere_dose_at_volume(0.02, 45.0, 0.2, 9.0)
    assert metric(every, "D2%") == pytest.approx(exact, abs=0.02)
    # Forced to count whole voxels whole, the same small sphere keeps its volume and mean.
    saved = dose_dvh.MAX_SUBPOINTS
    try:
        dose_dvh.MAX_SUBPOINTS = 0
        whole = samples_from_contours(dose, contours)
    finally:
        dose_dvh.MAX_SUBPOINTS = saved
    assert len(whole.dose) < len(every.dose) / 2
    assert whole.total_cc == pytest.approx(every.total_cc, rel=1e-9)
    assert metric(whole, "Dmean") == pytest.approx(metric(every, "Dmean"), abs=0.02)

"""Voxel-wise feature maps: rtrai (`voxel_maps`, our firstorder/GLCM engine) vs pyradiomics' voxel mode.

    python benchmarks/bench_radiomics_voxel.py [--case brain2] [--repeat 3] [--jobs 2]

Runs both on the same image, ROI and settings (firstorder + GLCM, all features, kernel radius 1, bin width 25) in this
process, ``--repeat`` times each, alternating, and prints every time, the median and the best times and their ratios
(on a shared machine the best of several runs is the steadier figure), and the largest relative difference between
the maps (NaN must sit at the same voxels); exit status 1 if it exceeds 1e-6. Both libraries are imported before the
clock starts. ``--jobs`` only matters for feature classes our engine hands to pyradiomics (none here).
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RTRadiomicsAI"))
DATA = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data")) / "pyradiomics" / "data"
PARAMS = {"imageType": {"Original": {}}, "featureClass": {"firstorder": [], "glcm": []},
          "setting": {"binWidth": 25}, "voxelSetting": {"kernelRadius": 1, "initValue": 0}}


def compare(ours: dict, theirs: dict) -> tuple[float, bool, bool]:
    """(largest relative difference, NaN at the same voxels everywhere, bit-identical)."""
    worst, same_nan, identical = 0.0, list(ours) == list(theirs), list(ours) == list(theirs)
    for name, reference in theirs.items():
        a, b = sitk.GetArrayFromImage(ours[name]), sitk.GetArrayFromImage(reference)
        same_nan &= bool(np.array_equal(np.isnan(a), np.isnan(b)))
        identical &= bool(np.array_equal(a, b, equal_nan=True)) and ours[name].GetOrigin() == reference.GetOrigin()
        finite = ~np.isnan(a) & ~np.isnan(b)
        diff = np.abs(a[finite] - b[finite])
        scale = np.maximum(np.abs(a[finite]), np.abs(b[finite]))
        relative = np.divide(diff, scale, out=np.zeros_like(diff), where=diff > 0)
        worst = max(worst, float(relative.max()) if relative.size else 0.0)
    return worst, same_nan, identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="brain2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from rtrai.radiomics import voxel_plan
    from rtrai.radiomics.voxel_maps import voxel_maps

    assert voxel_plan.ENGINE_CLASSES  # imported before the clock starts (voxel_maps imports it lazily)

    # pyradiomics logs MCC's failure on kernels with an empty angle as an error, and warns of all-NaN means
    warnings.simplefilter("ignore", RuntimeWarning)  # its all-NaN means
    image = sitk.ReadImage(str(DATA / f"{args.case}_image.nrrd"))
    mask = sitk.ReadImage(str(DATA / f"{args.case}_label.nrrd"))
    t_ref, t_ours = [], []
    for _ in range(max(1, args.repeat)):
        radiomics.setVerbosity(50)  # (rtrai sets pyradiomics' logging to ERROR for its own runs)
        t0 = time.perf_counter()
        result = RadiomicsFeatureExtractor(PARAMS).execute(image, mask, voxelBased=True)
        t_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = voxel_maps(image, mask, 1, PARAMS, jobs=args.jobs)
        t_ours.append(time.perf_counter() - t0)
    reference = {k: v for k, v in result.items() if isinstance(v, sitk.Image)}
    worst, same_nan, identical = compare(ours, reference)
    ref, mine = statistics.median(t_ref), statistics.median(t_ours)
    print(f"{args.case}: {int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))} ROI voxels, {len(ours)} maps")
    print(f"pyradiomics voxel mode: {', '.join(f'{t:.2f}' for t in t_ref)} s   "
          f"rtrai: {', '.join(f'{t:.3f}' for t in t_ours)} s")
    print(f"median: pyradiomics {ref:.2f} s, rtrai {mine:.3f} s, speed-up x{ref / mine:.1f}   "
          f"best: pyradiomics {min(t_ref):.2f} s, rtrai {min(t_ours):.3f} s, speed-up x{min(t_ref) / min(t_ours):.1f}")
    print(f"max relative difference {worst:.3g}; NaN at the same voxels: {same_nan}; bit-identical: {identical}")
    return 0 if worst <= 1e-6 and same_nan else 1


if __name__ == "__main__":
    sys.exit(main())

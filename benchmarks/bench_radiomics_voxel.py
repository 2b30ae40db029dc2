"""Voxel-wise feature maps: rtrai (pyradiomics voxel mode split over --jobs processes) vs pyradiomics voxel mode.

    python benchmarks/bench_radiomics_voxel.py [--jobs 2] [--case brain2]

Runs both on the same ROI and settings (firstorder + GLCM, kernel radius 1) in this process, checks the maps are
identical and prints the two times and the ratio.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RTRadiomicsAI"))
DATA = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data")) / "pyradiomics" / "data"
PARAMS = {"imageType": {"Original": {}}, "featureClass": {"firstorder": [], "glcm": []},
          "setting": {"binWidth": 25}, "voxelSetting": {"kernelRadius": 1, "initValue": 0}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--case", default="brain2")
    args = parser.parse_args()
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from rtrai.radiomics.voxel import voxel_maps

    radiomics.setVerbosity(40)
    image = sitk.ReadImage(str(DATA / f"{args.case}_image.nrrd"))
    mask = sitk.ReadImage(str(DATA / f"{args.case}_label.nrrd"))
    t0 = time.perf_counter()
    reference = RadiomicsFeatureExtractor(PARAMS).execute(image, mask, voxelBased=True)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = voxel_maps(image, mask, 1, PARAMS, jobs=args.jobs)
    t_ours = time.perf_counter() - t0
    identical = all(np.array_equal(sitk.GetArrayFromImage(reference[k]), sitk.GetArrayFromImage(ours[k]),
                                   equal_nan=True) for k in ours)
    print(f"{args.case}: {int(sitk.GetArrayViewFromImage(mask).sum())} ROI voxels, {len(ours)} maps, {args.jobs} jobs")
    print(f"pyradiomics voxel mode: {t_ref:.1f} s   rtrai: {t_ours:.1f} s   speed-up x{t_ref / t_ours:.2f}   "
          f"identical: {identical}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

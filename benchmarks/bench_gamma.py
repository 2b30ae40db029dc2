"""Gamma 3%/3 mm (global, 10 % cut-off, max gamma 2) on OpenKBP dose pairs: rtrai vs pymedphys vs plastimatch.

Pairs, both on validation pt_201's grid as rtrai reads it (one reader for both):
  perturbed   the plan dose vs the same dose smoothed (sigma 1 voxel), scaled by 1.02, shifted (0.4, -0.3, 0.5) voxels
              along (z, y, x)
  predicted   the plan dose vs the shipped hn-dose-openkbp prediction (what DosePredict users compare)
Run: python benchmarks/bench_gamma.py [--skip-pymedphys]
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rtrai.dose.gamma import gamma_index

PT = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats" / "pt_201"


def plan_and_predicted() -> tuple[sitk.Image, sitk.Image]:
    """The plan dose and the shipped model's prediction, both as rtrai reads and writes them (same grid)."""
    from rtrai.dose.inference import DosePredictor

    predictor = DosePredictor("hn-dose-openkbp", "cpu")
    case = predictor.read(PT)
    return sitk.Cast(case.dose, sitk.sitkFloat32), predictor.predict(case)


def perturbed(plan: sitk.Image) -> sitk.Image:
    """The plan smoothed (sigma 1 voxel), scaled by 1.02 and shifted by (0.4, -0.3, 0.5) voxels (z, y, x)."""
    ref = sitk.GetArrayFromImage(plan)
    ev = np.clip(ndimage.shift(ndimage.gaussian_filter(ref, 1.0) * 1.02, (0.4, -0.3, 0.5), order=1), 0, None)
    image = sitk.GetImageFromArray(ev.astype(np.float32))
    image.CopyInformation(plan)
    return image


def compare(name: str, images: list[sitk.Image]) -> None:
    print(f"pair '{name}':")
    ref, ev = (sitk.GetArrayFromImage(im) for im in images)
    t = time.perf_counter()
    ours = gamma_index(*images, 3, 3, cutoff_percent=10, max_gamma=2)
    t_ours = time.perf_counter() - t
    print(f"  rtrai gamma:                 {ours.pass_rate_pct:6.2f} % of {ours.evaluated_points} voxels "
          f"in {t_ours:.2f} s")
    if "--skip-pymedphys" not in sys.argv:
        import pymedphys

        axes = tuple(np.arange(n) * s for n, s in zip(ref.shape, images[0].GetSpacing()[::-1]))
        t = time.perf_counter()
        g = pymedphys.gamma(axes, ref, axes, ev, 3, 3, lower_percent_dose_cutoff=10, interp_fraction=10, max_gamma=2)
        t_pmp = time.perf_counter() - t
        valid = ~np.isnan(g)
        print(f"  pymedphys.gamma:             {100 * np.mean(g[valid] <= 1):6.2f} % of {valid.sum()} voxels in "
              f"{t_pmp:.2f} s  -> rtrai is {t_pmp / t_ours:.1f}x faster")
    if shutil.which("plastimatch"):
        with tempfile.TemporaryDirectory() as tmp:
            for label, im in zip(("ref", "ev"), images):
                sitk.WriteImage(im, f"{tmp}/{label}.mha")
            for extra in (["--interp-search"], []):
                cmd = ["plastimatch", "gamma", "--dose-tolerance", "0.03", "--dta-tolerance", "3",
                       "--analysis-threshold", "0.1", "--gamma-max", "2", *extra, "--output", f"{tmp}/g.mha",
                       "--output-text", f"{tmp}/g.txt", f"{tmp}/ref.mha", f"{tmp}/ev.mha"]
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                t_pl = time.perf_counter() - t
                rate = [ln for ln in Path(f"{tmp}/g.txt").read_text().splitlines() if ln.startswith("pass_rate")][0]
                print(f"  plastimatch {' '.join(extra) or '(no interp)':16s} {rate.split()[-1]:>6s} % in {t_pl:.2f} s "
                      f"(its own voxel selection)  -> rtrai is {t_pl / t_ours:.1f}x faster")
    else:
        print("  plastimatch not installed (apt-get install plastimatch): not compared")


def main() -> None:
    if not PT.is_dir():
        print(f"skipped: OpenKBP data not found at {PT}")
        return
    plan, predicted = plan_and_predicted()
    compare("perturbed", [plan, perturbed(plan)])
    compare("predicted", [plan, predicted])


if __name__ == "__main__":
    main()

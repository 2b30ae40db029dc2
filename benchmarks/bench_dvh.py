"""DVH of 6 spheres from an RTSTRUCT on a 136x86x92 RTDOSE grid: rtrai vs dicompyler-core, and vs the closed form.

Phantom: linear dose 0.2 Gy/mm along x (plus 0.05 Gy/mm along z), 2.5 x 2.5 x 3 mm grid, contours every 3 mm.
Run: python benchmarks/bench_dvh.py
"""

import tempfile
import time

import numpy as np

from rtrai.dose import phantoms
from rtrai.dose.dvh import metric, samples_from_contours
from rtrai.io.dicomrt import read_rtdose, read_rtstruct

CENTRES = [(-60, 0, 0), (-20, 10, -20), (20, -10, 20), (60, 0, 0), (0, 30, 40), (0, -30, -40)]
RADII = [20, 15, 25, 10, 12, 18]
GX, GZ = 0.2, 0.05


def main() -> None:
    dose = phantoms.linear_dose((136, 86, 92), (2.5, 2.5, 3.0), (-170.0, -107.5, -138.0), (GX, 0.0, GZ), 40.0)
    planes = np.arange(-120, 120, 3.0) + 1.5
    structures = {f"S{i}": phantoms.sphere_contours(c, r, planes) for i, (c, r) in enumerate(zip(CENTRES, RADII))}
    with tempfile.TemporaryDirectory() as tmp:
        dose_path, struct_path = phantoms.write_rt_pair(tmp, dose, structures)
        t = time.perf_counter()
        rois, _ = read_rtstruct(struct_path)
        rt_dose = read_rtdose(dose_path)[0]
        ours = {roi.name: samples_from_contours(rt_dose, roi.contours) for roi in rois}
        t_ours = time.perf_counter() - t
        import pydicom.dicomio

        if not hasattr(pydicom.dicomio, "read_file"):  # dicompyler-core 0.5.6 imports pydicom 2's name
            pydicom.dicomio.read_file = pydicom.dcmread
        from dicompylercore import dvhcalc

        t = time.perf_counter()
        theirs = {f"S{n - 1}": dvhcalc.get_dvh(str(struct_path), str(dose_path), n) for n in range(1, 7)}
        t_dc = time.perf_counter() - t
    print(f"rtrai (read + 6 DVHs): {t_ours:.2f} s; dicompyler-core get_dvh x6: {t_dc:.2f} s; "
          f"ratio {t_dc / t_ours:.1f}x")
    errs = {"rtrai": [], "dicompyler": []}
    g = np.hypot(GX, GZ)
    print("structure  metric   exact   rtrai  dicompyler")
    for (name, s), c, r in zip(ours.items(), CENTRES, RADII):
        cd = 40 + GX * c[0] + GZ * c[2]
        vol = 4 / 3 * np.pi * r ** 3 / 1000
        exact = {"Dmean": cd, "D95%": phantoms.sphere_dose_at_volume(0.95, cd, g, r),
                 "D2cc": phantoms.sphere_dose_at_volume(2 / vol, cd, g, r)}
        dc = {"Dmean": theirs[name].mean, "D95%": theirs[name].D95.value, "D2cc": theirs[name].D2cc.value}
        for m, e in exact.items():
            errs["rtrai"].append(abs(metric(s, m) - e))
            errs["dicompyler"].append(abs(dc[m] - e))
            print(f"{name:9s}  {m:6s} {e:7.3f} {metric(s, m):7.3f} {dc[m]:7.3f}")
    for k, v in errs.items():
        print(f"{k}: max |error| vs closed form {max(v):.3f} Gy, mean {np.mean(v):.3f} Gy (Dmean, D95%, D2cc)")


if __name__ == "__main__":
    main()

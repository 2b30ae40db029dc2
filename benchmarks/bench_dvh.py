"""DVHs from an RTSTRUCT on a 136x86x92 RTDOSE grid: rtrai vs dicompyler-core, and both vs the closed form.

Two phantoms on one dose (linear: 0.2 Gy/mm along x plus 0.05 Gy/mm along z, 2.5 x 2.5 x 3 mm grid, contours every
3 mm): six spheres (organ-sized, sub-sampled everywhere), and a body-sized elliptic cylinder, 300 x 200 mm on every
plane, 240 mm long (11 litres: whole voxels count whole, sub-points only where the contour crosses a voxel). Seconds
include reading the RTSTRUCT and RTDOSE (CPU seconds of the process, wall beside them); memory is the peak of Python
allocations (numpy's included, tracemalloc) while computing.
Goal (issue "DVH at clinical size"): the body in <= 1 s and <= 1 GiB, as accurate as the spheres.
Run: python benchmarks/bench_dvh.py
"""

import tempfile
import time
import tracemalloc

import numpy as np
from scipy.optimize import brentq

from rtrai.dose import dvh_phantoms as phantoms
from rtrai.dose.dvh import metric, samples_from_contours
from rtrai.io.dicomrt import read_rtdose, read_rtstruct
from rtrai.io.dicomrt_export import write_contours_and_dose

CENTRES = [(-60, 0, 0), (-20, 10, -20), (20, -10, 20), (60, 0, 0), (0, 30, 40), (0, -30, -40)]
RADII = [20, 15, 25, 10, 12, 18]
GX, GZ = 0.2, 0.05
PLANES = np.arange(-120, 120, 3.0) + 1.5
BODY_AXES = (150.0, 100.0)  # semi-axes (mm) along x and y
BODY_Z = (-120.0, 120.0)  # the slabs of the contour planes


def ellipse_contours(axes, plane_z, points: int = 720) -> list[np.ndarray]:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return [np.column_stack([axes[0] * np.cos(t), axes[1] * np.sin(t), np.full(points, z)]) for z in plane_z]


def body_volume_above(dose_gy: float) -> float:
    """cc of the elliptic cylinder receiving >= dose_gy (closed-form segment area, integrated along z)."""
    a, b = BODY_AXES
    z = np.linspace(*BODY_Z, 4001)
    u = np.clip((dose_gy - 40.0 - GZ * z) / GX / a, -1, 1)
    area = a * b * (np.arccos(u) - u * np.sqrt(1 - u ** 2))
    return float(np.trapezoid(area, z)) / 1000


def body_exact() -> dict[str, float]:
    total = body_volume_above(-1e9)
    exact = {"Dmean": 40.0 + GZ * np.mean(BODY_Z)}
    for name, cc in (("D95%", 0.95 * total), ("D2cc", 2.0), ("D50%", 0.5 * total)):
        exact[name] = brentq(lambda d: body_volume_above(d) - cc, 0.0, 80.0, xtol=1e-6)
    return exact


def dicompyler_dvhs(struct_path, dose_path, count: int) -> tuple[dict, float]:
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):  # dicompyler-core 0.5.6 imports pydicom 2's name
        pydicom.dicomio.read_file = pydicom.dcmread
    from dicompylercore import dvhcalc

    t = time.process_time()
    dvhs = {n: dvhcalc.get_dvh(str(struct_path), str(dose_path), n) for n in range(1, count + 1)}
    return dvhs, time.process_time() - t


def ours(struct_path, dose_path) -> tuple[dict, float, float, float]:
    tracemalloc.start()
    t, cpu = time.perf_counter(), time.process_time()
    rois, _ = read_rtstruct(struct_path)
    rt_dose = read_rtdose(dose_path)[0]
    samples = {roi.name: samples_from_contours(rt_dose, roi.contours) for roi in rois}
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 30
    tracemalloc.stop()
    return samples, seconds, cpu, peak


def dicompyler_metrics(dvh) -> dict[str, float]:
    return {"Dmean": dvh.mean, "D95%": dvh.D95.value, "D2cc": dvh.D2cc.value, "D50%": dvh.D50.value}


def main() -> None:
    dose = phantoms.linear_dose((136, 86, 92), (2.5, 2.5, 3.0), (-170.0, -107.5, -138.0), (GX, 0.0, GZ), 40.0)
    spheres = {f"S{i}": phantoms.sphere_contours(c, r, PLANES) for i, (c, r) in enumerate(zip(CENTRES, RADII))}
    g = np.hypot(GX, GZ)
    errs = {"rtrai": [], "dicompyler": []}
    with tempfile.TemporaryDirectory() as tmp:
        dose_path, struct_path = write_contours_and_dose(f"{tmp}/spheres", dose, spheres)
        body_dose_path, body_path = write_contours_and_dose(f"{tmp}/body", dose, {"BODY": ellipse_contours(
            BODY_AXES, PLANES)})
        ours(struct_path, dose_path)  # once to warm the imports and caches, as a second DVH in a session would be
        s_ours, s_wall, s_time, s_mem = ours(struct_path, dose_path)
        b_ours, b_wall, b_time, b_mem = ours(body_path, body_dose_path)
        s_theirs, s_dc = dicompyler_dvhs(struct_path, dose_path, len(spheres))
        b_theirs, b_dc = dicompyler_dvhs(body_path, body_dose_path, 1)
    # CPU seconds of this process: the figure that holds when other work shares the machine (wall beside it).
    print(f"6 spheres: rtrai {s_time:.2f} CPU s ({s_wall:.2f} s wall, {s_mem:.2f} GiB peak); dicompyler-core "
          f"{s_dc:.2f} CPU s; ratio {s_dc / s_time:.1f}x")
    print(f"body (11 litres): rtrai {b_time:.2f} CPU s ({b_wall:.2f} s wall, {b_mem:.2f} GiB peak; goal <= 1 s, "
          f"<= 1 GiB); dicompyler-core {b_dc:.2f} CPU s; ratio {b_dc / b_time:.1f}x")
    print("structure  metric   exact   rtrai  dicompyler")
    for (name, s), c, r, number in zip(s_ours.items(), CENTRES, RADII, range(1, 7)):
        cd = 40 + GX * c[0] + GZ * c[2]
        vol = 4 / 3 * np.pi * r ** 3 / 1000
        exact = {"Dmean": cd, "D95%": phantoms.sphere_dose_at_volume(0.95, cd, g, r),
                 "D2cc": phantoms.sphere_dose_at_volume(2 / vol, cd, g, r)}
        dc = dicompyler_metrics(s_theirs[number])
        for m, e in exact.items():
            errs["rtrai"].append(abs(metric(s, m) - e))
            errs["dicompyler"].append(abs(dc[m] - e))
            print(f"{name:9s}  {m:6s} {e:7.3f} {metric(s, m):7.3f} {dc[m]:7.3f}")
    for k, v in errs.items():
        print(f"spheres, {k}: max |error| vs closed form {max(v):.3f} Gy, mean {np.mean(v):.3f} Gy "
              "(Dmean, D95%, D2cc)")
    body, dc = b_ours["BODY"], dicompyler_metrics(b_theirs[1])
    exact = body_exact()
    body_errs = {"rtrai": [], "dicompyler": []}
    print(f"BODY volume: exact {body_volume_above(-1e9):.1f} cc, rtrai {body.total_cc:.1f} cc, "
          f"dicompyler {b_theirs[1].volume:.1f} cc")
    for m, e in exact.items():
        body_errs["rtrai"].append(abs(metric(body, m) - e))
        body_errs["dicompyler"].append(abs(dc[m] - e))
        print(f"BODY       {m:6s} {e:7.3f} {metric(body, m):7.3f} {dc[m]:7.3f}")
    for k, v in body_errs.items():
        print(f"body, {k}: max |error| vs closed form {max(v):.3f} Gy (Dmean, D95%, D2cc, D50%)")


if __name__ == "__main__":
    main()

"""Cohort extraction: `rtrai radiomics --cohort` vs pyradiomics' own batch command on the same rows and parameters.

    python benchmarks/bench_radiomics_cohort.py [--cohort openkbp] [--patients 8] [--jobs 1 2]
    python benchmarks/bench_radiomics_cohort.py --cohort testcases [--repeat 4] [--params FILE]

``openkbp`` (default): a radiotherapy cohort, the first ``--patients`` OpenKBP training patients
(../shared/data/openkbp/train-pats), CT and dose in every structure each patient has (targets and organs: 6-10), with
the settings of ``rtrai run``'s case features: the CT preset on the CT's own grid (bin width 25 HU, every class) and
the dose preset (bins of 0.5 Gy, every class but shape). The patients are written as NRRD files (CT.nrrd, Dose.nrrd,
one labelmap per structure) before the clock starts; two batch files (CT rows, dose rows) go to both tools.
``testcases``: pyradiomics' own test cases (brain1, brain2, breast1, prostate phantom), one structure each, repeated.

For each ``--jobs`` setting both commands run every batch file (``pyradiomics BATCH -p PARAMS -j N`` and
``rtrai radiomics --cohort BATCH --params PARAMS --jobs N``), one BLAS thread per process for both. Prints the wall
times (and the CPU seconds of each command with its workers, the steadier figure on a shared machine), each tool's
faster setting and the ratio between the faster settings, and the largest relative difference
over every feature value of every row (pyradiomics' CSV against ours); exit status 1 if it exceeds 1e-6.
"""

import argparse
import csv
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "pyradiomics"
# Our commands through register() directly, so the benchmark runs before cli.py lists the radiomics module.
RUN_RTRAI = ("import argparse, sys; from rtrai.radiomics import commands; p = argparse.ArgumentParser(); "
             "commands.register(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))")
CT_PARAMS = """# rtrai run's CT features: the CT preset on the CT's own grid
imageType: {Original: {}}
featureClass: {shape: , firstorder: , glcm: , glrlm: , glszm: , gldm: , ngtdm: }
setting: {binWidth: 25, voxelArrayShift: 1000, label: 1}
"""
DOSE_PARAMS = """# rtrai run's dose features: the dose preset without shape (a mask's shape is in its CT row)
imageType: {Original: {}}
featureClass: {firstorder: , glcm: , glrlm: , glszm: , gldm: , ngtdm: }
setting: {binWidth: 0.5, interpolator: sitkLinear, label: 1}
"""


def openkbp_cohort(work: Path, patients: int) -> list[tuple[Path, Path]]:
    """(batch file, parameter file) for the CT rows and the dose rows of ``patients`` OpenKBP patients."""
    import SimpleITK as sitk

    from rtrai.io.openkbp import read_openkbp

    folders = sorted((SHARED / "openkbp" / "train-pats").glob("pt_*"), key=lambda p: int(p.name[3:]))[:patients]
    if len(folders) < patients:
        sys.exit(f"only {len(folders)} OpenKBP patients under {SHARED / 'openkbp' / 'train-pats'}")
    rows = {"CT": [], "dose": []}
    for folder in folders:
        case = read_openkbp(folder)
        out = work / folder.name
        out.mkdir()
        sitk.WriteImage(case.ct, str(out / "CT.nrrd"), True)
        sitk.WriteImage(sitk.Cast(case.dose, sitk.sitkFloat32), str(out / "Dose.nrrd"), True)
        for name, mask in case.structures.items():
            sitk.WriteImage(mask, str(out / f"{name}.nrrd"), True)
            rows["CT"].append((f"{folder.name}_{name}_CT", out / "CT.nrrd", out / f"{name}.nrrd"))
            rows["dose"].append((f"{folder.name}_{name}_dose", out / "Dose.nrrd", out / f"{name}.nrrd"))
    batches = []
    for kind, text in (("CT", CT_PARAMS), ("dose", DOSE_PARAMS)):
        (work / f"{kind}.yaml").write_text(text)
        batches.append((write_batch(work / f"{kind}.csv", rows[kind]), work / f"{kind}.yaml"))
    print(f"{len(folders)} OpenKBP patients ({folders[0].name} ... {folders[-1].name}): "
          f"{len(rows['CT'])} structures, {2 * len(rows['CT'])} image/mask pairs")
    return batches


def testcases_cohort(work: Path, repeat: int, params: str) -> list[tuple[Path, Path]]:
    cases = [("brain1_image.nrrd", "brain1_label.nrrd"), ("brain2_image.nrrd", "brain2_label.nrrd"),
             ("breast1_image.nrrd", "breast1_label.nrrd"),
             ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd")]
    rows = [(f"{image.split('_')[0]}_{r}", DATA / "data" / image, DATA / "data" / mask)
            for r in range(repeat) for image, mask in cases]
    print(f"pyradiomics test cases x {repeat}: {len(rows)} rows, params {Path(params).name}")
    return [(write_batch(work / "cohort.csv", rows), Path(params))]


def write_batch(path: Path, rows) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "Image", "Mask"])
        writer.writerows(rows)
    return path


def run(tool: str, batch: Path, params: Path, jobs: int, output: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its worker processes)."""
    if tool == "pyradiomics":
        command = ["pyradiomics", str(batch), "--jobs", str(jobs), "-p", str(params), "-o", str(output), "-f", "csv"]
    else:
        command = [sys.executable, "-c", RUN_RTRAI, "radiomics", "--cohort", str(batch), "--jobs", str(jobs),
                   "--params", str(params), "-o", str(output)]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def worst_difference(reference: Path, ours: Path) -> tuple[float, int]:
    """Largest relative difference over the feature columns of every row, and how many values were compared."""
    with open(reference, newline="") as a, open(ours, newline="") as b:
        ref = {r["ID"]: r for r in csv.DictReader(a)}
        mine = {r["ID"]: r for r in csv.DictReader(b)}
    if set(ref) != set(mine):
        sys.exit(f"{reference.name}: rows differ ({len(ref)} vs {len(mine)})")
    worst, compared = 0.0, 0
    for case_id, row in ref.items():
        for key, value in row.items():
            if key.startswith(("original_", "log-", "wavelet-")):
                x, y = float(value), float(mine[case_id][key])
                if not (math.isnan(x) and math.isnan(y)):
                    worst = max(worst, abs(x - y) / max(abs(x), 1e-12))
                compared += 1
    return worst, compared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", choices=["openkbp", "testcases"], default="openkbp")
    parser.add_argument("--patients", type=int, default=8, help="openkbp: number of patients")
    parser.add_argument("--repeat", type=int, default=4, help="testcases: repetitions of the four cases")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="settings of --jobs to time")
    parser.add_argument("--params", default=str(DATA / "exampleSettings" / "exampleCT.yaml"), help="testcases")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "RTRadiomicsAI"))
    work = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    batches = openkbp_cohort(work, args.patients) if args.cohort == "openkbp" else \
        testcases_cohort(work, args.repeat, args.params)
    env = dict(os.environ, PYTHONPATH=str(REPO / "RTRadiomicsAI"), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    times, cpu = {}, {}
    for jobs in args.jobs:
        for batch, params in batches:  # the tools alternate batch by batch: a shared machine's load hits both alike
            for tool in ("pyradiomics", "rtrai"):
                wall, seconds = run(tool, batch, params, jobs, work / f"{tool}-{jobs}-{batch.stem}.csv", env)
                times[tool, jobs] = times.get((tool, jobs), 0.0) + wall
                cpu[tool, jobs] = cpu.get((tool, jobs), 0.0) + seconds
        print(f"--jobs {jobs}: pyradiomics batch {times['pyradiomics', jobs]:.1f} s "
              f"(CPU {cpu['pyradiomics', jobs]:.1f} s)"
              f"   rtrai {times['rtrai', jobs]:.1f} s (CPU {cpu['rtrai', jobs]:.1f} s)"
              f"   ratio x{times['pyradiomics', jobs] / times['rtrai', jobs]:.2f}"
              f" (CPU x{cpu['pyradiomics', jobs] / cpu['rtrai', jobs]:.2f})")
    worst, compared = 0.0, 0
    for jobs in args.jobs:
        for batch, _ in batches:
            w, n = worst_difference(work / f"pyradiomics-{jobs}-{batch.stem}.csv",
                                    work / f"rtrai-{jobs}-{batch.stem}.csv")
            worst, compared = max(worst, w), compared + n
    best_ref = min(args.jobs, key=lambda j: times["pyradiomics", j])
    best_ours = min(args.jobs, key=lambda j: times["rtrai", j])
    print(f"faster settings: pyradiomics --jobs {best_ref} {times['pyradiomics', best_ref]:.1f} s, rtrai --jobs "
          f"{best_ours} {times['rtrai', best_ours]:.1f} s: speed-up x"
          f"{times['pyradiomics', best_ref] / times['rtrai', best_ours]:.2f}")
    print(f"max relative difference {worst:.2e} over {compared} feature values")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())

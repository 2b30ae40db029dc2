"""Cohort extraction: `rtrai radiomics --cohort` vs pyradiomics' own batch command on the same rows and parameters.

    python benchmarks/bench_radiomics_cohort.py [--repeat 4] [--jobs 2] [--params FILE]

Builds a batch file from ../shared/data/pyradiomics (brain1, brain2, breast1, prostate phantom, repeated), runs
`pyradiomics cohort.csv --jobs N` and `python -m rtrai radiomics --cohort cohort.csv --jobs N`, checks that the
feature values agree and prints both wall times and the ratio.
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data")) / "pyradiomics"
# Our commands through register() directly, so the benchmark runs before cli.py lists the radiomics module.
RUN_RTRAI = ("import argparse, sys; from rtrai.radiomics import commands; p = argparse.ArgumentParser(); "
             "commands.register(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--params", default=str(DATA / "exampleSettings" / "exampleCT.yaml"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    cases = [("brain1_image.nrrd", "brain1_label.nrrd"), ("brain2_image.nrrd", "brain2_label.nrrd"),
             ("breast1_image.nrrd", "breast1_label.nrrd"),
             ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd")]
    batch = work / "cohort.csv"
    with open(batch, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "Image", "Mask"])
        for r in range(args.repeat):
            for image, mask in cases:
                writer.writerow([f"{image.split('_')[0]}_{r}", DATA / "data" / image, DATA / "data" / mask])
    env = dict(os.environ, PYTHONPATH=str(REPO / "RTRadiomicsAI"))
    t0 = time.perf_counter()
    subprocess.run(["pyradiomics", str(batch), "--jobs", str(args.jobs), "-p", args.params, "-o",
                    str(work / "pyradiomics.csv"), "-f", "csv"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN_RTRAI, "radiomics",
                    "--cohort", str(batch), "--jobs", str(args.jobs), "--params", args.params, "-o",
                    str(work / "rtrai.csv")], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    t_ours = time.perf_counter() - t0
    with open(work / "pyradiomics.csv", newline="") as a, open(work / "rtrai.csv", newline="") as b:
        ref = {r["ID"]: r for r in csv.DictReader(a)}
        ours = {r["ID"]: r for r in csv.DictReader(b)}
    worst = 0.0
    for case_id, row in ref.items():
        for key, value in row.items():
            if key.startswith("original_") or key.startswith(("log-", "wavelet-")):
                x, y = float(value), float(ours[case_id][key])
                worst = max(worst, abs(x - y) / max(abs(x), 1e-12) if not (math.isnan(x) and math.isnan(y)) else 0)
    rows = len(ref)
    print(f"{rows} rows, {args.jobs} jobs, params {Path(args.params).name}")
    print(f"pyradiomics batch: {t_ref:.1f} s   rtrai: {t_ours:.1f} s   speed-up x{t_ref / t_ours:.2f}   "
          f"max relative difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The protocol of the README's segmentation table: a model on the 33 OpenKBP validation patients with leak-free CTs,
scored on their slices with image data.

1. Each validation patient's CT made leak-free (``rtrai.io.openkbp.leak_free``: the CT voxels that OpenKBP keeps inside
   contours on slices without image data set to "outside the scan", as a clinical CT would be), written once into
   WORK/leak-free/ as OpenKBP patients.
2. ``rtrai segment WORK/leak-free -o WORK/<label>/segment --model MODEL`` (the model's own test-time setting).
3. ``rtrai evaluate segmentation --pred ... --ref <validation-pats> --imaged-slices --structures <the 7 OARs>
   -o WORK/<label>/evaluate``: every reference organ with voxels on imaged slices is scored, an organ the model did not
   find scores DSC 0 (without ``--structures`` such a patient would not be scored at all, flattering the model).
4. Per organ, over the patients that have it: mean DSC, median HD95 (mm; infinite for an organ not found), mean
   surface DSC at 2 mm; and the mean over the 7 OARs, printed as a Markdown table and written to
   WORK/<label>/per_organ.csv.

    python training/hn-oar-ct/evaluate_leak_free.py --model hn-oar-ct --label v6 -o WORK
    python training/hn-oar-ct/evaluate_leak_free.py --model training/hn-oar-ct-v7/run/model --label v7 -o WORK
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "openkbp" / "validation-pats"
OARS = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"]


def leak_free_copies(data: Path, work: Path) -> Path:
    from rtrai.io.openkbp import leak_free, read_openkbp, write_openkbp

    folder = work / "leak-free"
    for patient in sorted(p for p in data.iterdir() if p.is_dir()):
        target = folder / patient.name
        if (target / "voxel_dimensions.csv").is_file():
            continue
        case = leak_free(read_openkbp(patient))
        write_openkbp(case, target, what=("ct", "structures", "possible_dose_mask", "voxel_dimensions"))
    return folder


def rtrai(*argv) -> None:
    command = [sys.executable, "-m", "rtrai", *map(str, argv)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def per_organ(metrics_csv: Path) -> pd.DataFrame:
    rows = pd.read_csv(metrics_csv)
    rows = rows[rows.structure.isin(OARS)]
    organs = rows.groupby("structure")
    table = organs[["dsc", "surface_dsc"]].mean().join(organs["hd95_mm"].median()).reindex(OARS)
    table["patients"] = rows.groupby("structure").size().reindex(OARS)
    table.loc["mean of the 7 OARs"] = table[["dsc", "hd95_mm", "surface_dsc"]].mean()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zoo name or model folder")
    parser.add_argument("--label", required=True, help="name of this model's sub-folder of WORK (e.g. v7)")
    parser.add_argument("--data", type=Path, default=DATA, help="OpenKBP validation patients")
    parser.add_argument("-o", "--work", type=Path, required=True, help="work folder (leak-free copies are kept)")
    args = parser.parse_args()
    started = time.time()
    inputs = leak_free_copies(args.data, args.work)
    out = args.work / args.label
    rtrai("segment", inputs, "-o", out / "segment", "--model", args.model)
    rtrai("evaluate", "segmentation", "--pred", out / "segment", "--ref", args.data, "--imaged-slices",
          "--structures", *OARS, "-o", out / "evaluate")
    table = per_organ(out / "evaluate" / "metrics.csv")
    table.to_csv(out / "per_organ.csv", float_format="%.4f")
    print(f"\n{args.label} ({args.model}), leak-free CTs, imaged slices, {time.time() - started:.0f} s\n")
    print("| structure | DSC (mean) | HD95 (median, mm) | surface DSC 2 mm | patients |\n|---|---|---|---|---|")
    for name, row in table.iterrows():
        patients = "" if pd.isna(row.patients) else int(row.patients)
        print(f"| {name} | {row.dsc:.3f} | {row.hd95_mm:.1f} | {row.surface_dsc:.3f} | {patients} |")


if __name__ == "__main__":
    main()

"""`rtrai convert` of OpenKBP patients: our vectorised reader against OpenKBP's own loading recipe.

Goal (foundation issue): one OpenKBP patient converted in under 2 s on 2 cores. The reference is upstream's loader
(`pandas.read_csv` + `np.put` per file, as in open-kbp's `provided_code/data_loader.py`), timed on the same files in
the same run; both then write the same NRRD outputs so the ratio compares like with like.

    python benchmarks/bench_convert.py [N_PATIENTS]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats"


def upstream_style(patient: Path, out: Path) -> None:
    """OpenKBP's recipe: one dense array per file filled with np.put, then written as images."""
    from rtrai.io.openkbp import csv_stem

    files = {csv_stem(p): p for p in patient.iterdir() if csv_stem(p)}  # .csv, .csv.gz, .csv.xz, ...
    voxel = pd.read_csv(files.pop("voxel_dimensions"), header=None).to_numpy().ravel()
    out.mkdir(parents=True, exist_ok=True)
    for stem, path in sorted(files.items()):
        df = pd.read_csv(path, index_col=0)
        dense = np.zeros((128, 128, 128), np.float32)
        values = df["data"].to_numpy() if df["data"].notna().any() else 1
        np.put(dense, df.index.to_numpy(), values)
        image = sitk.GetImageFromArray(dense)
        image.SetSpacing([float(v) for v in voxel])
        sitk.WriteImage(image, str(out / (stem + ".nrrd")), True)


def main() -> int:
    if not DATA.is_dir():
        print(f"skipped: OpenKBP data not found at {DATA}")
        return 0
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    patients = sorted(DATA.iterdir())[:count]
    from rtrai.io.commands import convert_one

    ours, theirs, command = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for patient in patients:
            start = time.perf_counter()
            convert_one(patient, tmp / "ours" / patient.name)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            upstream_style(patient, tmp / "upstream" / patient.name)
            theirs.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rtrai", "convert", str(patient), str(tmp / "cli" / patient.name)],
                           check=True, capture_output=True)
            command.append(time.perf_counter() - start)
        shutil.rmtree(tmp / "ours")
    print(f"OpenKBP patients: {len(patients)}")
    print(f"rtrai convert (in process, incl. Structures.seg.nrrd + provenance): median {np.median(ours):.2f} s")
    print(f"rtrai convert (whole command, incl. Python start-up):          median {np.median(command):.2f} s "
          f"(goal < 2 s: {'met' if np.median(command) < 2 else 'NOT met'})")
    print(f"upstream recipe (np.put per file, one NRRD per file):           median {np.median(theirs):.2f} s")
    print(f"ratio upstream / rtrai (in process): {np.median(theirs) / np.median(ours):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

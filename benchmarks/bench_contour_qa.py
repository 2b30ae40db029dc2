"""Contour QA on the 33 OpenKBP validation patients: how often it flags their own reference contours, and how often it
catches the same contours corrupted on purpose.

The reference table was fitted on the 169 train patients only (``training/contour-qa/reference_statistics.py``);
nothing here tunes anything. Goal (AutoSegment III issue): <= 5 % of the validation reference contours flagged.

Corruptions, one contour at a time, every other contour of the patient left as it is:
- shifted by 15 mm along each of the six directions (nearest-neighbour resampling of the mask);
- half erased: the cranial half (voxels above the centroid's slice) removed, as a contour drawn on half its slices;
  and the lateral half (voxels left of the centroid) removed;
- left/right swapped: the two labels of a pair exchanged (both contours count).

    python benchmarks/bench_contour_qa.py [--data DIR] [--reference TABLE] [--rows OUT.csv]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from rtrai.core.structures import LATERAL_PAIRS
from rtrai.io.case_io import list_cases
from rtrai.io.openkbp import read_openkbp
from rtrai.segmentation.qa import CHECKS, check_measurements, load_reference, measure, midline

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp" / "validation-pats"
SHIFT_MM = 15.0
DIRECTIONS = {"+x (left)": (1, 0, 0), "-x (right)": (-1, 0, 0), "+y (posterior)": (0, 1, 0),
              "-y (anterior)": (0, -1, 0), "+z (superior)": (0, 0, 1), "-z (inferior)": (0, 0, -1)}


def shifted(mask: sitk.Image, vector_mm) -> sitk.Image:
    """The mask moved by ``vector_mm`` (LPS) on its own grid."""
    move = sitk.TranslationTransform(3, [-float(v) for v in vector_mm])  # Resample maps output points to input ones
    return sitk.Resample(mask, mask, move, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def half_erased(mask: sitk.Image, axis: int) -> sitk.Image:
    """The mask without the voxels beyond its centroid along array axis ``axis``: on OpenKBP's identity-direction
    grids axis 0 (z) grows superior and axis 2 (x) to the patient's left, so 0 erases the cranial half, 2 the left."""
    array = sitk.GetArrayFromImage(mask)
    cut = np.nonzero(array)[axis].mean()
    out = sitk.GetImageFromArray((array * (np.indices(array.shape)[axis] <= cut)).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def flagged(measured: dict, reference: dict, ct, names) -> dict[str, dict]:
    line, source = midline({n: m for n, m in measured.items() if m.voxels}, ct)
    rows = check_measurements(measured, reference, line, source)
    return {r["structure"]: r for r in rows if r["structure"] in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--rows", type=Path, default=None, help="write every validation row here (CSV)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: OpenKBP data not found at {args.data}")
        return 0
    reference = load_reference(args.reference)
    patients = list_cases(args.data)
    own_rows, per_check, contours = [], Counter(), 0
    caught = defaultdict(lambda: [0, 0])  # (corruption, organ) -> [flagged, tried]
    for folder in patients:
        case = read_openkbp(folder)
        measured = {n: measure(m) for n, m in case.structures.items()}
        own = flagged(measured, reference, case.ct, set(measured))
        for name, row in own.items():
            contours += 1
            own_rows.append({"patient": case.patient_id, **row})
            for check in CHECKS:
                per_check[check] += bool(row[check])
            per_check["any"] += row["flagged"]
        for name, mask in case.structures.items():
            variants = {f"shift {SHIFT_MM:.0f} mm {d}": shifted(mask, SHIFT_MM * np.array(v))
                        for d, v in DIRECTIONS.items()}
            variants["half erased (cranial)"] = half_erased(mask, 0)
            variants["half erased (lateral)"] = half_erased(mask, 2)
            for kind, corrupted in variants.items():
                result = flagged({**measured, name: measure(corrupted)}, reference, case.ct, {name})
                caught[(kind, name)][0] += result[name]["flagged"]
                caught[(kind, name)][1] += 1
            partner = LATERAL_PAIRS.get(name)
            if name.endswith("_L") and partner in measured:
                swapped = {**measured, name: measured[partner], partner: measured[name]}
                result = flagged(swapped, reference, case.ct, {name, partner})
                for n in (name, partner):
                    caught[("left/right swapped", n)][0] += result[n]["flagged"]
                    caught[("left/right swapped", n)][1] += 1

    print(f"Reference table: {reference['name']} ({reference['patients']} train patients), thresholds "
          f"{reference['thresholds']}")
    print(f"\nValidation reference contours ({len(patients)} patients, {contours} contours), flagged by check:")
    for check in (*CHECKS, "any"):
        print(f"  {check:11s} {per_check[check]:3d}  ({100 * per_check[check] / contours:.1f} %)")
    patients_flagged = len({r["patient"] for r in own_rows if r["flagged"]})
    print(f"  patients with at least one flag: {patients_flagged} of {len(patients)}")
    print("\nFlagged validation contours:")
    for row in own_rows:
        if row["flagged"]:
            print(f"  {row['patient']:7s} {row['structure']:14s} {row['reason']}")
    kinds = list(dict.fromkeys(k for k, _ in caught))
    organs = list(dict.fromkeys(n for _, n in caught))
    print("\nCorrupted contours caught (flagged / tried):")
    print(f"  {'corruption':28s} " + " ".join(f"{o[:13]:>13s}" for o in organs) + "      all")
    for kind in kinds:
        cells, hit, tried = [], 0, 0
        for organ in organs:
            h, t = caught.get((kind, organ), (0, 0))
            hit, tried = hit + h, tried + t
            cells.append(f"{h:>3d}/{t:<3d} {100 * h / t:3.0f}%" if t else " " * 13)
        print(f"  {kind:28s} " + " ".join(f"{c:>13s}" for c in cells) + f"  {100 * hit / max(tried, 1):5.1f} %")
    if args.rows:
        import pandas as pd

        pd.DataFrame(own_rows).to_csv(args.rows, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

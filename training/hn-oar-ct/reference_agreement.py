"""What the OpenKBP validation references allow: how far a mean DSC of 0.80 over the 7 OARs is from them.

Measured on the references alone (no model):

1. Self-agreement on the grid: each reference contour against itself moved by one voxel along z, y or x. A model
   whose boundary is one voxel off everywhere scores about this; OpenKBP's voxels are 2-5 mm.
2. Anomalous references, by two rules: a patient whose contours do not fit its CT (over 10% of a solid organ -
   brainstem, cord, parotid, mandible - lies in air, below -500 HU: all of that patient's references), and a volume
   over 4x the median of that organ over the validation patients.
3. The share of each organ on axial slices without image data. OpenKBP's CTs are cut to a region round the plan, but
   the voxels inside every contour are kept, so beyond the cut the image is blank except for the organs themselves:
   there a model cannot see the anatomy, and it can follow the reference written into the CT, which a clinical CT does
   not offer.

With ``--pred`` (the output folder of ``rtrai segment`` on the same patients): the model's mean DSC with and without
the anomalous references, on slices with and without image data, and the DSC every other reference would need for the
mean over the 7 OARs to reach 0.80. With ``--model`` as well (the model that wrote ``--pred``): each patient segmented
again with the contoured voxels on slices without image data set to air, as the rest of those slices are, which shows
how much of the model's DSC there came from the reference written into the CT.

    python training/hn-oar-ct/reference_agreement.py [--data DIR] [--pred SEGMENT_OUTPUT [--model MODEL]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from rtrai.io.openkbp import imaged_slices, leak_free, read_openkbp
from rtrai.segmentation.metrics import dice

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "openkbp" / "validation-pats"
OARS = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible"]
GOAL = 0.80
OUTSIZED = 4.0  # a reference over this many times its organ's median volume is anomalous
SOLID = ["Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Bone_Mandible"]  # no air inside (unlike the airways)
IN_AIR = 0.10  # a solid organ with more than this share of its voxels below -500 HU is drawn off the patient's CT


def shifted(mask: np.ndarray, axis: int) -> np.ndarray:
    """The mask moved by one voxel along ``axis`` (zero-filled, nothing wraps round)."""
    out = np.zeros_like(mask)
    src, dst = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
    src[axis], dst[axis] = slice(0, -1), slice(1, None)
    out[tuple(dst)] = mask[tuple(src)]
    return out


def dsc_where(pred: dict, ref: np.ndarray, name: str, where: np.ndarray) -> float | None:
    """DSC of structure ``name`` on the slices ``where``; None where the reference has none of it."""
    if not ref[where].any():
        return None
    out = sitk.GetArrayViewFromImage(pred[name]).astype(bool) if name in pred else np.zeros_like(ref)
    return dice(out[where], ref[where])


def table_for(data: Path, pred: Path | None, model: str | None = None) -> pd.DataFrame:
    from rtrai.io.segfile import read_segmentation

    segmenter = None
    if model:
        from rtrai.segmentation.inference import Segmenter

        segmenter = Segmenter(model, "cpu")
    rows = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        case = read_openkbp(folder)
        ct = sitk.GetArrayViewFromImage(case.ct)
        imaged = imaged_slices(case)  # the one definition of the contour leak: rtrai.io.openkbp
        predicted = read_segmentation(pred / folder.name / "Structures.seg.nrrd")[0] if pred else {}
        blinded = segmenter.segment(leak_free(case)) if segmenter else {}
        voxel_ml = float(np.prod(case.ct.GetSpacing())) / 1000.0
        for name in OARS:
            if name not in case.structures:
                continue
            ref = sitk.GetArrayFromImage(case.structures[name]).astype(bool)
            row = {"patient": folder.name, "structure": name, "volume_ml": ref.sum() * voxel_ml,
                   "in_air": float((ct[ref] < -500).mean()), "off_image": float(ref[~imaged].sum() / ref.sum()),
                   **{f"shift_{axis}": dice(ref, shifted(ref, i)) for i, axis in enumerate("zyx")}}
            if pred:
                everywhere = np.ones(len(imaged), bool)
                row["dsc"] = dsc_where(predicted, ref, name, everywhere)
                row["dsc_imaged"] = dsc_where(predicted, ref, name, imaged)
                row["dsc_off_image"] = dsc_where(predicted, ref, name, ~imaged)
            if segmenter:
                row["dsc_blinded"] = dsc_where(blinded, ref, name, everywhere)
                row["dsc_off_image_blinded"] = dsc_where(blinded, ref, name, ~imaged)
            rows.append(row)
    table = pd.DataFrame(rows)
    table["median_ml"] = table.groupby("structure")["volume_ml"].transform("median")
    table["outsized"] = table["volume_ml"] > OUTSIZED * table["median_ml"]
    off_ct = table[table["structure"].isin(SOLID) & (table["in_air"] > IN_AIR)]["patient"].unique()
    table["off_ct"] = table["patient"].isin(off_ct)
    table["anomalous"] = table["off_ct"] | table["outsized"]
    return table


def organ_mean(table: pd.DataFrame, column: str) -> pd.Series:
    return table.groupby("structure")[column].mean().reindex(OARS)


def needed_elsewhere(table: pd.DataFrame) -> float:
    """The DSC every non-anomalous reference would need for the mean over organs of per-organ means to reach GOAL."""
    from scipy.optimize import brentq

    def mean_at(x: float) -> float:
        return float(np.mean([np.where(g["anomalous"], g["dsc"], x).mean() for _, g in table.groupby("structure")]))

    return brentq(lambda x: mean_at(x) - GOAL, 0.0, 1.0) if mean_at(1.0) >= GOAL else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="OpenKBP patients (default: validation-pats)")
    parser.add_argument("--pred", type=Path, help="rtrai segment's output folder for the same patients")
    parser.add_argument("--model", help="the model (zoo name or folder) that wrote --pred: segment once more without "
                                        "the contoured voxels on slices without image data")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"OpenKBP patients not found at {args.data}")
    if args.model and not args.pred:
        parser.error("--model needs --pred")
    table = table_for(args.data, args.pred, args.model)
    shifts = ["shift_z", "shift_y", "shift_x"]
    organs = table.groupby("structure").agg(n=("patient", "size"), median_ml=("volume_ml", "median"),
                                            min_ml=("volume_ml", "min"), max_ml=("volume_ml", "max"),
                                            **{s: (s, "mean") for s in shifts}, off_image=("off_image", "mean"),
                                            anomalous=("anomalous", "sum")).reindex(OARS)
    organs.insert(len(shifts) + 4, "shift_mean", organs[shifts].mean(axis=1))
    print(f"{table['patient'].nunique()} patients. Per organ: volumes; DSC of each reference with itself moved by one "
          "voxel; mean share of the organ on slices without image data; anomalous references")
    print(organs.round(3).to_string())
    print(f"one-voxel self-agreement, mean over the 7 OARs: z {organs['shift_z'].mean():.3f}, "
          f"y {organs['shift_y'].mean():.3f}, x {organs['shift_x'].mean():.3f}, all three "
          f"{organs['shift_mean'].mean():.3f}")
    print(f"\nanomalous references (the patient's contours do not fit its CT: a solid organ over {IN_AIR:.0%} in air; "
          f"or over {OUTSIZED:g}x the organ's median volume):")
    for row in table[table["anomalous"]].itertuples():
        why = "contours off the CT" if row.off_ct else f"{row.volume_ml / row.median_ml:.0f}x the median volume"
        print(f"  {row.patient} {row.structure}: {row.volume_ml:.1f} mL, {row.in_air:.0%} in air, {why}")
    if args.pred:
        clean = table[~table["anomalous"]]
        print(f"\nmodel ({args.pred}): mean DSC over the 7 OARs {organ_mean(table, 'dsc').mean():.3f}, "
              f"without the anomalous references {organ_mean(clean, 'dsc').mean():.3f}")
        split = pd.DataFrame({"all": organ_mean(table, "dsc"), "without anomalous": organ_mean(clean, "dsc"),
                              "on imaged slices": organ_mean(table, "dsc_imaged"),
                              "on slices without image": organ_mean(table, "dsc_off_image")})
        if args.model:
            split["there, contoured voxels set to air"] = organ_mean(table, "dsc_off_image_blinded")
            split["all, contoured voxels set to air"] = organ_mean(table, "dsc_blinded")
        print(split.round(3).to_string())
        if args.model:
            print(f"with the contoured voxels on slices without image data set to air: mean over the 7 OARs "
                  f"{split['all, contoured voxels set to air'].mean():.3f}")
        print(f"on imaged slices only: mean over the 7 OARs {split['on imaged slices'].mean():.3f}")
        print(f"for a mean of {GOAL:.2f} with the anomalous references kept, every other reference would need "
              f"DSC {needed_elsewhere(table):.3f}")


if __name__ == "__main__":
    main()

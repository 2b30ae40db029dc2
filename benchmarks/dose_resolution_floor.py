"""What the prior-unet's 2x coarser correction grid alone costs on the OpenKBP validation patients.

``hn-dose-openkbp`` adds to its full-resolution geometric prior a correction computed on a grid 2x coarser and
upsampled trilinearly. This script gives each patient the best such correction there is short of learning, the
reference dose's own (reference minus prior, average-pooled 2x and upsampled back), and scores the result like
``rtrai dose evaluate``: what remains is the floor that resolution sets, whatever the coarse network learns. It is
what a full-resolution refinement stage (``refine`` in a dose training config) can win back at most, roughly.

    python benchmarks/dose_resolution_floor.py      (output: benchmarks/results/dose_resolution_floor.txt)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openkbp" / "validation-pats"


def coarse_correction(residual: np.ndarray, factor: int) -> np.ndarray:
    """``residual`` average-pooled ``factor`` x and upsampled back trilinearly, as the prior-unet's correction is."""
    import torch

    from rtrai.dose.encoding import pad_to
    from rtrai.dose.networks import upsample

    padded, crop = pad_to(residual[None], factor)
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None]
    return upsample(torch.nn.functional.avg_pool3d(tensor, factor), factor)[0, 0].numpy()[crop]


def main() -> int:
    import SimpleITK as sitk

    from rtrai.dose.encoding import BODY, DOSE_SCALE_GY, PRIOR, encode_inputs, prescription_levels
    from rtrai.dose.scores import score_patient, summarise
    from rtrai.io.case_io import list_cases
    from rtrai.io.openkbp import read_openkbp

    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return 0
    lines, scores, started = [], [], time.time()
    for folder in list_cases(DATA):
        case = read_openkbp(folder)
        if case.dose is None:
            continue
        inputs = encode_inputs(case)
        reference = sitk.GetArrayFromImage(case.dose).astype(np.float32)
        prior = inputs[PRIOR] * DOSE_SCALE_GY
        possible = inputs[BODY] > 0
        floor = np.clip(prior + coarse_correction(reference - prior, 2), 0, None) * possible
        masks = {name: sitk.GetArrayFromImage(mask) != 0 for name, mask in case.structures.items()}
        scores.append(score_patient(folder.name, reference, floor, masks, float(np.prod(case.ct.GetSpacing())),
                                    possible, max(prescription_levels(case).values())))
        lines.append(f"{folder.name}: dose score {scores[-1].dose_score:.3f} Gy")
        print(lines[-1], flush=True)
    total = summarise(scores)
    dice = ", ".join(f"{k} % {v:.3f}" for k, v in total["isodose_dice_mean"].items())
    lines += ["", f"{total['patients']} patients: dose score {total['dose_score_gy']:.3f} Gy, DVH score "
              f"{total['dvh_score_gy']:.3f} Gy ({total['dvh_entries']} DVH values); isodose Dice {dice}",
              f"({time.time() - started:.0f} s)"]
    print("\n".join(lines[-3:]))
    out = ROOT / "benchmarks" / "results" / "dose_resolution_floor.txt"
    out.write_text("the reference dose's own correction on the prior-unet's 2x coarser grid (the resolution floor), "
                   "OpenKBP validation patients\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

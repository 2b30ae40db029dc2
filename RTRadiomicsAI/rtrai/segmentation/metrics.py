"""Segmentation metrics per structure with MONAI: DSC, HD95, mean surface distance, surface DSC at a tolerance.

Distances are in mm (the grid spacing is passed to MONAI). A structure absent from the reference is not scored;
one absent from the prediction scores DSC 0 and infinite distances (reported as NaN-free ``null`` in JSON).
"""

from __future__ import annotations

import math

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient of two binary arrays (1.0 when both are empty)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance_mm: float = 2.0) -> dict:
    """DSC, HD95, mean surface distance (symmetric) and surface DSC of one structure on a (z, y, x) grid."""
    import torch
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_surface_dice)

    p = torch.as_tensor(pred.astype(bool))[None, None]
    r = torch.as_tensor(ref.astype(bool))[None, None]
    spacing = [float(s) for s in spacing_zyx]
    out = {"dsc": float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0]),
           "volume_pred_voxels": int(pred.astype(bool).sum()), "volume_ref_voxels": int(ref.astype(bool).sum())}
    if not pred.any():
        out.update(hd95_mm=math.inf, msd_mm=math.inf, surface_dsc=0.0)
        return out
    out["hd95_mm"] = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                      spacing=spacing)[0, 0])
    out["msd_mm"] = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                           spacing=spacing)[0, 0])
    out["surface_dsc"] = float(compute_surface_dice(p, r, [tolerance_mm], include_background=True,
                                                    spacing=spacing)[0, 0])
    return out


def evaluate(pred: dict, ref: dict, spacing_zyx, tolerance_mm: float = 2.0, names=None) -> list[dict]:
    """One row per structure of the reference (absent reference structures skipped; a missing prediction scores 0)."""
    rows = []
    for name in names or sorted(ref):
        if name not in ref:
            continue
        prediction = pred.get(name)
        if prediction is None:
            prediction = np.zeros_like(ref[name])
        rows.append({"structure": name, **structure_metrics(prediction, ref[name], spacing_zyx, tolerance_mm)})
    return rows

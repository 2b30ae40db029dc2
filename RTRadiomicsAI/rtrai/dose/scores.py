"""Dose-prediction scores: OpenKBP dose and DVH scores, isodose Dice, per-structure DVH metric errors.

OpenKBP (Babier et al., Med. Phys. 2021; upstream ``provided_code/dose_evaluation_class.py``), reproduced exactly:

- dose score of a patient = sum over ALL voxels of |reference - predicted| / number of voxels in the possible-dose
  mask; the dose score of a set is the mean over patients;
- DVH metrics on voxel masks: OARs D_0.1cc (``numpy.percentile`` at 100 - 100 n / N with
  n = max(1, round(100 mm^3 / voxel volume))) and mean dose; PTVs D99, D95, D1 (1st, 5th, 99th percentiles);
- DVH score = NaN-mean of |reference - predicted| over every (patient, structure, metric) that exists.

Isodose Dice (Nguyen et al. 2019): Dice of the regions receiving at least L % of the prescription, L = 10..100.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtrai.core.errors import InputError
from rtrai.core.structures import is_target

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")
ISODOSE_LEVELS_PCT = tuple(range(10, 101, 10))


def openkbp_dose_score(reference: np.ndarray, predicted: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    count = int(np.count_nonzero(possible_dose_mask))
    if count == 0:
        raise InputError("the possible-dose mask is empty, so the OpenKBP dose score is undefined")
    return float(np.sum(np.abs(reference.astype(np.float64) - predicted.astype(np.float64))) / count)


def openkbp_dvh_metrics(dose: np.ndarray, mask: np.ndarray, voxel_volume_mm3: float, target: bool) -> dict:
    """OpenKBP's DVH metrics of one structure (empty dict for an empty mask)."""
    roi_dose = dose[mask.astype(bool)].astype(np.float64)
    if roi_dose.size == 0:
        return {}
    if target:
        return {"D_99": float(np.percentile(roi_dose, 1)), "D_95": float(np.percentile(roi_dose, 5)),
                "D_1": float(np.percentile(roi_dose, 99))}
    voxels_in_tenth_of_cc = max(1.0, float(np.round(100.0 / voxel_volume_mm3)))
    fraction = max(0.0, 100.0 - voxels_in_tenth_of_cc / roi_dose.size * 100.0)
    return {"D_0.1_cc": float(np.percentile(roi_dose, fraction)), "mean": float(roi_dose.mean())}


def isodose_dice(reference: np.ndarray, predicted: np.ndarray, prescription_gy: float,
                 levels_pct=ISODOSE_LEVELS_PCT) -> dict[int, float]:
    """Dice of the isodose volumes at each level (% of prescription); NaN where neither dose reaches the level."""
    out = {}
    for level in levels_pct:
        threshold = prescription_gy * level / 100.0
        a, b = reference >= threshold, predicted >= threshold
        total = int(a.sum()) + int(b.sum())
        out[int(level)] = 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")
    return out


@dataclass
class PatientScores:
    patient: str
    dose_score: float
    prescription_gy: float
    dvh_rows: list[dict] = field(default_factory=list)  # structure, metric, reference, predicted, error
    isodose: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dvh_abs_errors(self) -> list[float]:
        return [abs(r["error"]) for r in self.dvh_rows if np.isfinite(r["error"])]


def score_patient(patient: str, reference: np.ndarray, predicted: np.ndarray, structures: dict[str, np.ndarray],
                  voxel_volume_mm3: float, possible_dose_mask: np.ndarray | None, prescription_gy: float,
                  notes: list[str] | None = None) -> PatientScores:
    """Scores of one patient; arrays share one grid; ``structures`` maps TG-263 names to boolean masks."""
    notes = list(notes or [])
    if reference.shape != predicted.shape:
        raise InputError(f"{patient}: reference dose {reference.shape} and predicted dose {predicted.shape} are "
                         "on different grids")
    if possible_dose_mask is None:
        possible_dose_mask = (reference > 0) | (predicted > 0)
        notes.append("no possible-dose mask: the dose score divides by the voxels where either dose is > 0")
    rows = []
    for name, mask in structures.items():
        target = is_target(name)
        ref = openkbp_dvh_metrics(reference, mask, voxel_volume_mm3, target)
        pred = openkbp_dvh_metrics(predicted, mask, voxel_volume_mm3, target)
        for metric_name in ref:
            rows.append({"structure": name, "metric": metric_name, "reference": ref[metric_name],
                         "predicted": pred[metric_name], "error": pred[metric_name] - ref[metric_name]})
    return PatientScores(patient, openkbp_dose_score(reference, predicted, possible_dose_mask), prescription_gy,
                         rows, isodose_dice(reference, predicted, prescription_gy), notes)


def summarise(patients: list[PatientScores]) -> dict:
    """Set-level scores: mean dose score over patients, DVH score over all metric entries, mean isodose Dice."""
    if not patients:
        raise InputError("no patients to score")
    errors = [e for p in patients for e in p.dvh_abs_errors]
    levels = sorted({lvl for p in patients for lvl in p.isodose})
    dice = {str(lvl): float(np.nanmean([p.isodose.get(lvl, np.nan) for p in patients]))
            if any(np.isfinite(p.isodose.get(lvl, np.nan)) for p in patients) else float("nan") for lvl in levels}
    return {"patients": len(patients),
            "dose_score_gy": float(np.mean([p.dose_score for p in patients])),
            "dvh_score_gy": float(np.mean(errors)) if errors else float("nan"),
            "dvh_entries": len(errors),
            "isodose_dice_mean": dice}

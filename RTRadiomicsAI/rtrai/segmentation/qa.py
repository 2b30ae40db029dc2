"""Contour QA: checks that say when a contour is implausible, and how sure a model is of its own contours.

Checks, one column each in ``contour_qa.csv`` (1 = flagged, 0 = passed, empty = does not apply to this structure):

- ``empty``: the structure is there but holds no voxel.
- ``volume``: the volume lies outside the range seen in training (widened by a margin tuned on training), or, for a
  left/right organ, its ratio to its partner does (the member of the pair further from its usual volume is flagged).
- ``components``: several components (each holding at least :data:`SIGNIFICANT_SHARE` of the volume) where training
  contours of that organ have one.
- ``laterality``: a ``*_L`` organ on the patient's right of the midline or a ``*_R`` one on the left (LPS: +x is the
  patient's left; the midline is where the midline organs' centroids lie, else the body's centre on the CT), the
  anatomy-based rule :func:`rtrai.segmentation.postprocess.lateral_consistency` applies to predictions.
- ``position``: the centroid is far from where the organ sits relative to the other organs: each other organ R
  predicts it at R's centroid plus the mean offset seen in training, the predictions are combined per axis by a
  weighted median (one misplaced organ does not move it) and the distance is measured in units of the spread seen
  in training.

The statistics and thresholds come from a reference table (package data ``rtrai/data/contour_qa/``), made by
:func:`fit_reference` on training contours (``training/contour-qa/reference_statistics.py``); thresholds are chosen
by leave-one-out on the training patients themselves, for a false-flag rate of ``alpha`` per check.

:func:`mirror_uncertainty` gives a model's uncertainty from test-time augmentation: the model run on the image and on
its lateral mirror (the one augmentation its labels are trained to follow, left and right channels swapped), the
voxel-wise disagreement of the two probabilities as a map, and the Dice between the two contours as the structure's
confidence.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import FormatError, InputError
from rtrai.core.image import Grid
from rtrai.core.structures import LATERAL_PAIRS, is_target

CHECKS = ("empty", "volume", "components", "laterality", "position")
COLUMNS = ("structure",) + CHECKS + ("flagged", "reason")
SIGNIFICANT_SHARE = 0.05  # a component smaller than this share of the structure is a speck, not a second component
SINGLE_SHARE = 0.97  # an organ "has one component" when at least this share of training contours has one
MIN_PAIRS = 20  # training patients with both organs before one may predict the other's position
MIDLINE = ("Brainstem", "SpinalCord", "Esophagus", "Larynx", "Bone_Mandible", "Brain", "OpticChiasm", "Cavity_Oral",
           "Trachea", "Pituitary", "Lips", "Bone_Hyoid", "Cricopharyngeus")
BODY_HU = -500  # denser than this is body, for the midline when no midline organ is contoured
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "data" / "contour_qa" / "hn-openkbp-train.json"


# ------------------------------------------------------------------------------------------------------ measuring

@dataclass
class Measurement:
    """What the checks look at in one mask (lengths in mm, LPS)."""

    voxels: int
    volume_cc: float
    centroid: np.ndarray | None = None
    shares: list[float] = field(default_factory=list)  # component volumes / total, largest first

    @property
    def components(self) -> int:
        return sum(s >= SIGNIFICANT_SHARE for s in self.shares)

    def to_dict(self) -> dict:
        return {"volume_cc": round(self.volume_cc, 4), "voxels": self.voxels,
                "centroid_mm": None if self.centroid is None else [round(float(v), 3) for v in self.centroid],
                "component_shares": [round(s, 4) for s in self.shares]}


def measure(mask: sitk.Image) -> Measurement:
    from scipy import ndimage

    array = sitk.GetArrayViewFromImage(mask) > 0
    grid = Grid.of(mask)
    voxels = int(array.sum())
    if not voxels:
        return Measurement(0, 0.0)
    labelled, _ = ndimage.label(array, structure=np.ones((3, 3, 3), bool))
    sizes = np.sort(np.bincount(labelled.ravel())[1:])[::-1]
    z, y, x = (float(v.mean()) for v in np.nonzero(array))
    centroid = (grid.index_to_physical_matrix() @ np.array([x, y, z, 1.0]))[:3]
    return Measurement(voxels, voxels * grid.voxel_volume_cc, centroid, (sizes / voxels).tolist())


def body_midline(ct: sitk.Image | None) -> float | None:
    """LPS x (mm) of the centre of the body on the CT, or None."""
    if ct is None:
        return None
    body = sitk.GetArrayViewFromImage(ct) > BODY_HU
    if not body.any():
        return None
    z, y, x = (float(v.mean()) for v in np.nonzero(body))
    return float((Grid.of(ct).index_to_physical_matrix() @ np.array([x, y, z, 1.0]))[0])


def midline(measured: dict[str, Measurement], ct: sitk.Image | None = None) -> tuple[float | None, str]:
    """The patient's midline (LPS x, mm) and where it came from: midline organs first (a CT cut round a lateral
    tumour has its centre off the midline), else the body on the CT."""
    xs = [m.centroid[0] for n, m in measured.items() if n in MIDLINE and m.centroid is not None]
    if xs:
        return float(np.median(xs)), "midline organs"
    x = body_midline(ct)
    return (x, "body centre on the CT") if x is not None else (None, "")


def measure_case(case) -> dict:
    """Measurements of every structure of a case, and its midline, as :func:`fit_reference` takes them."""
    measured = {name: measure(mask) for name, mask in case.structures.items()}
    line, source = midline(measured, case.ct)
    return {"patient": case.patient_id, "midline_x": line, "midline_from": source,
            "structures": {n: m.to_dict() for n, m in measured.items()}}


def _from_dict(record: dict) -> Measurement:
    centroid = record.get("centroid_mm")
    return Measurement(int(record["voxels"]), float(record["volume_cc"]),
                       None if centroid is None else np.asarray(centroid, float), list(record["component_shares"]))


# ---------------------------------------------------------------------------------------------- reference table

def _position_predictions(name: str, measured: dict[str, Measurement], pairs: dict) -> list[tuple[np.ndarray, ...]]:
    """(predicted centroid, sd per axis) of ``name`` from each usable reference organ."""
    out = []
    for other, stats in pairs.get(name, {}).items():
        m = measured.get(other)
        if m is None or m.centroid is None or stats["n"] < MIN_PAIRS:
            continue
        out.append((m.centroid + np.asarray(stats["mean_mm"]), np.asarray(stats["sd_mm"])))
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def predicted_position(name: str, measured: dict[str, Measurement], pairs: dict) -> tuple[np.ndarray, int] | None:
    """Where the other organs put ``name`` (per-axis weighted median, weights 1/sd^2), and how many did."""
    predictions = _position_predictions(name, measured, pairs)
    if not predictions:
        return None
    values = np.array([p for p, _ in predictions])
    weights = 1.0 / np.maximum(np.array([s for _, s in predictions]), 0.5) ** 2
    if len(predictions) > 1:  # no organ outvotes all others (the partner of a parotid would, in y): at most 1/3
        weights = np.minimum(weights, (weights.sum(0) - weights) / 2.0)
    return np.array([_weighted_median(values[:, a], weights[:, a]) for a in range(3)]), len(predictions)


def _pair_stats(patients: list[dict[str, Measurement]], names: list[str]) -> dict:
    pairs: dict = {}
    for s in names:
        for r in names:
            if r == s or is_target(r):  # targets sit where the tumour is: they place no organ
                continue
            offsets = np.array([p[s].centroid - p[r].centroid for p in patients
                                if s in p and r in p and p[s].centroid is not None and p[r].centroid is not None])
            if len(offsets) >= 2:
                pairs.setdefault(s, {})[r] = {"n": len(offsets), "mean_mm": offsets.mean(0).round(3).tolist(),
                                              "sd_mm": offsets.std(0, ddof=1).round(3).tolist()}
    return pairs


def _robust_scale(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) or float(np.std(values)) or 1.0


def _quantile(values: list[float], alpha: float) -> float:
    return float(np.quantile(values, 1.0 - alpha)) if values else 0.0


def fit_reference(records: list[dict], alpha: float = 0.01, name: str = "reference", provenance: dict | None = None
                  ) -> dict:
    """A reference table from :func:`measure_case` records of training patients.

    Every threshold is the (1 - ``alpha``) quantile of the same score computed for each training patient against
    the statistics of the others (leave one out), pooled over organs: each check then flags about ``alpha`` of
    training contours that nobody corrupted."""
    patients = [{n: _from_dict(m) for n, m in r["structures"].items() if m["voxels"]} for r in records]
    names = sorted({n for p in patients for n in p})
    volumes = {n: np.array([p[n].volume_cc for p in patients if n in p]) for n in names}
    structures: dict = {}
    for n in names:
        shares = [p[n].components for p in patients if n in p]
        single = float(np.mean([c == 1 for c in shares]))
        structures[n] = {"cases": len(volumes[n]), "volume_cc": [round(float(volumes[n].min()), 3),
                                                                  round(float(volumes[n].max()), 3)],
                         "volume_median_cc": round(float(np.median(volumes[n])), 3),
                         "single_component_share": round(single, 4), "single_component": single >= SINGLE_SHARE}
    # volume: how far outside the others' range (log), leave one out
    outside = []
    for n in names:
        v = np.log(volumes[n])
        if len(v) < 3:
            continue
        for i in range(len(v)):
            rest = np.delete(v, i)
            outside.append(max(rest.min() - v[i], v[i] - rest.max(), 0.0))
    # partner ratio
    ratio_scores = []
    for n in names:
        partner = LATERAL_PAIRS.get(n)
        if partner not in names or not n.endswith("_L"):
            continue
        ratios = np.array([math.log(p[n].volume_cc / p[partner].volume_cc)
                           for p in patients if n in p and partner in p])
        if len(ratios) < MIN_PAIRS:
            continue
        structures[n]["partner_log_ratio"] = [round(float(np.median(ratios)), 4), round(_robust_scale(ratios), 4)]
        structures[partner]["partner_log_ratio"] = [round(-float(np.median(ratios)), 4),
                                                    round(_robust_scale(ratios), 4)]
        for i in range(len(ratios)):
            rest = np.delete(ratios, i)
            ratio_scores.append(abs(ratios[i] - np.median(rest)) / _robust_scale(rest))
    # position: residuals of each patient against the others' pair statistics
    pairs = _pair_stats(patients, names)
    residuals: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, p in enumerate(patients):
        others = _pair_stats(patients[:i] + patients[i + 1:], names)
        for n, m in p.items():
            found = predicted_position(n, {k: v for k, v in p.items() if k != n}, others)
            if found is not None:
                residuals[n].append(m.centroid - found[0])
    position_scores = []
    for n, values in residuals.items():
        if len(values) < MIN_PAIRS:
            continue
        values = np.array(values)
        scale = np.array([_robust_scale(values[:, a]) for a in range(3)])
        structures[n]["position_scale_mm"] = scale.round(3).tolist()
        position_scores += np.sqrt(((values / scale) ** 2).sum(1)).tolist()
    thresholds = {"volume_log_margin": round(_quantile(outside, alpha), 4),
                  "partner_ratio_z": round(_quantile(ratio_scores, alpha), 4),
                  "position_score": round(_quantile(position_scores, alpha), 4)}
    return {"name": name, "format": 1, "alpha": alpha, "significant_component_share": SIGNIFICANT_SHARE,
            "patients": len(records), "provenance": provenance or {}, "thresholds": thresholds,
            "structures": structures, "pairs": pairs}


def load_reference(path: str | os.PathLike | None = None) -> dict:
    """A reference table (default: the shipped one, from the OpenKBP training patients)."""
    path = Path(path) if path else DEFAULT_REFERENCE
    if not path.is_file():
        raise InputError(f"contour-QA reference table not found: {path}")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not a contour-QA reference table ({str(exc).splitlines()[0]})") from None
    if not isinstance(table, dict) or not {"thresholds", "structures", "pairs"} <= set(table):
        raise FormatError(f"{path}: not a contour-QA reference table (needs thresholds, structures and pairs)")
    return table


# ------------------------------------------------------------------------------------------------------- checking

def _range(low: float, high: float, unit: str = "") -> str:
    return f"{low:.3g}-{high:.3g}{unit}"


def check_measurements(measured: dict[str, Measurement], reference: dict, line: float | None = None,
                       line_from: str = "") -> list[dict]:
    """One row per structure (see :data:`COLUMNS`): 1/0 per check (None where it does not apply)."""
    stats, pairs, limits = reference["structures"], reference["pairs"], reference["thresholds"]
    present = {n: m for n, m in measured.items() if m.voxels}
    rows = []
    for name, m in measured.items():
        row = {"structure": name, **{c: None for c in CHECKS}, "flagged": 0, "reason": ""}
        reasons = []
        row["empty"] = int(m.voxels == 0)
        if row["empty"]:
            row.update(flagged=1, reason="empty: the structure holds no voxel")
            rows.append(row)
            continue
        known = stats.get(name)
        if known:
            low, high = known["volume_cc"]
            margin = math.exp(limits["volume_log_margin"])
            row["volume"] = int(not low / margin <= m.volume_cc <= high * margin)
            if row["volume"]:
                reasons.append(f"volume {m.volume_cc:.3g} cc outside the training range {_range(low, high, ' cc')}")
            row["volume"] = max(row["volume"], _partner_volume(name, present, stats, limits, reasons))
            if known["single_component"]:
                row["components"] = int(m.components > 1)
                if row["components"]:
                    reasons.append(f"{m.components} components (each >= {SIGNIFICANT_SHARE:.0%} of the volume) where "
                                   f"{known['single_component_share']:.0%} of training contours have one")
            scale = known.get("position_scale_mm")
            found = predicted_position(name, {k: v for k, v in present.items() if k != name}, pairs) if scale else None
            if found is not None:
                predicted, count = found
                offset = m.centroid - predicted
                score = float(np.sqrt(((offset / np.asarray(scale)) ** 2).sum()))
                row["position"] = int(score > limits["position_score"])
                if row["position"]:
                    shift = ", ".join(f"{abs(v):.0f} mm {axis[int(v > 0)]}" for v, axis in
                                      zip(offset, (("right", "left"), ("anterior", "posterior"),
                                                   ("inferior", "superior"))) if abs(v) >= 3)
                    reasons.append(f"centroid {np.linalg.norm(offset):.0f} mm from where {count} other organ(s) put it "
                                   f"({shift}; score {score:.1f} > {limits['position_score']:.1f})")
        _laterality(name, m, present, line, line_from, row, reasons)
        row["flagged"] = int(any(row[c] for c in CHECKS))
        row["reason"] = "; ".join(reasons)
        rows.append(row)
    return rows


def _partner_volume(name: str, present: dict, stats: dict, limits: dict, reasons: list[str]) -> int:
    """1 when the volume ratio to the partner organ is outside training and this member is the likelier culprit."""
    partner = LATERAL_PAIRS.get(name)
    if partner not in present or "partner_log_ratio" not in stats.get(name, {}):
        return 0
    centre, scale = stats[name]["partner_log_ratio"]
    ratio = present[name].volume_cc / present[partner].volume_cc
    if abs(math.log(ratio) - centre) / scale <= limits["partner_ratio_z"]:
        return 0

    def strangeness(n):  # how far from its usual volume (log), to tell which member of the pair is off
        return abs(math.log(present[n].volume_cc / stats[n]["volume_median_cc"]))

    if strangeness(name) < strangeness(partner):
        return 0
    span = limits["partner_ratio_z"] * scale
    reasons.append(f"volume {present[name].volume_cc:.3g} cc is {ratio:.2f} x {partner}'s (training "
                   f"{_range(math.exp(centre - span), math.exp(centre + span))})")
    return 1


def _laterality(name: str, m: Measurement, present: dict, line: float | None, line_from: str, row: dict,
                reasons: list[str]) -> None:
    partner = LATERAL_PAIRS.get(name)
    if partner is None:
        return
    side = 1.0 if name.endswith("_L") else -1.0
    words = {1.0: "left", -1.0: "right"}
    if line is not None:
        offset = side * (m.centroid[0] - line)
        row["laterality"] = int(offset < 0)
        if row["laterality"]:
            reasons.append(f"lies on the patient's {words[-side]}, {abs(offset):.0f} mm from the midline ({line_from})")
    elif partner in present:
        row["laterality"] = int(side * (m.centroid[0] - present[partner].centroid[0]) < 0)
        if row["laterality"]:
            reasons.append(f"lies to the patient's {words[-side]} of {partner}")


def check_case(case, reference: dict | None = None) -> list[dict]:
    """Contour QA of a case's own structures (any source): one row per structure."""
    reference = reference or load_reference()
    measured = {name: measure(mask) for name, mask in case.structures.items()}
    line, source = midline({n: m for n, m in measured.items() if m.voxels}, case.ct)
    return check_measurements(measured, reference, line, source)


# -------------------------------------------------------------------------------------------------- uncertainty

def mirror_uncertainty(segmenter, case, folder=None) -> dict[str, tuple[sitk.Image, float | None]]:
    """Per label: the voxel-wise disagreement |p - p_mirror| (0..1, float32, on the case's CT grid) and the Dice
    between the two thresholded contours (None when neither finds the structure)."""
    import copy

    from rtrai.segmentation.data import lateral_order

    image, oriented, grid = segmenter.preprocess(case, folder)
    plain = copy.copy(segmenter)  # the same network, without the mirror averaging: each view on its own
    plain.manifest = {**segmenter.manifest, "inference": {**segmenter.manifest.get("inference", {}), "mirror": False}}
    direct = plain.probabilities(image)
    mirrored = plain.probabilities(np.ascontiguousarray(image[..., ::-1]))[..., ::-1][lateral_order(segmenter.labels)]
    threshold = float(plain.manifest["inference"].get("threshold", 0.5))
    out = {}
    for i, name in enumerate(segmenter.labels):
        a, b = direct[i] >= threshold, mirrored[i] >= threshold
        total = int(a.sum()) + int(b.sum())
        confidence = 2.0 * float((a & b).sum()) / total if total else None
        disagreement = sitk.GetImageFromArray(np.abs(direct[i] - mirrored[i]).astype(np.float32))
        disagreement.CopyInformation(grid if grid is not None else oriented)
        for target in (oriented, case.ct):  # back to the CT's own grid, as the contours are
            if Grid.of(disagreement).differences(Grid.of(target)):
                disagreement = sitk.Resample(disagreement, target, sitk.Transform(), sitk.sitkLinear, 0.0)
        out[name] = (disagreement, confidence)
    return out


# ------------------------------------------------------------------------------------------------------- writing

def write_report(folder: str | os.PathLike, rows: list[dict], extra: dict | None = None) -> list[Path]:
    """``contour_qa.csv`` (the columns of :data:`COLUMNS`, then any extra ones the rows hold, e.g. ``confidence``)
    and ``contour_qa.json`` (the same rows with the thresholds used) into ``folder``."""
    import csv
    import io

    from rtrai.core.outputs import write_text

    folder = Path(folder)
    columns = list(COLUMNS) + [k for k in (rows[0] if rows else {}) if k not in COLUMNS]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    summary = {"structures": len(rows), "flagged": sum(r["flagged"] for r in rows),
               "per_check": {c: sum(bool(r[c]) for r in rows) for c in CHECKS}}
    return [write_text(folder / "contour_qa.csv", text.getvalue()),
            write_text(folder / "contour_qa.json",
                       json.dumps({"summary": summary, **(extra or {}), "rows": rows}, indent=2) + "\n")]


def segmentation_qa(segmenter, case, masks: dict[str, sitk.Image], folder: str | os.PathLike,
                    reference: str | os.PathLike | None = None, input_folder=None) -> list[dict]:
    """``rtrai segment --qa``: the checks on a model's contours (a label it did not find is an ``empty`` row),
    each structure's mirror confidence, and ``uncertainty/<structure>.nrrd`` into ``folder``."""
    from rtrai.core.structures import safe_name
    from rtrai.io.images import write_image

    table = load_reference(reference)
    measured = {name: measure(mask) for name, mask in masks.items()}
    line, source = midline({n: m for n, m in measured.items() if m.voxels}, case.ct)
    rows = check_measurements(measured, table, line, source)
    for row in rows:
        if row["empty"]:
            row["reason"] = "empty: the model did not find it"
    note = ""
    if hasattr(segmenter, "preprocess") and hasattr(segmenter, "probabilities"):
        maps = mirror_uncertainty(segmenter, case, input_folder)
        (Path(folder) / "uncertainty").mkdir(exist_ok=True)
        for row in rows:
            uncertainty, confidence = maps.get(row["structure"], (None, None))
            row["confidence"] = None if confidence is None else round(confidence, 4)
            if uncertainty is not None and measured[row["structure"]].voxels:
                write_image(uncertainty, Path(folder) / "uncertainty" / f"{safe_name(row['structure'])}.nrrd")
    else:  # an engine that gives masks only (nnU-Net's predictor): no probabilities to compare
        note = f"no uncertainty: the {getattr(segmenter, 'kind', 'model')} engine gives no probabilities"
        for row in rows:
            row["confidence"] = None
    write_report(folder, rows, {"reference": {"name": table.get("name"), "thresholds": table["thresholds"]},
                                "confidence": "Dice between the contours of the image and of its lateral mirror "
                                              "(test-time augmentation)", **({"note": note} if note else {})})
    return rows

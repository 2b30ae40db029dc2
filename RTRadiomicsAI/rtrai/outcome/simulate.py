"""A SIMULATED toxicity endpoint on real dose distributions, for testing outcome models against a known truth.

No patient outcome is observed here. Xerostomia is drawn from a published NTCP model:

- ``mean``: the Lyman-Kutcher-Burman model on the parotids' mean dose (n = 1, so the gEUD is the mean dose),
  TD50 = 39.9 Gy, m = 0.40 (Dijkema et al. 2010 / QUANTEC, Deasy et al. 2010, IJROBP 76:S58),
  NTCP = Phi((D - TD50) / (m * TD50)), D the mean dose over both parotids' voxels;
- ``cranial``: a spatial variant in the spirit of van Luijk et al. 2015 (Sci Transl Med 7:305ra147), where the dose to
  the parotid's cranial part (the stem-cell-rich region near the duct) drives the loss of function: the LKB curve
  (same m) on the mean dose of the cranial ``cranial_fraction`` (a quarter) of each parotid (its most superior
  voxels), with TD50 = 21.8 Gy: the whole gland's TD50 scaled by the ratio of the OpenKBP cohort's mean
  cranial-quarter dose (17.9 Gy) to its mean gland dose (32.8 Gy), so that both endpoints have about as many events.
  A quarter, not a half: on these plans whole-organ DVH features explain 95 % of the cranial half's mean dose (an
  endpoint on it tests little that is spatial) and 92 % of the cranial quarter's.

Labels are Bernoulli draws from the NTCP with a seeded generator; the NTCP itself is the oracle: its AUC on a set of
patients is the best any model can reach there.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.stats import norm

from rtrai.core.errors import InputError
from rtrai.outcome.data import OutcomeWarning, _preview

TD50_GY, M = 39.9, 0.40
TD50_CRANIAL_GY = 21.8  # see the module docstring
CRANIAL_FRACTION = 0.25
PAROTIDS = ("Parotid_L", "Parotid_R")
DVH_LEVELS_GY = (10, 20, 30, 40, 50)


def lkb_ntcp(dose_gy, td50: float = TD50_GY, m: float = M) -> np.ndarray:
    """LKB NTCP of a gEUD (here a mean dose) in Gy."""
    return norm.cdf((np.asarray(dose_gy, float) - td50) / (m * td50))


def _superior_axis(mask: sitk.Image) -> tuple[int, float]:
    """The array axis (of z, y, x) that runs most along LPS +z (superior), and its sign."""
    direction = np.array(mask.GetDirection()).reshape(3, 3)  # columns: index axes x, y, z in LPS
    column = int(np.argmax(np.abs(direction[2])))  # index axis (x=0, y=1, z=2) most aligned with +S
    return 2 - column, float(np.sign(direction[2, column]))


def cranial_part(mask: sitk.Image, fraction: float = 0.5) -> np.ndarray:
    """(z, y, x) bool: the most superior ``fraction`` of the mask's voxels (whole slices, at least one)."""
    array = sitk.GetArrayViewFromImage(mask) != 0
    axis, sign = _superior_axis(mask)
    counts = array.sum(axis=tuple(a for a in range(3) if a != axis))
    order = np.nonzero(counts)[0][::-1] if sign > 0 else np.nonzero(counts)[0]
    keep, total = [], 0
    for index in order:  # from the most superior slice down
        keep.append(index)
        total += counts[index]
        if total >= fraction * array.sum():
            break
    selector = np.zeros(array.shape[axis], bool)
    selector[keep] = True
    shape = [1, 1, 1]
    shape[axis] = -1
    return array & selector.reshape(shape)


def dose_metrics(case, cranial_fraction: float = CRANIAL_FRACTION) -> dict:
    """Per case: mean dose of both parotids and of their cranial parts, and whole-organ DVH features of each."""
    if case.dose is None:
        raise InputError(f"{case.patient_id}: the case has no dose")
    present = [n for n in PAROTIDS if n in case.structures]
    row = {"ID": case.patient_id, "parotids": len(present)}
    if not present:
        return row
    dose = sitk.GetArrayViewFromImage(case.dose).astype(np.float64)
    whole, cranial = [], []
    for name in present:
        mask = case.structures[name]
        if sitk.GetArrayViewFromImage(mask).shape != dose.shape:
            raise InputError(f"{case.patient_id}: '{name}' is not on the dose grid")
        d = dose[sitk.GetArrayViewFromImage(mask) != 0]
        whole.append(d)
        cranial.append(dose[cranial_part(mask, cranial_fraction)])
        row.update({f"{name}_Dmean": d.mean(), f"{name}_D2": np.percentile(d, 98), f"{name}_D50": np.median(d),
                    f"{name}_D98": np.percentile(d, 2), f"{name}_volume_cc": d.size * np.prod(mask.GetSpacing()) / 1e3,
                    **{f"{name}_V{g}": float((d >= g).mean()) for g in DVH_LEVELS_GY}})
    row["dmean_parotids"] = float(np.concatenate(whole).mean())
    row["dmean_cranial"] = float(np.concatenate(cranial).mean())
    return row


def simulate(metrics: pd.DataFrame, seed: int = 0, td50: float = TD50_GY, m: float = M,
             td50_cranial: float = TD50_CRANIAL_GY) -> pd.DataFrame:
    """Add ``ntcp_mean``/``xero_mean`` (LKB on the parotids' mean dose) and ``ntcp_cranial``/``xero_cranial`` (on the
    cranial parts' mean dose, with ``td50_cranial``). Cases without parotids are dropped with a warning. One
    generator draws both labels from the same uniform numbers, so the two endpoints differ only through the dose they
    depend on."""
    table = metrics.copy()
    lacking = table["parotids"] == 0
    if lacking.any():
        warnings.warn(f"{int(lacking.sum())} of {len(table)} cases have no parotid and get no simulated endpoint: "
                      f"{_preview(table['ID'][lacking])}", OutcomeWarning, stacklevel=2)
        table = table[~lacking].reset_index(drop=True)
    if table.empty:
        raise InputError("no case has a parotid: nothing to simulate")
    u = np.random.default_rng(seed).random(len(table))
    for variant, column, tolerance in (("mean", "dmean_parotids", td50), ("cranial", "dmean_cranial", td50_cranial)):
        table[f"ntcp_{variant}"] = lkb_ntcp(table[column], tolerance, m)
        table[f"xero_{variant}"] = (u < table[f"ntcp_{variant}"]).astype(int)
    return table

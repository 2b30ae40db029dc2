"""The one definition of a dose-volume histogram: weighted dose samples and the DVH metrics read off them.

A structure is a set of weighted dose samples ``(dose Gy, volume cc)`` (:class:`DoseSamples`): from a voxel mask here
(:func:`samples_from_mask`), from planar contours in :func:`rtrai.dose.dvh.samples_from_contours`. Every DVH number
of the library comes from :func:`metric` on them: ``rtrai dvh``, the workflow's DVH step and the ``dvh_*`` dose
features of radiomics (OpenKBP's own scores keep upstream's definition in :mod:`rtrai.dose.scores`).

Metrics: ``Dmean``, ``Dmax``, ``Dmin``, ``D<x>%`` and ``D<x>cc`` (Gy: the minimum dose received by the hottest x % /
x cc, linear between samples), ``V<x>Gy`` (% of the volume receiving at least x Gy), ``V<x>Gy_cc`` and ``Volume`` (cc).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import InputError
from rtrai.core.image import Grid, resample_to


@dataclass
class DoseSamples:
    """Weighted dose samples of one structure."""

    dose: np.ndarray  # Gy, sorted from hottest to coldest
    volume_cc: np.ndarray  # volume of each sample
    outside_cc: float = 0.0  # volume of the structure outside the dose grid (not in the samples)

    @classmethod
    def of(cls, dose, volume_cc, outside_cc: float = 0.0) -> DoseSamples:
        dose = np.asarray(dose, dtype=np.float64).ravel()
        volume_cc = np.broadcast_to(np.asarray(volume_cc, dtype=np.float64), dose.shape).ravel()
        keep = volume_cc > 0
        dose, volume_cc = dose[keep], volume_cc[keep]
        order = np.argsort(-dose, kind="stable")
        return cls(dose[order], volume_cc[order], float(outside_cc))

    @property
    def total_cc(self) -> float:
        return float(self.volume_cc.sum())

    def cumulative(self, dose_axis: np.ndarray) -> np.ndarray:
        """Volume (cc) receiving at least each dose of ``dose_axis``."""
        cum = np.concatenate([[0.0], np.cumsum(self.volume_cc)])
        ascending = self.dose[::-1]
        # number of samples with dose >= D = n - (number with dose < D)
        below = np.searchsorted(ascending, dose_axis, side="left")
        return cum[len(self.dose) - below]

    def dose_at_volume(self, volume_cc: float) -> float:
        """Minimum dose received by the hottest ``volume_cc`` (linear between sample mid-points)."""
        centres = np.cumsum(self.volume_cc) - self.volume_cc / 2
        return float(np.interp(volume_cc, centres, self.dose))


_METRIC = re.compile(r"^(?:(?P<kind>[DV])(?P<value>\d+(?:\.\d+)?)(?P<unit>%|cc|Gy|Gy_cc|Gy%))$")


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise InputError("no DVH metrics given")
    for name in names:
        check_metric(name)
    return names


def check_metric(name: str) -> None:
    if name in ("Dmean", "Dmax", "Dmin", "Volume"):
        return
    match = _METRIC.match(name)
    valid = match and ((match["kind"] == "D" and match["unit"] in ("%", "cc"))
                       or (match["kind"] == "V" and match["unit"] in ("Gy", "Gy_cc")))
    if not valid:
        raise InputError(f"unknown DVH metric '{name}'; use Dmean, Dmax, Dmin, Volume, D<x>%, D<x>cc, V<x>Gy "
                         "or V<x>Gy_cc (e.g. D95%, D2cc, V20Gy)")
    if match["unit"] == "%" and not 0 <= float(match["value"]) <= 100:
        raise InputError(f"DVH metric '{name}': the percentage must be between 0 and 100")


def metric(samples: DoseSamples, name: str) -> float:
    """One DVH metric (Gy for D..., % or cc for V..., cc for Volume); NaN for an empty structure."""
    check_metric(name)
    total = samples.total_cc
    if total <= 0:
        return float("nan")
    if name == "Dmean":
        return float(np.dot(samples.dose, samples.volume_cc) / total)
    if name == "Dmax":
        return float(samples.dose[0])
    if name == "Dmin":
        return float(samples.dose[-1])
    if name == "Volume":
        return total
    match = _METRIC.match(name)
    value, unit = float(match["value"]), match["unit"]
    if match["kind"] == "D":
        volume = total * value / 100.0 if unit == "%" else value
        return samples.dose_at_volume(volume)
    covered = float(samples.volume_cc[samples.dose >= value].sum())
    return 100.0 * covered / total if unit == "Gy" else covered


def dose_axis(max_dose: float, bin_gy: float) -> np.ndarray:
    return np.arange(0.0, max_dose + bin_gy, bin_gy)


# ------------------------------------------------------------------------------------------------- masks -> samples

def samples_from_mask(dose: sitk.Image, mask: sitk.Image) -> DoseSamples:
    """Samples of a mask (binary or fractional). On another grid than the dose, the dose is interpolated linearly at
    the mask's voxel centres (outside the dose grid it counts as ``outside_cc``)."""
    weights = sitk.GetArrayViewFromImage(mask).astype(np.float64)
    voxel_cc = Grid.of(mask).voxel_volume_cc
    if not Grid.of(dose).differences(Grid.of(mask)):
        values = sitk.GetArrayViewFromImage(dose)
        inside = weights > 0
        return DoseSamples.of(values[inside], weights[inside] * voxel_cc)
    outside = -1.0  # doses are >= 0, so this marks mask voxels beyond the dose grid
    resampled = sitk.GetArrayFromImage(resample_to(sitk.Cast(dose, sitk.sitkFloat32), mask, "linear", outside))
    inside = weights > 0
    values, w = resampled[inside], weights[inside] * voxel_cc
    beyond = values < 0
    return DoseSamples.of(values[~beyond], w[~beyond], float(w[beyond].sum()))

"""A radiotherapy case: CT, structures by TG-263 name, dose in Gy, prescription and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid, check_finite, check_same_grid, mask_array
from rtrai.core.structures import color_of, is_target, safe_name, target_dose_level, to_tg263


@dataclass
class Case:
    """One patient.

    - ``ct``: CT in HU (float32 or int16), or any reference image for non-CT cases.
    - ``structures``: TG-263 name -> binary mask (uint8) on the CT grid. A structure that was not contoured is
      *absent* from the dict, never an empty mask ("missing is not empty").
    - ``dose``: dose in Gy (float32); may live on its own grid (DICOM RTDOSE), resampling is explicit.
    - ``possible_dose_mask``: where dose may be non-zero (OpenKBP), on the CT grid.
    - ``prescription``: target name -> prescribed dose in Gy; ``fractions``: number of fractions.
    - ``colors``: structure name -> RGB in 0..1 (kept from the input, standard colours otherwise).
    - ``metadata``: free-form provenance of the input (patient id, source format, DICOM UIDs, ...).
    """

    ct: sitk.Image | None = None
    structures: dict[str, sitk.Image] = field(default_factory=dict)
    dose: sitk.Image | None = None
    possible_dose_mask: sitk.Image | None = None
    prescription: dict[str, float] = field(default_factory=dict)
    fractions: int | None = None
    colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return str(self.metadata.get("patient_id", "case"))

    @property
    def grid(self) -> Grid:
        reference = self.ct if self.ct is not None else next(iter(self.structures.values()), None)
        if reference is None:
            raise InputError("the case has neither a CT nor structures, so it has no grid")
        return Grid.of(reference)

    def add_structure(self, name: str, mask: sitk.Image | np.ndarray, color=None, keep_name: bool = False) -> str:
        """Add a mask under its TG-263 name (unless ``keep_name``: then the name as given, made safe as a file name by
        :func:`~rtrai.core.structures.safe_name`, as TG-263 names are); returns the name used."""
        if isinstance(mask, np.ndarray):
            from rtrai.core.image import from_array

            if self.ct is None:
                raise GeometryError(f"structure '{name}' given as an array but the case has no CT grid")
            mask = from_array(mask.astype(np.uint8), self.ct)
        mask = sitk.Cast(mask != 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
        if self.ct is not None:
            check_same_grid(self.ct, mask, ("CT", f"structure '{name}'"))
        tg = safe_name(name) if keep_name else to_tg263(name)
        self.structures[tg] = mask
        self.colors[tg] = tuple(color) if color is not None else self.colors.get(tg, color_of(tg))
        return tg

    def color(self, name: str) -> tuple[float, float, float]:
        return self.colors.get(name, color_of(name))

    def targets(self) -> list[str]:
        return [n for n in self.structures if is_target(n)]

    def prescription_for(self, name: str) -> float | None:
        """Prescribed dose of a target: explicit prescription first, else the level in its name (PTV70 -> 70)."""
        return self.prescription.get(name, target_dose_level(name))

    def volume_cc(self, name: str) -> float:
        mask = self.structures[name]
        return float(mask_array(mask).sum()) * Grid.of(mask).voxel_volume_cc

    def validate(self) -> None:
        """Check internal consistency: masks on the CT grid, finite non-negative dose."""
        for name, mask in self.structures.items():
            if self.ct is not None:
                check_same_grid(self.ct, mask, ("CT", f"structure '{name}'"))
        if self.possible_dose_mask is not None and self.ct is not None:
            check_same_grid(self.ct, self.possible_dose_mask, ("CT", "possible-dose mask"))
        if self.dose is not None:
            check_finite(self.dose, "dose")
            if float(sitk.GetArrayViewFromImage(self.dose).min()) < 0:
                raise InputError("dose has negative values")

    def summary(self) -> dict:
        out = {"patient_id": self.patient_id, "structures": sorted(self.structures)}
        if self.ct is not None:
            out["grid"] = Grid.of(self.ct).to_dict()
        if self.dose is not None:
            out["dose_max_gy"] = float(sitk.GetArrayViewFromImage(self.dose).max())
        if self.prescription:
            out["prescription_gy"] = dict(self.prescription)
        return out

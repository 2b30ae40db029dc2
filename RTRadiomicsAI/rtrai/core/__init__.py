"""Core types: geometry-aware images, the Case, TG-263 names, errors, progress, provenance, atomic outputs.

Depends on numpy and SimpleITK only.
"""

from rtrai.core.case import Case
from rtrai.core.errors import (DependencyError, FormatError, GeometryError, InputError, ModelError, RTRAIError,
                               require)
from rtrai.core.image import Grid, check_same_grid, from_array, resample_to, same_grid, to_array
from rtrai.core.structures import color_of, is_target, to_openkbp, to_tg263

__all__ = ["Case", "DependencyError", "FormatError", "GeometryError", "Grid", "InputError", "ModelError",
           "RTRAIError", "check_same_grid", "color_of", "from_array", "is_target", "require", "resample_to",
           "same_grid", "to_array", "to_openkbp", "to_tg263"]

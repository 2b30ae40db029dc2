"""The one place that imports ``slicer``: the application's own inside 3D Slicer, the ``slicer-core`` wheel outside.

A missing MRML raises :class:`MRMLUnavailable`, which is both a :class:`DependencyError` (one clear line, exit 2 from
the command line) and an ``ImportError`` (so that optional callers can guard ``from rtrai.mrml import ...``).
"""

from __future__ import annotations

from rtrai.core.errors import DependencyError


class MRMLUnavailable(DependencyError, ImportError):
    """MRML (3D Slicer's scene library) cannot be imported."""


_HOW = "run inside 3D Slicer or install it with: pip install 'rtradiomicsai[mrml]' (slicer-core)"

try:
    import slicer
    import slicer.util as slicer_util
except ImportError as exc:
    raise MRMLUnavailable(f"MRML is not available ({exc}); {_HOW}") from exc
# shap depends on an unrelated PyPI package also called ``slicer``: check that this one is MRML.
if not hasattr(slicer, "vtkMRMLScene"):
    raise MRMLUnavailable(f"the 'slicer' package at {getattr(slicer, '__file__', '?')} has no MRML; {_HOW}")

__all__ = ["MRMLUnavailable", "slicer", "slicer_util"]

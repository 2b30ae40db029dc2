"""The one place that imports ``slicer``: the application's own inside 3D Slicer, the ``slicer-core`` wheel outside.

A missing MRML raises :class:`MRMLUnavailable`, which is both a :class:`DependencyError` (one clear line, exit 2 from
the command line) and an ``ImportError`` (so that ``try: from rtrai.mrml import ...`` works for optional use).
"""

from __future__ import annotations

from rtrai.core.errors import DependencyError


class MRMLUnavailable(DependencyError, ImportError):
    """MRML (3D Slicer's scene library) cannot be imported."""


try:
    import slicer
    import slicer.util as slicer_util
    # shap depends on an unrelated PyPI package also called ``slicer``: check that MRML itself is there.
    from slicer import vtkMRMLScene  # noqa: F401
except ImportError as exc:
    raise MRMLUnavailable(
        f"MRML is not available ({exc}); run inside 3D Slicer or install it with: pip install 'rtradiomicsai[all]' "
        "(it provides slicer-core)"
    ) from exc

__all__ = ["MRMLUnavailable", "slicer", "slicer_util"]

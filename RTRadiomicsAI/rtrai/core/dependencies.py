"""Optional Python packages: which ones each capability needs, and which are present, without importing them.

One table serves the hub module's dependency panel in Slicer (which installs the missing ones on request), ``rtrai
info`` and the packaging test (which checks that every requirement here matches ``pyproject.toml``). Presence is
read from installed-package metadata and ``importlib.util.find_spec``, so checking never imports torch or friends
(seconds each) and never fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    """One optional package.

    - ``module``: the import name (``sklearn``); ``distribution``: the pip name (``scikit-learn``);
    - ``requirement``: what to install, kept equal to the entry in pyproject's extras;
    - ``purpose``: what it is for, shown next to it in the panel;
    - ``in_slicer``: how to install it inside Slicer: ``"pip"``, or ``"pytorch"`` (through Slicer's PyTorch
      extension, which picks the build matching the GPU driver);
    - ``skip_in_slicer``: dependencies that must not be installed inside Slicer (``shap`` pulls a PyPI package
      called ``slicer`` that would shadow the application's own ``slicer`` package).
    """

    module: str
    distribution: str
    requirement: str
    purpose: str
    in_slicer: str = "pip"
    skip_in_slicer: tuple[str, ...] = ()


PACKAGES: tuple[Package, ...] = (
    Package("torch", "torch", "torch>=2.1,<3", "deep learning (segmentation, dose prediction)", in_slicer="pytorch"),
    Package("monai", "monai", "monai>=1.4,<2", "medical deep-learning networks and transforms"),
    Package("radiomics", "pyradiomics-bhklab", "pyradiomics-bhklab>=3.1", "radiomics features"),
    Package("pydicom", "pydicom", "pydicom>=3.0", "DICOM reading"),
    Package("highdicom", "highdicom", "highdicom>=0.26", "DICOM SEG (rtrai segment --format dicom-seg)"),
    Package("sklearn", "scikit-learn", "scikit-learn>=1.3", "outcome classifiers"),
    Package("lifelines", "lifelines", "lifelines>=0.27", "survival analysis"),
    Package("sksurv", "scikit-survival", "scikit-survival>=0.22", "survival models"),
    Package("shap", "shap", "shap>=0.44", "model explanations", skip_in_slicer=("slicer",)),
    Package("SimpleITK", "SimpleITK", "SimpleITK>=2.3", "image geometry and I/O"),
    Package("nrrd", "pynrrd", "pynrrd>=1.0", "NRRD files"),
    Package("slicerio", "slicerio", "slicerio>=1.4", "Slicer segmentation files"),
)


@dataclass(frozen=True)
class Status:
    package: Package
    version: str | None  # None: not installed

    @property
    def present(self) -> bool:
        return self.version is not None


def version_of(package: Package) -> str | None:
    """Installed version, or None when the package cannot be imported."""
    if importlib.util.find_spec(package.module) is None:
        return None
    try:
        return importlib.metadata.version(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        # Importable but installed without metadata (e.g. bundled by the Slicer application itself).
        return "present"


def status(packages: tuple[Package, ...] = PACKAGES) -> list[Status]:
    return [Status(p, version_of(p)) for p in packages]


def missing(packages: tuple[Package, ...] = PACKAGES) -> list[Package]:
    return [s.package for s in status(packages) if not s.present]


def by_module(module: str) -> Package:
    for package in PACKAGES:
        if package.module == module:
            return package
    raise KeyError(f"no optional package with import name '{module}'")

"""Input and output: NRRD/NIfTI images, DICOM CT series and DICOM-RT, OpenKBP patient folders, Slicer .seg.nrrd
files, and case folders (``CT.nrrd``, ``Structures.seg.nrrd``, ``Dose.nrrd``) that tie them together.

``read_case(path)`` reads any of them into a :class:`rtrai.core.case.Case`; ``write_case`` writes a case folder.
"""

from rtrai.io.case_io import read_case, write_case
from rtrai.io.images import read_image, write_image

__all__ = ["read_case", "read_image", "write_case", "write_image"]

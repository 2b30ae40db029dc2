"""What SlicerRT looks for, so that its modules take our nodes as their own.

From SlicerRT's source (``SlicerRtCommon/vtkSlicerRtCommon.cxx``, ``DicomRtImportExport`` and ``Isodose`` logic):

- ``vtkSlicerRtCommon::IsDoseVolumeNode`` is true for a ``vtkMRMLScalarVolumeNode`` that has the attribute
  ``DicomRtImport.DoseVolume`` (any value; the DICOM-RT importer sets ``"1"``). The Dose Volume Histogram, Isodose and
  Dose Accumulation modules list such volumes as dose.
- The dose unit is not on the volume: DVH and Isodose read ``DicomRtImport.DoseUnitName`` (e.g. ``GY``; ``RELATIVE``
  switches Isodose to percentages) and ``DicomRtImport.DoseUnitValue`` (the DICOM DoseGridScaling, already applied
  to the voxels) from the dose's *study* item in the subject hierarchy
  (``GetAttributeFromItemAncestor(item, name, "Study")``). So the dose must sit under a study item of a subject item.
- The DICOM-RT importer shows dose with ``Dose_ColorTable``: SlicerRT's 7 isodose colours (5..35 Gy, green to
  magenta) stretched over 256 entries with a ``vtkDiscretizableColorTransferFunction``, and a lower display
  threshold. :func:`dose_color_table` builds the same colours with VTK, under our own name, saved with the scene
  (SlicerRT's own table is not saved with scenes and exists only where SlicerRT is installed).
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote, unquote

from rtrai.mrml._slicer import slicer

DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"
DOSE_UNIT_NAME = "GY"  # what the RTDOSE DoseUnits tag says for absolute dose, and what SlicerRT stores
DOSE_UNIT_VALUE = "1.0"  # our voxels are already in Gy: a grid scaling of one

# SlicerRT's default isodose colours (vtkSlicerIsodoseModuleLogic::GetDefaultIsodoseColorTable), 5 Gy to 35 Gy.
ISODOSE_COLORS = (
    (0.0, 1.0, 0.0), (0.5, 1.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.66, 0.0), (1.0, 0.33, 0.0), (1.0, 0.0, 0.0),
    (221 / 255, 18 / 255, 123 / 255),
)
DOSE_COLOR_TABLE_NAME = "RTRAI_Dose_ColorTable"
DOSE_COLOR_COUNT = 256


def singleton_color_table(scene, name: str, colors, category: str | None = "RTRadiomicsAI"):
    """The scene's colour table ``name``, created once from ``colors`` ((label, r, g, b, alpha) per index, in 0..1)
    and found again by its singleton tag."""
    existing = scene.GetSingletonNode(name, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(name)
    table.SetSingletonTag(name)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(colors))
    table.GetLookupTable().SetTableRange(0, len(colors) - 1)
    for index, (label, r, g, b, alpha) in enumerate(colors):
        table.SetColor(index, label, r, g, b, alpha)
    if category:
        table.SetAttribute("Category", category)
    scene.AddNode(table)
    return table


def ramp_colors(transfer, count: int) -> list[tuple]:
    """``count`` opaque colours sampled evenly on 0..1 from a VTK colour transfer function, labelled by index."""
    rgb = [0.0, 0.0, 0.0]
    colors = []
    for index in range(count):
        transfer.GetColor(index / (count - 1), rgb)
        colors.append((f"{index}", *rgb, 1.0))
    return colors


def dose_color_table(scene):
    """The dose colour wash table of the scene (created once, found again by its singleton tag)."""
    import vtk

    existing = scene.GetSingletonNode(DOSE_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    # The same stretching as vtkSlicerRtCommon::StretchDiscreteColorTable: isodose colours evenly spaced on 0..1.
    transfer = vtk.vtkDiscretizableColorTransferFunction()
    for index, (r, g, b) in enumerate(ISODOSE_COLORS):
        transfer.AddRGBPoint(index / (len(ISODOSE_COLORS) - 1), r, g, b)
    transfer.SetNumberOfValues(DOSE_COLOR_COUNT)
    transfer.Build()
    return singleton_color_table(scene, DOSE_COLOR_TABLE_NAME, ramp_colors(transfer, DOSE_COLOR_COUNT))


def show_as_dose(node, max_dose_gy: float) -> None:
    """Mark a scalar volume as a SlicerRT dose volume and display it as a colour wash from 0 to the maximum dose.

    Voxels under 5 % of the maximum are transparent, so the wash does not hide the CT where there is barely any dose.
    """
    node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(dose_color_table(node.GetScene()).GetID())
    top = max(float(max_dose_gy), 1e-3)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.AutoThresholdOff()
    display.SetLowerThreshold(0.05 * top)
    display.SetUpperThreshold(1e30)  # no upper cut
    display.SetApplyThreshold(1)


def is_dose_volume(node) -> bool:
    """The test of ``vtkSlicerRtCommon::IsDoseVolumeNode``."""
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode")
            and node.GetAttribute(DOSE_VOLUME_ATTRIBUTE) is not None)


# Subject-hierarchy attributes are stored as "name^value|" without escaping: keep '%', '|', '^' and control
# characters out of values by percent-encoding them (readable JSON stays readable).
_SH_SAFE = "".join(c for c in string.printable if c not in "%|^" and (c == " " or not c.isspace()))


def encode_item_value(text: str) -> str:
    return quote(text, safe=_SH_SAFE)


def decode_item_value(text: str) -> str:
    return unquote(text)


def safe_node_name(name: str) -> str:
    """A node name that is also a safe file name: MRML names storage files after nodes, escaping too little."""
    return re.sub(r"[^\w .+\-]", "_", name).strip() or "unnamed"


def subject_hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def patient_study(scene, patient: str, study: str = "RT") -> tuple[int, int]:
    """The subject-hierarchy items of a patient and one of their studies, created when missing."""
    sh = subject_hierarchy(scene)
    invalid = sh.GetInvalidItemID()
    patient_item = sh.GetItemChildWithName(sh.GetSceneItemID(), patient)
    patient_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient()
    if patient_item == invalid or sh.GetItemLevel(patient_item) != patient_level:
        patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.GetItemChildWithName(patient_item, study)
    if study_item == invalid:
        study_item = sh.CreateStudyItem(patient_item, study)
    return patient_item, study_item


def place_under(scene, node, parent_item: int) -> int:
    """Put a data node under a subject-hierarchy item; returns the node's item."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if item == sh.GetInvalidItemID():
        item = sh.CreateItem(parent_item, node)
    else:
        sh.SetItemParent(item, parent_item)
    sh.RequestOwnerPluginSearch(item)  # in Slicer, lets SlicerRT's dose plugin claim the item (icon, context menu)
    return item


def set_dose_unit(scene, study_item: int) -> None:
    sh = subject_hierarchy(scene)
    sh.SetItemAttribute(study_item, DOSE_UNIT_NAME_ATTRIBUTE, DOSE_UNIT_NAME)
    sh.SetItemAttribute(study_item, DOSE_UNIT_VALUE_ATTRIBUTE, DOSE_UNIT_VALUE)


def study_attribute(node, name: str) -> str | None:
    """An attribute of the study that holds ``node`` in the subject hierarchy (how SlicerRT reads dose units)."""
    scene = node.GetScene()
    if scene is None:
        return None
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if item == sh.GetInvalidItemID():
        return None
    value = sh.GetAttributeFromItemAncestor(item, name, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    return value or None

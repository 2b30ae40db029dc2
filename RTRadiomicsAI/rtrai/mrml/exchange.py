"""What the Slicer modules hand to an ``rtrai`` background job, and how they load its results back into the scene.

- Inputs: :func:`nodes_to_case` turns a volume and a segmentation into a :class:`~rtrai.core.case.Case` (the module
  writes it with ``rtrai.io.case_io.write_case``: rtrai.mrml depends on rtrai.core only). For dose prediction it also
  says which segments are targets at which prescription (:func:`parse_targets`, :func:`guess_targets`,
  :func:`prescription_text` for ``rtrai dose predict --prescription``).
- Results: :func:`load_segmentation_file` (``Structures.seg.nrrd``), :func:`load_dose_file` (``Dose.nrrd`` as a
  SlicerRT dose volume) and :func:`load_gamma_map` (``gamma.nrrd``). Files are read by MRML's own storage nodes, as
  Slicer's "Add data" reads them, and then detached from the file, so the job's temporary folder may go away and
  "Save" writes the data anew.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rtrai.core.case import Case
from rtrai.core.errors import FormatError, InputError
from rtrai.core.image import mask_array
from rtrai.core.structures import is_target, target_dose_level
from rtrai.mrml import slicerrt
from rtrai.mrml._slicer import slicer, slicer_util
from rtrai.mrml.geometry import node_grid, volume_node_to_image
from rtrai.mrml.segmentation import reference_grid, segmentation_to_masks

MAX_PRESCRIPTION_GY = 150.0  # above this a number is surely cGy (as rtrai.dose refuses such doses)
GAMMA_NOT_EVALUATED = -1.0  # gamma.nrrd has NaN below the dose cut-off; MRML's display and statistics need numbers
GAMMA_NOT_EVALUATED_ATTRIBUTE = "RTRAI.GammaNotEvaluated"
GAMMA_COLOR_TABLE_NAME = "RTRAI_Gamma_ColorTable"
GAMMA_DISPLAY_MAX = 2.0  # gamma 1 (the pass limit) sits in the middle of the colour table


# -- inputs ------------------------------------------------------------------------------------------------------
def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def nodes_to_case(volume_node=None, segmentation_node=None, segments=None, targets=None,
                  patient_id: str | None = None) -> Case:
    """A case for an ``rtrai`` command: the volume as CT and the segments as structures on its grid.

    ``segments``: segment names to include (default: all). Empty segments are left out (missing is not empty).
    Without a volume the masks go on the segmentation's own reference geometry.
    ``targets``: segment name -> prescription in Gy, for dose prediction. Then these segments are the targets:
    one whose name is not a target name gets ``PTV_`` in front (e.g. ``Boost`` -> ``PTV_Boost``), so that the
    command takes it as one, and segments named like targets but not listed are left out, so that it does not.
    The prescriptions are in ``case.prescription`` under the names the case uses (see :func:`prescription_text`).
    """
    if volume_node is None and segmentation_node is None:
        raise InputError("select a volume or a segmentation")
    first = volume_node if volume_node is not None else segmentation_node
    case = Case(metadata={"patient_id": patient_id or first.GetName(), "source": "3D Slicer scene"})
    if volume_node is not None:
        case.ct = volume_node_to_image(volume_node)
    if segmentation_node is None:
        if targets:
            raise InputError("targets need a segmentation")
        return case
    grid = node_grid(volume_node) if volume_node is not None else reference_grid(segmentation_node)
    if grid is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no reference geometry: select a volume")
    masks = segmentation_to_masks(segmentation_node, grid)
    wanted = list(segments) if segments else list(masks)
    targets = None if targets is None else {str(k): float(v) for k, v in targets.items()}
    unknown = [n for n in wanted + list(targets or {}) if n not in masks]
    if unknown:
        raise InputError(f"segment(s) {', '.join(repr(n) for n in unknown)} not in '{segmentation_node.GetName()}' "
                         f"(segments: {', '.join(masks) or 'none'})")
    source_of: dict[str, str] = {}  # case name -> segment name, to catch two segments with one TG-263 name

    def add(segment: str, mask, color, as_name: str) -> str:
        name = case.add_structure(as_name, mask, color)
        if name in source_of:
            raise InputError(f"segments '{source_of[name]}' and '{segment}' would both be '{name}'; rename one")
        source_of[name] = segment
        return name

    for segment, (mask, color) in masks.items():
        if targets is not None and segment in targets:
            level = targets[segment]
            if not 0 < level <= MAX_PRESCRIPTION_GY:
                raise InputError(f"prescription of '{segment}' must be in (0, {MAX_PRESCRIPTION_GY:g}] Gy, "
                                 f"got {level:g}")
            if not mask_array(mask).any():
                raise InputError(f"target segment '{segment}' is empty")
            name = add(segment, mask, color, segment if is_target(segment) else f"PTV_{segment}")
            case.prescription[name] = level
        elif segment in wanted and mask_array(mask).any():
            if targets is not None and is_target(segment):
                continue  # named like a target but not chosen as one
            add(segment, mask, color, segment)
    case.validate()
    return case


def parse_targets(text: str) -> dict[str, float]:
    """``"PTV70=70, Boost=66"`` -> ``{"PTV70": 70.0, "Boost": 66.0}`` (segment names as in the segmentation)."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, equals, value = item.rpartition("=")
        name = name.strip()
        try:
            level = float(value)
        except ValueError:
            level = float("nan")
        if not equals or not name or not np.isfinite(level):
            raise InputError(f"'{item}' is not SEGMENT=GY (e.g. PTV70=70)")
        if name in out:
            raise InputError(f"segment '{name}' is given twice")
        out[name] = level
    return out


def guess_targets(names) -> dict[str, float]:
    """Targets whose name carries their level (``PTV70`` -> 70 Gy, ``CTV_56`` -> 56 Gy), in the order given."""
    return {name: level for name in names if is_target(name) and (level := target_dose_level(name)) is not None}


def prescription_text(prescription: dict[str, float]) -> str:
    """``{"PTV70": 70.0, "PTV56": 56.0}`` -> ``"PTV70=70,PTV56=56"``, the form ``--prescription`` and
    :func:`parse_targets` read."""
    bad = [name for name in prescription if "," in name or "=" in name or not name.strip()]
    if bad:
        raise InputError(f"target name(s) {bad} cannot be written as NAME=GY: rename them without ',' or '='")
    return ",".join(f"{name}={float(level):g}" for name, level in prescription.items())


# -- results -----------------------------------------------------------------------------------------------------
def _read_file(node, storage_class: str, path: str | os.PathLike) -> None:
    """Read ``path`` into ``node`` with a temporary storage node of MRML's own, then detach the node from the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file not found: {path}")
    scene = node.GetScene()
    storage = scene.AddNewNodeByClass(storage_class)
    try:
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise FormatError(f"MRML could not read {path}")
    finally:
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)


def load_segmentation_file(path, scene, name: str, reference_volume=None, node=None):
    """A ``.seg.nrrd`` (``rtrai segment``'s Structures.seg.nrrd) into a segmentation node: a new one named ``name``,
    or ``node``, whose segments are replaced. ``reference_volume`` (the CT) becomes its reference geometry."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", slicerrt.safe_node_name(name))
    else:
        node.GetSegmentation().RemoveAllSegments()
    _read_file(node, "vtkMRMLSegmentationStorageNode", path)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


def _study_item(scene, reference_node, patient: str) -> int:
    """The study holding ``reference_node`` in the subject hierarchy, else a new patient/"RT" study."""
    sh = slicerrt.subject_hierarchy(scene)
    if reference_node is not None:
        item = sh.GetItemByDataNode(reference_node)
        if item != sh.GetInvalidItemID():
            study = sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
            if study != sh.GetInvalidItemID():
                return study
        patient = reference_node.GetName()
    return slicerrt.patient_study(scene, patient)[1]


def load_dose_file(path, scene, name: str, reference_node=None, node=None):
    """A dose file in Gy (``rtrai dose predict``'s Dose.nrrd) as a dose volume SlicerRT takes as its own.

    The node gets ``DicomRtImport.DoseVolume`` and the isodose colour wash (:func:`rtrai.mrml.slicerrt.show_as_dose`);
    it goes under the study of ``reference_node`` (the CT), or a new patient/study named after it, and that study
    gets the Gy dose unit that SlicerRT's DVH and Isodose modules read.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", slicerrt.safe_node_name(name))
    _read_file(node, "vtkMRMLVolumeArchetypeStorageNode", path)
    dose = slicer_util.arrayFromVolume(node)
    if not np.isfinite(dose).all() or dose.min() < 0:
        raise InputError(f"{path} is not a dose: it has negative, NaN or infinite values")
    slicerrt.show_as_dose(node, float(dose.max()))
    study = _study_item(scene, reference_node, name)
    slicerrt.place_under(scene, node, study)
    slicerrt.set_dose_unit(scene, study)
    return node


def gamma_color_table(scene):
    """Green (gamma 0) to yellow (1: the pass limit) to red (2 and above), created once per scene."""
    import vtk

    existing = scene.GetSingletonNode(GAMMA_COLOR_TABLE_NAME, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    transfer = vtk.vtkColorTransferFunction()
    transfer.AddRGBPoint(0.0, 0.0, 0.6, 0.0)
    transfer.AddRGBPoint(0.5, 1.0, 1.0, 0.0)
    transfer.AddRGBPoint(1.0, 1.0, 0.0, 0.0)
    return slicerrt.singleton_color_table(scene, GAMMA_COLOR_TABLE_NAME, slicerrt.ramp_colors(transfer, 256))


def load_gamma_map(path, scene, name: str, node=None):
    """``rtrai gamma``'s gamma.nrrd as a scalar volume shown from 0 to 2 (green: pass, red: fail).

    Voxels the gamma was not evaluated at (NaN: below the dose cut-off) become ``GAMMA_NOT_EVALUATED`` (-1, named in
    the node attribute ``RTRAI.GammaNotEvaluated``) and are left out of the display by its threshold.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", slicerrt.safe_node_name(name))
    _read_file(node, "vtkMRMLVolumeArchetypeStorageNode", path)
    gamma = slicer_util.arrayFromVolume(node)
    gamma[~np.isfinite(gamma)] = GAMMA_NOT_EVALUATED
    slicer_util.arrayFromVolumeModified(node)
    node.SetAttribute(GAMMA_NOT_EVALUATED_ATTRIBUTE, f"{GAMMA_NOT_EVALUATED:g}")
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(gamma_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, GAMMA_DISPLAY_MAX)
    display.AutoThresholdOff()
    display.SetLowerThreshold(0.0)
    display.SetUpperThreshold(1e30)
    display.SetApplyThreshold(1)
    return node

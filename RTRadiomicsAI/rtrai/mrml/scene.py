"""A :class:`~rtrai.core.case.Case` <-> nodes of an MRML scene, laid out as SlicerRT lays out a DICOM-RT import.

Scene layout made by :func:`case_to_scene` (subject hierarchy: patient > study "RT" > data):

- CT: ``vtkMRMLScalarVolumeNode`` "<prefix>CT" (HU, its stored type);
- structures: one ``vtkMRMLSegmentationNode`` "<prefix>Structures", segments named and coloured, binary labelmap
  source representation, the CT as reference geometry;
- dose: ``vtkMRMLScalarVolumeNode`` "<prefix>Dose" (Gy, float32) with SlicerRT's ``DicomRtImport.DoseVolume``
  attribute, ``DoseUnitName``/``DoseUnitValue`` on the study item, and a dose colour wash (see :mod:`.slicerrt`);
- possible-dose mask: ``vtkMRMLLabelMapVolumeNode`` "<prefix>PossibleDoseMask".

Every node carries ``RTRAI.Role`` and ``RTRAI.PatientID`` attributes; prescription, fractions and metadata are JSON
attributes of the study item, so a scene saved and opened again gives the same Case back.
"""

from __future__ import annotations

import json

import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.mrml import slicerrt
from rtrai.mrml._slicer import slicer
from rtrai.mrml.geometry import image_to_volume_node, node_grid, volume_node_to_image
from rtrai.mrml.segmentation import masks_to_segmentation, reference_grid, segmentation_to_masks

ROLE_ATTRIBUTE = "RTRAI.Role"
PATIENT_ATTRIBUTE = "RTRAI.PatientID"
PRESCRIPTION_ATTRIBUTE = "RTRAI.Prescription"
FRACTIONS_ATTRIBUTE = "RTRAI.Fractions"
METADATA_ATTRIBUTE = "RTRAI.Metadata"
MASK_COLOR_TABLE_NAME = "RTRAI_Mask_ColorTable"
ROLES = ("ct", "structures", "dose", "possible_dose_mask")
# Dose units SlicerRT may carry (the DICOM DoseUnits tag) and their factor to Gy.
_TO_GY = {"GY": 1.0, "CGY": 0.01}


def case_to_scene(case: Case, scene=None, name_prefix: str | None = None) -> dict:
    """Put a case into an MRML scene (a new one when ``scene`` is None).

    Returns the nodes by role: ``{"scene", "ct", "structures", "dose", "possible_dose_mask"}`` (roles the case
    lacks are absent) plus ``"patient_item"``/``"study_item"`` (subject-hierarchy item IDs).
    """
    case.validate()
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    prefix = slicerrt.safe_node_name(f"{case.patient_id}_" if name_prefix is None else name_prefix)
    nodes: dict = {"scene": scene}
    if case.ct is not None:
        nodes["ct"] = image_to_volume_node(case.ct, scene, f"{prefix}CT")
    if case.structures:
        nodes["structures"] = masks_to_segmentation(
            case.structures, {name: case.color(name) for name in case.structures}, scene, f"{prefix}Structures",
            reference_node=nodes.get("ct"))
    if case.dose is not None:
        dose = sitk.Cast(case.dose, sitk.sitkFloat32)
        nodes["dose"] = image_to_volume_node(dose, scene, f"{prefix}Dose", color_node=slicerrt.dose_color_table(scene))
        slicerrt.show_as_dose(nodes["dose"], float(sitk.GetArrayViewFromImage(dose).max()))
    if case.possible_dose_mask is not None:
        mask = sitk.Cast(case.possible_dose_mask != 0, sitk.sitkUInt8)
        nodes["possible_dose_mask"] = image_to_volume_node(mask, scene, f"{prefix}PossibleDoseMask",
                                                           node_class="vtkMRMLLabelMapVolumeNode",
                                                           color_node=_mask_color_table(scene))

    patient_item, study_item = slicerrt.patient_study(scene, case.patient_id)
    sh = slicerrt.subject_hierarchy(scene)
    encode = slicerrt.encode_item_value
    sh.SetItemAttribute(patient_item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMPatientIDAttributeName(),
                        encode(case.patient_id))
    sh.SetItemAttribute(study_item, PRESCRIPTION_ATTRIBUTE, encode(json.dumps(case.prescription)))
    sh.SetItemAttribute(study_item, FRACTIONS_ATTRIBUTE, encode(json.dumps(case.fractions)))
    sh.SetItemAttribute(study_item, METADATA_ATTRIBUTE, encode(json.dumps(case.metadata, default=str)))
    if "dose" in nodes:
        slicerrt.set_dose_unit(scene, study_item)
    for role in ROLES:
        if role in nodes:
            nodes[role].SetAttribute(ROLE_ATTRIBUTE, role)
            nodes[role].SetAttribute(PATIENT_ATTRIBUTE, case.patient_id)
            slicerrt.place_under(scene, nodes[role], study_item)
    nodes["patient_item"], nodes["study_item"] = patient_item, study_item
    return nodes


def _mask_color_table(scene):
    """Two labels for the possible-dose mask (Slicer's default label colours live in the application only)."""
    return slicerrt.singleton_color_table(scene, MASK_COLOR_TABLE_NAME, [("background", 0.0, 0.0, 0.0, 0.0),
                                                                        ("possible dose", 0.3, 0.6, 1.0, 1.0)],
                                          category=None)


def scene_to_case(scene=None, *, ct=None, structures=None, dose=None, possible_dose_mask=None,
                  patient_id: str | None = None) -> Case:
    """Read a case back from a scene, or from the nodes given.

    Nodes not given are looked up in ``scene`` (or the scene of a node that was given): by the ``RTRAI.Role``
    attribute :func:`case_to_scene` sets when the scene has such nodes, otherwise as SlicerRT lays out a DICOM-RT
    import: the dose is the volume with ``DicomRtImport.DoseVolume``, the structures the segmentation, the CT the
    segmentation's reference volume or else the only other scalar volume. ``patient_id`` restricts either search to
    that patient's nodes. Ambiguity is an error, never a guess.
    Structure names are mapped to TG-263, colours kept; masks are on the CT grid (or the segmentation's reference
    grid when there is no CT).
    """
    given = {"ct": ct, "structures": structures, "dose": dose, "possible_dose_mask": possible_dose_mask}
    if scene is None:
        scene = next((n.GetScene() for n in given.values() if n is not None), None)
    if scene is None:
        raise InputError("scene_to_case needs a scene or at least one node")
    nodes = _find_nodes(scene, given, patient_id)
    if not nodes:
        raise InputError("the scene holds no CT, segmentation or dose volume to read a case from")

    case = Case()
    if "ct" in nodes:
        case.ct = volume_node_to_image(nodes["ct"])
    if "structures" in nodes:
        if "ct" in nodes:
            grid = node_grid(nodes["ct"])
        else:
            grid = reference_grid(nodes["structures"])
            if grid is None:
                raise InputError(f"segmentation '{nodes['structures'].GetName()}' has no reference geometry and "
                                 "there is no CT to put its masks on")
        for name, (mask, color) in segmentation_to_masks(nodes["structures"], grid).items():
            case.add_structure(name, mask, color=color)
    if "dose" in nodes:
        case.dose = dose_node_in_gy(nodes["dose"])
    if "possible_dose_mask" in nodes:
        case.possible_dose_mask = sitk.Cast(volume_node_to_image(nodes["possible_dose_mask"]) != 0, sitk.sitkUInt8)
    _read_study_attributes(case, nodes)
    if patient_id is not None:
        case.metadata.setdefault("patient_id", patient_id)
    case.validate()
    return case


def _find_nodes(scene, given: dict, patient_id: str | None) -> dict:
    nodes = {role: node for role, node in given.items() if node is not None}
    classes = {"ct": "vtkMRMLScalarVolumeNode", "structures": "vtkMRMLSegmentationNode",
               "dose": "vtkMRMLScalarVolumeNode", "possible_dose_mask": "vtkMRMLLabelMapVolumeNode"}
    tagged: dict[str, list] = {role: [] for role in ROLES}
    for node in _nodes(scene, "vtkMRMLNode"):
        role = node.GetAttribute(ROLE_ATTRIBUTE)
        if role in tagged and (patient_id is None or node.GetAttribute(PATIENT_ATTRIBUTE) == patient_id):
            tagged[role].append(node)
    any_tagged = any(tagged.values())
    for role in ROLES:
        if role in nodes:
            continue
        if tagged[role]:
            nodes[role] = _only(tagged[role], role, patient_id)
        elif not any_tagged:
            candidates = [n for n in _untagged_candidates(scene, role, nodes)
                          if patient_id is None or _patient_name(n) == patient_id]
            if candidates:
                nodes[role] = _only(candidates, role, patient_id)
    for role, node in nodes.items():
        if not node.IsA(classes[role]):
            raise InputError(f"node '{node.GetName()}' given as {role} is a {node.GetClassName()}, "
                             f"not a {classes[role]}")
    return nodes


def _untagged_candidates(scene, role: str, found: dict) -> list:
    """Nodes a SlicerRT or hand-made scene would hold for ``role``."""
    volumes = [n for n in _nodes(scene, "vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]
    if role == "dose":
        return [n for n in volumes if slicerrt.is_dose_volume(n)]
    if role == "structures":
        return _nodes(scene, "vtkMRMLSegmentationNode")
    if role == "ct":
        segmentation = found.get("structures")
        if segmentation is not None:
            reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            if reference is not None and reference.IsA("vtkMRMLScalarVolumeNode"):
                return [reference]
        return [n for n in volumes if not slicerrt.is_dose_volume(n)]
    return []  # a possible-dose mask is ours only: never guessed among labelmaps


def _only(candidates: list, role: str, patient_id: str | None):
    if len(candidates) > 1:
        names = ", ".join(f"'{n.GetName()}'" for n in candidates)
        scope = f" of patient '{patient_id}'" if patient_id else ""
        raise InputError(f"the scene holds {len(candidates)} candidates for the {role}{scope} ({names}); "
                         f"pass the node or a patient_id")
    return candidates[0]


def _nodes(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def dose_node_in_gy(node) -> sitk.Image:
    """The voxels of a dose volume in Gy (SlicerRT's cGy converted through its study's dose unit)."""
    dose = sitk.Cast(volume_node_to_image(node), sitk.sitkFloat32)
    unit = slicerrt.study_attribute(node, slicerrt.DOSE_UNIT_NAME_ATTRIBUTE)
    if unit is None:
        return dose  # a plain volume given as dose: taken as Gy, the library's unit
    factor = _TO_GY.get(unit.strip().upper())
    if factor is None:
        raise InputError(f"dose volume '{node.GetName()}' is in '{unit}', which cannot be converted to Gy")
    return dose if factor == 1.0 else sitk.Cast(dose * factor, sitk.sitkFloat32)


def _read_study_attributes(case: Case, nodes: dict) -> None:
    """Prescription, fractions and metadata written by :func:`case_to_scene`, and the patient's name."""
    node = next(iter(nodes.values()))
    case.prescription = {str(k): float(v) for k, v in _json(node, PRESCRIPTION_ATTRIBUTE, {}).items()}
    fractions = _json(node, FRACTIONS_ATTRIBUTE, None)
    case.fractions = int(fractions) if fractions is not None else None
    case.metadata = dict(_json(node, METADATA_ATTRIBUTE, {}))
    patient = node.GetAttribute(PATIENT_ATTRIBUTE) or _patient_name(node)
    if patient and "patient_id" not in case.metadata:
        case.metadata["patient_id"] = patient


def _json(node, attribute: str, default):
    text = slicerrt.study_attribute(node, attribute)
    if text is None:
        return default
    try:
        return json.loads(slicerrt.decode_item_value(text))
    except json.JSONDecodeError as exc:
        raise InputError(f"study attribute {attribute} of '{node.GetName()}' is not valid JSON ({exc})") from exc


def _patient_name(node) -> str | None:
    sh = slicerrt.subject_hierarchy(node.GetScene())
    item = sh.GetItemByDataNode(node)
    if item == sh.GetInvalidItemID():
        return None
    patient = sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient())
    return sh.GetItemName(patient) if patient != sh.GetInvalidItemID() else None


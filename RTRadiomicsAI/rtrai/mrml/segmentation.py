"""Masks <-> one ``vtkMRMLSegmentationNode`` (binary labelmap source representation).

Each structure becomes a segment whose ID and name are its (TG-263) name and whose colour is its colour. Masks are
added as separate labelmaps and then collapsed into as few shared layers as overlaps allow, as Slicer's Segment Editor
keeps them; overlapping structures stay on separate layers, so nothing is lost. Reading back extracts each segment
from its layer by its label value and resamples (nearest neighbour) onto the reference grid, which is an exact copy
when the segmentation was made on that grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid, mask_array
from rtrai.mrml._slicer import slicer
from rtrai.mrml.geometry import _vtk_matrix, ijk_to_ras, oriented_image, oriented_image_array

LABELMAP = "Binary labelmap"


def masks_to_segmentation(masks: dict[str, sitk.Image], colors: dict[str, tuple[float, float, float]], scene,
                          name: str, reference_node=None):
    """Add a segmentation node with one segment per mask; ``reference_node`` (the CT) gives its reference geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetSourceRepresentationToBinaryLabelmap()
    segmentation = node.GetSegmentation()
    if reference_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    elif masks:
        # No CT: the first mask's grid is the reference geometry (what a labelmap import would give).
        geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
            _vtk_matrix(ijk_to_ras(Grid.of(next(iter(masks.values()))))),
            _extent(Grid.of(next(iter(masks.values())))))
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry)
    for structure, mask in masks.items():
        segment = slicer.vtkSegment()
        segment.SetName(structure)
        segment.SetColor(*[float(c) for c in colors[structure]])
        segment.AddRepresentation(LABELMAP, oriented_image(mask_array(mask).astype(np.uint8), Grid.of(mask)))
        if not segmentation.AddSegment(segment, structure):
            raise InputError(f"could not add segment '{structure}' to the segmentation")
    segmentation.CollapseBinaryLabelmaps(False)
    return node


def _extent(grid: Grid) -> list[int]:
    return [0, grid.size[0] - 1, 0, grid.size[1] - 1, 0, grid.size[2] - 1]


def reference_grid(node) -> Grid | None:
    """The reference image geometry stored in a segmentation (LPS), if it has one."""
    from rtrai.mrml.geometry import _numpy_matrix

    text = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False)
    matrix = _vtk_matrix(np.eye(4))
    image.GetImageToWorldMatrix(matrix)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _numpy_matrix(matrix)
    extent = image.GetExtent()
    # A cropped extent starts away from index 0: move the origin there so the grid starts at the first voxel.
    start = ijk_to_lps @ np.array([extent[0], extent[2], extent[4], 1.0])
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    return Grid(size=(extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1),
                spacing=tuple(float(s) for s in spacing), origin=tuple(float(o) + 0.0 for o in start[:3]),
                direction=tuple(float(d) + 0.0 for d in direction.ravel()))


def segmentation_to_masks(node, grid: Grid) -> dict[str, tuple[sitk.Image, tuple[float, float, float]]]:
    """Every segment as a uint8 mask on ``grid``, with its colour, keyed by segment name (in segment order)."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if node.GetParentTransformNode() is not None:
        raise GeometryError(f"segmentation '{node.GetName()}' is under the transform "
                            f"'{node.GetParentTransformNode().GetName()}'; harden the transform in Slicer first")
    segmentation = node.GetSegmentation()
    if segmentation.GetNumberOfSegments() and not segmentation.ContainsRepresentation(LABELMAP):
        # e.g. planar contours from SlicerRT's DICOM-RT import: needs SlicerRT's converters, present in Slicer only
        if not node.CreateBinaryLabelmapRepresentation():
            raise InputError(f"segmentation '{node.GetName()}' has no binary labelmap and cannot be converted to one "
                             f"here (source representation: {segmentation.GetSourceRepresentationName()})")
    reference = oriented_image(np.zeros(tuple(reversed(grid.size)), np.uint8), grid)
    out: dict[str, tuple[sitk.Image, tuple[float, float, float]]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        layer = slicer.vtkOrientedImageData()
        if not logic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, layer, False):
            raise InputError(f"segment '{segment.GetName()}' has no binary labelmap")
        if layer.IsEmpty():
            array = np.zeros(tuple(reversed(grid.size)), np.uint8)
        else:
            resampled = slicer.vtkOrientedImageData()
            if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                    layer, reference, resampled, False, True):
                raise GeometryError(f"segment '{segment.GetName()}' could not be resampled onto the reference grid")
            # A shared layer holds several segments: this one is the voxels carrying its label value.
            array = (oriented_image_array(resampled) == segment.GetLabelValue()).astype(np.uint8)
            if array.shape != tuple(reversed(grid.size)):
                raise GeometryError(f"segment '{segment.GetName()}' resampled to shape {array.shape}, "
                                    f"not the reference grid's {tuple(reversed(grid.size))}")
        if segment.GetName() in out:
            raise InputError(f"segmentation '{node.GetName()}' has two segments named '{segment.GetName()}'")
        mask = sitk.GetImageFromArray(array)
        mask.SetSpacing(grid.spacing)
        mask.SetOrigin(grid.origin)
        mask.SetDirection(grid.direction)
        out[segment.GetName()] = (mask, tuple(float(c) for c in segment.GetColor()))
    return out

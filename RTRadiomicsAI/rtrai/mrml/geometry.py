"""Images <-> MRML volume nodes, with the LPS (rtrai, ITK, DICOM) to RAS (MRML) conversion.

This module is the only place in rtrai where RAS appears. A SimpleITK image maps voxel index (i, j, k) to LPS by
``origin + direction @ diag(spacing) @ (i, j, k)``; an MRML volume node maps it to RAS by its IJKToRAS matrix. The two
frames differ by a sign flip of the first two axes, ``RAS = diag(-1, -1, 1) @ LPS``, so

    IJKToRAS = diag(-1, -1, 1, 1) @ IJKToLPS.

Spacing, origin and directions are set on the node separately (never through a 4x4 matrix that MRML would have to
factor again), so the geometry round-trips bit for bit.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import GeometryError, InputError
from rtrai.core.image import Grid
from rtrai.mrml._slicer import slicer, slicer_util

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(array.shape[0]):
        for col in range(array.shape[1]):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(grid: Grid) -> np.ndarray:
    """The 4x4 IJKToRAS matrix of a grid (i, j, k in x, y, z order, as MRML and VTK count them)."""
    flip = np.eye(4)
    flip[:3, :3] = LPS_TO_RAS
    return flip @ grid.index_to_physical_matrix()


def set_node_geometry(node, grid: Grid) -> None:
    """Give a volume node the spacing, origin and directions of an LPS grid."""
    directions = np.eye(4)
    directions[:3, :3] = LPS_TO_RAS @ np.array(grid.direction, dtype=float).reshape(3, 3)
    node.SetSpacing(*[float(s) for s in grid.spacing])
    node.SetOrigin(*[float(o) for o in LPS_TO_RAS @ np.array(grid.origin, dtype=float)])
    node.SetIJKToRASDirectionMatrix(vtk_matrix(directions))


def node_grid(node) -> Grid:
    """The LPS grid of a volume node (refusing nodes under a transform: their RAS is not what the numbers say)."""
    if node.GetImageData() is None:
        raise InputError(f"volume node '{node.GetName()}' has no voxels")
    if node.GetParentTransformNode() is not None:
        raise GeometryError(f"volume node '{node.GetName()}' is under the transform "
                            f"'{node.GetParentTransformNode().GetName()}'; harden the transform in Slicer first")
    directions = vtk_matrix(np.eye(4))
    node.GetIJKToRASDirectionMatrix(directions)
    lps_directions = LPS_TO_RAS @ numpy_matrix(directions)[:3, :3]
    origin = LPS_TO_RAS @ np.array(node.GetOrigin(), dtype=float)
    return Grid(size=tuple(int(d) for d in node.GetImageData().GetDimensions()),
                spacing=tuple(float(s) for s in node.GetSpacing()),
                origin=tuple(float(o) + 0.0 for o in origin),  # + 0.0 turns -0.0 into 0.0
                direction=tuple(float(d) + 0.0 for d in lps_directions.ravel()))


def image_to_volume_node(image: sitk.Image, scene, name: str, node_class: str = "vtkMRMLScalarVolumeNode",
                         color_node=None):
    """Add a scalar (or labelmap, with ``node_class='vtkMRMLLabelMapVolumeNode'``) volume node holding ``image``.

    ``color_node``: a colour table for its display (Slicer's default grey or label colours otherwise).
    """
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise InputError(f"'{name}' must be a 3D scalar image to become a volume node")
    node = scene.AddNewNodeByClass(node_class, name)
    slicer_util.updateVolumeFromArray(node, sitk.GetArrayViewFromImage(image))
    set_node_geometry(node, Grid.of(image))
    if color_node is None:
        node.CreateDefaultDisplayNodes()
    else:
        display_class = ("vtkMRMLLabelMapVolumeDisplayNode" if node.IsA("vtkMRMLLabelMapVolumeNode")
                         else "vtkMRMLScalarVolumeDisplayNode")
        display = scene.AddNewNodeByClass(display_class)
        display.SetAndObserveColorNodeID(color_node.GetID())
        node.SetAndObserveDisplayNodeID(display.GetID())
    return node


def volume_node_to_image(node) -> sitk.Image:
    """A SimpleITK image (LPS) holding a copy of a volume node's voxels, in their stored type."""
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"node '{node.GetName()}' is a {node.GetClassName()}, not a scalar volume")
    grid = node_grid(node)
    image = sitk.GetImageFromArray(np.array(slicer_util.arrayFromVolume(node), copy=True))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def oriented_image(array: np.ndarray, grid: Grid):
    """A ``vtkOrientedImageData`` (Segmentations' image type: voxels + IJKToRAS) for a (z, y, x) array on ``grid``."""
    from vtk.util import numpy_support

    if tuple(reversed(array.shape)) != tuple(grid.size):
        raise GeometryError(f"array of shape {array.shape} does not fit a grid of size {grid.size} (x, y, z)")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*[int(s) for s in grid.size])
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(array).ravel()
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras(grid)))
    return image


def oriented_image_array(image) -> np.ndarray:
    """A (z, y, x) copy of the voxels of a ``vtkOrientedImageData`` (or any ``vtkImageData``)."""
    from vtk.util import numpy_support

    shape = tuple(reversed(image.GetDimensions()))
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()

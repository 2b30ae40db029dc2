"""Slicer segmentation files (``.seg.nrrd``) through ``slicerio``, the Slicer project's own reader/writer.

Segments keep their names and colours; overlapping structures (a PTV over a parotid) go to separate layers, a 4D
file exactly as Slicer writes it, so Slicer opens our files as its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.image import Grid, check_same_grid, from_array
from rtrai.core.outputs import atomic_file
from rtrai.core.structures import color_of


def write_segmentation(structures: dict[str, sitk.Image], path: str | os.PathLike,
                       colors: dict[str, tuple] | None = None, reference: sitk.Image | None = None,
                       compression_level: int = 1) -> Path:
    """Write named masks (all on one grid) as a Slicer ``.seg.nrrd``; names are written as given.

    Layers are assigned as Slicer (and ``slicerio.add_segment``) assign them, touching only each mask's voxels.
    """
    import slicerio

    if not structures and reference is None:
        raise InputError("no structures to write and no reference grid for an empty segmentation")
    reference = reference if reference is not None else next(iter(structures.values()))
    grid = Grid.of(reference)
    layers: list[np.ndarray] = []  # flat (i, j, k) label arrays; a structure goes to the first layer it fits in
    segments = []
    for name, mask in structures.items():
        check_same_grid(reference, mask, ("segmentation reference", f"structure '{name}'"))
        xyz = sitk.GetArrayViewFromImage(mask).transpose(2, 1, 0) != 0  # slicerio works in (i, j, k) order
        flat = np.flatnonzero(xyz.ravel(order="F"))  # only the structure's voxels are touched: fast for many masks
        layer = next((i for i, lab in enumerate(layers) if lab.max() < 255 and not lab[flat].any()), None)
        if layer is None:
            layers.append(np.zeros(int(np.prod(grid.size)), np.uint8))
            layer = len(layers) - 1
        label = int(layers[layer].max()) + 1
        layers[layer][flat] = label
        color = (colors or {}).get(name) or color_of(name)
        extent = [int(v) for axis in np.nonzero(xyz) for v in (axis.min(), axis.max())] if flat.size else \
            [0, -1, 0, -1, 0, -1]
        segments.append({"id": name, "name": name, "color": [float(c) for c in color], "labelValue": label,
                         "layer": layer, "extent": extent})
    if not layers:
        layers.append(np.zeros(int(np.prod(grid.size)), np.uint8))
    voxels = np.stack([lab.reshape(grid.size, order="F") for lab in layers])
    segmentation = {"voxels": voxels if len(layers) > 1 else voxels[0],
                    "ijkToLPS": grid.index_to_physical_matrix(), "segments": segments}
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    segmentation["masterRepresentation"] = "Binary labelmap"
    path = Path(path)
    with atomic_file(path, suffix=".seg.nrrd") as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level)
    return path


def read_segmentation(path: str | os.PathLike) -> tuple[dict[str, sitk.Image], dict[str, tuple]]:
    """Read a ``.seg.nrrd`` (or a labelmap NRRD/NIfTI written by Slicer) into name -> mask and name -> colour."""
    import nrrd
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation file not found: {path}")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (nrrd.NRRDError, ValueError, OSError, EOFError, KeyError) as exc:
        raise FormatError(f"cannot read segmentation {path}: {exc}") from None
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        raise FormatError(f"{path}: a segmentation must be a 3D labelmap or a 4D stack of layers")
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise GeometryError(f"{path}: degenerate voxel spacing {spacing.tolist()}")
    direction = (ijk_to_lps[:3, :3] / spacing).ravel()
    masks, colors = {}, {}
    for segment in segmentation.get("segments", []):
        name = segment.get("name") or segment.get("id")
        xyz = slicerio.segment_mask(segmentation, segment)
        masks[name] = from_array(np.ascontiguousarray(xyz.transpose(2, 1, 0)).astype(np.uint8),
                                 spacing=spacing, origin=ijk_to_lps[:3, 3], direction=direction)
        if "color" in segment:
            colors[name] = tuple(float(c) for c in segment["color"])
    if not masks:
        # A plain labelmap without segment metadata: one structure per label value.
        if voxels.ndim != 3:
            raise FormatError(f"{path}: 4D segmentation without segment metadata")
        for value in np.unique(voxels[voxels != 0]):
            masks[f"Label_{int(value)}"] = from_array(
                np.ascontiguousarray((voxels == value).transpose(2, 1, 0)).astype(np.uint8),
                spacing=spacing, origin=ijk_to_lps[:3, 3], direction=direction)
    return masks, colors

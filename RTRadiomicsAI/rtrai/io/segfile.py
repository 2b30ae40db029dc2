"""Slicer segmentation files (``.seg.nrrd``) through ``slicerio``, the Slicer project's own reader/writer.

Segments keep their names and colours; overlapping structures (a PTV over a parotid) go to separate layers, a 4D
file exactly as Slicer writes it, so Slicer opens our files as its own.
"""

from __future__ import annotations

import os
import zlib
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

    Layers are assigned as Slicer (and ``slicerio.add_segment``) assign them, touching only each mask's voxels; each
    segment gets a label value of its own on its layer. An empty mask is not written (missing is not empty: every
    reader would take a segment without voxels for a contoured structure); callers that report what was not found do
    so elsewhere (provenance).
    """
    import slicerio

    if not structures and reference is None:
        raise InputError("no structures to write and no reference grid for an empty segmentation")
    reference = reference if reference is not None else next(iter(structures.values()))
    grid = Grid.of(reference)
    layers: list[np.ndarray] = []  # flat (i, j, k) label arrays; a structure goes to the first layer it fits in
    used: list[int] = []  # the highest label value given out on each layer
    segments = []
    for name, mask in structures.items():
        check_same_grid(reference, mask, ("segmentation reference", f"structure '{name}'"))
        xyz = sitk.GetArrayViewFromImage(mask).transpose(2, 1, 0) != 0  # slicerio works in (i, j, k) order
        flat = np.flatnonzero(xyz.ravel(order="F"))  # only the structure's voxels are touched: fast for many masks
        if not flat.size:
            continue
        layer = next((i for i, lab in enumerate(layers) if used[i] < 255 and not lab[flat].any()), None)
        if layer is None:
            layers.append(np.zeros(int(np.prod(grid.size)), np.uint8))
            used.append(0)
            layer = len(layers) - 1
        used[layer] += 1
        label = used[layer]
        layers[layer][flat] = label
        color = (colors or {}).get(name) or color_of(name)
        extent = [int(v) for axis in np.nonzero(xyz) for v in (axis.min(), axis.max())]
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


# What pynrrd and slicerio raise on a damaged file (zlib.error: a corrupt gzip stream; IndexError/TypeError: header
# fields of the wrong shape; UnicodeDecodeError: a header that is not text).
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, AttributeError, zlib.error,
                UnicodeDecodeError, OverflowError, StopIteration)
# Bytes per voxel of the NRRD type names (pynrrd's spellings).
_TYPE_BYTES = {1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                   "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                   "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                   "double")}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_header(path: Path) -> None:
    """The NRRD header parses and does not declare more voxels than the file can hold (before pynrrd allocates)."""
    import nrrd

    from rtrai.io.images import check_declared_size

    if path.stat().st_size == 0:
        raise FormatError(f"{path}: the segmentation file is empty")
    try:
        header = nrrd.read_header(str(path))
    except StopIteration:
        raise FormatError(f"cannot read segmentation {path}: the NRRD header ends early (truncated file)") from None
    except (nrrd.NRRDError, *_READ_ERRORS) as exc:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            return  # a NIfTI labelmap: slicerio reads it through nibabel
        raise FormatError(f"cannot read segmentation {path}: {_first_line(exc)}") from None
    sizes = np.asarray(header.get("sizes", []))
    if sizes.ndim != 1 or sizes.size == 0 or not np.issubdtype(sizes.dtype, np.integer) or np.any(sizes <= 0):
        raise FormatError(f"{path}: NRRD sizes {sizes.tolist()} are not positive integers")
    per_voxel = next((n for n, names in _TYPE_BYTES.items() if str(header.get("type", "")).lower() in names), 1)
    encoding = "detached" if ("data file" in header or "datafile" in header) else \
        str(header.get("encoding", "raw")).lower()
    check_declared_size(path, int(np.prod(sizes.astype(object))) * per_voxel,
                        "gzip" if encoding in ("gz", "gzip") else encoding)


def read_segmentation(path: str | os.PathLike) -> tuple[dict[str, sitk.Image], dict[str, tuple]]:
    """Read a ``.seg.nrrd`` (or a labelmap NRRD/NIfTI written by Slicer) into name -> mask and name -> colour."""
    import nrrd
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation file not found: {path}")
    _check_header(path)
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (nrrd.NRRDError, ImportError, *_READ_ERRORS) as exc:
        raise FormatError(f"cannot read segmentation {path}: {_first_line(exc)}") from None
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4) or min(voxels.shape) == 0:
        raise FormatError(f"{path}: a segmentation must be a 3D labelmap or a 4D stack of layers")
    if not (np.issubdtype(voxels.dtype, np.integer) or np.issubdtype(voxels.dtype, np.floating)):
        raise FormatError(f"{path}: voxels of type {voxels.dtype} are not labels")
    ijk_to_lps = np.asarray(segmentation.get("ijkToLPS"), dtype=float)
    if ijk_to_lps.shape != (4, 4) or not np.all(np.isfinite(ijk_to_lps)):
        raise FormatError(f"{path}: space directions and space origin do not give a finite voxel-to-LPS matrix")
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise GeometryError(f"{path}: degenerate voxel spacing {spacing.tolist()}")
    direction = (ijk_to_lps[:3, :3] / spacing).ravel()
    from rtrai.io.images import check_geometry

    check_geometry(path, spacing, ijk_to_lps[:3, 3], direction)
    segments = segmentation.get("segments", [])
    masks, colors = {}, {}
    for number, segment in enumerate(segments):
        name = _segment_name(path, segment, number)
        label, layer = _segment_label(path, segment, name, voxels)
        spatial = voxels[layer] if voxels.ndim == 4 else voxels
        xyz = spatial == label
        masks[name] = from_array(np.ascontiguousarray(xyz.transpose(2, 1, 0)).astype(np.uint8),
                                 spacing=spacing, origin=ijk_to_lps[:3, 3], direction=direction)
        if "color" in segment:
            colors[name] = _segment_color(path, segment["color"], name)
    if not masks:
        # A plain labelmap without segment metadata: one structure per label value.
        if voxels.ndim != 3:
            raise FormatError(f"{path}: 4D segmentation without segment metadata")
        values = np.unique(voxels[voxels != 0])
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise FormatError(f"{path}: a labelmap needs integer label values")
        for value in values:
            masks[f"Label_{int(value)}"] = from_array(
                np.ascontiguousarray((voxels == value).transpose(2, 1, 0)).astype(np.uint8),
                spacing=spacing, origin=ijk_to_lps[:3, 3], direction=direction)
    return masks, colors


def _segment_name(path: Path, segment: dict, number: int) -> str:
    name = segment.get("name") or segment.get("id")
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"{path}: segment {number} has no name or ID")
    return name


def _segment_label(path: Path, segment: dict, name: str, voxels: np.ndarray) -> tuple[int, int]:
    """The segment's label value and layer, checked against the voxel array."""
    label, layer = segment.get("labelValue", 1), segment.get("layer", 0)
    for field, value in (("LabelValue", label), ("Layer", layer)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise FormatError(f"{path}: segment '{name}' has {field} {value!r}, not an integer")
    layers = voxels.shape[0] if voxels.ndim == 4 else 1
    if not 0 <= layer < layers:
        raise FormatError(f"{path}: segment '{name}' is on layer {layer}, but the file has {layers} layer(s)")
    return int(label), int(layer)


def _segment_color(path: Path, color, name: str) -> tuple[float, float, float]:
    try:
        rgb = tuple(float(c) for c in color)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: segment '{name}' has colour {color!r}, not three numbers") from None
    if len(rgb) != 3 or not all(np.isfinite(rgb)):
        raise FormatError(f"{path}: segment '{name}' has colour {color!r}, not three finite numbers")
    return rgb

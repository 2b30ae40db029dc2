"""NRRD, NIfTI and MetaImage volumes through SimpleITK, with clear errors and atomic writes.

Reading checks the header before any voxel is read: a header may not declare more data than its file can hold
(:func:`check_declared_size`: a 6 kB NRRD claiming 2000^3 voxels once made ITK allocate and zero 16 GB), and the
geometry must be usable (finite positive spacing, finite origin, an invertible direction).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import FormatError, InputError
from rtrai.core.outputs import atomic_file

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
# deflate (gzip, zlib: NRRD gzip, .nii.gz, compressed MetaImage) expands at most 1032:1; with margin.
MAX_COMPRESSION_RATIO = 1100
# Encodings whose data may be larger than this ratio allows (bzip2 expands runs without bound) or lie elsewhere.
_UNBOUNDED = ("bzip2", "bz2", "detached")


def is_image_file(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def nrrd_encoding(path: Path) -> str:
    """The ``encoding`` of an NRRD header ('raw', 'gzip', ...), 'detached' when its data is in another file."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    encoding = "raw"
    for line in head.split(b"\n\n", 1)[0].splitlines():
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"encoding":
            encoding = value.strip().decode("ascii", "replace").lower()
        elif key in (b"data file", b"datafile"):
            return "detached"
    return encoding


def _compression(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nhdr", ".mhd")):
        return "detached"
    if name.endswith(".nrrd"):
        return nrrd_encoding(path)
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".mha"):
        with open(path, "rb") as handle:
            head = handle.read(8192).lower()
        if b"elementdatafile" in head and b"elementdatafile = local" not in head:
            return "detached"
        return "gzip" if b"compresseddata = true" in head else "raw"
    return "raw"


def check_declared_size(path: Path, n_bytes: int, encoding: str) -> None:
    """FormatError when a header declares more voxel data than its file can hold or this machine can take.

    ``encoding``: 'raw'/'ascii'/'hex', 'gzip' (at most :data:`MAX_COMPRESSION_RATIO` times the file), or one of
    'bzip2'/'detached' (only the memory bound applies)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 2 ** 40
    if n_bytes > memory:
        raise FormatError(f"{path}: the header declares {n_bytes / 2 ** 30:.3g} GiB of voxel data, more than this "
                          f"machine's memory ({memory / 2 ** 30:.3g} GiB); the header is damaged or the image too big")
    if encoding in _UNBOUNDED:
        return
    file_size = path.stat().st_size
    ratio = 1 if encoding in ("raw", "ascii", "text", "txt", "hex") else MAX_COMPRESSION_RATIO
    if n_bytes > ratio * file_size + 4096:
        raise FormatError(f"{path}: the header declares {n_bytes} bytes of voxel data but the file holds only "
                          f"{file_size} bytes ({encoding}): truncated file or damaged header")


def _bytes_per_voxel(reader: sitk.ImageFileReader) -> int:
    components = max(1, int(reader.GetNumberOfComponents()))
    try:
        probe = sitk.Image([1, 1, 1], reader.GetPixelID(), components)
        return int(probe.GetSizeOfPixelComponent()) * components
    except RuntimeError:
        return components


def check_geometry(path, spacing, origin, direction) -> None:
    """FormatError for geometry no image can have: non-finite or non-positive spacing, non-finite origin, a
    direction matrix that is not invertible."""
    spacing, origin = np.asarray(spacing, dtype=float), np.asarray(origin, dtype=float)
    direction = np.asarray(direction, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise FormatError(f"{path}: voxel spacing {spacing.tolist()} is not finite and positive")
    if not np.all(np.isfinite(origin)):
        raise FormatError(f"{path}: origin {origin.tolist()} is not finite")
    n = int(round(np.sqrt(direction.size)))
    if n * n != direction.size or not np.all(np.isfinite(direction)) or \
            abs(np.linalg.det(direction.reshape(n, n))) < 1e-6:
        raise FormatError(f"{path}: direction {direction.tolist()} is not an invertible matrix")


def nifti_nonfinite_voxels(path: str | os.PathLike) -> int:
    """How many voxels of a floating-point NIfTI file (.nii, .nii.gz) are NaN or infinite, read from the file
    itself: ITK's NIfTI reader (SimpleITK's and mirp's) turns NaN into 0, so the image it returns cannot say.
    0 for other files and integer data; FormatError when the NIfTI header is damaged."""
    import gzip
    import struct
    import zlib

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            for order in "<>":
                size = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
                if size in (348, 540):
                    break
            else:
                raise FormatError(f"{path}: not a NIfTI-1 or NIfTI-2 header")
            if size == 348:
                datatype = struct.unpack(order + "h", header[70:72])[0]
                dims = struct.unpack(order + "8h", header[40:56])
                offset = int(struct.unpack(order + "f", header[108:112])[0])
            else:
                datatype = struct.unpack(order + "h", header[12:14])[0]
                dims = struct.unpack(order + "8q", header[16:80])
                offset = int(struct.unpack(order + "q", header[168:176])[0])
            kind = {16: "f4", 64: "f8"}.get(datatype)
            if kind is None:
                return 0
            count = math.prod(max(1, int(d)) for d in dims[1:1 + max(0, min(int(dims[0]), 7))])
            if count * int(kind[1]) > 2 ** 34:
                raise FormatError(f"{path}: the NIfTI header declares {count} voxels")
            handle.seek(max(offset, size))
            raw = handle.read(count * int(kind[1]))
    except (OSError, EOFError, zlib.error, struct.error, ValueError, OverflowError) as exc:
        raise FormatError(f"cannot read NIfTI file {path}: {_last_line(exc)}") from None
    values = np.frombuffer(raw[: len(raw) // int(kind[1]) * int(kind[1])], dtype=order + kind)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def read_image(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise FormatError(f"cannot read image {path}: {_last_line(exc)}") from None
    if reader.GetDimension() != 3:
        raise FormatError(f"{path} is a {reader.GetDimension()}D image; a 3D volume is expected")
    size = [int(v) for v in reader.GetSize()]
    if min(size) <= 0:
        raise FormatError(f"{path}: image size {size} has an empty axis")
    check_declared_size(path, int(np.prod(size, dtype=object)) * _bytes_per_voxel(reader), _compression(path))
    check_geometry(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise FormatError(f"cannot read image {path}: {_last_line(exc)}") from None
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write atomically; the format follows the extension (.nrrd, .nii.gz, ...)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path

"""NRRD, NIfTI and MetaImage volumes through SimpleITK, with clear errors and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from rtrai.core.errors import FormatError, InputError
from rtrai.core.outputs import atomic_file

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def is_image_file(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def read_image(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise FormatError(f"cannot read image {path}: {str(exc).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 3:
        raise FormatError(f"{path} is a {image.GetDimension()}D image; a 3D volume is expected")
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write atomically; the format follows the extension (.nrrd, .nii.gz, ...)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path

"""OpenKBP patient folders (Babier et al., Med. Phys. 2021) read into a Case, and predictions written back.

Format: every file is a sparse CSV (plain or compressed: ``.csv.gz``, ``.csv.xz``, ``.csv.bz2``, ``.csv.zst``,
``.csv.zip``, whatever pandas decompresses) with header ``,data`` and rows ``linear_index,value``
(masks leave the value empty) on a 128^3 grid; ``voxel_dimensions.csv`` holds the voxel size in mm.

Axis convention (chosen by us, checked on the anatomy of the data: mandible anterior of the cord, LeftParotid on
the patient's left, brainstem above the larynx): OpenKBP's C-order array ``a[i, j, k]`` has ``i`` along LPS +y
(posterior), ``j`` along LPS +x (patient left) and ``k`` from superior to inferior. We therefore store
``zyx[z, y, x] = a[y, x, 127 - z]`` with an identity direction, spacing ``(vd[1], vd[0], vd[2])`` for (x, y, z) and
the grid centred on the origin. CT values are stored upstream as HU + 1024 (0 = outside the scan); we read them as
HU (``value - 1024``, int16) and add 1024 back when writing.
"""

from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import FormatError, GeometryError, InputError
from rtrai.core.image import Grid, from_array
from rtrai.core.outputs import atomic_file
from rtrai.core.structures import to_openkbp

N = 128
SHAPE = (N, N, N)
CT_OFFSET = 1024  # OpenKBP CT value = HU + 1024
STRUCTURE_FILES = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
                   "PTV56", "PTV63", "PTV70")
_SPECIAL = {"ct", "dose", "possible_dose_mask", "voxel_dimensions"}
# Suffixes of an OpenKBP file: upstream's plain CSV and the compressions pandas reads by extension (the shared copy
# keeps validation patients as .csv.gz and train patients as .csv.xz).
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.xz", ".csv.bz2", ".csv.zst", ".csv.zip")


def csv_stem(path: Path) -> str | None:
    """The structure/file stem of an OpenKBP CSV (``LeftParotid`` for ``LeftParotid.csv.xz``), else None."""
    for suffix in CSV_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in CSV_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


# What a damaged or mislabelled file raises while pandas decompresses and parses it (ImportError: the codec for
# .zst is an optional package).
_READ_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, ValueError,
                ImportError, lzma.LZMAError, zlib.error, zipfile.BadZipFile)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def is_openkbp_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(_find(path, s) for s in ("voxel_dimensions", "ct", "possible_dose_mask"))


def read_sparse_csv(path: Path, with_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices, values) of an OpenKBP sparse CSV, validated: integer indices in [0, 128^3), finite values."""
    try:
        df = pd.read_csv(path, header=0, skipinitialspace=True)
    except _READ_ERRORS as exc:
        raise FormatError(f"{path}: not a readable OpenKBP CSV ({_first_line(exc)})") from None
    if df.shape[1] != 2:
        raise FormatError(f"{path}: expected 2 columns (index,data), found {df.shape[1]}")
    if df.empty:  # a header-only file: an empty dose or a structure with no voxel
        return np.zeros(0, np.int64), (np.zeros(0) if with_values else None)
    index_col, value_col = df.iloc[:, 0], df.iloc[:, 1]
    if not pd.api.types.is_integer_dtype(index_col):
        numeric = pd.to_numeric(index_col, errors="coerce")
        bad = np.flatnonzero(numeric.isna().to_numpy() | (numeric.to_numpy() % 1 != 0))
        row = int(bad[0]) if bad.size else 0
        raise FormatError(f"{path}: row {row + 2} has a non-integer voxel index {index_col.iloc[row]!r}")
    indices = index_col.to_numpy(np.int64)
    out_of_range = np.flatnonzero((indices < 0) | (indices >= N ** 3))
    if out_of_range.size:
        row = int(out_of_range[0])
        raise FormatError(f"{path}: row {row + 2} has voxel index {indices[row]} outside 0..{N ** 3 - 1} "
                          f"(the OpenKBP grid is {N}^3)")
    values = None
    if with_values:
        values = pd.to_numeric(value_col, errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = int(bad[0])
            raise FormatError(f"{path}: row {row + 2} has a missing or non-numeric value {value_col.iloc[row]!r}")
    return indices, values


def _to_zyx_index(indices: np.ndarray) -> np.ndarray:
    i, j, k = indices // (N * N), (indices // N) % N, indices % N
    return (N - 1 - k) * (N * N) + i * N + j


def _from_zyx_index(flat: np.ndarray) -> np.ndarray:
    z, y, x = flat // (N * N), (flat // N) % N, flat % N
    return y * (N * N) + x * N + (N - 1 - z)


def read_voxel_dimensions(folder: Path) -> tuple[float, float, float]:
    path = _find(folder, "voxel_dimensions")
    if path is None:
        raise InputError(f"{folder}: voxel_dimensions.csv is missing, so the voxel size is unknown")
    try:
        values = pd.read_csv(path, header=None, dtype=np.float64).to_numpy().ravel()
    except _READ_ERRORS as exc:
        raise FormatError(f"{path}: not three numbers ({_first_line(exc)})") from None
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise FormatError(f"{path}: expected three positive voxel sizes in mm, found {values.tolist()}")
    return float(values[0]), float(values[1]), float(values[2])


def prediction_dose_file(path: str | os.PathLike) -> Path | None:
    """The ``dose.csv`` of an OpenKBP prediction folder (a dose and nothing to place it: the reference patient's
    grid places it, as upstream's scoring does), else None."""
    path = Path(path)
    return _find(path, "dose") if path.is_dir() and not is_openkbp_folder(path) else None


def read_prediction_dose(path: str | os.PathLike, grid: Grid) -> sitk.Image:
    """The dose (Gy) of an OpenKBP prediction folder on the reference patient's grid."""
    dose_path = prediction_dose_file(path)
    if dose_path is None:
        raise InputError(f"{path}: not an OpenKBP prediction folder (no dose.csv)")
    if tuple(grid.size) != SHAPE:
        raise GeometryError(f"{path}: an OpenKBP dose needs a 128^3 reference grid, not {tuple(grid.size)}")
    return _volume(dose_path, grid, np.float32, True)


def grid_for(voxel_dimensions: tuple[float, float, float]) -> Grid:
    spacing = (voxel_dimensions[1], voxel_dimensions[0], voxel_dimensions[2])
    origin = tuple(-(N - 1) / 2.0 * s for s in spacing)
    return Grid((N, N, N), spacing, origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _volume(path: Path, grid: Grid, dtype, with_values: bool) -> sitk.Image:
    indices, values = read_sparse_csv(path, with_values)
    flat = np.zeros(N ** 3, dtype=dtype)
    flat[_to_zyx_index(indices)] = values.astype(dtype) if with_values else 1
    return from_array(flat.reshape(SHAPE), grid)


def read_openkbp(folder: str | os.PathLike) -> Case:
    """Read one OpenKBP patient folder (``pt_N``) into a Case with TG-263 structure names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"OpenKBP patient folder not found: {folder}")
    grid = grid_for(read_voxel_dimensions(folder))
    case = Case(metadata={"patient_id": folder.name, "source": "openkbp", "source_path": str(folder),
                          "openkbp_ct_offset": CT_OFFSET})
    ct_path = _find(folder, "ct")
    if ct_path is None:
        raise InputError(f"{folder}: ct.csv is missing")
    case.ct = _ct_volume(ct_path, grid)
    dose_path = _find(folder, "dose")
    if dose_path is not None:
        case.dose = _volume(dose_path, grid, np.float32, True)
    pdm_path = _find(folder, "possible_dose_mask")
    if pdm_path is not None:
        case.possible_dose_mask = _volume(pdm_path, grid, np.uint8, False)
    known = {stem for stem in map(csv_stem, folder.iterdir()) if stem is not None}
    # OpenKBP's own structures first in its channel order, then any other mask file in the folder.
    for stem in [s for s in STRUCTURE_FILES if s in known] + sorted(known - _SPECIAL - set(STRUCTURE_FILES)):
        mask = _volume(_find(folder, stem), grid, np.uint8, False)
        if sitk.GetArrayViewFromImage(mask).any():
            case.add_structure(stem, mask)
        else:  # upstream scores only non-empty masks: an empty file means "not contoured", and missing is not empty
            case.metadata.setdefault("empty_structure_files", []).append(stem)
    for name in case.targets():
        level = case.prescription_for(name)
        if level is not None:
            case.prescription[name] = level
    case.fractions = 35 if case.targets() else None  # every OpenKBP plan is delivered in 35 fractions
    return case


# ------------------------------------------------------------------------------------------- the contour leak
#
# OpenKBP's CTs are cut to a region round the plan but keep the CT voxels inside every contour beyond the cut, so on
# the slices past the cut the image is blank except for the organs themselves: a model can read the contours off
# them, which no clinical CT allows. One definition, used by training, evaluation and the analysis scripts:

IMAGED_FRACTION = 0.01  # an axial slice holds image data when more than this share of it is CT outside the contours


def contoured_voxels(case: Case) -> np.ndarray:
    """(z, y, x) bool: inside any of the case's structures (OARs and targets)."""
    contoured = np.zeros(case.grid.shape, bool)
    for mask in case.structures.values():
        contoured |= sitk.GetArrayViewFromImage(mask).astype(bool)
    return contoured


def imaged_slices(case: Case) -> np.ndarray:
    """(z,) bool: the axial slices that hold image data, i.e. where more than :data:`IMAGED_FRACTION` of the slice is
    stored CT (not OpenKBP's "outside the scan", -1024 HU here) outside the contours."""
    if case.ct is None:
        raise InputError("finding the slices with image data needs the CT")
    stored = (sitk.GetArrayViewFromImage(case.ct) != -CT_OFFSET) & ~contoured_voxels(case)
    return stored.reshape(stored.shape[0], -1).mean(axis=1) > IMAGED_FRACTION


def leak_free(case: Case) -> Case:
    """A copy of the case whose CT voxels inside contours on slices without image data are set to what the rest of
    those slices hold (outside the scan, -1024 HU): the CT a model may learn from and be scored on."""
    import dataclasses

    ct = sitk.GetArrayFromImage(case.ct)
    ct[contoured_voxels(case) & ~imaged_slices(case)[:, None, None]] = -CT_OFFSET
    return dataclasses.replace(case, ct=from_array(ct, case.ct), metadata={**case.metadata, "leak_free": True})


def _ct_volume(path: Path, grid: Grid) -> sitk.Image:
    indices, values = read_sparse_csv(path, True)
    flat = np.full(N ** 3, -CT_OFFSET, dtype=np.int16)  # unlisted voxels are 0 upstream, i.e. -1024 HU (air)
    flat[_to_zyx_index(indices)] = np.round(values - CT_OFFSET).astype(np.int16)
    return from_array(flat.reshape(SHAPE), grid)


def _check_grid(image: sitk.Image, what: str) -> None:
    if image.GetSize() != SHAPE:
        raise GeometryError(f"{what} has size {image.GetSize()}; OpenKBP files need the {N}^3 grid")


def _write_sparse(path: Path, flat_zyx: np.ndarray, values: bool, fmt: str = "%.9g") -> None:
    nz = np.flatnonzero(flat_zyx)
    kbp = _from_zyx_index(nz)
    order = np.argsort(kbp)
    kbp = kbp[order]
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            handle.write(",data\n")
            if values:
                frame = pd.DataFrame({"i": kbp, "v": flat_zyx[nz][order].astype(np.float64)})
                frame.to_csv(handle, header=False, index=False, float_format=fmt)
            else:
                handle.write("".join(f"{v},\n" for v in kbp.tolist()))


def write_openkbp(case: Case, folder: str | os.PathLike, what: tuple[str, ...] = ("dose", "structures")) -> list[Path]:
    """Write parts of a case as an OpenKBP patient folder (plain ``.csv`` as upstream writes predictions).

    ``what`` picks among ``ct``, ``dose``, ``structures``, ``possible_dose_mask``, ``voxel_dimensions``. Structures
    are written under OpenKBP's names (``Parotid_L`` -> ``LeftParotid.csv``).
    """
    folder = Path(folder)
    written = []
    if "voxel_dimensions" in what:
        spacing = case.grid.spacing
        path = folder / "voxel_dimensions.csv"
        with atomic_file(path) as tmp:
            np.savetxt(tmp, [spacing[1], spacing[0], spacing[2]], fmt="%.18e")
        written.append(path)
    if "ct" in what and case.ct is not None:
        _check_grid(case.ct, "CT")
        hu = sitk.GetArrayFromImage(case.ct).astype(np.float64).ravel() + CT_OFFSET
        _write_sparse(folder / "ct.csv", np.clip(hu, 0, None), True, "%.6g")
        written.append(folder / "ct.csv")
    if "dose" in what and case.dose is not None:
        _check_grid(case.dose, "dose")
        _write_sparse(folder / "dose.csv", sitk.GetArrayFromImage(case.dose).astype(np.float32).ravel(), True)
        written.append(folder / "dose.csv")
    if "possible_dose_mask" in what and case.possible_dose_mask is not None:
        _check_grid(case.possible_dose_mask, "possible-dose mask")
        _write_sparse(folder / "possible_dose_mask.csv", sitk.GetArrayFromImage(case.possible_dose_mask).ravel(), False)
        written.append(folder / "possible_dose_mask.csv")
    if "structures" in what:
        for name, mask in case.structures.items():
            _check_grid(mask, f"structure '{name}'")
            path = folder / f"{to_openkbp(name)}.csv"
            _write_sparse(path, sitk.GetArrayFromImage(mask).ravel(), False)
            written.append(path)
    return written


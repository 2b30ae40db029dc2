"""Read a DICOM CT series into a SimpleITK image (HU, LPS) with the UIDs that DICOM-RT export needs.

Rules (the README's "DICOM-RT" section repeats them):

- Files are grouped by SeriesInstanceUID. With several image series the CT series with the most slices is taken,
  unless ``series_uid`` names one; ``meta["series_choice"]`` says which was taken and why.
- Slices are sorted by their position along the slice normal (row x column direction cosines), as ITK does.
- Every slice must share rows, columns, pixel spacing, orientation and frame of reference.
- Slice spacing must be uniform to ``SPACING_TOL_MM``; a gap that is a multiple of the spacing is reported as missing
  slices, anything else as uneven spacing, both as :class:`GeometryError`.
- Gantry tilt (slices shifted in-plane from one to the next, or GantryDetectorTilt != 0) is refused with a
  :class:`GeometryError`: resampling a tilted series silently would move every structure drawn on it.
- RescaleSlope/RescaleIntercept are applied: int16 when the result is integral and fits, float32 otherwise.
- Geometry is what ``SimpleITK.ImageSeriesReader`` gives for the same files (origin = first slice, spacing z =
  distance first-to-last / (n - 1), direction = row, column, normal); a test checks this.

pydicom raises many exception types on corrupt files; :func:`parsing` turns them into :class:`FormatError` so that
nothing outside ``rtrai.core.errors`` escapes.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.errors import FormatError, GeometryError, InputError, RTRAIError

# Slice positions may differ from a uniform grid by this much (DICOM DS round-off, scanner jitter).
SPACING_TOL_MM = 0.03
# Direction cosines of two slices are "the same orientation" within this.
ORIENTATION_TOL = 1e-4
# In-plane shift between consecutive slices above this (mm) means a tilted gantry.
TILT_TOL_MM = 0.01

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"  # multi-frame Enhanced CT: refused with a clear FormatError
RT_MODALITIES = {"RTSTRUCT", "RTDOSE", "RTPLAN", "RTIMAGE", "RTRECORD", "REG", "SEG", "SR"}


@contextlib.contextmanager
def parsing(path, what: str = "DICOM file") -> Iterator[None]:
    """Turn any exception pydicom raises on corrupt data into one :class:`FormatError` line."""
    try:
        yield
    except RTRAIError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError, KeyError, struct.error... on corrupt data
        detail = " ".join(str(exc).split())  # one line, as the CLI prints it
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise FormatError(f"{what} {path} is corrupt or incomplete ({type(exc).__name__}: {detail})") from exc


def shown(value, limit: int = 40) -> str:
    """A value read from a file, fit for a one-line message: control characters as escapes, at most ``limit``
    characters (a damaged file's 'Modality' can hold a kilobyte of binary)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_dataset(path, stop_before_pixels: bool = False):
    """Read one DICOM file (with or without the 128-byte preamble); FormatError when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with parsing(path):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # Files without preamble (older exports, pydicom's own test files) are still DICOM if they parse.
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds:
                raise FormatError(f"{path} is not a DICOM file") from None
    return ds


def require_attributes(ds, names: Iterable[str], path, what: str) -> None:
    """FormatError naming every required attribute that is absent or empty (truncated files end up here)."""
    with parsing(path, what):
        missing = [n for n in names if n not in ds or ds[n].value in (None, "", b"")]
    if missing:
        raise FormatError(f"{what} {path} lacks required attribute(s) {', '.join(missing)} "
                          "(truncated or incomplete file?)")


def list_files(folder_or_files) -> list[Path]:
    """Every regular file under a folder (recursively), or the given file(s)."""
    if isinstance(folder_or_files, (str, os.PathLike)):
        root = Path(folder_or_files)
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if root.is_file():
            return [root]
        raise InputError(f"{root} does not exist")
    files = [Path(p) for p in folder_or_files]
    for p in files:
        if not p.is_file():
            raise InputError(f"{p} does not exist or is not a file")
    return files


def scan(files: Iterable[Path]) -> list[tuple[Path, object]]:
    """Headers (no pixel data) of the DICOM files among ``files``; other files are skipped.

    A file that starts like DICOM (``DICM`` at byte 128) but cannot be parsed is a :class:`FormatError`: a truncated
    or damaged DICOM file must not silently drop out of a case.
    """
    out = []
    for path in files:
        if _looks_like_dicom(path):
            out.append((path, read_dataset(path, stop_before_pixels=True)))
            continue
        try:
            ds = read_dataset(path, stop_before_pixels=True)
        except FormatError:
            continue  # not DICOM at all (README, CSV, ...)
        if "SOPClassUID" in ds and "Modality" in ds:
            out.append((path, ds))
    return out


def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_ct_series(folder_or_files, series_uid: str | None = None) -> tuple[sitk.Image, dict]:
    """Read a CT series from a folder (searched recursively) or a list of files.

    Returns the image (HU, LPS geometry) and ``meta`` with PatientID, StudyInstanceUID, SeriesInstanceUID,
    FrameOfReferenceUID, per-slice SOPInstanceUIDs (in the image's slice order), patient/study attributes for export
    and ``series_choice`` (which series was taken and why).
    """
    headers = scan(list_files(folder_or_files))
    return read_ct_from_headers(headers, series_uid, source=str(folder_or_files))


def read_ct_from_headers(headers: list[tuple[Path, object]], series_uid: str | None = None,
                         source: str = "input") -> tuple[sitk.Image, dict]:
    series: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    modality: dict[str, str] = {}
    for path, ds in headers:
        with parsing(path):
            if str(ds.get("Modality", "")) in RT_MODALITIES or (
                    "ImagePositionPatient" not in ds and str(ds.get("SOPClassUID", "")) != ENHANCED_CT):
                continue  # not a slice of an image series (RT objects, reports...)
            uid = str(ds.get("SeriesInstanceUID", ""))
            series[uid].append((path, ds))
            modality[uid] = str(ds.get("Modality", ""))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"series {series_uid} is not in {source}; image series there: "
                             + (", ".join(f"{u} ({modality[u]}, {len(s)} files)" for u, s in series.items())
                                or "none"))
        chosen, reason = series_uid, "requested"
    else:
        ct_series = {u: s for u, s in series.items() if modality[u] == "CT"}
        if not ct_series:
            with parsing(source):
                found = sorted({shown(ds.get("Modality", "?"), 16) for _, ds in headers})
            raise InputError(f"no CT series in {source} (DICOM modalities found: {', '.join(found) or 'none'})")
        chosen = max(ct_series, key=lambda u: len(ct_series[u]))
        reason = ("the only CT series" if len(ct_series) == 1 else
                  f"the CT series with most slices ({len(ct_series[chosen])}) of {len(ct_series)} CT series")
    image, meta = _read_series(series[chosen])
    meta["series_choice"] = f"series {chosen}: {reason}"
    meta["other_series"] = [u for u in series if u != chosen]
    return image, meta


def _slice_header(path: Path, ds) -> dict:
    with parsing(path, "CT slice"):
        multi_frame = str(ds.get("SOPClassUID", "")) == ENHANCED_CT or int(ds.get("NumberOfFrames", 1) or 1) > 1
    if multi_frame:
        raise FormatError(f"{path} is a multi-frame (enhanced) CT; only classic one-slice-per-file CT is supported")
    require_attributes(ds, ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"),
                       path, "CT slice")
    with parsing(path, "CT slice"):
        header = {
            "path": path,
            "position": np.array([float(v) for v in ds.ImagePositionPatient], dtype=float),
            "orientation": np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float),
            "spacing": (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),  # (row spacing, column spacing)
            "shape": (int(ds.Rows), int(ds.Columns)),
            "slope": float(ds.get("RescaleSlope", 1) or 1),
            "intercept": float(ds.get("RescaleIntercept", 0) or 0),
            "tilt": float(ds.get("GantryDetectorTilt", 0) or 0),
            "sop_uid": str(ds.get("SOPInstanceUID", "")),
            "for_uid": str(ds.get("FrameOfReferenceUID", "")),
            "thickness": float(ds.get("SliceThickness", 0) or 0),
            "between": float(ds.get("SpacingBetweenSlices", 0) or 0),
        }
    if header["position"].shape != (3,) or header["orientation"].shape != (6,):
        raise FormatError(f"{path}: ImagePositionPatient needs 3 values and ImageOrientationPatient 6")
    if not (np.isfinite(header["position"]).all() and np.isfinite(header["orientation"]).all()):
        raise FormatError(f"{path}: non-finite ImagePositionPatient or ImageOrientationPatient")
    if not np.all(np.isfinite(header["spacing"])) or min(header["spacing"]) <= 0 or min(header["shape"]) <= 0:
        raise FormatError(f"{path}: PixelSpacing, Rows and Columns must be positive")
    for key, name in (("slope", "RescaleSlope"), ("intercept", "RescaleIntercept"), ("tilt", "GantryDetectorTilt"),
                      ("thickness", "SliceThickness"), ("between", "SpacingBetweenSlices")):
        if not np.isfinite(header[key]):
            raise FormatError(f"{path}: {name} is {header[key]}, not a finite number")
    return header


def _read_series(files: list[tuple[Path, object]]) -> tuple[sitk.Image, dict]:
    slices = [_slice_header(p, ds) for p, ds in files]
    try:
        slices, z_spacing = _series_geometry(slices)
    except GeometryError as exc:
        raise GeometryError(f"CT series in {slices[0]['path'].parent}: {exc}") from None
    first = slices[0]
    row, col = first["orientation"][:3], first["orientation"][3:]
    normal = np.cross(row, col)
    direction = np.column_stack([row, col, normal])  # columns are the x, y, z axes in LPS
    arrays, slopes, intercepts = [], [], []
    for s in slices:
        ds = read_dataset(s["path"])
        with parsing(s["path"], "CT slice"):
            pixels = ds.pixel_array
        if pixels.shape != first["shape"]:
            raise FormatError(f"{s['path']}: pixel data of shape {pixels.shape}, expected {first['shape']}")
        arrays.append(pixels)
        slopes.append(s["slope"])
        intercepts.append(s["intercept"])
    hu = _to_hu(np.stack(arrays), np.array(slopes), np.array(intercepts), f"CT series in {first['path'].parent}")
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((first["spacing"][1], first["spacing"][0], z_spacing))
    image.SetOrigin(tuple(float(v) for v in slices[0]["position"]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))

    ds0 = files[0][1]
    with parsing(files[0][0]):
        meta = {
            "PatientID": str(ds0.get("PatientID", "")),
            "PatientName": str(ds0.get("PatientName", "")),
            "PatientBirthDate": str(ds0.get("PatientBirthDate", "")),
            "PatientSex": str(ds0.get("PatientSex", "")),
            "StudyInstanceUID": str(ds0.get("StudyInstanceUID", "")),
            "StudyDate": str(ds0.get("StudyDate", "")),
            "StudyTime": str(ds0.get("StudyTime", "")),
            "StudyID": str(ds0.get("StudyID", "")),
            "StudyDescription": str(ds0.get("StudyDescription", "")),
            "AccessionNumber": str(ds0.get("AccessionNumber", "")),
            "ReferringPhysicianName": str(ds0.get("ReferringPhysicianName", "")),
            "SeriesInstanceUID": str(ds0.get("SeriesInstanceUID", "")),
            "SeriesDescription": str(ds0.get("SeriesDescription", "")),
            "FrameOfReferenceUID": first["for_uid"],
            "PatientPosition": str(ds0.get("PatientPosition", "")),
            "Manufacturer": str(ds0.get("Manufacturer", "")),
            "SOPInstanceUIDs": [s["sop_uid"] for s in slices],
            "files": [str(s["path"]) for s in slices],
        }
    return image, meta


def _series_geometry(slices: list[dict]) -> tuple[list[dict], float]:
    """Slices checked to form one untilted grid, sorted along the normal, with the slice spacing."""
    first = slices[0]
    for s in slices[1:]:
        for key, label in (("shape", "rows/columns"), ("spacing", "pixel spacing")):
            if s[key] != first[key]:
                raise GeometryError(f"slices differ in {label}: {first['path'].name} {first[key]} vs "
                                    f"{s['path'].name} {s[key]}")
        if not np.allclose(s["orientation"], first["orientation"], atol=ORIENTATION_TOL):
            raise GeometryError(f"slices have different orientations: {first['path'].name} and {s['path'].name}")
        if s["for_uid"] != first["for_uid"]:
            raise GeometryError(f"slices belong to different frames of reference: {first['path'].name} and "
                                f"{s['path'].name}")
    tilted = [s for s in slices if abs(s["tilt"]) > 1e-3]
    if tilted:
        raise GeometryError(f"gantry tilt of {tilted[0]['tilt']:g} degrees (GantryDetectorTilt): tilted series are "
                            "not supported; resample the series to an untilted grid first")
    row, col = first["orientation"][:3], first["orientation"][3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise GeometryError(f"ImageOrientationPatient of {first['path'].name} is not two orthogonal unit vectors")
    slices.sort(key=lambda s: float(s["position"] @ normal))
    slices = _drop_duplicates(slices, normal)
    return slices, _check_spacing(slices, normal, row, col)


def _drop_duplicates(slices: list[dict], normal: np.ndarray) -> list[dict]:
    """The same slice found twice (copied file) is dropped; two different slices at one position are an error."""
    kept = [slices[0]]
    for s in slices[1:]:
        if abs(float((s["position"] - kept[-1]["position"]) @ normal)) < SPACING_TOL_MM:
            if s["sop_uid"] and s["sop_uid"] == kept[-1]["sop_uid"]:
                continue
            raise GeometryError(f"two different slices at the same position: {kept[-1]['path'].name} and "
                                f"{s['path'].name} (several acquisitions in one series?)")
        kept.append(s)
    return kept


def _check_spacing(slices: list[dict], normal: np.ndarray, row: np.ndarray, col: np.ndarray) -> float:
    if len(slices) == 1:
        s = slices[0]
        return next((v for v in (s["between"], s["thickness"]) if v > 0), 1.0)
    positions = np.array([s["position"] for s in slices])
    steps = np.diff(positions, axis=0)
    in_plane = np.abs(steps @ np.column_stack([row, col])).max()
    if in_plane > TILT_TOL_MM:
        raise GeometryError(f"slices shift by up to {in_plane:.3g} mm in-plane from one to the next (gantry tilt or "
                            "sheared series): not supported; resample to an untilted grid first")
    gaps = steps @ normal
    nominal = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap - nominal) <= SPACING_TOL_MM:
            continue
        z0, z1 = float(positions[i] @ normal), float(positions[i + 1] @ normal)
        ratio = gap / nominal
        if round(ratio) >= 2 and abs(gap - round(ratio) * nominal) <= SPACING_TOL_MM * round(ratio):
            raise GeometryError(f"{round(ratio) - 1} missing slice(s) between positions {z0:.2f} and {z1:.2f} mm "
                                f"(spacing {nominal:.3g} mm elsewhere)")
        raise GeometryError(f"uneven slice spacing: {gap:.3g} mm between positions {z0:.2f} and {z1:.2f} mm, "
                            f"{nominal:.3g} mm elsewhere")
    return float((positions[-1] - positions[0]) @ normal) / (len(slices) - 1)


def _to_hu(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, where: str = "CT series") -> np.ndarray:
    """Apply per-slice rescale; int16 when exact and in range, float32 otherwise."""
    integral = np.all(slopes == 1) and np.all(intercepts == np.round(intercepts))
    if integral:
        hu = stored.astype(np.int64) + intercepts.astype(np.int64)[:, None, None]
        if hu.size == 0 or (hu.min() >= np.iinfo(np.int16).min and hu.max() <= np.iinfo(np.int16).max):
            return hu.astype(np.int16)
        return hu.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        hu = (stored.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]).astype(np.float32)
    if not np.isfinite(hu).all():
        raise FormatError(f"{where}: RescaleSlope {slopes.max():g} / RescaleIntercept {intercepts.max():g} take "
                          "the CT values beyond the float32 range")
    return hu

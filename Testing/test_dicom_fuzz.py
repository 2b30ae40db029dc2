"""Fuzz: real RT files, truncated, with flipped bytes or deleted attributes, raise nothing outside rtrai.core.errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from rtrai.core.errors import RTRAIError
from rtrai.core.image import Grid
from rtrai.io.dicom_series import read_ct_series
from rtrai.io.dicomrt import rasterize_rtstruct, read_dicom_folder, read_rtdose, read_rtplan

FILES = ("rtstruct.dcm", "rtdose.dcm", "rtplan.dcm", "CT_small.dcm")
GRID = Grid((40, 30, 8), (10.0, 10.0, 5.0), (-200.0, -150.0, -220.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _read_as_its_kind(name: str, path: Path) -> None:
    if name == "rtstruct.dcm":
        rasterize_rtstruct(path, GRID)
    elif name == "rtdose.dcm":
        read_rtdose(path, allow_relative=True)
    elif name == "rtplan.dcm":
        read_rtplan(path)
    else:
        read_ct_series(path)
    read_dicom_folder(path.parent)


def _mutate_bytes(raw: bytes, kind: str, position: float, payload: bytes) -> bytes:
    at = int(position * len(raw))
    if kind == "truncate":
        return raw[:at]
    return raw[:at] + bytes(b ^ 0xFF for b in payload) + raw[at + len(payload):]


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FILES), kind=st.sampled_from(["truncate", "flip"]),
       position=st.floats(0.0, 1.0), payload=st.binary(min_size=1, max_size=8))
def test_corrupted_bytes_raise_only_our_errors(name, kind, position, payload):
    raw = Path(get_testdata_file(name)).read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(_mutate_bytes(raw, kind, position, payload))
        try:
            _read_as_its_kind(name, path)
        except RTRAIError:
            pass


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(FILES), choice=st.integers(0, 10_000), nested=st.booleans())
def test_deleted_attributes_raise_only_our_errors(name, choice, nested):
    ds = pydicom.dcmread(get_testdata_file(name), force=True)
    elements = [e for e in ds.iterall()] if nested else list(ds)
    victim = elements[choice % len(elements)]
    for dataset in [ds] + [item for e in ds.iterall() if e.VR == "SQ" for item in e.value]:
        if victim.tag in dataset and dataset[victim.tag] is victim:
            del dataset[victim.tag]
            break
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        ds.save_as(path)
        try:
            _read_as_its_kind(name, path)
        except RTRAIError:
            pass

"""Fuzz every input reader with mutated real files and count what escapes as anything but an rtrai error.

    python benchmarks/fuzz_inputs.py [COUNT=100000] [--seed 0] [--readers rtdose,nrrd,...] [--index I --show] [--json]

Each input is a real file (pydicom's RT test files, the dicompyler-core example in ../shared/data/dicom-rt, DICOM
that ``rtrai export-dicom`` writes for a small phantom, an OpenKBP patient, pyradiomics' NRRDs and settings, the
shipped segmentation/dose configs and presets, IBSI reference tables, cohort files) with one to three mutations:
byte flips, truncation, insertion, deletion or duplication of byte ranges, deleted or duplicated header lines and
DICOM elements, wrong VRs, huge / negative / NaN / infinite numbers, non-UTF-8 bytes, broken YAML/JSON trees.
It goes through its reader inside a ``try``: an :class:`rtrai.core.errors.RTRAIError` counts as refused-well,
no exception as accepted, anything else as a bug, grouped by (reader, exception type, first rtrai frame: the
innermost frame in the rtrai package, where the exception left our code). The goal is 0 bugs. A refusal whose
message is not one line (the CLI prints ``rtrai: error: MESSAGE``) is counted too ("multi-line"), also with goal 0.
The exit status is 1 when any bug or slow input was found.

Inputs are reproducible one by one: input ``I`` of seed ``S`` is drawn from its own generator, so
``--seed S --index I`` replays just that one (and ``--show`` writes what it was). The OpenKBP patient is cut to the
first rows of each file (header and format kept) so that reading it takes milliseconds; a per-input time limit
(SIGALRM, ``--time-limit``) and an address-space limit (``--memory-gb``) turn a pathological input into a counted
"slow" or MemoryError instead of a stalled or killed run. Only a temporary folder is written.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import lzma
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTRAI_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "RTRadiomicsAI"))

# Relative share of the inputs per reader (the cheap readers get more; a DICOM folder costs ~30 ms an input).
WEIGHTS = {
    "dicom_ct": 8, "rtstruct": 9, "rtdose": 9, "rtplan": 8, "dicom_folder": 3,
    "openkbp": 6, "nrrd": 10, "seg_nrrd": 8, "case_folder": 4,
    "seg_config": 6, "dose_config": 6, "radiomics_params": 2,
    "cohort_batch": 7, "cohort_list": 6, "ibsi_reference": 6,
}

# -- nasty values -------------------------------------------------------------------------------------------------
NASTY_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e308", "-1e308", "1e-320",
                 "-1", "-0", "0", "0.0", "-2147483649", "2147483648", "4294967296", "9223372036854775808",
                 "-9223372036854775809", "99999999999999999999999999", "65535", "65536", "-32769", "1.5", "0.5",
                 "1e5", "", " ", "abc", "0x1F", "1,5", "1..2", "+", "-", ".", "1e", "\uff11\uff12", "١٢"]
NASTY_BYTES = [b"\xff", b"\xfe\xff", b"\xff\xfe", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\x00", b"\xf0\x28\x8c",
               b"\xe9", b"\x1b[2J", b"\r", b"\n", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\\", b'"', b"'",
               b"%s%n", b"\xef\xbb\xbf"]
NASTY_STRINGS = ["", " ", "\x00", "\ufffd", "é", "../../../../etc/passwd", "/dev/null", "x" * 300, "a\\b\\c",
                 "\u202e", "NaN", "null", "~", "-", "[", "{", "*", "&a", "!!python/object:os.system", "%", "\t",
                 "C:\\x", "nul", "line\nbreak"]
NASTY_OBJECTS = [None, [], {}, "", "x", -1, 0, 1, 2 ** 64, -2 ** 63, 1e308, float("nan"), float("inf"),
                 float("-inf"), True, False, [1, 2, 3], [[1]], {"x": 1}, {"type": None}, "\xff\u202e", [None],
                 ["a", 1, None], 1.5, -0.0, "1e400"]

_NUMBER = re.compile(rb"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?")
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


class Slow(BaseException):
    """An input that ran past the per-input time limit (BaseException so that no reader's except catches it)."""


# -- byte and text mutations ----------------------------------------------------------------------------------------
def _span(rng: random.Random, n: int, most: int = 64) -> tuple[int, int]:
    start = rng.randrange(n + 1)
    return start, min(n, start + rng.randint(1, most))


def byte_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    n = len(data)
    kind = rng.choice(["flip", "flip", "byte", "truncate", "insert", "delete", "duplicate", "nasty", "zeros",
                       "ones", "length"])
    if n == 0:
        kind = "insert"
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
        return bytes(out), "flip bits"
    if kind == "byte":
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(n)] = rng.randrange(256)
        return bytes(out), "random bytes"
    if kind == "truncate":
        at = rng.choice([rng.randrange(n), rng.randrange(min(n, 400)), n - rng.randint(1, min(n, 16))])
        return data[:at], f"truncate at {at} of {n}"
    if kind == "insert":
        at = rng.randrange(n + 1)
        payload = rng.choice(NASTY_BYTES) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64))
        return data[:at] + payload + data[at:], f"insert {len(payload)} bytes at {at}"
    if kind == "delete":
        a, b = _span(rng, n, rng.choice([4, 64, 1024]))
        return data[:a] + data[b:], f"delete bytes {a}:{b}"
    if kind == "duplicate":
        a, b = _span(rng, n, rng.choice([8, 256]))
        return data[:b] + data[a:b] + data[b:], f"duplicate bytes {a}:{b}"
    if kind == "nasty":
        at = rng.randrange(n)
        payload = rng.choice(NASTY_BYTES)
        return data[:at] + payload + data[at + len(payload):], f"overwrite {payload!r} at {at}"
    if kind in ("zeros", "ones"):
        a, b = _span(rng, n, 16)
        fill = b"\x00" if kind == "zeros" else b"\xff"
        return data[:a] + fill * (b - a) + data[b:], f"{kind} over {a}:{b}"
    # "length": a 16/32-bit field set to a huge or zero value (DICOM/NRRD/NIfTI lengths and dimensions)
    at = rng.randrange(max(1, n - 4))
    field = rng.choice([b"\xff\xff\xff\xff", b"\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f", b"\x00\x00"])
    return data[:at] + field + data[at + len(field):], f"length field {field.hex()} at {at}"


def text_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    kind = rng.choice(["number", "number", "number", "word", "delete_line", "duplicate_line", "swap_lines",
                       "cut_line", "non_utf8", "separator", "quote", "empty", "header_only", "encoding", "crlf",
                       "blank_lines"])
    if kind == "number":
        matches = list(_NUMBER.finditer(data))
        if matches:
            m = rng.choice(matches)
            value = rng.choice(NASTY_NUMBERS).encode("utf-8")
            return data[:m.start()] + value + data[m.end():], f"number {m.group().decode()} -> {value!r}"
        kind = "word"
    if kind == "word":
        matches = list(_WORD.finditer(data))
        if matches:
            m = rng.choice(matches)
            value = rng.choice(NASTY_STRINGS + NASTY_NUMBERS).encode("utf-8")
            return data[:m.start()] + value + data[m.end():], f"word {m.group()[:20]!r} -> {value[:20]!r}"
        kind = "non_utf8"
    if kind == "delete_line" and len(lines) > 1:
        i = rng.randrange(len(lines))
        return b"\n".join(lines[:i] + lines[i + 1:]), f"delete line {i + 1}"
    if kind == "duplicate_line" and lines:
        i = rng.randrange(len(lines))
        return b"\n".join(lines[:i + 1] + lines[i:]), f"duplicate line {i + 1}"
    if kind == "swap_lines" and len(lines) > 1:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines), f"swap lines {i + 1} and {j + 1}"
    if kind == "cut_line" and lines:
        i = rng.randrange(len(lines))
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
        return b"\n".join(lines), f"cut line {i + 1}"
    if kind == "separator":
        old, new = rng.choice([(b",", b";"), (b",", b"\t"), (b",", b""), (b":", b"="), (b":", b""), (b" ", b"\t"),
                               (b"-", b""), (b"[", b""), (b"]", b""), (b"{", b""), (b"\\", b"/"), (b"=", b"")])
        return data.replace(old, new, rng.choice([1, 1, -1])), f"separator {old!r} -> {new!r}"
    if kind == "quote":
        at = rng.randrange(len(data) + 1)
        q = rng.choice([b'"', b"'", b'"""', b"`", b"#", b"&", b"*", b"!", b"|", b">", b"%"])
        return data[:at] + q + data[at:], f"insert {q!r} at {at}"
    if kind == "empty":
        return rng.choice([b"", b"\n", b" ", b"\xef\xbb\xbf", b"\x00"]), "empty file"
    if kind == "header_only" and lines:
        return lines[0] + b"\n", "first line only"
    if kind == "encoding":
        try:
            text = data.decode("utf-8")
            codec = rng.choice(["utf-16", "utf-32", "latin-1", "cp1252", "utf-16-be"])
            return text.encode(codec, errors="replace"), f"re-encoded as {codec}"
        except (UnicodeDecodeError, LookupError):
            pass
    if kind == "crlf":
        return data.replace(b"\n", rng.choice([b"\r\n", b"\r", b"\n\n"])), "line endings"
    if kind == "blank_lines" and lines:
        i = rng.randrange(len(lines))
        return b"\n".join(lines[:i] + [b"", b" ", b""] + lines[i:]), f"blank lines at {i + 1}"
    at = rng.randrange(len(data) + 1)
    payload = rng.choice(NASTY_BYTES)
    return data[:at] + payload + data[at:], f"non-UTF-8 {payload!r} at {at}"


def tree_mutation(rng: random.Random, obj):
    """A deep copy of a parsed YAML/JSON tree with one node replaced, deleted, renamed or added."""
    obj = copy.deepcopy(obj)
    if not isinstance(obj, (dict, list)) or not obj:
        return rng.choice(NASTY_OBJECTS), "whole document replaced"
    # Walk to a random container.
    node, path = obj, []
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            node, path = child, path + [key]
            continue
        kind = rng.choice(["replace", "replace", "replace", "delete", "rename", "add", "wrap"])
        where = "/".join(map(str, path + [key]))
        if kind == "replace":
            value = rng.choice(NASTY_OBJECTS)
            node[key] = copy.deepcopy(value)
            return obj, f"{where} = {value!r}"[:120]
        if kind == "delete":
            del node[key]
            return obj, f"delete {where}"
        if kind == "rename" and isinstance(node, dict):
            new = rng.choice(["", "x", 1, None, True, str(key).upper(), str(key) + "_", "\xff"])
            node[new] = node.pop(key)
            return obj, f"rename {where} -> {new!r}"
        if kind == "add" and isinstance(node, dict):
            new = rng.choice(["unknown_key", 3, None, "", "labels", "inputs"])
            node[new] = copy.deepcopy(rng.choice(NASTY_OBJECTS))
            return obj, f"add {new!r} under {'/'.join(map(str, path))}"
        node[key] = [child] if rng.random() < 0.5 else {"x": child}
        return obj, f"wrap {where}"
    return rng.choice(NASTY_OBJECTS), "whole document replaced"


# -- DICOM mutations (element level, through pydicom) ---------------------------------------------------------------
_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
        b"UT"]
_VR_PATTERN = re.compile(b"|".join(_VRS))
_IMPORTANT = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
              "NumberOfFrames", "GridFrameOffsetVector", "DoseGridScaling", "DoseUnits", "BitsAllocated",
              "BitsStored", "PixelRepresentation", "SamplesPerPixel", "RescaleSlope", "RescaleIntercept",
              "SliceThickness", "ContourData", "ROINumber", "ReferencedROINumber", "NumberOfContourPoints",
              "TargetPrescriptionDose", "NumberOfFractionsPlanned", "BeamMeterset", "GantryAngle",
              "NominalBeamEnergy", "BeamNumber", "ReferencedBeamNumber", "Modality", "SOPClassUID",
              "FrameOfReferenceUID", "SeriesInstanceUID", "ROIDisplayColor", "PhotometricInterpretation",
              "ContourGeometricType", "DoseReferenceType", "ReferencedFrameOfReferenceUID", "SpecificCharacterSet",
              "GantryDetectorTilt", "SpacingBetweenSlices", "DoseSummationType", "ROIName", "PixelData")
_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
             "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4", "", "garbage"]


def vr_swap(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Explicit-VR files: a random element's two-letter VR replaced by another (its length field stays)."""
    spots = [m.start() for m in _VR_PATTERN.finditer(data, 4, 65536)]
    if not spots:
        return byte_mutation(rng, data)
    at = rng.choice(spots)
    new = rng.choice(_VRS)
    return data[:at] + new + data[at + 2:], f"VR {data[at:at + 2].decode('latin-1')} -> {new.decode()} at {at}"


def _nasty_value(rng: random.Random, element):
    vr = element.VR
    if vr in ("DS", "IS", "FL", "FD", "US", "SS", "UL", "SL"):
        text = rng.choice(NASTY_NUMBERS)
        multi = rng.random() < 0.3
        if vr in ("DS", "IS"):
            return "\\".join([text] * rng.randint(0, 5)) if multi else text
        try:
            number = float(text)
        except ValueError:
            number = rng.choice([0, -1, 65535, 2 ** 31, 1e308])
        if vr in ("US", "SS", "UL", "SL"):
            number = rng.choice([0, 1, 65535, 32767, -32768, 2 ** 32 - 1]) if number != number else number
            return [int(min(max(number, -2 ** 31), 2 ** 32 - 1))] * (rng.randint(0, 4) if multi else 1)
        return [number] * (rng.randint(0, 4) if multi else 1)
    if vr == "SQ":
        from pydicom.dataset import Dataset

        items = list(element.value)
        choice = rng.randrange(4)
        if choice == 0:
            return []
        if choice == 1:
            return items + [Dataset()]
        if choice == 2 and items:
            return items + [copy.deepcopy(rng.choice(items))] * rng.randint(1, 3)
        return items[:rng.randrange(len(items) + 1)]
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL"):
        raw = element.value if isinstance(element.value, bytes) else b""
        choice = rng.randrange(4)
        if choice == 0:
            return b""
        if choice == 1:
            return raw[: rng.randrange(len(raw) + 1)]
        if choice == 2:
            return raw + raw[: rng.randrange(len(raw) + 1)]
        return rng.randbytes(rng.choice([1, 2, 7, 64]))
    return rng.choice(NASTY_STRINGS + NASTY_NUMBERS)


# Element paths of each seed, found once (pydicom converts every element on iterall: 1.5 s for a clinical
# RTSTRUCT); an input then converts only the sequences on its victim's path, and writing keeps the rest raw.
_PATHS: dict[int, list[tuple]] = {}
_BIG = 200_000


def _paths_of(ds) -> list[tuple]:
    """(path, keyword, VR) of every element: path = ((sequence tag, item index), ..., element tag)."""
    out = []

    def walk(dataset, prefix):
        for element in dataset:
            out.append((prefix + (element.tag,), element.keyword, element.VR))
            if element.VR == "SQ":
                for i, item in enumerate(element.value):
                    walk(item, prefix + ((element.tag, i),))

    walk(ds, ())
    return out


def remember_dicom_seed(data: bytes) -> None:
    import pydicom

    try:
        _PATHS[id(data)] = _paths_of(pydicom.dcmread(io.BytesIO(data), force=True))
    except Exception:  # noqa: BLE001 - a seed pydicom cannot parse gets byte mutations only
        pass


def dicom_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One element-level change through pydicom: delete, nasty value, wrong VR (UN/bytes), sequence damage,
    non-UTF-8 text, transfer syntax or character set changed; falls back to a byte mutation when the result
    cannot be written."""
    import pydicom
    from pydicom.dataelem import DataElement

    paths = _PATHS.get(id(data))
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if paths is None:
            if len(data) > _BIG:  # an already mutated big file: not worth converting every element again
                return byte_mutation(rng, data)
            paths = _paths_of(ds)
    except Exception:  # noqa: BLE001 - an already-damaged input: mutate its bytes instead
        return byte_mutation(rng, data)
    if not paths:
        return byte_mutation(rng, data)
    important = [p for p in paths if p[1] in _IMPORTANT]
    path, keyword, _ = rng.choice(important) if important and rng.random() < 0.7 else rng.choice(paths)
    kind = rng.choice(["delete", "value", "value", "value", "vr", "bytes", "syntax", "charset"])
    try:
        parent = ds
        for tag, i in path[:-1]:
            parent = parent[tag].value[i]
        victim = parent[path[-1]]
        name = keyword or str(victim.tag)
        if kind == "delete":
            del parent[victim.tag]
            what = f"delete {name}"
        elif kind == "value":
            value = _nasty_value(rng, victim)
            parent[victim.tag] = DataElement(victim.tag, victim.VR, value)
            what = f"{name} ({victim.VR}) = {str(value)[:40]!r}"
        elif kind == "vr":
            raw = bytes(str(victim.value), "utf-8", "replace") if victim.VR != "SQ" else b"\x01\x02"
            new_vr = rng.choice(["UN", "OB", "US", "FD", "DS", "SQ", "LO"])
            value = raw if new_vr in ("UN", "OB") else _nasty_value(rng, DataElement(victim.tag, new_vr, 0 if new_vr
                                                                                   in ("US", "FD") else ""))
            parent[victim.tag] = DataElement(victim.tag, new_vr, value)
            what = f"{name} VR {victim.VR} -> {new_vr}"
        elif kind == "bytes":
            payload = rng.choice(NASTY_BYTES) * rng.randint(1, 4)
            parent[victim.tag] = DataElement(victim.tag, "UN" if victim.VR == "SQ" else victim.VR,
                                             payload if victim.VR in ("OB", "OW", "UN", "SQ") else
                                             payload.decode("latin-1"))
            what = f"{name} = raw {payload!r}"
        elif kind == "syntax":
            uid = rng.choice(_SYNTAXES)
            if getattr(ds, "file_meta", None) is None:
                from pydicom.dataset import FileMetaDataset

                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = uid
            what = f"TransferSyntaxUID = {uid!r}"
        else:
            ds.SpecificCharacterSet = rng.choice(["ISO_IR 999", "ISO 2022 IR 87", "\xff", "ISO_IR 192",
                                                  "GB18030", "", "ISO_IR 100\\ISO_IR 126"])
            for key in ("PatientName", "StructureSetLabel", "RTPlanLabel", "SeriesDescription", "ROIName"):
                if key in parent and rng.random() < 0.5:
                    parent[key].value = rng.choice(["Müller^Jörg", "患者", "é" * 70])
            what = f"SpecificCharacterSet = {ds.SpecificCharacterSet!r}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        return buffer.getvalue(), what
    except Exception:  # noqa: BLE001 - pydicom refused to write this mutation: mutate the bytes instead
        return byte_mutation(rng, data)


def nrrd_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """NRRD: a header line deleted, duplicated or given a nasty value (sizes, type, encoding, space directions...),
    or the data after the header cut, extended or flipped."""
    end = data.find(b"\n\n")
    if end < 0:
        return text_mutation(rng, data)
    header, body = data[:end], data[end + 2:]
    lines = header.split(b"\n")
    kind = rng.choice(["field", "field", "field", "delete", "duplicate", "text", "body"])
    if kind == "body":
        new_body, what = byte_mutation(rng, body)
        return header + b"\n\n" + new_body, "data: " + what
    if kind == "text":
        new_header, what = text_mutation(rng, header)
        return new_header + b"\n\n" + body, "header: " + what
    i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
    if kind == "delete":
        return b"\n".join(lines[:i] + lines[i + 1:]) + b"\n\n" + body, f"delete header line {lines[i][:40]!r}"
    if kind == "duplicate":
        return b"\n".join(lines[:i + 1] + lines[i:]) + b"\n\n" + body, f"duplicate header line {lines[i][:40]!r}"
    key, sep, value = lines[i].partition(b":=" if b":=" in lines[i] else b":")
    choices = {
        b"sizes": [b"0 0 0", b"-1 24 10", b"4294967297 1 1", b"24 24", b"24 24 10 10", b"1e3 2 2", b"nan 1 1",
                   b"24 24 11", b"24 24 9", b"3 24 24 10", b"24 24 10 2", b"1 1 1", b"10000 10000 10000",
                   b"65536 65536 4096", b"2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2"],
        b"type": [b"double", b"uint64", b"int8", b"block", b"float", b"complex", b"", b"short int", b"unknown"],
        b"dimension": [b"0", b"2", b"4", b"-3", b"17", b"nan", b"99999999999"],
        b"encoding": [b"raw", b"ascii", b"hex", b"bzip2", b"gz", b"zstd", b"", b"gzip gzip"],
        b"endian": [b"big", b"middle", b""],
        b"space directions": [b"(0,0,0) (0,14,0) (0,0,10)", b"(nan,0,0) (0,14,0) (0,0,10)",
                              b"(inf,0,0) (0,1,0) (0,0,1)", b"none (0,1,0) (0,0,1)", b"(1,0) (0,1) (0,0)",
                              b"(1,0,0) (1,0,0) (0,0,1)", b"(-14,0,0) (0,-14,0) (0,0,-10)",
                              b"(1e308,0,0) (0,1,0) (0,0,1)"],
        b"space origin": [b"(nan,nan,nan)", b"(inf,0,0)", b"(1,2)", b"(1e309,0,0)", b"()", b"1 2 3"],
        b"space": [b"right-anterior-superior", b"scanner-xyz", b"3D-right-handed", b"nonsense", b""],
        b"kinds": [b"domain domain", b"list domain domain domain domain", b"RGB-color domain domain", b"?"],
        b"data file": [b"missing.raw", b"/dev/zero", b"LIST", b"../x%d.raw 1 3 1", b"/proc/self/mem"],
        b"line skip": [b"-1", b"999999999", b"nan"],
        b"byte skip": [b"-1", b"999999999", b"-2"],
    }
    options = choices.get(key.strip().lower())
    if options is None:  # Segment fields of .seg.nrrd and other key/value lines
        low = key.lower()
        if b"labelvalue" in low or b"layer" in low:
            options = [b"-1", b"0", b"256", b"99999999999", b"nan", b"", b"1.5", b"x"]
        elif b"extent" in low:
            options = [b"0 -1 0 -1 0 -1", b"1 2 3", b"-5 999 0 0 0 0", b"nan nan nan nan nan nan", b""]
        elif b"color" in low:
            options = [b"nan 0 0", b"1 2", b"-1 300 0", b"", b"x y z"]
        else:
            options = [v.encode("utf-8") for v in NASTY_STRINGS + NASTY_NUMBERS]
    value = rng.choice(options)
    lines[i] = key + sep + (b" " if sep == b":" else b"") + value
    return b"\n".join(lines) + b"\n\n" + body, f"header {key[:30]!r}{sep.decode()} {value[:40]!r}"


# -- readers --------------------------------------------------------------------------------------------------------
class Reader:
    """Seeds (file name, bytes) of one reader, how to mutate them and how to read one mutated input."""

    name = ""
    mutators: tuple = (byte_mutation,)

    def __init__(self, work: Path):
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.seeds: list[tuple[str, bytes, float]] = []  # (name, bytes, weight)

    def add_seed(self, name: str, data: bytes, weight: float = 1.0) -> None:
        self.seeds.append((name, data, weight))
        if dicom_mutation in self.mutators:
            remember_dicom_seed(data)

    def mutate(self, rng: random.Random, name: str, data: bytes) -> tuple[bytes, list[str]]:
        steps = []
        for _ in range(rng.choices([1, 2, 3], [0.7, 0.2, 0.1])[0]):
            data, what = rng.choice(self.mutators)(rng, data)
            steps.append(what)
        return data, steps

    def feed(self, name: str, data: bytes, rng: random.Random) -> None:
        raise NotImplementedError


class _FileReader(Reader):
    """The mutated bytes are written to a file of the seed's name and read from there."""

    def feed(self, name, data, rng):
        path = self.work / name
        path.write_bytes(data)
        self.read(path, rng)

    def read(self, path: Path, rng: random.Random) -> None:
        raise NotImplementedError


class _FolderReader(Reader):
    """A copy of a real folder in which one file is replaced by its mutation (restored afterwards)."""

    def __init__(self, work: Path, template: Path):
        super().__init__(work)
        self.folder = self.work / "folder"
        if self.folder.exists():
            shutil.rmtree(self.folder)
        shutil.copytree(template, self.folder)
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                self.add_seed(str(path.relative_to(self.folder)), path.read_bytes(), self.seed_weight(path))

    def seed_weight(self, path: Path) -> float:
        return 1.0

    def feed(self, name, data, rng):
        path = self.folder / name
        original = path.read_bytes()
        path.write_bytes(data)
        try:
            self.read(self.folder, rng)
        finally:
            path.write_bytes(original)

    def read(self, folder: Path, rng: random.Random) -> None:
        raise NotImplementedError


class DicomCT(Reader):
    name = "dicom_ct"
    mutators = (byte_mutation, dicom_mutation, dicom_mutation, vr_swap)

    def __init__(self, work, phantom_ct: Path, singles: list[Path]):
        super().__init__(work)
        self.folder = self.work / "series"
        shutil.copytree(phantom_ct, self.folder)
        for path in sorted(self.folder.iterdir()):
            self.add_seed("series/" + path.name, path.read_bytes(), 1.0)
        for path in singles:
            self.add_seed(path.name, path.read_bytes(), 2.0 if path.stat().st_size < 100_000 else 0.5)

    def feed(self, name, data, rng):
        from rtrai.io.dicom_series import read_ct_series

        path = self.work / name
        original = path.read_bytes() if name.startswith("series/") else None
        path.write_bytes(data)
        try:
            read_ct_series(self.folder if original is not None else path)
        finally:
            if original is not None:
                path.write_bytes(original)


class RTStruct(_FileReader):
    name = "rtstruct"
    mutators = (byte_mutation, dicom_mutation, dicom_mutation, dicom_mutation, vr_swap)

    def __init__(self, work, seeds: list[tuple[Path, object]]):
        super().__init__(work)
        self.grids = {}
        for path, grid in seeds:
            self.add_seed(path.name, path.read_bytes(), 0.3 if path.stat().st_size > 500_000 else 1.0)
            self.grids[path.name] = grid

    def read(self, path, rng):
        from rtrai.io.dicomrt import rasterize_rtstruct, read_rtstruct

        parsed = read_rtstruct(path)
        rasterize_rtstruct(parsed, self.grids[path.name], supersample=rng.choice([1, 1, 1, 2]))


class RTDose(_FileReader):
    name = "rtdose"
    mutators = (byte_mutation, dicom_mutation, dicom_mutation, dicom_mutation, vr_swap)

    def read(self, path, rng):
        from rtrai.io.dicomrt import read_rtdose

        read_rtdose(path, allow_relative=rng.random() < 0.5)


class RTPlan(_FileReader):
    name = "rtplan"
    mutators = (byte_mutation, dicom_mutation, dicom_mutation, dicom_mutation, vr_swap)

    def read(self, path, rng):
        from rtrai.io.dicomrt import read_rtplan

        read_rtplan(path, roi_names={1: "PTV70", 2: "Brainstem"} if rng.random() < 0.5 else None)


class DicomFolder(_FolderReader):
    name = "dicom_folder"
    mutators = (byte_mutation, dicom_mutation, dicom_mutation, vr_swap)

    def seed_weight(self, path):
        return 0.3 if path.parent.name == "CT" else (0.0 if path.suffix != ".dcm" else 1.0)

    def read(self, folder, rng):
        from rtrai.io.dicomrt import read_dicom_folder

        read_dicom_folder(folder)


class OpenKBP(_FolderReader):
    name = "openkbp"
    mutators = (text_mutation, text_mutation, text_mutation, byte_mutation)

    def feed(self, name, data, rng):
        # Sometimes the mutated text is compressed (so the damage reaches the CSV parser through the codec), and
        # sometimes a compressed file's bytes are damaged (so it reaches the codec).
        target = name
        if rng.random() < 0.25:
            codec = rng.choice([".gz", ".xz"])
            target = name + codec
            data = gzip.compress(data, 1) if codec == ".gz" else lzma.compress(data, preset=0)
            if rng.random() < 0.5:
                data = byte_mutation(rng, data)[0]
        path = self.folder / target
        original = (self.folder / name).read_bytes()
        if target != name:
            (self.folder / name).unlink()
        path.write_bytes(data)
        try:
            from rtrai.io.openkbp import read_openkbp

            read_openkbp(self.folder)
        finally:
            if target != name:
                path.unlink()
            (self.folder / name).write_bytes(original)


class Nrrd(_FileReader):
    name = "nrrd"
    mutators = (nrrd_mutation, nrrd_mutation, byte_mutation)

    def read(self, path, rng):
        from rtrai.io.images import nifti_nonfinite_voxels, read_image

        nifti_nonfinite_voxels(path)  # the NaN check of NIfTI files that ITK's reader cannot make (see images.py)
        read_image(path)


class SegNrrd(_FileReader):
    name = "seg_nrrd"
    mutators = (nrrd_mutation, nrrd_mutation, nrrd_mutation, byte_mutation)

    def read(self, path, rng):
        from rtrai.io.segfile import read_segmentation

        read_segmentation(path)


class CaseFolder(_FolderReader):
    name = "case_folder"

    def mutate(self, rng, name, data):
        if name.endswith(".json"):
            self.mutators = (text_mutation, _json_tree)
        else:
            self.mutators = (nrrd_mutation, nrrd_mutation, byte_mutation)
        return super().mutate(rng, name, data)

    def seed_weight(self, path):
        return 2.0 if path.name == "case.json" else 1.0

    def read(self, folder, rng):
        from rtrai.io.case_io import read_case

        read_case(folder)


def _yaml_tree(rng, data):
    import yaml

    try:
        tree = yaml.safe_load(data)
    except Exception:  # noqa: BLE001 - an already broken seed
        return text_mutation(rng, data)
    tree, what = tree_mutation(rng, tree)
    try:
        return yaml.safe_dump(tree, allow_unicode=rng.random() < 0.5).encode("utf-8", "surrogatepass"), what
    except Exception:  # noqa: BLE001 - not representable in YAML (nan keys ...)
        return text_mutation(rng, data)


def _json_tree(rng, data):
    try:
        tree = json.loads(data)
    except Exception:  # noqa: BLE001
        return text_mutation(rng, data)
    tree, what = tree_mutation(rng, tree)
    try:
        return json.dumps(tree, default=str).encode("utf-8", "surrogatepass"), what
    except Exception:  # noqa: BLE001
        return text_mutation(rng, data)


class SegConfig(_FileReader):
    name = "seg_config"
    mutators = (text_mutation, _yaml_tree, _yaml_tree)

    def read(self, path, rng):
        from rtrai.segmentation.config import load_config

        load_config(path)


class DoseConfig(_FileReader):
    name = "dose_config"
    mutators = (text_mutation, _yaml_tree, _yaml_tree)

    def read(self, path, rng):
        from rtrai.dose.config import load_config

        load_config(str(path))


class RadiomicsParams(_FileReader):
    name = "radiomics_params"
    mutators = (text_mutation, _yaml_tree, _yaml_tree)

    def read(self, path, rng):
        from rtrai.radiomics.extract import make_extractor

        make_extractor(path)


class CohortBatch(_FileReader):
    name = "cohort_batch"
    mutators = (text_mutation,)

    def read(self, path, rng):
        from rtrai.radiomics.cohort import read_batch

        read_batch(path)


class CohortList(_FileReader):
    name = "cohort_list"
    mutators = (text_mutation, byte_mutation)

    def read(self, path, rng):
        from rtrai.pipeline import read_cohort_list

        read_cohort_list(path)


class IBSIReference(_FileReader):
    name = "ibsi_reference"
    mutators = (text_mutation, text_mutation, byte_mutation)

    def __init__(self, work):
        super().__init__(work)
        self.values = {}

    def read(self, path, rng):
        from rtrai.radiomics import ibsi

        table = ibsi.reference_table(path)
        if not self.values:  # a computed value for every tag, so that the comparison itself is exercised
            self.values = {row.get("tag"): 1.0 for row in table if row.get("tag")}
        ibsi.family_report(ibsi.compare(self.values, table))


# -- the corpus -----------------------------------------------------------------------------------------------------
def _small_openkbp(source: Path, target: Path, rows: int = 300) -> None:
    """A copy of an OpenKBP patient with the first ``rows`` rows of each file, as plain CSV (header and format
    as upstream): the same reader paths, read in milliseconds instead of a second."""
    from rtrai.io.openkbp import csv_stem

    target.mkdir(parents=True)
    keep = ("voxel_dimensions", "ct", "dose", "possible_dose_mask", "PTV70", "Brainstem", "LeftParotid")
    for path in sorted(source.iterdir()):
        stem = csv_stem(path)
        if stem not in keep:
            continue
        opener = gzip.open if path.name.endswith(".gz") else lzma.open if path.name.endswith(".xz") else open
        with opener(path, "rt") as handle:
            lines = handle.read().splitlines()
        (target / f"{stem}.csv").write_text("\n".join(lines[: rows + 1]) + "\n")


def _phantom(work: Path) -> tuple[Path, Path]:
    """A small phantom written as a case folder and exported with ``rtrai export-dicom``."""
    from rtrai.io.case_io import write_case
    from rtrai.phantom import make_phantom

    case = make_phantom(0, size=(24, 24, 10), spacing=(14.0, 14.0, 10.0), noise_hu=5.0)
    folder, dicom = work / "phantom_case", work / "phantom_dicom"
    write_case(case, folder)
    subprocess.run([sys.executable, "-m", "rtrai", "export-dicom", str(folder), str(dicom)], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO / "RTRadiomicsAI")))
    return folder, dicom


def _ct_grid(path: Path, factor: int = 8, slices: int = 16):
    """A coarse grid around a one-slice CT, to rasterise a structure set drawn on it."""
    import pydicom

    from rtrai.core.image import Grid

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row, col = (float(v) for v in ds.PixelSpacing)
    size = (int(ds.Columns) // factor, int(ds.Rows) // factor, slices)
    spacing = (col * factor, row * factor, 3.0)
    origin = [float(v) for v in ds.ImagePositionPatient]
    origin[2] -= 3.0 * slices / 2
    return Grid(size, spacing, tuple(origin), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def build_readers(work: Path) -> dict[str, Reader]:
    from pydicom.data import get_testdata_file

    from rtrai.core.image import Grid
    from rtrai.io.images import write_image
    from rtrai.io.segfile import write_segmentation

    def testfile(name: str) -> Path:
        return Path(get_testdata_file(name))

    case_folder, dicom = _phantom(work)
    dicompyler = SHARED / "dicom-rt" / "dicompyler-core_example"
    pyradiomics = SHARED / "pyradiomics"
    readers: dict[str, Reader] = {}

    singles = [testfile("CT_small.dcm")] + ([dicompyler / "ct.0.dcm"] if dicompyler.is_dir() else [])
    readers["dicom_ct"] = DicomCT(work, dicom / "CT", singles)

    from rtrai.core.image import Grid as _Grid
    from rtrai.io.images import read_image

    phantom_grid = _Grid.of(read_image(case_folder / "CT.nrrd"))
    small_grid = Grid((40, 30, 8), (10.0, 10.0, 5.0), (-200.0, -150.0, -220.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    structs = [(testfile("rtstruct.dcm"), small_grid), (dicom / "RTSTRUCT.dcm", phantom_grid)]
    if dicompyler.is_dir():
        structs.append((dicompyler / "rtss.dcm", _ct_grid(dicompyler / "ct.0.dcm")))
    readers["rtstruct"] = RTStruct(work, structs)

    readers["rtdose"] = RTDose(work)
    for name in ("rtdose.dcm", "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle.dcm",
                 "rtdose_rle_1frame.dcm"):
        readers["rtdose"].add_seed(name, testfile(name).read_bytes())
    readers["rtdose"].add_seed("RTDOSE.dcm", (dicom / "RTDOSE.dcm").read_bytes(), 3.0)

    readers["rtplan"] = RTPlan(work)
    for path in (testfile("rtplan.dcm"), testfile("rtplan_truncated.dcm"), dicom / "RTPLAN.dcm"):
        readers["rtplan"].add_seed(path.name, path.read_bytes(), 1.0)
    if dicompyler.is_dir():
        readers["rtplan"].add_seed("dicompyler_rtplan.dcm", (dicompyler / "rtplan.dcm").read_bytes(), 0.3)

    readers["dicom_folder"] = DicomFolder(work, dicom)

    patient = SHARED / "openkbp" / "validation-pats" / "pt_201"
    if patient.is_dir():
        _small_openkbp(patient, work / "openkbp_pt_201")
        readers["openkbp"] = OpenKBP(work, work / "openkbp_pt_201")

    nrrd = Nrrd(work)
    for name in ("CT.nrrd", "Dose.nrrd", "PossibleDoseMask.nrrd"):
        nrrd.add_seed(name, (case_folder / name).read_bytes(), 2.0)
    ct = read_image(case_folder / "CT.nrrd")
    for name in ("raw.nrrd", "raw.nii", "ct.nii.gz", "ct.mha"):
        write_image(ct, work / name, compress=name in ("ct.nii.gz", "ct.mha"))
        nrrd.add_seed(name, (work / name).read_bytes(), 1.0)
    for name in ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd", "breast1_label.nrrd"):
        if (pyradiomics / "data" / name).is_file():
            nrrd.add_seed(name, (pyradiomics / "data" / name).read_bytes(), 1.0)
    readers["nrrd"] = nrrd

    seg = SegNrrd(work)
    seg.add_seed("Structures.seg.nrrd", (case_folder / "Structures.seg.nrrd").read_bytes(), 3.0)
    from rtrai.io.case_io import read_case

    case = read_case(case_folder)
    one = {k: case.structures[k] for k in list(case.structures)[:2]}
    write_segmentation(one, work / "two.seg.nrrd", reference=case.ct)
    seg.add_seed("two.seg.nrrd", (work / "two.seg.nrrd").read_bytes(), 1.0)
    for name in ("breast1_label.nrrd",):
        if (pyradiomics / "data" / name).is_file():
            seg.add_seed(name.replace(".nrrd", ".seg.nrrd"), (pyradiomics / "data" / name).read_bytes(), 1.0)
    readers["seg_nrrd"] = seg

    readers["case_folder"] = CaseFolder(work, case_folder)

    package = REPO / "RTRadiomicsAI" / "rtrai"
    readers["seg_config"] = SegConfig(work)
    for path in sorted((package / "segmentation" / "configs").glob("*.yaml")):
        readers["seg_config"].add_seed(path.name, path.read_bytes())
    readers["seg_config"].add_seed("config.json", json.dumps({"name": "x", "labels": ["Brainstem"],
                                                              "steps": 10}).encode(), 0.5)
    readers["dose_config"] = DoseConfig(work)
    for path in sorted((package / "dose" / "configs").glob("*.yaml")):
        readers["dose_config"].add_seed(path.name, path.read_bytes())
    readers["radiomics_params"] = RadiomicsParams(work)
    for path in sorted((package / "radiomics" / "presets").glob("*.yaml")) + \
            sorted((pyradiomics / "exampleSettings").glob("*.yaml")):
        readers["radiomics_params"].add_seed(path.name, path.read_bytes())

    batch = CohortBatch(work)
    if (pyradiomics / "testCases.csv").is_file():
        batch.add_seed("testCases.csv", (pyradiomics / "testCases.csv").read_bytes())
    batch.add_seed("cohort.csv", ("ID,Image,Mask,Label,Structure\n"
                                  "pt1,images/pt1.nrrd,masks/pt1.seg.nrrd,1,PTV70\n"
                                  "pt2,/data/pt2/CT.nrrd,/data/pt2/Structures.seg.nrrd,,Parotid_L\n"
                                  "pt3,pt3,,2,\n").encode())
    readers["cohort_batch"] = batch
    cohort_list = CohortList(work)
    cohort_list.add_seed("cases.txt", b"# cohort\npt_201\n../other/pt_202  # second\n\n/abs/path/pt_203\n")
    cohort_list.add_seed("cases2.txt", "\ufeffcases/pt_1\ncases/pt_2\n".encode())
    readers["cohort_list"] = cohort_list

    reference = IBSIReference(work)
    for path in sorted((SHARED / "ibsi" / "reference_values").glob("*.csv")):
        reference.add_seed(path.name, path.read_bytes())
    readers["ibsi_reference"] = reference
    return {name: r for name, r in readers.items() if r.seeds}


# -- the run --------------------------------------------------------------------------------------------------------
def _first_rtrai_frame(exc: BaseException) -> str:
    """The innermost frame in the rtrai package (where the exception left our code), as module:function:line."""
    package = str(REPO / "RTRadiomicsAI" / "rtrai")
    found = "no rtrai frame"
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(package):
            module = Path(frame.filename).relative_to(package).with_suffix("")
            found = f"rtrai/{module}.py:{frame.name}:{frame.lineno}"
    return found


def _quiet() -> None:
    import logging

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except ImportError:
        pass
    import pydicom.config

    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


def _limit_memory(gigabytes: float) -> None:
    try:
        import resource

        limit = int(gigabytes * 2 ** 30)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def run(count: int = 100_000, seed: int = 0, readers: list[str] | None = None, time_limit: float = 5.0,
        progress_every: int | None = None, index: int | None = None, show: bool = False,
        print_fn=print, quiet_stderr: bool = True) -> dict:
    """Fuzz ``count`` inputs; returns {"inputs": Counter, "refused": Counter, "accepted": Counter,
    "bugs": Counter[(reader, type, frame)], "examples": {...}, "slow": [...], "seconds": float}."""
    from rtrai.core.errors import RTRAIError

    _quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rtrai-fuzz-") as tmp:
        work = Path(tmp)
        available = build_readers(work)
        names = [n for n in (readers or WEIGHTS) if n in available]
        unknown = sorted(set(readers or []) - set(WEIGHTS))
        if unknown:
            raise SystemExit(f"unknown reader(s) {', '.join(unknown)}; choose from {', '.join(WEIGHTS)}")
        weights = [WEIGHTS[n] for n in names]
        setup = time.perf_counter() - started
        print_fn(f"corpus ready in {setup:.1f} s: " + ", ".join(f"{n} ({len(available[n].seeds)} seeds)"
                                                            for n in names))
        stats = {"inputs": Counter(), "refused": Counter(), "accepted": Counter(), "bugs": Counter(),
                 "examples": {}, "slow": [], "max_seconds": defaultdict(float), "total_seconds": defaultdict(float),
                 "multiline": Counter(), "multiline_examples": {},
                 "setup_seconds": setup}
        every = progress_every or max(1, count // 20)

        def on_alarm(signum, frame):
            raise Slow()

        use_alarm = hasattr(signal, "SIGALRM") and time_limit > 0
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, on_alarm)
        loop_start = time.perf_counter()
        indices = [index] if index is not None else range(count)
        # ITK and MetaIO print their complaints straight to the C stderr; keep them off the progress lines.
        saved_stderr = None
        if quiet_stderr:
            sys.stderr.flush()
            saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        try:
            for done, i in enumerate(indices, start=1):
                t_mutate = time.perf_counter()
                rng = random.Random(seed * 1_000_003 + i)
                reader = available[rng.choices(names, weights)[0]]
                seed_name, seed_data, _ = rng.choices(reader.seeds, [w for _, _, w in reader.seeds])[0]
                data, steps = reader.mutate(rng, seed_name, seed_data)
                if show:
                    print_fn(f"input {i}: {reader.name} {seed_name}: " + "; ".join(steps))
                stats["inputs"][reader.name] += 1
                t0 = time.perf_counter()
                try:
                    if use_alarm:
                        signal.setitimer(signal.ITIMER_REAL, time_limit)
                    try:
                        reader.feed(seed_name, data, rng)
                    finally:
                        if use_alarm:
                            signal.setitimer(signal.ITIMER_REAL, 0)
                    stats["accepted"][reader.name] += 1
                    if show:
                        print_fn("  accepted")
                except RTRAIError as exc:
                    stats["refused"][reader.name] += 1
                    message = str(exc)
                    if "\n" in message.strip() or not message.strip():  # the CLI prints it as one line
                        stats["multiline"][reader.name] += 1
                        stats["multiline_examples"].setdefault(reader.name, (i, seed_name, message[:200]))
                    if show:
                        print_fn(f"  refused: {type(exc).__name__}: {exc}")
                except Slow:
                    stats["slow"].append((reader.name, i, seed_name, "; ".join(steps)))
                except Exception as exc:  # noqa: BLE001 - what we count
                    key = (reader.name, type(exc).__name__, _first_rtrai_frame(exc))
                    stats["bugs"][key] += 1
                    stats["examples"].setdefault(key, (i, seed_name, "; ".join(steps), str(exc)[:160]))
                    if show:
                        print_fn("".join(traceback.format_exception(exc)))
                elapsed = time.perf_counter() - t0
                stats["max_seconds"][reader.name] = max(stats["max_seconds"][reader.name], elapsed)
                stats["total_seconds"][reader.name] += time.perf_counter() - t_mutate
                if done % every == 0 and index is None:
                    rate = done / (time.perf_counter() - loop_start)
                    print_fn(f"  {done:>7}/{count} inputs, {sum(stats['bugs'].values())} non-rtrai exceptions, "
                             f"{len(stats['slow'])} slow, {rate:.0f} inputs/s", flush=True)
        finally:
            if use_alarm:
                signal.signal(signal.SIGALRM, previous)
            if saved_stderr is not None:
                os.dup2(saved_stderr, 2)
                os.close(saved_stderr)
    stats["seconds"] = time.perf_counter() - started
    stats["loop_seconds"] = time.perf_counter() - loop_start
    return stats


def report(stats: dict, print_fn=print) -> None:
    print_fn("")
    print_fn(f"{'reader':<17}{'inputs':>8}{'refused':>9}{'accepted':>10}{'other exc':>11}{'multi-line':>11}"
             f"{'mean ms':>9}{'max s':>8}")
    bugs_by_reader = Counter()
    for (reader, _, _), n in stats["bugs"].items():
        bugs_by_reader[reader] += n
    for reader in WEIGHTS:
        if stats["inputs"][reader]:
            print_fn(f"{reader:<17}{stats['inputs'][reader]:>8}{stats['refused'][reader]:>9}"
                     f"{stats['accepted'][reader]:>10}{bugs_by_reader[reader]:>11}{stats['multiline'][reader]:>11}"
                     f"{1000 * stats['total_seconds'][reader] / stats['inputs'][reader]:>9.1f}"
                     f"{stats['max_seconds'][reader]:>8.2f}")
    total = sum(stats["inputs"].values())
    print_fn(f"{'total':<17}{total:>8}{sum(stats['refused'].values()):>9}{sum(stats['accepted'].values()):>10}"
             f"{sum(bugs_by_reader.values()):>11}{sum(stats['multiline'].values()):>11}")
    if stats["bugs"]:
        print_fn("\nnon-rtrai exceptions (reader, type, first rtrai frame): count; first input (replay with "
                 "--index I --show)")
        for key, n in stats["bugs"].most_common():
            i, seed_name, steps, message = stats["examples"][key]
            print_fn(f"  {key[0]:<16} {key[1]:<20} {key[2]:<50} {n:>6}  input {i} ({seed_name}: {steps[:80]}): "
                     f"{message[:100]}")
    if stats["multiline"]:
        print_fn("\nrefusals whose message is not one line (the CLI prints 'rtrai: error: MESSAGE'):")
        for reader, (i, seed_name, message) in stats["multiline_examples"].items():
            print_fn(f"  {reader:<16} {stats['multiline'][reader]:>6}  input {i} ({seed_name}): "
                     f"{' | '.join(message.splitlines())[:150]}")
    for reader, i, seed_name, steps in stats["slow"][:20]:
        print_fn(f"  slow (> time limit): {reader} input {i} ({seed_name}: {steps[:100]})")
    print_fn(f"\nnon-rtrai exceptions: {sum(stats['bugs'].values())} (goal 0); multi-line refusals: "
             f"{sum(stats['multiline'].values())}; slow inputs: {len(stats['slow'])}; "
             f"{total} inputs in {stats['loop_seconds']:.0f} s ({total / max(stats['loop_seconds'], 1e-9):.0f}/s) "
             f"after {stats['setup_seconds']:.1f} s of setup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=100_000, help="number of inputs (default 100000)")
    parser.add_argument("-n", "--count", dest="count_option", type=int, help="the same as COUNT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", help="comma-separated subset of: " + ", ".join(WEIGHTS))
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per input before it counts as slow")
    parser.add_argument("--memory-gb", type=float, default=3.0, help="address-space limit of this process")
    parser.add_argument("--progress", type=int, help="print progress every N inputs (default count/20)")
    parser.add_argument("--index", type=int, help="replay only input I of this seed")
    parser.add_argument("--show", action="store_true", help="print each input's mutation and its outcome")
    parser.add_argument("--stderr", action="store_true", help="let ITK's own messages through to stderr")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON: the counts per reader")
    args = parser.parse_args(argv)
    count = args.count_option if args.count_option is not None else args.count
    _limit_memory(args.memory_gb)
    stats = run(count, args.seed, args.readers.split(",") if args.readers else None, args.time_limit,
                args.progress, args.index, args.show, quiet_stderr=not args.stderr)
    report(stats)
    if args.json:
        print(json.dumps(summary(stats)))
    return 1 if stats["bugs"] or stats["slow"] else 0


def summary(stats: dict) -> dict:
    """The counts as plain JSON: per reader inputs/refused/accepted/bugs/multiline, and each bug class."""
    bugs = Counter()
    for (reader, _, _), n in stats["bugs"].items():
        bugs[reader] += n
    return {"readers": {r: {"inputs": stats["inputs"][r], "refused": stats["refused"][r],
                            "accepted": stats["accepted"][r], "bugs": bugs[r], "multiline": stats["multiline"][r]}
                        for r in WEIGHTS if stats["inputs"][r]},
            "bugs": [{"reader": k[0], "type": k[1], "frame": k[2], "count": n, "example": stats["examples"][k]}
                     for k, n in stats["bugs"].most_common()],
            "multiline_examples": stats["multiline_examples"],
            "slow": stats["slow"], "seconds": round(stats["seconds"], 1)}


if __name__ == "__main__":
    sys.exit(main())

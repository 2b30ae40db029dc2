"""OpenKBP reading/writing and ``rtrai convert`` on real OpenKBP data (validation pt_201)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from rtrai.io import openkbp
from rtrai.io.case_io import read_case
from rtrai.io.segfile import read_segmentation

TG263 = {"Brainstem": "Brainstem", "SpinalCord": "SpinalCord", "RightParotid": "Parotid_R",
         "LeftParotid": "Parotid_L", "Esophagus": "Esophagus", "Larynx": "Larynx", "Mandible": "Bone_Mandible",
         "PTV56": "PTV56", "PTV63": "PTV63", "PTV70": "PTV70"}


def rtrai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtrai", *map(str, args)], capture_output=True, text=True)


def upstream_array(path: Path) -> np.ndarray:
    """OpenKBP's own loading recipe: a zero (128,128,128) array filled with np.put at the linear indices."""
    df = pd.read_csv(path, index_col=0)
    out = np.zeros((128, 128, 128))
    values = df["data"].to_numpy() if df["data"].notna().any() else np.ones(len(df))
    np.put(out, df.index.to_numpy(), values)
    return out


def to_openkbp_axes(zyx: np.ndarray) -> np.ndarray:
    """Inverse of the documented convention zyx[z, y, x] = a[y, x, 127 - z]."""
    return zyx[::-1].transpose(1, 2, 0)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(folder.rglob("*")):
        if item.is_file():
            digest.update(item.name.encode() + item.read_bytes())
    return digest.hexdigest()


def test_convert_pt201_reproduces_every_value(openkbp_pt201, tmp_path):
    out = tmp_path / "pt_201"
    result = rtrai("convert", openkbp_pt201, out)
    assert result.returncode == 0, result.stderr
    for name in ("CT.nrrd", "Structures.seg.nrrd", "Dose.nrrd", "provenance.json"):
        assert (out / name).is_file(), name

    vd = np.loadtxt(openkbp_pt201 / "voxel_dimensions.csv.gz")
    ct = sitk.ReadImage(str(out / "CT.nrrd"))
    np.testing.assert_allclose(ct.GetSpacing(), (vd[1], vd[0], vd[2]))
    # CT: every value, stored as HU = OpenKBP value - 1024 (0 upstream = outside the scan = -1024 HU).
    ct_ref = upstream_array(openkbp_pt201 / "ct.csv.gz")
    np.testing.assert_array_equal(to_openkbp_axes(sitk.GetArrayFromImage(ct)).astype(np.float64) + 1024, ct_ref)
    dose = sitk.ReadImage(str(out / "Dose.nrrd"))
    assert dose.GetPixelID() == sitk.sitkFloat32
    dose_ref = upstream_array(openkbp_pt201 / "dose.csv.gz")
    np.testing.assert_allclose(to_openkbp_axes(sitk.GetArrayFromImage(dose)), dose_ref, rtol=1e-7, atol=0)
    # The data README's sanity check: 116,576 listed dose voxels (531 of them list an explicit 0), max 72.3 Gy.
    assert len(pd.read_csv(openkbp_pt201 / "dose.csv.gz")) == 116576 and abs(dose_ref.max() - 72.3) < 0.05

    masks, colors = read_segmentation(out / "Structures.seg.nrrd")
    present = {p.name.split(".")[0] for p in openkbp_pt201.glob("*.csv.gz")} & set(TG263)
    assert set(masks) == {TG263[s] for s in present}
    for stem in present:
        ref = upstream_array(openkbp_pt201 / f"{stem}.csv.gz")
        ours = to_openkbp_axes(sitk.GetArrayFromImage(masks[TG263[stem]]))
        assert ours.sum() == ref.sum() > 0, stem
        np.testing.assert_array_equal(ours != 0, ref != 0)
        assert masks[TG263[stem]].GetSpacing() == ct.GetSpacing()
    assert colors["Parotid_L"] != colors["Parotid_R"]


def test_axis_convention_matches_anatomy(openkbp_pt201):
    case = read_case(openkbp_pt201)

    def centroid(name):
        from rtrai.core.image import physical_centroid

        return physical_centroid(case.structures[name])

    assert centroid("Parotid_L")[0] > centroid("Parotid_R")[0]  # LPS +x is the patient's left
    assert centroid("Bone_Mandible")[1] < centroid("SpinalCord")[1]  # +y is posterior
    assert centroid("Brainstem")[2] > centroid("Larynx")[2]  # +z is superior
    assert case.prescription == {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}


def test_write_openkbp_round_trip(openkbp_pt201, tmp_path):
    case = read_case(openkbp_pt201)
    openkbp.write_openkbp(case, tmp_path / "pt_201",
                          what=("ct", "dose", "structures", "possible_dose_mask", "voxel_dimensions"))
    assert (tmp_path / "pt_201" / "LeftParotid.csv").is_file()
    assert (tmp_path / "pt_201" / "Mandible.csv").is_file()
    assert (tmp_path / "pt_201" / "dose.csv").read_text().startswith(",data\n")
    back = read_case(tmp_path / "pt_201")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.ct), sitk.GetArrayFromImage(case.ct))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.dose), sitk.GetArrayFromImage(case.dose))
    assert set(back.structures) == set(case.structures)
    for name in case.structures:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back.structures[name]),
                                      sitk.GetArrayFromImage(case.structures[name]))
    # Same indices and values as the upstream dose file.
    ours = upstream_array(tmp_path / "pt_201" / "dose.csv")
    np.testing.assert_allclose(ours, upstream_array(openkbp_pt201 / "dose.csv.gz"), rtol=1e-7)


def test_convert_folder_of_patients(shared_data, tmp_path):
    patients = tmp_path / "patients"
    patients.mkdir()
    for name in ("pt_201", "pt_202"):
        shutil.copytree(shared_data / "openkbp" / "validation-pats" / name, patients / name)
    result = rtrai("convert", patients, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "pt_201" / "Dose.nrrd").is_file()
    assert (tmp_path / "out" / "pt_202" / "Structures.seg.nrrd").is_file()


def _corrupt(openkbp_pt201: Path, tmp_path: Path, edit) -> Path:
    patient = tmp_path / "pt_bad"
    shutil.copytree(openkbp_pt201, patient)
    edit(patient)
    return patient


def _replace_rows(path: Path, row: str) -> None:
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    lines[5] = row
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, message", [
    (lambda p: _replace_rows(p / "dose.csv.gz", "12x4,3.5"), "non-integer voxel index"),
    (lambda p: _replace_rows(p / "dose.csv.gz", "-5,3.5"), "outside 0..2097151"),
    (lambda p: _replace_rows(p / "Brainstem.csv.gz", "2097152,"), "outside 0..2097151"),
    (lambda p: _replace_rows(p / "ct.csv.gz", "1000,abc"), "non-numeric value"),
    (lambda p: (p / "voxel_dimensions.csv.gz").unlink(), "voxel_dimensions.csv is missing"),
    (lambda p: (p / "ct.csv.gz").write_bytes(b"\x1f\x8b\x08garbage"), "not a readable OpenKBP CSV"),
])
def test_corrupt_openkbp_exits_2_cleanly(openkbp_pt201, tmp_path, edit, message):
    patient = _corrupt(openkbp_pt201, tmp_path, edit)
    before = tree_digest(patient)
    out = tmp_path / "out"
    result = rtrai("convert", patient, out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtrai: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "no partial output folder"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary folder left behind"
    assert tree_digest(patient) == before, "input untouched"


def test_unknown_input_exits_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = rtrai("convert", tmp_path / "notes.txt", tmp_path / "out")
    assert result.returncode == 2 and "not a supported file" in result.stderr
    result = rtrai("convert", tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and "input not found" in result.stderr


@pytest.mark.parametrize("compression", ["", ".xz", ".bz2", ".zip"])
def test_every_compression_reads_the_same_case(openkbp_pt201, tmp_path, compression):
    """The shared train patients are .csv.xz, the validation ones .csv.gz: any compression pandas reads is one case."""
    import bz2
    import lzma
    import zipfile

    folder = tmp_path / "pt_201"
    folder.mkdir()
    for path in openkbp_pt201.glob("*.csv.gz"):
        raw, name = gzip.decompress(path.read_bytes()), path.name[:-3] + compression
        if compression == ".xz":
            (folder / name).write_bytes(lzma.compress(raw))
        elif compression == ".bz2":
            (folder / name).write_bytes(bz2.compress(raw))
        elif compression == ".zip":
            with zipfile.ZipFile(folder / name, "w") as archive:
                archive.writestr(path.name[:-3], raw)
        else:
            (folder / name).write_bytes(raw)
    ours, reference = read_case(folder), read_case(openkbp_pt201)
    assert sorted(ours.structures) == sorted(reference.structures) and len(ours.structures) >= 8
    for name in reference.structures:
        assert np.array_equal(sitk.GetArrayViewFromImage(ours.structures[name]),
                              sitk.GetArrayViewFromImage(reference.structures[name])), name
    assert np.array_equal(sitk.GetArrayViewFromImage(ours.ct), sitk.GetArrayViewFromImage(reference.ct))
    assert np.array_equal(sitk.GetArrayViewFromImage(ours.dose), sitk.GetArrayViewFromImage(reference.dose))
    assert ours.ct.GetSpacing() == reference.ct.GetSpacing()


def test_train_patients_in_xz_are_read(tmp_path):
    from conftest import shared_path

    folder = shared_path("openkbp", "train-pats", "pt_1")
    assert any(p.name.endswith(".csv.xz") for p in folder.iterdir())
    case = read_case(folder)
    assert case.dose is not None and case.possible_dose_mask is not None and "PTV70" in case.structures
    assert float(sitk.GetArrayViewFromImage(case.dose).max()) > 60
    (tmp_path / "pt_1").mkdir()
    (tmp_path / "pt_1" / "ct.csv.xz").write_bytes(b"\xfd7zXZ\x00garbage")
    shutil.copy(folder / "voxel_dimensions.csv.xz", tmp_path / "pt_1")
    with pytest.raises(openkbp.FormatError, match="not a readable OpenKBP CSV"):
        read_case(tmp_path / "pt_1")

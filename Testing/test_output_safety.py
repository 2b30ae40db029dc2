"""Inputs are never touched and nothing escapes the output folder: every command that writes refuses an output that
is an input, lies inside one or contains one, and an output it cannot create, with one line and exit 2 before any
work; structure names from any source are made safe before a path is built from them; a model asked for by name
and not found is an error."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.structures import safe_name, to_tg263
from rtrai.io.case_io import read_case, write_case
from rtrai.phantom import make_phantom


def rtrai(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtrai", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for item in sorted([path] if path.is_file() else path.rglob("*")):
        if item.is_file():
            h.update(str(item.relative_to(path.parent)).encode() + item.read_bytes())
    return h.hexdigest()


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rtrai: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs") / "case"
    write_case(make_phantom(seed=0), folder)
    return folder


@pytest.fixture(scope="module")
def outcome_table(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("table") / "table.csv"
    rows = ["ID,time,event,f1,f2"] + [f"p{i},{rng.uniform(1, 60):.2f},{i % 2},{rng.normal():.4f},{rng.normal():.4f}"
                                      for i in range(30)]
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------------------------ outputs that touch inputs

def _commands(case: Path, out: str) -> dict[str, list]:
    """Each writing command with ``case`` as its input and ``out`` as its output."""
    return {
        "convert": ["convert", case, out],
        "export-dicom": ["export-dicom", case, out],
        "segment": ["segment", case, "-o", out],
        "dose predict": ["dose", "predict", case, "-o", out],
        "run": ["run", case, "-o", out, "--no-scene"],
        "dvh": ["dvh", "--dose", case / "Dose.nrrd", "--structures", case / "Structures.seg.nrrd", "-o", out],
        "radiomics": ["radiomics", "--image", case, "--structure", "PTV70", "-o", out],
    }


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_every_writing_command_refuses_an_output_on_its_input(case_folder, tmp_path, where):
    before = digest(case_folder)
    for name, argv in _commands(case_folder, "OUT").items():
        if where == "inside" and name in ("dvh", "radiomics"):
            continue  # their inputs are files: an output beside them, in their folder, is the user's choice
        if where == "same":
            out = case_folder
        elif where == "inside":
            out = case_folder / "results"
        else:
            out = case_folder.parent
        argv = [out if a == "OUT" else a for a in argv]
        result = rtrai(*argv)
        refused(result)
        expected = {"same": "is the input", "inside": "inside the input folder", "contains": "lies inside the output"}
        # dvh and radiomics read files of the case folder: the folder as output contains those inputs
        assert expected[where] in result.stderr or (name in ("dvh", "radiomics")
                                                    and expected["contains"] in result.stderr), result.stderr
        assert digest(case_folder) == before, name
    assert not (case_folder / "results").exists()


def test_an_output_file_naming_an_input_file_is_refused(case_folder, outcome_table, tmp_path):
    image = case_folder / "CT.nrrd"
    before = digest(image)
    refused(rtrai("radiomics", "--image", image, "--mask", case_folder / "Structures.seg.nrrd", "--structure",
                  "PTV70", "-o", image), "is the input")
    assert digest(image) == before
    table_before = digest(outcome_table)
    refused(rtrai("outcome", "predict", "--model", tmp_path, "--table", outcome_table, "-o", outcome_table),
            "is the input")
    assert digest(outcome_table) == table_before


def test_radiomics_output_naming_a_folder_is_refused(case_folder, tmp_path):
    refused(rtrai("radiomics", "--image", case_folder, "--structure", "PTV70", "-o", tmp_path), "is a folder")


def test_convert_x_x_and_relative_forms(case_folder):
    refused(rtrai("convert", ".", ".", cwd=case_folder), "is the input")
    refused(rtrai("convert", "case", "case/../case/sub", cwd=case_folder.parent), "inside the input folder")


# -------------------------------------------------------------------------------------- outputs that cannot be made

def _impossible(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    places = {"virtual": Path("/proc/rtrai-out"), "through a file": a_file / "out"}
    if os.geteuid() != 0:  # root writes into a mode-555 folder anyway; /proc covers the refusal for root
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        places["read-only"] = locked / "out"
    return places


def test_unwritable_outputs_give_one_line_and_exit_2(case_folder, outcome_table, tmp_path):
    for kind, out in _impossible(tmp_path).items():
        commands = _commands(case_folder, "OUT")
        argvs = [commands[n] for n in ("convert", "export-dicom", "dvh", "radiomics", "run")]
        argvs.append(["outcome", "fit", "--table", outcome_table, "--id", "ID", "--time", "time", "--event", "event",
                      "--model", "cox", "-o", "OUT"])
        for argv in argvs:
            result = rtrai(*[out if a == "OUT" else a for a in argv])
            refused(result, str(out))
            assert kind in ("virtual", "through a file", "read-only")


def test_file_system_errors_during_work_are_one_line(tmp_path, monkeypatch, capsys):
    """An OSError met while working (here: the output's parent turns out to be a file) is one line, exit 2."""
    from rtrai import cli
    from rtrai.core import paths

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setattr(paths, "check_writable", lambda *a, **k: None)  # let the command reach the write
    case = tmp_path / "case"
    write_case(make_phantom(seed=0), case)
    assert cli.main(["convert", str(case), str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtrai: error: cannot access") and "blocker" in err[0]


# ---------------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("raw, safe", [("../../etc/passwd", "___.._etc_passwd"), ("PTV 70/56", "PTV 70_56"),
                                       ("Cord\x00\x07", "Cord"), (".hidden", "_hidden"), ("C:\\x", "C__x"),
                                       ("Lt Parotid", "Lt Parotid"), ("GTV\n", "GTV")])
def test_safe_name(raw, safe):
    assert safe_name(raw) == safe
    assert "/" not in to_tg263(raw) and "\x00" not in to_tg263(raw)


@pytest.mark.parametrize("raw", ["..", ".", "   ", "\x00", "/", "\x01\x02"])
def test_names_with_nothing_usable_are_refused(raw):
    with pytest.raises(InputError, match="no usable characters"):
        safe_name(raw)


def test_dangerous_names_from_a_seg_file_and_a_manifest_stay_inside_the_output(tmp_path):
    """A .seg.nrrd segment named like a path (as any other source) is read under a safe name, and writing the case
    as OpenKBP files (one file per structure) puts every file inside the output folder."""
    from rtrai.io.openkbp import write_openkbp
    from rtrai.io.segfile import write_segmentation

    phantom = make_phantom(seed=0, size=(128, 128, 128))  # the OpenKBP grid
    mask = next(iter(phantom.structures.values()))
    write_segmentation({"../../escaped": mask, "Cord\x00": mask}, tmp_path / "evil.seg.nrrd", None, phantom.ct)
    sitk.WriteImage(phantom.ct, str(tmp_path / "CT.nrrd"))
    case = read_case(tmp_path / "CT.nrrd")
    from rtrai.io.segfile import read_segmentation

    structures, _ = read_segmentation(tmp_path / "evil.seg.nrrd")
    for name, image in structures.items():
        case.add_structure(name, image)
    assert set(case.structures) == {"___.._escaped", "SpinalCord"}  # "Cord" is an alias of SpinalCord
    out = tmp_path / "deep" / "out"
    written = write_openkbp(case, out, ("structures",))
    assert all(p.resolve().parent == out.resolve() for p in written)
    assert not list(tmp_path.glob("escaped*")) and not (tmp_path / "deep" / "escaped.csv").exists()
    labelled = Case(ct=phantom.ct)
    assert labelled.add_structure("a/b", mask, keep_name=True) == "a_b"  # a model manifest's label, kept as given


# ---------------------------------------------------------------------------------------------------- models

def test_a_model_asked_for_and_not_found_is_an_error(case_folder, tmp_path):
    for option, value in (("--segmentation-model", "../../x"), ("--dose-model", "no-such-model"),
                          ("--outcome-model", tmp_path / "missing")):
        out = tmp_path / "out"
        refused(rtrai("run", case_folder, "-o", out, option, value), "model")
        assert not out.exists()


def test_the_demo_never_writes_into_its_built_in_case():
    from rtrai.demo import BUILTIN_CASE

    before = digest(BUILTIN_CASE)
    refused(rtrai("demo", "-o", BUILTIN_CASE / "out"), "inside the input folder")
    assert digest(BUILTIN_CASE) == before and not (BUILTIN_CASE / "out").exists()

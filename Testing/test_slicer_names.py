"""Every Slicer, CTK, VTK and Qt name the Slicer side uses exists in Slicer 5.8+.

The modules cannot run here (no Slicer application), so a misspelt ``slicer.util`` function or a widget class that
Slicer does not have would fail only in front of a user. This test lists what the module files (every .py of a module
folder but the ``rtrai`` library, with ``RTRadiomicsAILib``) and their .ui files use:

- ``slicer.*``, ``slicer.util.*``, ``qt.*``, ``ctk.*`` and ``vtk.*`` names, as written: an attribute chain from the
  module name up to its first call (``slicer.util.arrayFromVolume``); through a module logic's call, since that
  returns a Slicer class (``slicer.modules.plots.logic().ShowChartInLayout``); and every name imported from them;
- every widget and layout class of the .ui files, and the enum and flag values their properties name;

and checks each against ``Testing/slicer_names.tsv``: the names Slicer 5.8 provides, each with the file of Slicer's,
CTK's, VTK's or Qt's source where it was found (and what that file says). A name missing from the list fails: find it
in that source (and add it with its place) or fix the code. A listed name nothing uses any more fails too, so that
the list stays the list of what is used.
"""

from __future__ import annotations

import ast
import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES_FILE = Path(__file__).with_name("slicer_names.tsv")
ROOTS = ("slicer", "qt", "ctk", "vtk")
MODULES = ("AutoSegment", "DosePredict", "OutcomeModel", "RTRadiomicsAI")
SOURCES = ("Slicer/Slicer", "commontk/CTK", "commontk/PythonQt", "Kitware/VTK", "qt/qtbase")


def slicer_side_files() -> list[Path]:
    """The module files: every .py of the module folders (their tests included) and RTRadiomicsAILib, not rtrai."""
    library = REPO / "RTRadiomicsAI" / "rtrai"
    return sorted(p for module in MODULES for p in (REPO / module).rglob("*.py")
                  if library not in p.parents and "__pycache__" not in p.parts)


def ui_files() -> list[Path]:
    return sorted(p for module in MODULES for p in (REPO / module / "Resources" / "UI").glob("*.ui"))


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b().c`` -> ["a", "b", "()", "c"]; None when it does not start at a plain name."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            parts.append("()")
            node = node.func
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return None


def _name(parts: list[str]) -> str | None:
    """The checked name of a chain: up to the first call, or through a module logic (``slicer.modules.X.logic()``)
    to the member used on it."""
    if parts[0] not in ROOTS or len(parts) < 2:
        return None
    out = [parts[0]]
    for index, part in enumerate(parts[1:], 1):
        if part == "()":
            logic = out[:2] == ["slicer", "modules"] and len(out) == 4 and out[3] == "logic"
            if not (logic and index + 1 < len(parts) and parts[index + 1] != "()"):
                break
            out[-1] += "()"
            continue
        out.append(part)
    return ".".join(out)


def python_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ROOTS:
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if "." in alias.name and alias.name.split(".")[0] in ROOTS}
        elif isinstance(node, ast.Attribute):
            parent = parents.get(node)
            inner = isinstance(parent, ast.Attribute) or (isinstance(parent, ast.Call) and parent.func is node
                                                          and isinstance(parents.get(parent), ast.Attribute))
            if not inner:  # the outermost attribute of a chain: the whole chain at once
                parts = _chain(node)
                name = parts and _name(parts)
                if name:
                    found.add(name)
    return found


def ui_names(path: Path) -> set[str]:
    root = ET.parse(path).getroot()
    found = {element.get("class") for element in root.iter() if element.tag in ("widget", "layout")}
    for element in root.iter():
        if element.tag in ("enum", "set") and element.text:
            found |= {value.strip() for value in element.text.split("|")}
    return found


def used_names() -> dict[str, list[str]]:
    """Name -> the files that use it."""
    used: dict[str, list[str]] = {}
    for path in slicer_side_files():
        for name in python_names(path):
            used.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    for path in ui_files():
        for name in ui_names(path):
            used.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    return used


def listed_names() -> dict[str, dict]:
    with NAMES_FILE.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t")]
    return {row["name"]: row for row in rows}


# -- the tests ------------------------------------------------------------------------------------------------
def test_the_collector_reads_chains_imports_calls_and_ui_values(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import qt, vtk.util.numpy_support\nfrom slicer.util import VTKObservationMixin as V\n"
                      "def f(x):\n    slicer.util.arrayFromVolume(x).max()\n"
                      "    slicer.modules.plots.logic().ShowChartInLayout(x)\n    qt.Qt.ItemIsEnabled | x.y\n"
                      "    slicer.mrmlScene.AddNewNodeByClass('a').GetName()\n    ctk.ctkPathLineEdit\n")
    assert python_names(source) == {"vtk.util.numpy_support", "slicer.util.VTKObservationMixin",
                                    "slicer.util.arrayFromVolume", "slicer.modules.plots.logic().ShowChartInLayout",
                                    "qt.Qt.ItemIsEnabled", "slicer.mrmlScene.AddNewNodeByClass",
                                    "ctk.ctkPathLineEdit"}
    ui = tmp_path / "m.ui"
    ui.write_text('<ui><widget class="qMRMLWidget"><layout class="QVBoxLayout"><item><widget class="QLabel">'
                  '<property name="alignment"><set>Qt::AlignLeft|Qt::AlignTop</set></property></widget></item>'
                  '</layout></widget></ui>')
    assert ui_names(ui) == {"qMRMLWidget", "QVBoxLayout", "QLabel", "Qt::AlignLeft", "Qt::AlignTop"}


def test_the_names_list_says_where_each_name_was_found():
    listed = listed_names()
    assert listed, f"{NAMES_FILE.name} lists nothing"
    for name, row in listed.items():
        assert row["source"] in SOURCES, f"{name}: source {row['source']!r} is not one of {SOURCES}"
        assert re.fullmatch(r"[\w.+-]+", row["ref"]), f"{name}: ref {row['ref']!r} (a tag or branch) is missing"
        assert re.fullmatch(r"[\w./+-]+\.(h|py|cxx|cpp|txt)", row["path"]), f"{name}: path {row['path']!r}"
        assert row["found"].strip(), f"{name}: what the file says is missing"


def test_every_slicer_ctk_vtk_and_qt_name_used_is_one_slicer_provides():
    used, listed = used_names(), listed_names()
    assert len(used) > 50, "the collector found too few names: is it still reading the module files?"
    unknown = {name: files for name, files in used.items() if name not in listed}
    assert not unknown, ("not in Testing/slicer_names.tsv (find each in Slicer's, CTK's, VTK's or Qt's source and "
                         f"add it with its place, or fix the code): {unknown}")


def test_the_names_list_holds_only_names_in_use():
    stale = sorted(set(listed_names()) - set(used_names()))
    assert not stale, f"Testing/slicer_names.tsv lists names nothing uses any more: {stale}"


def test_the_names_that_run_here_exist_in_vtk_and_slicer_core():
    # VTK and MRML run here (the slicer-core wheel): what the list says of them is checked on the real libraries too.
    vtk = pytest.importorskip("vtk")
    mrml = pytest.importorskip("rtrai.mrml._slicer", reason="MRML (slicer-core) is not installed", exc_type=ImportError)
    roots = {"vtk": vtk, "slicer.mrmlScene": mrml.slicer.vtkMRMLScene, "slicer": mrml.slicer,
             "slicer.modules.segmentations.logic()": mrml.slicer.vtkSlicerSegmentationsModuleLogic}
    checked = []
    for name in used_names():
        prefix = next((p for p in sorted(roots, key=len, reverse=True) if name.startswith(p + ".")), None)
        rest = name[len(prefix) + 1:].split(".") if prefix else []
        if not prefix or (prefix == "slicer" and not rest[0].startswith("vtkMRML")):
            continue  # slicer.util, slicer.app, qt...: the application's, not in slicer-core
        obj = roots[prefix]
        for part in rest:
            obj = getattr(obj, part)  # AttributeError: the name does not exist
        checked.append(name)
    assert {"vtk.vtkCommand.ModifiedEvent", "slicer.mrmlScene.StartCloseEvent", "slicer.vtkMRMLTableNode",
            "slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode"} <= set(checked)


def test_every_push_button_of_a_panel_has_its_handler():
    # RTRadiomicsAILib.template.ModuleWidget connects <name>Button to on<Name>: a button without one does nothing.
    for module in MODULES:
        tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
        widget = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{module}Widget")
        handlers = {f.name for f in widget.body if isinstance(f, ast.FunctionDef)}
        job_widgets = {"cancelButton", "cancelWorkflowButton"}  # the BackgroundJobPanel's Cancel
        for ui in (REPO / module / "Resources" / "UI").glob("*.ui"):
            buttons = [w.get("name") for w in ET.parse(ui).getroot().iter("widget") if w.get("class") == "QPushButton"]
            assert buttons, f"{ui.name} has no push button"
            for name in set(buttons) - job_widgets:
                assert name.endswith("Button"), f"{ui.name}: push button {name} is not named <name>Button"
                handler = f"on{name[0].upper()}{name[1:-len('Button')]}"
                assert handler in handlers, f"{module}Widget has no {handler} for {ui.name}'s {name}"

"""Packaging of the Slicer extension: what CMake ships, what the .ui files bind, and the import arrows.

Module files import ``qt``/``slicer`` and cannot be imported outside Slicer; they are compiled and read with ``ast``.
The Slicer-side behaviour is tested by each module's Testing/Python (Slicer's own runner).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import struct
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "RTRadiomicsAI" / "rtrai"


def _load_tool():
    spec = importlib.util.spec_from_file_location("update_cmake_file_lists",
                                                  REPO / "Utilities" / "update_cmake_file_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()
MODULES = TOOL.module_folders(REPO)
MODULE_NAMES = {m.name for m in MODULES}


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@functools.lru_cache(maxsize=None)  # several tests walk the same files
def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module name imported anywhere in the file (also inside functions and via importlib.import_module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.append((node.args[0].value, node.lineno))
    return found


def _offenders(files: list[Path], forbidden) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} imports {name}" for path in files for name, line in _imports(path)
            if forbidden(name.split(".")[0])]


def _cmake(path: Path) -> str:
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


# -- every file is shipped ------------------------------------------------------------------------------------
def test_there_is_at_least_the_hub_module():
    assert "RTRadiomicsAI" in MODULE_NAMES


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_every_file_of_the_module_is_listed_in_its_cmake_lists(module):
    problems = TOOL.differences(module, REPO)
    assert not problems, ("\n".join(problems)
                          + "\nrun: python Utilities/update_cmake_file_lists.py (then review the diff)")


def test_the_hub_ships_the_whole_library():
    # `import rtrai` inside Slicer relies on the library being installed beside the hub module.
    expected = TOOL.module_files(REPO / "RTRadiomicsAI", REPO)["scripts"]
    assert expected[0] == "RTRadiomicsAI.py"
    library = {p.relative_to(REPO / "RTRadiomicsAI").as_posix() for p in _python_files(LIBRARY)}
    assert library <= set(expected)


def test_the_generated_lists_agree_with_the_tool_itself(tmp_path):
    # The tool must find a file it has never seen, and say exactly which one.
    module = tmp_path / "Demo"
    (module / "Resources" / "UI").mkdir(parents=True)
    (module / "Testing" / "Python").mkdir(parents=True)
    (module / "Demo.py").write_text("")
    (module / "DemoLib").mkdir()
    (module / "DemoLib" / "helpers.py").write_text("")
    (module / "Resources" / "UI" / "Demo.ui").write_text("<ui/>")
    (module / "Testing" / "Python" / "DemoTest.py").write_text("")
    (module / "CMakeLists.txt").write_text(
        "set(MODULE_NAME Demo)\nset(MODULE_PYTHON_SCRIPTS\n  # BEGIN GENERATED scripts\n  ${MODULE_NAME}.py\n"
        "  # END GENERATED scripts\n  )\nset(MODULE_PYTHON_RESOURCES\n  # BEGIN GENERATED resources\n"
        "  # END GENERATED resources\n  )\n")
    (module / "Testing" / "Python" / "CMakeLists.txt").write_text("# BEGIN GENERATED tests\n# END GENERATED tests\n")
    assert TOOL.differences(module, tmp_path) == [
        "Demo/CMakeLists.txt (SCRIPTS) does not list DemoLib/helpers.py",
        "Demo/CMakeLists.txt (RESOURCES) does not list Resources/UI/Demo.ui",
        "Demo/Testing/Python/CMakeLists.txt (slicer_add_python_unittest) does not list DemoTest.py",
    ]
    TOOL.update(module, tmp_path)
    assert TOOL.differences(module, tmp_path) == []
    (module / "DemoLib" / "helpers.py").unlink()
    assert TOOL.differences(module, tmp_path) == [
        "Demo/CMakeLists.txt (SCRIPTS) lists DemoLib/helpers.py, which is not a file of the module"]


# -- CMake structure ------------------------------------------------------------------------------------------
def test_top_level_cmake_has_the_extension_metadata():
    text = _cmake(REPO / "CMakeLists.txt")
    assert re.search(r"cmake_minimum_required\s*\(\s*VERSION\s+3\.", text)
    assert re.search(r"\bproject\s*\(\s*RTRadiomicsAI\s*\)", text)
    values = dict(re.findall(r'\bset\s*\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert values.get(f"EXTENSION_{key}", "").strip(), f"EXTENSION_{key} is missing or empty"
    assert values["EXTENSION_CATEGORY"] == "Radiotherapy"
    assert "PyTorch" in values["EXTENSION_DEPENDS"].split()
    for url in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert values[url].startswith("https://"), url
    # The icon URL points at the icon in this repository's main branch.
    icon = values["EXTENSION_ICONURL"].split("/main/", 1)[1]
    assert (REPO / icon).is_file(), f"EXTENSION_ICONURL points at {icon}, which is not in the repository"
    for line in (r"find_package\s*\(\s*Slicer\s+REQUIRED\s*\)", r"include\s*\(\s*\$\{Slicer_USE_FILE\}\s*\)",
                 r"include\s*\(\s*\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\s*\)",
                 r"include\s*\(\s*\$\{Slicer_EXTENSION_CPACK\}\s*\)"):
        assert re.search(line, text), f"top-level CMakeLists.txt lacks {line}"


def test_top_level_cmake_adds_every_module_folder():
    assert TOOL.module_differences(REPO) == []


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_module_cmake_builds_the_scripted_module_with_tests(module):
    text = _cmake(module / "CMakeLists.txt")
    assert re.search(rf"\bset\s*\(\s*MODULE_NAME\s+{module.name}\s*\)", text)
    call = re.search(r"slicerMacroBuildScriptedModule\s*\(([^)]*)\)", text)
    assert call, "slicerMacroBuildScriptedModule(...) is missing"
    args = call.group(1).split()
    assert args[args.index("NAME") + 1] in ("${MODULE_NAME}", module.name)
    assert {"SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"} <= set(args)
    assert re.search(r"if\s*\(\s*BUILD_TESTING\s*\)", text)
    if (module / "Testing" / "Python").is_dir():
        assert re.search(r"add_subdirectory\s*\(\s*Testing\s*\)", text)
        assert re.search(r"add_subdirectory\s*\(\s*Python\s*\)", _cmake(module / "Testing" / "CMakeLists.txt"))


# -- module files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_module_python_compiles(module):
    # Compiled in memory: the files need Slicer to import, but must at least be valid Python.
    for path in _python_files(module):
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
        # Slicer runs a .py with a shebang in a module folder as a command-line module instead of loading it.
        assert not source.startswith("#!"), f"{path.relative_to(REPO)} starts with a shebang"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_module_file_follows_the_scripted_module_template(module):
    tree = ast.parse((module / f"{module.name}.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    name = module.name
    for suffix, base in (("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                         ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")):
        assert name + suffix in classes, f"{name}.py lacks class {name + suffix}"
        bases = {getattr(b, "id", getattr(b, "attr", None)) for b in classes[name + suffix].bases}
        assert base in bases, f"{name + suffix} does not derive from {base}"
    wrappers = [c for c in classes.values()
                if any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert len(wrappers) == 1, f"{name}.py needs exactly one @parameterNodeWrapper class"
    source = ast.unparse(classes[name])
    assert "'Radiotherapy'" in source or '"Radiotherapy"' in source, "module category must be Radiotherapy"
    icon = module / "Resources" / "Icons" / f"{name}.png"
    assert icon.is_file(), f"module icon {icon.relative_to(REPO)} is missing"
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{icon.name} is not a PNG"
    assert struct.unpack(">II", header[16:24]) == (128, 128), f"{icon.name} must be 128x128"


UI_FILES = sorted(p for m in MODULES for p in (m / "Resources" / "UI").glob("*.ui"))


@pytest.mark.parametrize("ui", UI_FILES, ids=lambda p: p.name)
def test_ui_parses_and_binds_only_known_parameters(ui):
    root = ET.parse(ui).getroot()  # raises on malformed XML
    assert root.tag == "ui"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), f"duplicate widget names in {ui.name}"
    bound = [p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"]
    duplicates = sorted({b for b in bound if bound.count(b) > 1})
    assert not duplicates, f"{ui.name}: SlicerParameterName used twice: {duplicates}"

    module = ui.parents[2]
    source = (module / f"{module.name}.py").read_text(encoding="utf-8")
    if f"UI/{ui.name}" not in source:
        return  # a .ui the module does not load as its main panel
    tree = ast.parse(source)
    wrapper = next(c for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                   and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list))
    parameters = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert set(bound) <= parameters, f"{ui.name} binds {sorted(set(bound) - parameters)}, not in {wrapper.name}"
    # Every self.ui.<widget> the module uses exists in the .ui (a typo would fail only inside Slicer).
    used = set(re.findall(r"\bself\.ui\.(\w+)|\bwidget\.ui\.(\w+)", source))
    used = {a or b for a, b in used}
    assert used <= set(names), f"{module.name}.py uses widgets missing from {ui.name}: {sorted(used - set(names))}"


def test_the_hub_panel_binds_the_settings_and_has_its_sections():
    root = ET.parse(REPO / "RTRadiomicsAI" / "Resources" / "UI" / "RTRadiomicsAI.ui").getroot()
    bound = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == {"device", "modelCacheFolder", "casePath", "outputFolder", "outcomeModelFolder", "keepStructures"}
    sections = [w.findtext("property/string") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Settings", "Python packages", "Load case", "Workflow"]


# -- import arrows --------------------------------------------------------------------------------------------
def test_the_library_never_imports_qt():
    assert _offenders(_python_files(LIBRARY), lambda top: top in {"qt", "ctk", "PythonQt"}) == []


def test_only_rtrai_mrml_imports_slicer():
    mrml = LIBRARY / "mrml"
    files = [p for p in _python_files(LIBRARY) if mrml not in p.parents]
    assert _offenders(files, lambda top: top == "slicer") == []


def test_no_module_imports_another_module_and_the_library_imports_none():
    problems = []
    for module in MODULES:
        files = [p for p in _python_files(module) if LIBRARY not in p.parents]
        problems += _offenders(files, lambda top, own=module.name: top in MODULE_NAMES and top != own)
    problems += _offenders(_python_files(LIBRARY), lambda top: top in MODULE_NAMES)
    assert problems == []


def test_the_import_checks_catch_offenders(tmp_path):
    offender = tmp_path / "bad.py"
    offender.write_text("def f():\n    import qt\n    from slicer.util import x\n    importlib.import_module('ctk')\n")
    found = {name for name, _ in _imports(offender)}
    assert found == {"qt", "slicer.util", "ctk"}


# -- pip package ----------------------------------------------------------------------------------------------
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _all_requirements(project: dict) -> list[Requirement]:
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return [Requirement(s) for s in specs if not s.startswith(project["name"])]


def test_pyproject_declares_the_console_script_and_a_torch_range():
    project = _pyproject()["project"]
    assert project["name"] == "rtradiomicsai"
    assert project["scripts"]["rtrai"] == "rtrai.cli:main"
    torch = [r for r in _all_requirements(project) if r.name == "torch"]
    assert torch, "torch is not declared"
    for requirement in torch:
        operators = {s.operator for s in requirement.specifier}
        assert "==" not in operators and "===" not in operators, f"torch is pinned: {requirement}"
        assert operators & {">=", ">"} and operators & {"<", "<="}, f"torch must be a range: {requirement}"
    core = [Requirement(d).name for d in project.get("dependencies", [])]
    assert "torch" not in core, "torch belongs in an extra: inside Slicer the PyTorch extension provides it"


def test_the_dependency_panel_installs_what_pyproject_declares():
    from rtrai.core.dependencies import PACKAGES

    declared = {canonicalize_name(r.name): r for r in _all_requirements(_pyproject()["project"])}
    for package in PACKAGES:
        wanted = Requirement(package.requirement)
        assert canonicalize_name(wanted.name) == canonicalize_name(package.distribution)
        got = declared.get(canonicalize_name(wanted.name))
        assert got is not None, f"{package.distribution} is offered in Slicer but not declared in pyproject.toml"
        assert got.specifier == wanted.specifier, f"{package.distribution}: pyproject {got}, panel {wanted}"


def test_pip_package_data_covers_every_library_resource():
    # The same files must reach pip users: a YAML preset shipped to Slicer but not in the wheel breaks `rtrai` there.
    import fnmatch

    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["rtrai"]
    patterns = patterns + [p.replace("**/", "") for p in patterns if "**/" in p]  # ** also matches no folder
    resources = [r[len("rtrai/"):] for r in TOOL.module_files(REPO / "RTRadiomicsAI", REPO)["resources"]
                 if r.startswith("rtrai/")]
    uncovered = [r for r in resources if not any(fnmatch.fnmatchcase(r, p) for p in patterns)]
    assert uncovered == [], f"add to [tool.setuptools.package-data] rtrai in pyproject.toml: {uncovered}"


def test_every_package_data_glob_matches_a_file():
    # A glob that matches nothing ships nothing: it is a stale entry or a typo that hides a missing resource.
    setuptools = _pyproject()["tool"]["setuptools"]
    roots = [REPO / where for where in setuptools["packages"]["find"]["where"]]
    for package, patterns in setuptools["package-data"].items():
        folder = next(root / package.replace(".", "/") for root in roots if (root / package.replace(".", "/")).is_dir())
        empty = [p for p in patterns if not any(f.is_file() for f in folder.glob(p))]
        assert empty == [], f"[tool.setuptools.package-data] {package}: {empty} match no file under {folder}"


# -- background jobs ------------------------------------------------------------------------------------------
def _string_constants(tree: ast.AST) -> set[str]:
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_background_jobs_get_the_hub_settings():
    # Every module starts its jobs through RTRadiomicsAILib.jobs.startJob, the one place that passes the job
    # environment (Slicer's startup environment + the hub's device and model folder): a job started with Slicer's
    # startup environment alone would run on the default device and miss the user's models.
    lib = REPO / "RTRadiomicsAI" / "RTRadiomicsAILib"
    jobs = ast.parse((lib / "jobs.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(jobs) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "rtrai" and getattr(n.func.value, "id", None) == "Job"]
    assert calls and all(any(k.arg == "env" and ast.unparse(k.value) == "jobEnvironment()" for k in c.keywords)
                         for c in calls)
    settings = ast.parse((lib / "settings.py").read_text(encoding="utf-8"))
    assert {"RTRAI_DEVICE", "RTRAI_MODEL_CACHE"} <= _string_constants(settings)
    for module in MODULES:
        source = (module / f"{module.name}.py").read_text(encoding="utf-8")
        assert not re.search(r"\bJob(\.rtrai)?\(", source), f"{module.name} starts a job around startJob"

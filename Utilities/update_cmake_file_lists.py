#!/usr/bin/env python3
"""Keep every Slicer module's CMake file lists equal to the files on disk.

A Slicer module folder (``RTRadiomicsAI/``, ``AutoSegment/``, ...; a top-level folder ``X`` holding ``X/X.py``) ships
exactly the files its ``CMakeLists.txt`` lists: a file that is not listed is silently missing from the installed
extension. This script regenerates, between ``# BEGIN GENERATED <kind>`` / ``# END GENERATED <kind>`` comments:

- ``modules``   in the top-level ``CMakeLists.txt``: one ``add_subdirectory`` per module folder;
- ``scripts``   in ``X/CMakeLists.txt``: every ``.py`` file of the folder (the module, its helpers, and for the hub
  the whole ``rtrai`` library), except the module's ``Testing/`` folder;
- ``resources`` in ``X/CMakeLists.txt``: every other file (UI, icons, model zoo, presets), except CMakeLists files;
- ``tests``     in ``X/Testing/Python/CMakeLists.txt``: one ``slicer_add_python_unittest`` per test script there.

Files that git ignores (build outputs, caches, egg-info) and hidden files are never listed.

Usage::

    python Utilities/update_cmake_file_lists.py           # rewrite the lists, print what changed
    python Utilities/update_cmake_file_lists.py --check   # exit 1 and say what differs, change nothing

``Testing/test_packaging.py`` uses the same functions, so the test and the tool agree on what belongs to a module.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = "Utilities/update_cmake_file_lists.py"
KINDS = ("scripts", "resources", "tests")
_SKIP_DIRS = {"__pycache__", "build", "dist"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", ".orig", ".rej", "~")


def module_folders(repo: Path = REPO) -> list[Path]:
    """Top-level folders that are Slicer modules (``X/X.py`` exists)."""
    return sorted(d for d in repo.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (d / f"{d.name}.py").is_file())


def _candidate_files(folder: Path) -> list[Path]:
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts[:-1]):
            continue
        if path.is_file() and not rel.name.startswith(".") and not rel.name.endswith(_SKIP_SUFFIXES):
            out.append(path)
    return out


def _git_ignored(paths: list[Path], repo: Path) -> set[Path]:
    """The paths git ignores; empty when git or a work tree is not available (a source tarball)."""
    if not paths:
        return set()
    try:
        result = subprocess.run(["git", "-C", str(repo), "check-ignore", "--stdin"], capture_output=True, text=True,
                                input="\n".join(str(p) for p in paths), timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    if result.returncode not in (0, 1):
        return set()
    return {Path(line) if Path(line).is_absolute() else repo / line for line in result.stdout.splitlines() if line}


def module_files(module: Path, repo: Path = REPO) -> dict[str, list[str]]:
    """What each generated list must contain, as paths relative to the module folder (tests: to Testing/Python)."""
    files = _candidate_files(module)
    ignored = _git_ignored(files, repo)
    files = [f for f in files if f not in ignored]
    tests_dir = module / "Testing" / "Python"
    scripts, resources, tests = [], [], []
    for path in files:
        rel = path.relative_to(module).as_posix()
        if path.parent == tests_dir and path.suffix == ".py":
            tests.append(path.name)
        elif rel.startswith("Testing/") or path.name == "CMakeLists.txt":
            continue
        elif path.suffix == ".py":
            scripts.append(rel)
        else:
            resources.append(rel)
    main = f"{module.name}.py"
    scripts = sorted(scripts, key=lambda r: (r != main, r))  # the module file first, as in Slicer's template
    return {"scripts": scripts, "resources": sorted(resources), "tests": sorted(tests)}


# -- reading what CMake lists ---------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _expand(token: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), token.strip('"'))


def cmake_lists(module: Path) -> dict[str, list[str]]:
    """What the module's CMake files list now (``${MODULE_NAME}`` expanded), per kind; missing files list nothing."""
    listed = {kind: [] for kind in KINDS}
    main = module / "CMakeLists.txt"
    text = _strip_comments(main.read_text(encoding="utf-8")) if main.is_file() else ""
    variables = dict(re.findall(r"\bset\s*\(\s*(MODULE_NAME)\s+([^\s)]+)\s*\)", text, re.IGNORECASE))
    for kind, var in (("scripts", "MODULE_PYTHON_SCRIPTS"), ("resources", "MODULE_PYTHON_RESOURCES")):
        for body in re.findall(rf"\bset\s*\(\s*{var}\b([^)]*)\)", text, re.IGNORECASE):
            listed[kind] += [_expand(t, variables) for t in body.split()]
    tests_cmake = module / "Testing" / "Python" / "CMakeLists.txt"
    if tests_cmake.is_file():
        text = _strip_comments(tests_cmake.read_text(encoding="utf-8"))
        for body in re.findall(r"\bslicer_add_python_unittest\s*\(([^)]*)\)", text, re.IGNORECASE):
            tokens = body.split()
            listed["tests"] += [_expand(tokens[i + 1], variables) for i, t in enumerate(tokens[:-1]) if t == "SCRIPT"]
    return listed


def listed_modules(repo: Path = REPO) -> list[str]:
    """The folders the top-level CMakeLists.txt adds with add_subdirectory."""
    path = repo / "CMakeLists.txt"
    text = _strip_comments(path.read_text(encoding="utf-8")) if path.is_file() else ""
    return [name.strip('"') for name in re.findall(r"\badd_subdirectory\s*\(\s*([^\s)]+)", text, re.IGNORECASE)]


def module_differences(repo: Path = REPO) -> list[str]:
    expected, listed = [m.name for m in module_folders(repo)], listed_modules(repo)
    return ([f"CMakeLists.txt does not add_subdirectory({name})" for name in expected if name not in listed]
            + [f"CMakeLists.txt adds {name}, which is not a module folder ({name}/{name}.py)"
               for name in listed if name not in expected])


def differences(module: Path, repo: Path = REPO) -> list[str]:
    """One line per file that is on disk but not listed, or listed but not on disk (empty: all in order)."""
    expected, listed = module_files(module, repo), cmake_lists(module)
    where = {"scripts": "CMakeLists.txt (SCRIPTS)", "resources": "CMakeLists.txt (RESOURCES)",
             "tests": "Testing/Python/CMakeLists.txt (slicer_add_python_unittest)"}
    out = []
    for kind in KINDS:
        for name in sorted(set(expected[kind]) - set(listed[kind])):
            out.append(f"{module.name}/{where[kind]} does not list {name}")
        for name in sorted(set(listed[kind]) - set(expected[kind])):
            out.append(f"{module.name}/{where[kind]} lists {name}, which is not a file of the module")
    return out


# -- rewriting ------------------------------------------------------------------------------------------------
def _block(kind: str, lines: list[str], indent: str) -> str:
    body = "".join(f"{indent}{line}\n" for line in lines)
    return f"{indent}# BEGIN GENERATED {kind} ({TOOL})\n{body}{indent}# END GENERATED {kind}\n"


def _replace_block(text: str, kind: str, lines: list[str], path: Path) -> str:
    pattern = re.compile(rf"^([ \t]*)# BEGIN GENERATED {kind}\b.*?\n.*?^[ \t]*# END GENERATED {kind}[^\n]*\n",
                         re.MULTILINE | re.DOTALL)
    match = pattern.search(text)
    if not match:
        raise SystemExit(f"{path}: no '# BEGIN GENERATED {kind}' / '# END GENERATED {kind}' comments to fill; "
                         "add them where the list goes")
    return text[:match.start()] + _block(kind, lines, match.group(1)) + text[match.end():]


def update_top_level(repo: Path = REPO) -> list[Path]:
    path = repo / "CMakeLists.txt"
    text = path.read_text(encoding="utf-8")
    new = _replace_block(text, "modules", [f"add_subdirectory({m.name})" for m in module_folders(repo)], path)
    if new == text:
        return []
    path.write_text(new, encoding="utf-8")
    return [path]


def update(module: Path, repo: Path = REPO) -> list[Path]:
    """Rewrite the generated lists of one module; returns the files that changed."""
    expected = module_files(module, repo)
    changed = []
    main = module / "CMakeLists.txt"
    text = main.read_text(encoding="utf-8")
    new = _replace_block(text, "scripts", expected["scripts"], main)
    new = _replace_block(new, "resources", expected["resources"], main)
    if new != text:
        main.write_text(new, encoding="utf-8")
        changed.append(main)
    tests_cmake = module / "Testing" / "Python" / "CMakeLists.txt"
    if expected["tests"] or tests_cmake.is_file():
        if not tests_cmake.is_file():
            raise SystemExit(f"{tests_cmake} is missing: create it (with the tests markers) and "
                             f"{module.name}/Testing/CMakeLists.txt with add_subdirectory(Python)")
        text = tests_cmake.read_text(encoding="utf-8")
        lines = [f"slicer_add_python_unittest(SCRIPT {name})" for name in expected["tests"]]
        new = _replace_block(text, "tests", lines, tests_cmake)
        if new != text:
            tests_cmake.write_text(new, encoding="utf-8")
            changed.append(tests_cmake)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences and exit 1; change nothing")
    args = parser.parse_args(argv)
    modules = module_folders()
    if args.check:
        problems = module_differences() + [line for module in modules for line in differences(module)]
        print("\n".join(problems) or f"all CMake file lists match the files of {', '.join(m.name for m in modules)}")
        return 1 if problems else 0
    for path in update_top_level() + [p for module in modules for p in update(module)]:
        print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Settings files (training configs): YAML or JSON, found by path or by a shipped name, checked against their
defaults, every mistake one :class:`~rtrai.core.errors.InputError` line naming the file (a YAML or JSON syntax error
with its line and column, an unknown setting, a setting of the wrong type).

:func:`load_settings` is the one loader the segmentation and dose configs use; :func:`merge` deep-merges settings
over their defaults (a mapping merges key by key, anything else replaces)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

from rtrai.core.errors import InputError


def merge(base: dict, override: dict) -> dict:
    """``override`` deep-merged over a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def yaml_error_line(exc: BaseException) -> str:
    """One line for a PyYAML error: the problem, what it was parsing, and where (line, column)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem:
        context = getattr(exc, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{f' ({context})' if context else ''}{where}"
    if getattr(exc, "reason", None) is not None and getattr(exc, "position", None) is not None:  # ReaderError
        return f"{exc.reason} at character {exc.position}"
    return " ".join(str(exc).split()) or type(exc).__name__


def read_settings_file(path: Path) -> object:
    """The parsed content of a YAML (``.yaml``/``.yml``) or JSON settings file; every mistake is one
    :class:`InputError` line naming the file (not UTF-8, YAML or JSON syntax with line and column)."""
    from rtrai.io.text import read_text

    path = Path(path)
    text = read_text(path, "a settings file")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be a settings file") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_types(defaults: dict, settings: dict, where: str) -> None:
    """InputError when a setting has another type than its default: a number for a number (finite, not a
    boolean), true/false for a boolean, text (or a number) for text, a list for a list, a mapping for a mapping
    (checked the same way one level down). Settings whose default is null may hold anything."""
    for key, value in settings.items():
        default = defaults.get(key)
        if default is None:
            continue
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok, wanted = _is_number(value), "a finite number"
        elif isinstance(default, str):
            ok, wanted = isinstance(value, str) or _is_number(value), "text"
        elif isinstance(default, list):
            ok, wanted = isinstance(value, list), "a list"
        elif isinstance(default, dict):
            ok, wanted = isinstance(value, dict), "a mapping"
            if ok:
                check_types(default, value, f"{where} {key!r}:")
        else:
            continue
        if not ok:
            raise InputError(f"{where} {key!r:.40} is {value!r:.60}, but must be {wanted}")


def find_settings_file(name_or_path, shipped: Path, what: str = "config") -> Path:
    """The file a setting names: a path, else a shipped ``<name>.yaml`` / ``<name>.json`` in ``shipped``."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(f"a {what} is named by a file or a shipped name, not {name_or_path!r:.60}")
    source = Path(name_or_path)
    if source.is_file():
        return source
    found = next((p for p in (shipped / f"{name_or_path}.yaml", shipped / f"{name_or_path}.json") if p.is_file()),
                 None)
    if found is None:
        names = sorted({p.stem for p in shipped.glob("*.*") if p.suffix in (".yaml", ".json")})
        raise InputError(f"{what} not found: {name_or_path} (shipped {what}s: {', '.join(names)})")
    return found


def load_settings(name_or_path, defaults: dict, shipped: Path, what: str = "config") -> tuple[dict, Path]:
    """The settings of a file (or shipped name) and the file: a mapping (empty for an empty file) of settings that
    ``defaults`` knows, each of its default's type. Not merged: :func:`merge` them over the defaults where wanted."""
    source = find_settings_file(name_or_path, shipped, what)
    settings = read_settings_file(source)
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise InputError(f"{source}: a {what} must be a mapping of settings, not {type(settings).__name__}")
    unknown = sorted((k for k in settings if k not in defaults), key=str)
    if unknown:
        raise InputError(f"{source}: unknown settings {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(sorted(map(str, defaults)))})")
    check_types(defaults, settings, f"{source}:")
    return settings, source

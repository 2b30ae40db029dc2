"""Provenance: every output folder gets a ``provenance.json`` saying what made it, from what, and how."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

from rtrai.core.outputs import write_text

# Packages whose versions matter for reproducing a result.
_TRACKED = ("numpy", "SimpleITK", "pydicom", "torch", "monai", "radiomics", "sklearn", "lifelines", "sksurv")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Checksum of a file, or of a folder (its files' relative paths and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED:
        module = sys.modules.get(name)  # only what this run actually used: importing torch here would be slow
        if module is not None:
            versions[name] = str(getattr(module, "__version__", getattr(module, "Version", lambda: "?")))
    return versions


def record(command: str, parameters: dict | None = None, inputs: list | None = None, models: list | None = None,
           seed: int | None = None, extra: dict | None = None) -> dict:
    """Build a provenance record. ``inputs``: paths (checksummed); ``models``: dicts with name and sha256."""
    from rtrai import __version__

    return {
        "tool": "rtrai",
        "version": __version__,
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": package_versions(),
        "parameters": parameters or {},
        "inputs": [{"path": str(p), "sha256": sha256_path(p)} for p in (inputs or []) if Path(p).exists()],
        "models": models or [],
        "seed": seed,
        **(extra or {}),
    }


def write(folder: str | os.PathLike, rec: dict, name: str = "provenance.json") -> Path:
    return write_text(Path(folder) / name, json.dumps(rec, indent=2, default=str) + "\n")

"""The model zoo: each model is a folder with ``manifest.json`` and a weights file (safetensors state dict).

A manifest says what the weights are and what they expect::

    name, version, task ("segmentation"), weights (file name), sha256 (of the weights file),
    network (the config that rebuilds the torch module), inputs (channels with modality and intensity window,
    spacing), labels (TG-263 names, output channel order), training (data, command, steps), metrics.

Shipped models live in ``rtrai/models/zoo/<name>/``; a model may also be given as a path to its folder or manifest.
Models a user installs go in the folder named by ``RTRAI_MODEL_CACHE`` (the hub module's *Model folder* setting, which
Slicer passes to every background job), in the zoo's layout: ``<cache>/<name>/manifest.json`` + weights, the manifest's
``name`` being ``<name>``. A name is looked up in the shipped zoo first and in the cache only when no shipped model has
it: a folder in the cache never replaces a shipped model silently (a download of an older or tampered copy would
otherwise change what ``hn-oar-ct`` means, and every provenance record with it); load such a copy by its path.
Weights are loaded only after their sha256 matches the manifest (a mismatch raises :class:`ModelError`), and only as
tensors (safetensors, or ``torch.load(weights_only=True)`` for ``.pt``): never pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rtrai.core.errors import ModelError
from rtrai.core.outputs import atomic_file, write_text
from rtrai.core.provenance import sha256_file

ZOO = Path(__file__).resolve().parent / "zoo"
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("name", "version", "weights", "sha256", "network", "inputs", "labels")
CACHE_VARIABLE = "RTRAI_MODEL_CACHE"


def cache_folder() -> Path | None:
    """The user's model folder (``RTRAI_MODEL_CACHE``), or None when the variable is unset or empty."""
    value = os.environ.get(CACHE_VARIABLE, "").strip()
    return Path(value).expanduser() if value else None


def _manifest_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.is_file() and path.name.endswith(".json"):
        return path
    if path.is_dir() and (path / MANIFEST).is_file():
        return path / MANIFEST
    shipped = ZOO / str(name_or_path) / MANIFEST
    if shipped.is_file():  # shipped first: see the module docstring
        return shipped
    cache = cache_folder()
    plain = str(name_or_path) == path.name and path.name not in ("", ".", "..")  # never a path out of the cache
    if cache is not None and plain and (cache / path.name / MANIFEST).is_file():
        return cache / path.name / MANIFEST
    models = list_models()
    known = ", ".join(m["name"] for m in models if m["source"] == "shipped") or "none"
    where = f"shipped models: {known}"
    if cache is not None:
        installed = ", ".join(m["name"] for m in models if m["source"] != "shipped") or "none"
        where += f"; models in {CACHE_VARIABLE} ({cache}): {installed}"
    raise ModelError(f"unknown model '{name_or_path}' (not a model folder or manifest; {where})")


def read_manifest(name_or_path: str | os.PathLike) -> dict:
    """The manifest of a shipped model (by name) or of a model folder / manifest file, with its folder added."""
    path = _manifest_path(name_or_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelError(f"{path}: unreadable model manifest ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"{path}: model manifest lacks {', '.join(missing)}")
    cache = cache_folder()
    if cache is not None and path.parent.parent == cache and str(name_or_path) == path.parent.name \
            and manifest["name"] != path.parent.name:
        raise ModelError(f"{path}: the manifest names the model '{manifest['name']}', not '{path.parent.name}' (its "
                         f"folder in {CACHE_VARIABLE}); rename one of them")
    manifest["folder"] = str(path.parent)
    return manifest


def list_models() -> list[dict]:
    """Models a name loads: one dict per model with name, version, task, sha256, labels, metrics and source
    ("shipped", or the ``RTRAI_MODEL_CACHE`` folder it is in). Shipped ones first; a cache model named like a shipped
    one is not listed, since that name loads the shipped one."""
    models, names = [], set()
    cache = cache_folder()
    folders = [(ZOO, "shipped")] + ([(cache, str(cache))] if cache is not None and cache.is_dir() else [])
    for folder, source in folders:
        for path in sorted(folder.glob(f"*/{MANIFEST}")):
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue  # a broken manifest must not hide the others; loading it by name reports the error
            if not isinstance(manifest, dict) or not all(k in manifest for k in REQUIRED_KEYS):
                continue
            if source != "shipped" and (manifest["name"] != path.parent.name or path.parent.name in names):
                continue  # not loadable by the name it gives, or shadowed by a shipped model
            names.add(manifest["name"])
            models.append({**{k: manifest.get(k) for k in ("name", "version", "task", "sha256", "labels", "metrics")},
                           "source": source})
    return models


def weights_path(manifest: dict) -> Path:
    return Path(manifest["folder"]) / manifest["weights"]


def load_state_dict(manifest: dict) -> dict:
    """The checked state dict of a model: sha256 first, then tensors only (safetensors or weights_only)."""
    path = weights_path(manifest)
    if not path.is_file():
        raise ModelError(f"model '{manifest['name']}': weights file not found: {path}")
    digest = sha256_file(path)
    if digest != manifest["sha256"]:
        raise ModelError(f"model '{manifest['name']}': weights checksum {digest[:12]}... does not match the manifest "
                         f"({str(manifest['sha256'])[:12]}...); refusing to load {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure of a model file is a model error for the user
        raise ModelError(f"model '{manifest['name']}': unreadable weights {path} ({exc})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def write_model(folder: str | os.PathLike, state_dict: dict, manifest: dict, half: bool = True) -> Path:
    """Write weights (fp16 by default: half the size, no measurable DSC change) and a manifest with their sha256."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / manifest.get("weights", "weights.safetensors")
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    with atomic_file(weights) as tmp:
        save_file(tensors, str(tmp))
        tmp.chmod(0o644)  # safetensors recreates the file with 0600; a shipped model is meant to be read by all
    manifest = {k: v for k, v in manifest.items() if k != "folder"}
    manifest.update(weights=weights.name, sha256=sha256_file(weights))
    return write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def run_weights(path: str | os.PathLike) -> dict:
    """The network weights in a training run's file: weights alone (``best.pt``) or a checkpoint that holds them under
    ``network`` (dose runs) or ``model`` (segmentation runs) beside the optimiser and schedule. Tensors only."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("network", state.get("model", state))


def model_origin(model: dict) -> dict:
    """What a manifest says about a model another was made from (a member of an average, a recipe's base)."""
    training = model.get("training", {})
    return {"model": f"{model['name']} version {model['version']}", "sha256": model["sha256"],
            **{k: training[k] for k in ("command", "seed", "steps", "cpu_seconds") if k in training}}


def average_weights(sources: list[str]) -> tuple[dict, dict]:
    """The weight average of snapshots of one network (stochastic weight averaging of one run, or a "model soup" of
    runs warm-started from one model), in memory: (state dict, manifest). The first source is a model folder or zoo
    name (its manifest is kept, its training gains ``averaged_from``: the members), the others model folders, zoo names
    or a run's checkpoint file. Models must agree on network, inputs and labels."""
    manifest = read_manifest(sources[0])
    states, members = [load_state_dict(manifest)], [model_origin(manifest)]
    for source in sources[1:]:
        if Path(source).is_file() and Path(source).suffix == ".pt":
            states.append(run_weights(source))
            members.append({"checkpoint": str(source)})
            continue
        other = read_manifest(source)
        differ = [k for k in ("network", "inputs", "labels") if other.get(k) != manifest.get(k)]
        if differ:
            raise ModelError(f"{source} and {sources[0]} differ in {', '.join(differ)}: they cannot be averaged")
        states.append(load_state_dict(other))
        members.append(model_origin(other))

    def shapes(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    if any(shapes(state) != shapes(states[0]) for state in states[1:]):
        raise ModelError(f"the snapshots {', '.join(map(str, sources))} are not of the same network: they cannot be "
                         f"averaged")
    averaged = {k: sum(state[k].float() for state in states) / len(states) if states[0][k].is_floating_point()
                else states[0][k] for k in states[0]}
    manifest = {k: v for k, v in manifest.items() if k not in ("folder", "sha256")}
    manifest.update(version=f"average of {len(states)}", metrics={},
                    training={**manifest.get("training", {}), "averaged_from": members})
    return averaged, manifest


def average_models(sources: list[str], destination: str | os.PathLike) -> Path:
    """Write the weight average of several snapshots of one network (see :func:`average_weights`) as a model."""
    from rtrai.core.errors import InputError

    if len(sources) < 2:
        raise InputError("an average needs at least two snapshots")
    return write_model(destination, *average_weights(sources))


# How far outside a model's training spacings an image is still used without resampling.
SPACING_SLACK = 1.25


def working_grid(manifest: dict, image):
    """A reference grid at the middle of the manifest's training spacings (``spacing_mm``: [low, high]) to resample
    ``image`` to, or None when its spacing lies within them (give or take :data:`SPACING_SLACK`)."""
    import numpy as np
    import SimpleITK as sitk

    bounds = manifest.get("spacing_mm")
    if not bounds:
        return None
    low, high = np.array(bounds[0], float), np.array(bounds[1], float)
    spacing = np.array(image.GetSpacing(), float)
    if np.all(spacing >= low / SPACING_SLACK) and np.all(spacing <= high * SPACING_SLACK):
        return None
    target = (low + high) / 2.0
    reference = sitk.Image([max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), spacing, target)],
                           sitk.sitkFloat32)
    reference.SetSpacing(target.tolist())
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    return reference

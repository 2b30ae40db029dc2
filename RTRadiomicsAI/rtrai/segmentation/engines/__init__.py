"""Segmentation engines: the kinds of model ``rtrai segment --model PATH`` runs, told apart by what PATH holds.

========== ======================================================================================================
kind       PATH
========== ======================================================================================================
zoo        a zoo name (``hn-oar-ct``), or a folder / file with an rtrai ``manifest.json`` (rtrai.models)
bundle     a MONAI bundle folder: ``configs/inference.json`` (or .yaml) + ``models/model.pt`` (:mod:`.bundle`)
torchscript a TorchScript file with a manifest beside it, ``<file stem>.json`` (:mod:`.torchscript`)
nnunet     an nnU-Net v2 trained-model folder: ``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``
           (:mod:`.nnunet`)
========== ======================================================================================================

Every engine gives :meth:`segment` (TG-263 name -> uint8 mask on the case's grid, post-processed as zoo models are)
and :attr:`info` (the provenance entry: engine kind, name, sha256 of the model files), so ``rtrai segment`` writes the
same outputs whatever the kind. Weights are read only as tensors (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rtrai.core.errors import ModelError
from rtrai.core.provenance import sha256_file
from rtrai.core.structures import TG263_COLORS, is_target, to_tg263

KINDS = ("zoo", "bundle", "torchscript", "nnunet")
BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
EXPECTED = ("a zoo model name or rtrai model folder (manifest.json), a MONAI bundle folder (configs/inference.json "
            "and models/model.pt), a TorchScript file with a manifest beside it (NAME.json), or an nnU-Net v2 "
            "trained-model folder (dataset.json, plans.json, fold_*/checkpoint_final.pth)")


def nnunet_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("fold_*/checkpoint_final.pth"))


def engine_kind(model: str) -> str:
    """Which engine runs ``model`` (see the module docstring); a path that is none of them is a :class:`ModelError`
    naming what was expected."""
    from rtrai.models import MANIFEST

    path = Path(model)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "zoo"
        if any((path / "configs" / name).is_file() for name in BUNDLE_CONFIGS):
            return "bundle"
        if (path / "dataset.json").is_file() and (path / "plans.json").is_file() and nnunet_checkpoints(path):
            return "nnunet"
        raise ModelError(f"{path}: not a model folder; expected {EXPECTED}")
    if path.is_file():
        if path.suffix == ".json":
            return "zoo"  # a zoo manifest given by its path (rtrai.models reads and checks it)
        if torchscript_manifest(path) is not None:
            return "torchscript"
        raise ModelError(f"{path}: a file but no manifest beside it ({path.with_suffix('.json').name}); expected "
                         f"{EXPECTED}")
    if path.name == model:
        return "zoo"  # a name: rtrai.models looks it up (shipped, then RTRAI_MODEL_CACHE) and lists the known ones
    raise ModelError(f"{model}: no such file or folder; expected {EXPECTED}")


def torchscript_manifest(path: Path) -> Path | None:
    beside = path.with_suffix(".json")
    return beside if beside.is_file() and beside != path else None


def load_segmenter(model: str = "hn-oar-ct", device: str = "auto", mirror: bool | None = None):
    """The engine for ``model`` (a zoo name or a path, see :func:`engine_kind`), loaded and ready to segment."""
    kind = engine_kind(str(model))
    if kind == "zoo":
        from rtrai.segmentation.inference import Segmenter

        return Segmenter(str(model), device, mirror=mirror)
    if kind == "bundle":
        from rtrai.segmentation.engines.bundle import BundleSegmenter

        return BundleSegmenter(Path(model), device, mirror=mirror)
    if kind == "torchscript":
        from rtrai.segmentation.engines.torchscript import TorchScriptSegmenter

        return TorchScriptSegmenter(Path(model), device, mirror=mirror)
    from rtrai.segmentation.engines.nnunet import NnUNetSegmenter

    return NnUNetSegmenter(Path(model), device, mirror=mirror)


def model_files(root: Path, files: list[Path]) -> dict:
    """``sha256`` of a model made of several files (the sha256 of their sorted "relative path  sha256" lines, as
    ``sha256sum`` prints them) and ``files``: each file's own sha256, for provenance."""
    digests = {str(f.relative_to(root)) if f.is_relative_to(root) else f.name: sha256_file(f) for f in files}
    listing = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    return {"sha256": hashlib.sha256(listing.encode()).hexdigest(), "files": dict(sorted(digests.items()))}


def tg263_labels(names: list[str], where: str) -> tuple[list[str], dict]:
    """TG-263 names for a model's own label names, and what provenance says about them: ``label_names`` (own name ->
    the name written) and ``labels_without_tg263_name`` (kept as their own name, made safe for file names)."""
    mapped, unknown = [], []
    for name in names:
        tg = to_tg263(str(name))
        if tg not in TG263_COLORS and not is_target(tg):
            unknown.append(tg)
        mapped.append(tg)
    twice = sorted({n for n in mapped if mapped.count(n) > 1})
    if twice:
        raise ModelError(f"{where}: several labels map to the structure name {', '.join(twice)}; rename them")
    notes = {"label_names": dict(zip(map(str, names), mapped))}
    if unknown:
        notes["labels_without_tg263_name"] = unknown
    return mapped, notes

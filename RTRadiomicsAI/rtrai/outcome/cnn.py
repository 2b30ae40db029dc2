"""A small 3D CNN for a binary outcome (toxicity, response) from the dose, the CT and the structures of each case.

Data: every case is resampled onto one common grid (isotropic ``spacing_mm``, a fixed box in mm centred on the
structures named in ``around``, or on the body), so the network sees the same anatomy at the same scale for every
patient; the box is stored with a margin of ``shift`` voxels, from which training crops at random (translation
augmentation without padding artefacts). Channels: dose / ``dose_scale`` (Gy), the CT in a soft-tissue window, and the
fraction of each voxel inside each named structure (missing is not empty: an organ a case lacks gives a zero channel,
with a warning that names the cases). Arrays are (channel, z, y, x) on an LPS grid, so the last axis runs from the
patient's right to left; the optional lateral flip mirrors it *and* swaps the ``*_L``/``*_R`` channels, so a channel
named Parotid_L always holds the organ on the image's left: use it only for endpoints that are symmetric in left and
right (it is off by default).

Network (:func:`build_network`), one of three regions: ``organs`` (the default with structures: features at full
resolution kept only inside the structures, with each voxel's position relative to its organ, so an organ's risk comes
from the dose in it and Grad-CAM says where inside it), ``subregions`` (the images' means inside learned soft parts of
each structure: an organ's risk from the dose in one part of it) or ``box`` (two stride-2 stages over the whole box).
Batch norm (organs, box): instance or group norm would divide away the absolute dose level each patient's risk
depends on. Training:
AdamW, class-weighted BCE (``pos_weight`` = negatives / positives), early stopping on a stratified inner validation
split, seeded; the weighting shifts the logit by log(pos_weight), which prediction subtracts again so probabilities
stay calibrated.

A model is ``weights.safetensors`` + ``manifest.json`` (:func:`rtrai.models.write_model`): the sha256 of the weights is
checked before loading, and the manifest holds the preprocessing, so evaluation and prediction rebuild the same input.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from rtrai.core.errors import InputError, ModelError
from rtrai.core.structures import LATERAL_PAIRS, to_tg263
from rtrai.outcome.data import OutcomeWarning, _preview

INPUTS = ("dose", "ct", "structures")
CT_WINDOW = (-160.0, 240.0)  # soft tissue: the glands, muscle and fat that a head-and-neck dose map covers
TASK = "outcome-cnn"
CACHE_VERSION = 1  # bump when the preprocessing changes, so old cache files are not reused


@dataclass
class GridSpec:
    """How a case becomes the network's input (stored in the model's manifest)."""

    inputs: list[str] = field(default_factory=lambda: list(INPUTS))
    structures: list[str] = field(default_factory=lambda: ["Parotid_L", "Parotid_R"])
    around: list[str] = field(default_factory=list)  # empty: the structures; ["body"]: the body's centre
    spacing_mm: float = 4.0
    box_mm: tuple[float, float, float] = (128.0, 160.0, 160.0)  # z, y, x
    shift: int = 2  # voxels of margin on each side for translation augmentation
    dose_scale: float = 70.0

    def __post_init__(self):
        self.inputs = [i.strip().lower() for i in self.inputs if i.strip()]
        unknown = [i for i in self.inputs if i not in INPUTS]
        if unknown or not self.inputs:
            raise InputError(f"unknown input(s) {_preview(unknown)}; --inputs takes a comma-separated subset of "
                             f"{','.join(INPUTS)}")
        self.structures = [to_tg263(s) for s in self.structures]
        self.around = [a if a.lower() == "body" else to_tg263(a) for a in self.around]
        if "structures" in self.inputs and not self.structures:
            raise InputError("--inputs structures needs --structures NAMES")
        if self.spacing_mm <= 0 or min(self.box_mm) <= 0:
            raise InputError(f"the grid needs a positive spacing and box (got {self.spacing_mm} mm, {self.box_mm})")
        self.box_mm = tuple(float(b) for b in self.box_mm)

    @property
    def centre_on(self) -> list[str]:
        return self.around or self.structures or ["body"]

    @property
    def box(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) of the network's input."""
        return tuple(max(8, int(round(b / self.spacing_mm))) for b in self.box_mm)

    @property
    def stored(self) -> tuple[int, int, int]:
        return tuple(b + 2 * self.shift for b in self.box)

    @property
    def channels(self) -> list[str]:
        names = []
        for item in self.inputs:
            names += self.structures if item == "structures" else [item]
        return names

    def to_dict(self) -> dict:
        return {**asdict(self), "box_mm": list(self.box_mm), "channels": self.channels}

    @classmethod
    def from_dict(cls, d: dict) -> GridSpec:
        keys = {"inputs", "structures", "around", "spacing_mm", "box_mm", "shift", "dose_scale"}
        return cls(**{k: v for k, v in d.items() if k in keys})


# --------------------------------------------------------------------------------------------------- cases

def match_cases(case_dirs: list[str | os.PathLike], ids: pd.Series | list[str] | None) -> dict[str, Path]:
    """ID -> patient folder, matched by folder name. Warns (with the numbers) about table IDs without a case and about
    cases not in the table; an empty match is an :class:`InputError`. ``ids=None``: every case found."""
    from rtrai.io.case_io import input_kind, list_cases

    found: dict[str, Path] = {}
    for folder in case_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--cases {folder}: not a folder")
        try:
            patients = list_cases(folder)
        except OSError as exc:
            raise InputError(f"--cases {folder}: cannot list it ({exc.strerror})") from None
        if not patients:
            try:
                input_kind(folder)
                patients = [folder]  # one case given directly
            except InputError:
                raise InputError(f"--cases {folder}: no case folders or OpenKBP patients in it") from None
        for patient in patients:
            if patient.name in found:
                raise InputError(f"case '{patient.name}' is in two --cases folders: {found[patient.name]} and "
                                 f"{patient}")
            found[patient.name] = patient
    if ids is None:
        return found
    ids = [str(i) for i in ids]
    without_case = [i for i in ids if i not in found]
    not_in_table = sorted(set(found) - set(ids))
    matched = {i: found[i] for i in ids if i in found}
    if not matched:
        raise InputError(f"none of the {len(ids)} table IDs names a case folder in {', '.join(map(str, case_dirs))} "
                         f"(IDs like {_preview(ids, 3)}; folders like {_preview(sorted(found), 3)})")
    if without_case:
        warnings.warn(f"{len(without_case)} of {len(ids)} table IDs have no case folder and are left out: "
                      f"{_preview(without_case)}", OutcomeWarning, stacklevel=2)
    if not_in_table:
        warnings.warn(f"{len(not_in_table)} of {len(found)} case folders are not in the table and are left out: "
                      f"{_preview(not_in_table)}", OutcomeWarning, stacklevel=2)
    return matched


def _reference_image(case) -> sitk.Image:
    reference = case.ct if case.ct is not None else case.dose
    if reference is None:
        reference = next(iter(case.structures.values()), None)
    if reference is None:
        raise InputError(f"{case.patient_id}: the case has no CT, dose or structures")
    return reference


def _box_centre(case, spec: GridSpec) -> tuple[np.ndarray, str]:
    """LPS mm: centre of the named structures' bounding box (both parotids: midway between them), else of the body
    (a case without any of them; :func:`load_cohort` warns); and which of the two it is."""
    names = [n for n in spec.centre_on if n != "body"]
    points = []
    for name in names:
        mask = case.structures.get(name)
        if mask is None:
            continue
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask))
        if idx.size:
            for corner in (idx.min(0), idx.max(0)):
                points.append(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner[::-1]]))
    if points:
        points = np.array(points)
        return (points.min(0) + points.max(0)) / 2, "structures"
    image = case.ct if case.ct is not None else case.dose
    if image is None:
        raise InputError(f"{case.patient_id}: centring on the body needs a CT or a dose")
    array = sitk.GetArrayViewFromImage(image)
    body = array > (-300 if image is case.ct else 0.05 * float(array.max()))
    idx = np.argwhere(body)
    if not idx.size:
        raise InputError(f"{case.patient_id}: no body found to centre the box on (no CT above -300 HU)")
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx.mean(0)[::-1]])), "body"


def box_grid(centre: np.ndarray, spec: GridSpec) -> sitk.Image:
    """The stored box (input box + shift margin) as an identity-direction LPS image centred on ``centre``."""
    size_zyx = spec.stored
    reference = sitk.Image([int(s) for s in size_zyx[::-1]], sitk.sitkFloat32)
    reference.SetSpacing([spec.spacing_mm] * 3)
    half = (np.array(size_zyx[::-1], float) - 1) / 2 * spec.spacing_mm
    reference.SetOrigin((np.asarray(centre, float) - half).tolist())
    return reference


def case_arrays(case, spec: GridSpec) -> tuple[np.ndarray, dict]:
    """(C, z, y, x) float32 on the case's stored box, and what was found (box origin, missing structures)."""
    centre, centred_on = _box_centre(case, spec)
    reference = box_grid(centre, spec)
    channels, missing = [], []
    for item in spec.inputs:
        if item == "dose":
            if case.dose is None:
                raise InputError(f"{case.patient_id}: --inputs dose but the case has no dose")
            dose = sitk.Resample(sitk.Cast(case.dose, sitk.sitkFloat32), reference, sitk.Transform(),
                                 sitk.sitkLinear, 0.0)
            channels.append(sitk.GetArrayFromImage(dose) / spec.dose_scale)
        elif item == "ct":
            if case.ct is None:
                raise InputError(f"{case.patient_id}: --inputs ct but the case has no CT")
            ct = sitk.Resample(sitk.Cast(case.ct, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear,
                               -1024.0)
            low, high = CT_WINDOW
            channels.append((np.clip(sitk.GetArrayFromImage(ct), low, high) - low) * (2 / (high - low)) - 1)
        else:
            for name in spec.structures:
                mask = case.structures.get(name)
                if mask is None:
                    missing.append(name)
                    channels.append(np.zeros(spec.stored, np.float32))
                    continue
                fraction = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), reference, sitk.Transform(),
                                         sitk.sitkLinear, 0.0)
                channels.append(np.clip(sitk.GetArrayFromImage(fraction), 0, 1))
    info = {"origin": list(reference.GetOrigin()), "missing": missing, "centred_on": centred_on}
    return np.stack(channels).astype(np.float32), info


def _source_key(path: Path, spec: GridSpec) -> str:
    """Cache key: the preprocessing, the folder, and the names, sizes and times of its files."""
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(path).iterdir() if p.is_file())
    text = json.dumps([CACHE_VERSION, spec.to_dict(), str(Path(path).resolve()), files], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cohort(paths: dict[str, Path], spec: GridSpec, cache: str | os.PathLike | None = None,
                progress=None) -> tuple[np.ndarray, list[dict]]:
    """(N, C, z, y, x) float16 arrays of the cases in ``paths`` (ID -> folder), and per-case info.

    With ``cache``, each case's arrays are kept in ``cache/<ID>.<key>.npz`` (the key changes with the preprocessing
    and with the case's files), so a second run reads 200 cases in seconds instead of minutes."""
    from rtrai.core.outputs import atomic_file
    from rtrai.core.progress import track
    from rtrai.io.case_io import read_case

    cache = Path(cache) if cache else None
    arrays, infos = [], []
    for case_id in track(list(paths), progress, message="reading cases"):
        path = paths[case_id]
        cached = cache / f"{case_id}.{_source_key(path, spec)}.npz" if cache else None
        if cached is not None and cached.is_file():
            with np.load(cached, allow_pickle=False) as stored:
                array, info = stored["array"], json.loads(str(stored["info"]))
        else:
            case = read_case(path)
            array, info = case_arrays(case, spec)
            array = array.astype(np.float16)
            info["grid"] = {"size": list(_reference_image(case).GetSize()),
                            "spacing": list(_reference_image(case).GetSpacing()),
                            "origin": list(_reference_image(case).GetOrigin()),
                            "direction": list(_reference_image(case).GetDirection())}
            if cached is not None:
                cache.mkdir(parents=True, exist_ok=True)
                with atomic_file(cached, suffix=".npz") as tmp:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, array=array, info=np.array(json.dumps(info)))
        arrays.append(array.astype(np.float16))
        infos.append({**info, "id": case_id, "path": str(path)})
    X = np.stack(arrays)
    _check_inputs(X, infos, spec)
    return X, infos


def _check_inputs(X: np.ndarray, infos: list[dict], spec: GridSpec) -> None:
    """Refuse an organ no case has and a channel that is the same everywhere (nothing to learn); warn about organs
    and doses that some cases lack."""
    ids = [i["id"] for i in infos]
    named = [n for n in spec.centre_on if n != "body"]
    on_body = [i["id"] for i in infos if i.get("centred_on") == "body"]
    if named and on_body:
        warnings.warn(f"{len(on_body)} of {len(infos)} cases have none of {', '.join(named)} to centre the box on; "
                      f"their box is centred on the body: {_preview(on_body)}", OutcomeWarning, stacklevel=3)
    for name in spec.structures if "structures" in spec.inputs else []:
        lacking = [i["id"] for i in infos if name in i["missing"]]
        if len(lacking) == len(infos):
            raise InputError(f"structure '{name}' is in none of the {len(infos)} cases; drop it from --structures")
        if lacking:
            warnings.warn(f"structure '{name}' is missing in {len(lacking)} of {len(infos)} cases (its channel is "
                          f"empty for them): {_preview(lacking)}", OutcomeWarning, stacklevel=3)
    for c, name in enumerate(spec.channels):
        values = X[:, c]
        if float(values.max()) == float(values.min()):
            raise InputError(f"input '{name}' is constant ({float(values.min()):.4g}) in all {len(X)} cases inside "
                             f"the box: it carries nothing to learn from; drop it from --inputs/--structures or "
                             f"check the cases")
        if name == "dose":
            empty = [i for i, v in zip(ids, values) if float(v.max()) == 0]
            if empty:
                warnings.warn(f"{len(empty)} of {len(ids)} cases have no dose inside the box: {_preview(empty)}",
                              OutcomeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- network

NETWORK = {"arch": "outcome-cnn", "channels": [16, 32, 64], "dropout": 0.2, "pool": [], "skip": True,
           "region": "box", "members": 1}
# region "organs": features at full resolution, kept only inside the structures (see build_network)
ORGAN_CHANNELS = [8, 16, 16]
# region "subregions": learned soft sub-regions of each structure (hidden units, sub-regions), see build_network
SUBREGION_CHANNELS = [8, 2]
CONTEXT = 2  # voxels each structure voxel sees around it in the organs region
REGIONS = ("organs", "subregions", "box")
MASKED_REGIONS = ("organs", "subregions")  # regions whose every path to the output passes the `inside` layer


def organ_coordinates(shares):
    """(B, S, z, y, x) shares of each voxel inside each structure -> (B, 3, z, y, x): every voxel's position relative
    to the structure it lies in, per axis (z, y, x) in units of twice that structure's spread (about -1..1 across
    it; 0 outside the structures). Computed from the input itself, so it follows translations and lateral flips."""
    import torch

    w = shares.flatten(2)  # B, S, V
    axes = torch.meshgrid(*(torch.arange(n, dtype=shares.dtype, device=shares.device) for n in shares.shape[2:]),
                          indexing="ij")
    position = torch.stack([a.flatten() for a in axes])  # 3, V
    mass = w.sum(-1).clamp(min=1e-6)[..., None]  # B, S, 1
    mean = torch.einsum("bsv,av->bsa", w, position) / mass
    spread = (torch.einsum("bsv,av->bsa", w, position ** 2) / mass - mean ** 2).clamp(min=0.25).sqrt()
    relative = (position[None, None] - mean[..., None]) / (2 * spread[..., None])  # B, S, 3, V
    return torch.einsum("bsv,bsav->bav", w, relative).reshape(shares.shape[0], 3, *shares.shape[2:])


def organ_quantiles(shares):
    """(B, S, z, y, x) shares of each voxel inside each structure -> (B, 3, z, y, x): every voxel's rank position
    inside the structure it lies in, per axis (z, y, x): the share of the structure's volume in the slices before
    the voxel's, plus half of its own slice's, scaled to -1..1 (0 outside the structures). Unlike
    :func:`organ_coordinates`, a value means the same fraction of the organ whatever its shape: 0.8 along z is the
    border of its most superior tenth in every patient. Follows translations; a lateral flip negates x."""
    import torch

    total = shares.sum(dim=(2, 3, 4)).clamp(min=1e-6)[..., None]  # B, S, 1
    out = []
    for axis in range(3):
        profile = shares.sum(dim=tuple(2 + a for a in range(3) if a != axis))  # B, S, n: volume per slice
        middle = (profile.cumsum(-1) - profile / 2) / total * 2 - 1
        shape = [*shares.shape[:2], 1, 1, 1]
        shape[2 + axis] = -1
        out.append((shares * middle.reshape(shape)).sum(1))
    return torch.stack(out, 1)


def conv_window(occupancy, minimum=None) -> tuple[slice, slice, slice]:
    """Where the organs region's convolutions run: the bounding box of the batch's structures (``occupancy``,
    (B, 1, z, y, x)) grown by the CONTEXT their voxels see, then to at least ``minimum`` voxels per axis (centred,
    inside the input). Outputs do not depend on the window's size beyond that; a fixed size lets training reuse the
    same allocations every batch instead of fragmenting the heap with a new shape per batch."""
    size = occupancy.shape[2:]
    found = np.argwhere(occupancy.detach().amax(dim=(0, 1)).cpu().numpy() > 0)
    if not len(found):
        return tuple(slice(0, n) for n in size)
    window = []
    for axis, n in enumerate(size):
        low, high = max(int(found[:, axis].min()) - CONTEXT, 0), min(int(found[:, axis].max()) + CONTEXT + 1, n)
        width = max(high - low, min(int(minimum[axis]), n) if minimum is not None else 0)
        low = min(max(low - (width - (high - low)) // 2, 0), n - width)
        window.append(slice(low, low + width))
    return tuple(window)


def build_network(in_channels: int, network: dict | None = None):
    """The outcome CNN, one of two regions (``network["region"]``):

    - ``box``: MONAI residual units (stride 2, stride 2, stride 1) over the whole box and a head that pools the last
      features over the box and inside each structure named by ``network["pool"]`` (input channel indices), plus a
      linear skip from the images' means inside each structure. Grad-CAM (layer ``features.2``, a quarter of the
      input's resolution) shows what the convolutions used, not the skip.
    - ``subregions``: for an organ's toxicity from the dose in a part of it. Per member, 1x1x1 convolutions on each
      voxel's rank position inside its organ (:func:`organ_quantiles`) give K soft sub-regions (sigmoid maps
      0..1, K = ``channels[1]``); the head is one linear layer on each image's mean inside each sub-region of each
      structure (e.g. the mean dose of a parotid's most superior part) and inside the whole structure (its mean
      dose). The maps, their products with the images and the images pass ``inside`` (Grad-CAM's layer), so the
      attribution lies on the sub-regions the risk comes from. LKB's n = 1 makes a gland's NTCP a function of a
      mean dose; this network learns over *which part* it is taken, with few parameters (about 60 per member).
    - ``organs``: for an organ's toxicity from the dose *in* it. MONAI residual units at full resolution (3x3x3 for
      local context, then 1x1x1) on the images plus each voxel's position relative to its organ
      (:func:`organ_coordinates`: so the net can tell the cranial part of a parotid from the caudal one); these
      features, the images themselves and their products with the coordinates, multiplied by the voxel's share
      inside the structures (layer ``inside``: zero outside), averaged inside each structure, one linear layer;
      ``members`` such networks averaged. Every path to the output goes through ``inside``, so Grad-CAM on it covers
      the whole decision and is zero outside the structures: *where inside the organ* the risk comes from (for
      organs of like size and head weights, the positive part of each voxel's contribution to the logit).
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from monai.networks.blocks import ResidualUnit

    network = {**NETWORK, **(network or {})}
    if network.get("arch") != "outcome-cnn":
        raise ModelError(f"unknown outcome network arch '{network.get('arch')}'")
    if network["region"] not in REGIONS:
        raise ModelError(f"unknown outcome network region '{network['region']}' (one of {', '.join(REGIONS)})")
    channels = [int(c) for c in network["channels"]]
    pool = [int(i) for i in network.get("pool", [])]

    class InsideStructures(nn.Module):
        """Features times each voxel's share inside any structure (Grad-CAM's layer in the organs region)."""

        def forward(self, features, occupancy):
            return features * occupancy

    class MaskedRegionCNN(nn.Module):
        """``members`` networks (trained apart, :func:`train`) whose logits are averaged; all of their features pass
        through the one ``inside`` layer, so Grad-CAM explains the average."""

        def __init__(self, member):
            super().__init__()
            self.images = [c for c in range(in_channels) if c not in pool]
            self.members = nn.ModuleList(member(len(self.images)) for _ in range(int(network["members"])))
            self.inside = InsideStructures()
            self.dropout = nn.Dropout(float(network["dropout"]))
            self.window = None  # the smallest convolution window (z, y, x), see conv_window

        def pool_inside(self, features, shares, occupancy):
            """(B, C, z, y, x) features -> (B, S, C): masked by ``inside``, averaged inside each structure."""
            f = self.inside(features, occupancy)
            own = shares / occupancy.clamp(min=1e-6)  # which structure a voxel's features belong to
            volume = shares.sum(dim=(2, 3, 4)).clamp(min=1e-6)
            return torch.einsum("bcxyz,bsxyz->bsc", f, own) / volume[..., None]

    class SubregionMember(nn.Module):
        """One network of the subregions region: its sub-region maps and its linear head."""

        def __init__(self, images: int):
            super().__init__()
            hidden, k = channels
            self.regions = nn.Sequential(nn.Conv3d(3, hidden, 1), nn.Tanh(), nn.Conv3d(hidden, k, 1), nn.Sigmoid())
            self.linear = nn.Linear((k + 1) * images * len(pool), 1)

    class SubregionCNN(MaskedRegionCNN):
        def __init__(self):
            super().__init__(SubregionMember)

        def forward(self, x):
            shares = x[:, pool]
            occupancy = shares.sum(1, keepdim=True).clamp(max=1)
            position = organ_quantiles(shares)
            images = x[:, self.images]
            n, k = len(self.images), channels[1]
            box = (slice(None), slice(None), *conv_window(occupancy, self.window))  # 1x1x1: only the structures matter
            parts = []
            for member in self.members:
                maps = x.new_zeros((x.shape[0], k, *x.shape[2:]))
                maps[box] = member.regions(position[box])
                parts += [(maps[:, :, None] * images[:, None]).flatten(1, 2), maps]  # k*n products, k maps
            pooled = self.pool_inside(torch.cat([*parts, images], dim=1), shares, occupancy)
            *learned, means = pooled.split([k * n, k] * len(self.members) + [n], dim=2)
            logits = []
            for m, member in enumerate(self.members):
                products, mass = learned[2 * m], learned[2 * m + 1]
                # each image's mean inside each sub-region: sum(share * map * image) / sum(share * map)
                inside_parts = products.unflatten(2, (k, n)) / mass.clamp(min=1e-6)[..., None]
                features = torch.cat([inside_parts.flatten(2), means], dim=2).flatten(1)
                logits.append(member.linear(self.dropout(features)))
            return torch.stack(logits).mean(0)

    class OrganMember(nn.Module):
        """One network of the organs region: its features and its linear head."""

        def __init__(self, images: int):
            super().__init__()
            c1, c2, c3 = channels
            self.features = nn.Sequential(
                ResidualUnit(3, in_channels + 3, c1, strides=1, kernel_size=3, subunits=2, norm="batch"),
                ResidualUnit(3, c1, c2, strides=1, kernel_size=1, subunits=2, norm="batch"),
                ResidualUnit(3, c2, c3, strides=1, kernel_size=1, subunits=2, norm="batch"),
            )
            self.linear = nn.Linear((c3 + 4 * images) * len(pool), 1)

    class OrganCNN(MaskedRegionCNN):
        def __init__(self):
            super().__init__(OrganMember)

        def forward(self, x):
            shares = x[:, pool]
            occupancy = shares.sum(1, keepdim=True).clamp(max=1)
            coordinates = organ_coordinates(shares)
            inputs = torch.cat([x, coordinates], dim=1)
            # beside the learned features, each image and its products with the organ coordinates: averaged inside an
            # organ they are its mean dose and the dose's first moments along each axis (where in the organ the dose
            # lies), from which a head starts as a DVH model would from Dmean
            images = x[:, self.images]
            moments = (images[:, :, None] * coordinates[:, None]).flatten(1, 2)
            # Only the structures' voxels reach the output, and they see 2 voxels around them (one 3x3x3 unit of
            # two convolutions): run on the batch's bounding box of the structures grown by that (conv_window), zero
            # elsewhere (2-3x fewer voxels for two parotids in the default box; the same values inside them).
            box = (slice(None), slice(None), *conv_window(occupancy, self.window))
            parts = []
            for member in self.members:
                f = x.new_zeros((x.shape[0], channels[2], *x.shape[2:]))
                f[box] = member.features(inputs[box])
                parts.append(f)
            # images, moments: shared by the members
            pooled = self.pool_inside(torch.cat([*parts, images, moments], dim=1), shares, occupancy)
            *learned, common = pooled.split([channels[2]] * len(self.members) + [4 * len(self.images)], dim=2)
            return torch.stack([m.linear(self.dropout(torch.cat([c, common], dim=2).flatten(1)))
                                for m, c in zip(self.members, learned)]).mean(0)

    class OutcomeCNN(nn.Module):
        def __init__(self):
            super().__init__()
            c1, c2, c3 = channels
            self.features = nn.Sequential(
                ResidualUnit(3, in_channels, c1, strides=2, subunits=2, norm="batch"),
                ResidualUnit(3, c1, c2, strides=2, subunits=2, norm="batch"),
                ResidualUnit(3, c2, c3, strides=1, subunits=2, norm="batch"),
            )
            self.dropout = nn.Dropout(float(network["dropout"]))
            self.linear = nn.Linear(c3 * (1 + len(pool)), 1)
            # the input images' own means inside each organ (mean dose, mean HU), a skip past the convolutions: the
            # head starts from what a DVH model knows and the features add where inside the organ the dose lies
            self.images = [c for c in range(in_channels) if c not in pool]
            self.skip = nn.Linear(len(self.images) * len(pool), 1, bias=False) if pool and network["skip"] else None

        def forward(self, x):
            f = self.features(x)
            pooled = [f.mean(dim=(2, 3, 4))]
            out = 0
            if pool:
                shares = F.adaptive_avg_pool3d(x[:, pool], f.shape[2:])  # (B, S, cells): share inside each organ
                weight = shares.sum(dim=(2, 3, 4)).clamp(min=1e-6)
                inside = torch.einsum("bcxyz,bsxyz->bsc", f, shares) / weight[..., None]
                pooled.append(inside.flatten(1))
            if self.skip is not None:
                organs = x[:, pool]
                volume = organs.sum(dim=(2, 3, 4)).clamp(min=1e-6)
                means = torch.einsum("bcxyz,bsxyz->bsc", x[:, self.images], organs) / volume[..., None]
                out = self.skip(means.flatten(1))
            return self.linear(self.dropout(torch.cat(pooled, dim=1))) + out

    return {"organs": OrganCNN, "subregions": SubregionCNN, "box": OutcomeCNN}[network["region"]]()


def gradcam_layer(network: dict) -> str:
    """The layer Grad-CAM explains: the masked features (organs, subregions) or the last convolutional stage (box)."""
    return "inside" if {**NETWORK, **network}["region"] in MASKED_REGIONS else "features.2"


def structure_channels(spec: GridSpec) -> list[int]:
    return [c for c, name in enumerate(spec.channels) if name in spec.structures and "structures" in spec.inputs]


def network_spec(spec: GridSpec, network: dict | None = None, members: int = 1) -> dict:
    """The network settings a model is built and stored with: defaults, the given settings, the structure channels
    to pool inside (and the organs region's own default widths), checked against the inputs."""
    network = dict(network or {})
    region = network.get("region")
    if region in MASKED_REGIONS and "channels" not in network:
        network["channels"] = ORGAN_CHANNELS if region == "organs" else SUBREGION_CHANNELS
    if region == "subregions" and "dropout" not in network:
        network["dropout"] = 0.0  # a head on a dozen means: dropping them would only add noise
    network = {**NETWORK, **network, "pool": structure_channels(spec), "members": int(members)}
    if network["region"] in MASKED_REGIONS and not network["pool"]:
        raise InputError(f"--region {network['region']} needs structures among the --inputs (e.g. --inputs "
                         f"dose,structures)")
    if network["members"] < 1 or (network["region"] == "box" and network["members"] != 1):
        raise InputError(f"--members {network['members']}: the organs and subregions regions average 1 or "
                         f"more networks, the box region has one")
    return network


def _lateral_swap(channels: list[str]) -> list[int]:
    return [channels.index(LATERAL_PAIRS[n]) if n in LATERAL_PAIRS and LATERAL_PAIRS[n] in channels else i
            for i, n in enumerate(channels)]


def crop(X: np.ndarray, spec: GridSpec, offsets: np.ndarray | None = None) -> np.ndarray:
    """The input box out of the stored box: at the centre, or at per-case ``offsets`` (N, 3) in 0..2*shift."""
    z, y, x = spec.box
    if offsets is None:
        s = spec.shift
        return X[:, :, s:s + z, s:s + y, s:s + x]
    return np.stack([a[:, o[0]:o[0] + z, o[1]:o[1] + y, o[2]:o[2] + x] for a, o in zip(X, offsets)])


@dataclass
class TrainConfig:
    epochs: int = 80
    patience: int = 15
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-3
    validation: float = 0.2
    flip: bool = False
    seed: int = 0
    threads: int = 1
    members: int = 1  # organs region: networks averaged, each with its own seed and inner validation split


def _seed_everything(seed: int, threads: int):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(threads)))
    return np.random.default_rng(seed)


def train(X: np.ndarray, y: np.ndarray, spec: GridSpec, config: TrainConfig | None = None, network: dict | None = None,
          progress=None) -> tuple[dict, dict]:
    """Train on (N, C, z, y, x) stored boxes and 0/1 labels; returns (state dict of the best epoch, training record).
    With ``config.members`` > 1 (organs region) each member is trained apart (seed + 1000 x member, its own inner
    validation split) and the state holds all of them; the record holds each member's record."""
    from rtrai.core.progress import silent, sub

    config = config or TrainConfig()
    report = progress or silent
    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise InputError(f"the label has only one class ({int(np.argmax(counts))}) in {len(y)} cases; a classifier "
                         f"needs both 0 and 1")
    if counts.min() < 4:
        raise InputError(f"only {int(counts.min())} cases of the minority class in {len(y)}: too few to train and "
                         f"validate a CNN")
    network = network_spec(spec, network, config.members)
    k = int(config.members)
    states, records = [], []
    for m in range(k):
        member_config = TrainConfig(**{**asdict(config), "seed": config.seed + 1000 * m, "members": 1})
        state, record = _train_member(X, y, spec, member_config, {**network, "members": 1},
                                      sub(report, m / k, (m + 1) / k))
        states.append({f"members.{m}." + key.removeprefix("members.0."): v for key, v in state.items()}
                      if network["region"] in MASKED_REGIONS else state)
        records.append(record)
    if k == 1:
        return states[0], records[0]
    record = {**{key: records[0][key] for key in ("n", "n_positive", "n_fit", "n_validation", "prevalence")},
              "pos_weight": float(np.mean([r["pos_weight"] for r in records])),
              "logit_offset": float(np.mean([r["logit_offset"] for r in records])),
              "best_epoch": [r["best_epoch"] for r in records], "epochs_run": sum(r["epochs_run"] for r in records),
              "validation_loss": round(float(np.mean([r["validation_loss"] for r in records])), 5),
              "validation_auc": round(float(np.nanmean([r["validation_auc"] for r in records])), 4),
              "config": asdict(config), "members": records,
              "cpu_seconds": round(sum(r["cpu_seconds"] for r in records), 1),
              "seconds": round(sum(r["seconds"] for r in records), 1)}
    return {key: v for state in states for key, v in state.items()}, record


def _release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc): batches of varying shapes otherwise leave the
    resident size growing epoch after epoch (measured: 1.9 GiB after one epoch, 2.8 after twelve)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _train_member(X: np.ndarray, y: np.ndarray, spec: GridSpec, config: TrainConfig, network: dict, report):
    """One network of :func:`train` (labels checked there)."""
    import torch
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    rng = _seed_everything(config.seed, config.threads)
    index = np.arange(len(y))
    fit_idx, val_idx = train_test_split(index, test_size=config.validation, stratify=y, random_state=config.seed)
    n_pos, n_neg = int(y[fit_idx].sum()), int(len(fit_idx) - y[fit_idx].sum())
    pos_weight = n_neg / max(n_pos, 1)
    net = build_network(X.shape[1], network)
    if hasattr(net, "window"):
        # organs region: about one convolution window for every batch (see conv_window), the size the structures of
        # all cases span; a shifted batch that spans more gets a larger one (the window with the shifts included
        # would run 2x slower for the few batches that need it)
        structures = np.argwhere(X[:, network["pool"]].max(axis=(0, 1)) > 0)
        if len(structures):
            net.window = structures.max(0) - structures.min(0) + 1 + 2 * CONTEXT
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
    swap = _lateral_swap(spec.channels)
    X_val = torch.as_tensor(crop(X[val_idx], spec).astype(np.float32))
    y_val = torch.as_tensor(y[val_idx], dtype=torch.float32)[:, None]

    best = {"loss": np.inf, "epoch": -1, "state": None, "auc": float("nan")}
    history = []
    started = time.process_time()
    wall = time.time()
    for epoch in range(config.epochs):
        net.train()
        order = rng.permutation(fit_idx)
        total = 0.0
        for start in range(0, len(order), config.batch):
            batch = order[start:start + config.batch]
            if len(batch) < 2:  # batch norm needs two cases
                continue
            offsets = rng.integers(0, 2 * spec.shift + 1, (len(batch), 3))
            xb = crop(X[batch], spec, offsets).astype(np.float32)
            if config.flip:
                flip = rng.random(len(batch)) < 0.5
                xb[flip] = xb[flip][:, swap, :, :, ::-1]
            xb, yb = torch.as_tensor(np.ascontiguousarray(xb)), torch.as_tensor(y[batch], dtype=torch.float32)[:, None]
            optimiser.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        _release_freed_memory()
        net.eval()
        with torch.no_grad():  # in batches: the organs region's full-resolution features are large
            logits = torch.cat([net(X_val[i:i + config.batch]) for i in range(0, len(X_val), config.batch)])
            val_loss = float(loss_fn(logits, y_val))
        val_auc = float(roc_auc_score(y[val_idx], logits[:, 0].numpy())) if 0 < y[val_idx].sum() < len(val_idx) \
            else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(fit_idx), 5),
                        "val_loss": round(val_loss, 5), "val_auc": round(val_auc, 4)})
        # a few dozen validation cases give a noisy loss: choose on its mean over the last 3 epochs
        smoothed = float(np.mean([h["val_loss"] for h in history[-3:]]))
        if smoothed < best["loss"] - 1e-4:
            best = {"loss": smoothed, "epoch": epoch + 1, "auc": val_auc,
                    "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        report((epoch + 1) / config.epochs, f"epoch {epoch + 1}: val loss {val_loss:.3f}, AUC {val_auc:.3f}")
        if epoch + 1 - best["epoch"] >= config.patience:
            break
    if best["state"] is None:  # the validation loss was never finite: keep the last weights, say so in the record
        best["state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    report(1.0, f"best epoch {best['epoch']}")
    record = {"n": int(len(y)), "n_positive": int(y.sum()), "n_fit": int(len(fit_idx)),
              "n_validation": int(len(val_idx)), "pos_weight": round(pos_weight, 6),
              "logit_offset": float(np.log(pos_weight)), "prevalence": float(y.mean()),
              "best_epoch": best["epoch"], "epochs_run": len(history), "validation_loss": round(best["loss"], 5),
              "validation_auc": round(best["auc"], 4), "config": asdict(config), "history": history,
              "cpu_seconds": round(time.process_time() - started, 1), "seconds": round(time.time() - wall, 1)}
    return best["state"], record


# ------------------------------------------------------------------------------------------- model files

class OutcomeCNN:
    """A trained outcome CNN: the network, its preprocessing and what training measured."""

    def __init__(self, manifest: dict, state: dict):
        self.manifest = manifest
        self.spec = GridSpec.from_dict(manifest["inputs"])
        self.network = build_network(len(self.spec.channels), manifest["network"])
        try:
            self.network.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"outcome CNN '{manifest.get('name')}': weights do not fit its network "
                             f"({str(exc).splitlines()[0]})") from None
        self.network.eval()

    @property
    def label(self) -> str:
        return self.manifest["labels"][0]

    @property
    def info(self) -> dict:
        return {"name": self.manifest["name"], "version": self.manifest["version"], "sha256": self.manifest["sha256"]}

    @classmethod
    def load(cls, path: str | os.PathLike) -> OutcomeCNN:
        """Load a model folder (or its manifest.json); the weights' sha256 must match the manifest."""
        from rtrai.models import load_state_dict, read_manifest

        manifest = read_manifest(path)
        if manifest.get("task") != TASK:
            raise ModelError(f"{path}: not an outcome CNN (task '{manifest.get('task')}'); feature models load with "
                             f"rtrai outcome evaluate/predict")
        return cls(manifest, load_state_dict(manifest))

    def save(self, folder: str | os.PathLike) -> Path:
        from rtrai.models import write_model

        return write_model(folder, self.network.state_dict(), self.manifest, half=False)

    def logits(self, X: np.ndarray, batch: int = 16) -> np.ndarray:
        """Calibrated logits of stored boxes (the class-weighting offset removed)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(X), batch):
                xb = torch.as_tensor(crop(X[start:start + batch], self.spec).astype(np.float32))
                out.append(self.network(xb)[:, 0].numpy())
        return np.concatenate(out) - float(self.manifest["training"]["logit_offset"])

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logits(X)))

    def gradcam(self, X: np.ndarray) -> np.ndarray:
        """(N, z, y, x) Grad-CAM maps (MONAI) on the input box, each scaled to [0, 1]."""
        from rtrai.models.gradcam import grad_cam

        box = crop(X, self.spec).astype(np.float32)
        layer = gradcam_layer(self.manifest["network"])
        return np.stack([grad_cam(self.network, box[i:i + 1], layer) for i in range(len(box))])


def fit(X: np.ndarray, y: np.ndarray, spec: GridSpec, label: str, config: TrainConfig | None = None,
        network: dict | None = None, ids: list[str] | None = None, progress=None) -> OutcomeCNN:
    """Train and wrap as an :class:`OutcomeCNN` (in memory; ``.save(folder)`` writes it)."""
    config = config or TrainConfig()
    state, record = train(X, y, spec, config, network, progress)
    manifest = {"name": "outcome-cnn", "version": "1", "task": TASK, "weights": "weights.safetensors", "sha256": "",
                "network": network_spec(spec, network, config.members),
                "inputs": spec.to_dict(), "labels": [label],
                "training": {**record, "ids": list(ids) if ids is not None else None,
                             "threshold": record["prevalence"]},
                "metrics": {"inner_validation": {"auc": record["validation_auc"],
                                                 "loss": record["validation_loss"], "n": record["n_validation"]}}}
    return OutcomeCNN(manifest, state)


# -------------------------------------------------------------------------------------------- evaluation

def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """AUC with a bootstrap 95% CI, Brier score, calibration slope and intercept, sensitivity/specificity."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from rtrai.outcome.evaluation import bootstrap_ci, calibration_slope_intercept

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise InputError(f"the evaluation cases have only one class ({int(y[0])}) in {len(y)} cases; AUC needs both "
                         f"0 and 1")
    predicted = p >= threshold
    slope, intercept = calibration_slope_intercept(y, p)
    return {"n": int(len(y)), "n_positive": int(y.sum()), "auc": float(roc_auc_score(y, p)),
            "auc_ci": bootstrap_ci(lambda i: roc_auc_score(y[i], p[i]), len(y), n_bootstrap, seed,
                                   valid=lambda i: 0 < y[i].sum() < len(i)),
            "brier": float(brier_score_loss(y, p)), "threshold": float(threshold),
            "sensitivity": float(predicted[y == 1].mean()), "specificity": float((~predicted[y == 0]).mean()),
            "calibration_slope": slope, "calibration_intercept": intercept, "n_bootstrap": int(n_bootstrap)}


def attribution_shares(cam: np.ndarray, masks: dict[str, np.ndarray], groups: dict[str, list[str]] | None = None,
                       region: np.ndarray | None = None) -> list[dict]:
    """The share of a map's attribution inside each structure (and each group of structures, their union), beside
    the share of the ``region`` the map covers (default: all of it) that the structure fills (enrichment = the ratio:
    1 is what a uniform map gives)."""
    region = np.ones(cam.shape, bool) if region is None else region.astype(bool)
    total = float(cam.sum())
    rows = []
    named = dict(masks)
    for group, members in (groups or {}).items():
        present = [named[m] for m in members if m in named]
        if len(present) > 1:
            named[group] = np.logical_or.reduce(present)
    for name, mask in named.items():
        mask = mask.astype(bool)
        if not mask.any():
            continue  # missing is not empty: no row for an organ the case lacks
        share = float(cam[mask].sum() / total) if total > 0 else float("nan")
        volume = float((mask & region).sum() / region.sum())
        rows.append({"structure": name, "attribution_share": share, "volume_share": volume,
                     "enrichment": share / volume if volume > 0 else float("nan")})
    return rows


def cam_to_case(cam: np.ndarray, info: dict, spec: GridSpec) -> sitk.Image:
    """A map on the input box back onto the case's own grid (linear; 0 outside the box)."""
    s = spec.shift
    box = sitk.GetImageFromArray(cam.astype(np.float32))
    box.SetSpacing([spec.spacing_mm] * 3)
    box.SetOrigin((np.array(info["origin"]) + s * spec.spacing_mm).tolist())
    grid = info["grid"]
    reference = sitk.Image([int(v) for v in grid["size"]], sitk.sitkFloat32)
    reference.SetSpacing(grid["spacing"])
    reference.SetOrigin(grid["origin"])
    reference.SetDirection(grid["direction"])
    return sitk.Resample(box, reference, sitk.Transform(), sitk.sitkLinear, 0.0)


def box_image(array: np.ndarray, spec: GridSpec) -> sitk.Image:
    """An array on the input box as an image centred on the origin (for maps averaged over patients)."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing([spec.spacing_mm] * 3)
    image.SetOrigin((-(np.array(spec.box[::-1], float) - 1) / 2 * spec.spacing_mm).tolist())
    return image


def montage(X: np.ndarray, cams: np.ndarray, spec: GridSpec, ids: list[str], probabilities: np.ndarray,
            labels: np.ndarray | None, path: Path, limit: int = 12) -> Path:
    """One axial slice per case (the one holding the most attribution; without any, the structures' largest): dose in
    grey, Grad-CAM in colour, contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtrai.core.outputs import atomic_file

    box = crop(X[:limit], spec).astype(np.float32)
    n = len(box)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    channels = spec.channels
    background = channels.index("dose") if "dose" in channels else (channels.index("ct") if "ct" in channels else None)
    organ_channels = [c for c, name in enumerate(channels) if name in spec.structures]
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        organs = box[k, organ_channels].sum(0) if organ_channels else cams[k]
        shown = cams[k] if cams[k].any() else organs
        z = int(np.argmax(shown.sum((1, 2)))) if shown.any() else box.shape[2] // 2
        if background is not None:
            ax.imshow(box[k, background, z], cmap="gray", vmin=0 if channels[background] == "dose" else -1,
                      vmax=float(box[:, background].max()) if channels[background] == "dose" else 1)
        ax.imshow(cams[k, z], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for c in organ_channels:
            if box[k, c, z].max() > 0.5:
                ax.contour(box[k, c, z], levels=[0.5], colors="white", linewidths=0.8)
        truth = "" if labels is None else f", y={int(labels[k])}"
        ax.set_title(f"{ids[k]}: p={probabilities[k]:.2f}{truth}", fontsize=9)
    fig.suptitle("Grad-CAM (colour) on the dose (grey), the axial slice with the most attribution; patient left on the "
                 "right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def read_labels(table: pd.DataFrame, id_column: str, label: str) -> pd.DataFrame:
    """The ID and 0/1 label columns of a table, checked (a row without a label is dropped with a warning)."""
    for column in (id_column, label):
        if column not in table.columns:
            raise InputError(f"column '{column}' not in the table (columns: {_preview(table.columns)})")
    frame = pd.DataFrame({"ID": table[id_column].astype(str), "label": pd.to_numeric(table[label], errors="coerce")})
    if frame["ID"].duplicated().any():
        raise InputError(f"IDs repeat in '{id_column}': {_preview(frame['ID'][frame['ID'].duplicated()].unique())}")
    bad = table[label].notna() & frame["label"].isna()
    if bad.any():
        raise InputError(f"label column '{label}' is not numeric (values like "
                         f"{_preview(table[label][bad].astype(str).unique(), 3)})")
    missing = frame["label"].isna()
    if missing.all():
        raise InputError(f"every row has a missing label '{label}'")
    if missing.any():
        warnings.warn(f"dropped {int(missing.sum())} of {len(frame)} rows with a missing label '{label}': "
                      f"{_preview(frame['ID'][missing])}", OutcomeWarning, stacklevel=2)
        frame = frame[~missing]
    if not set(frame["label"].unique()) <= {0.0, 1.0}:
        raise InputError(f"label column '{label}' must hold 0 and 1 (found {_preview(np.unique(frame['label']))})")
    frame["label"] = frame["label"].astype(int)
    return frame.reset_index(drop=True)


def evaluate(model: OutcomeCNN, X: np.ndarray, infos: list[dict], y: np.ndarray, out_dir: str | os.PathLike,
             gradcam: bool = False, n_bootstrap: int = 1000, seed: int = 0, progress=None) -> dict:
    """Metrics of ``model`` on cases it never saw; writes predictions.csv, roc.png, calibration.png into ``out_dir``
    and, with ``gradcam``, gradcam/<ID>.nrrd (on each case's grid), gradcam_montage.png, the mean map over the positive
    cases (gradcam_mean_positive.nrrd, with their mean dose dose_mean_positive.nrrd, on the common box centred on the
    origin) and gradcam_structures.csv (the share of the attribution inside each structure)."""
    from rtrai.core.progress import silent, sub
    from rtrai.core.outputs import atomic_file
    from rtrai.outcome import plots

    report = progress or silent
    out_dir = Path(out_dir)
    ids = [i["id"] for i in infos]
    report(0.0, "predicting")
    p = model.probabilities(X)
    metrics = binary_metrics(y, p, float(model.manifest["training"]["threshold"]), n_bootstrap, seed)
    with atomic_file(out_dir / "predictions.csv", suffix=".csv") as tmp:
        pd.DataFrame({"ID": ids, "probability": p, model.label: y}).to_csv(tmp, index=False)
    plots.roc(y, p, metrics, out_dir / "roc.png")
    plots.calibration_binary(y, p, metrics, out_dir / "calibration.png")
    if gradcam:
        metrics["gradcam"] = write_gradcam(model, X, infos, p, y, out_dir, sub(report, 0.2, 1.0))
    report(1.0, "done")
    return metrics


def write_gradcam(model: OutcomeCNN, X: np.ndarray, infos: list[dict], p: np.ndarray, y: np.ndarray | None,
                  out_dir: Path, progress=None) -> dict:
    """The Grad-CAM outputs of :func:`evaluate`; returns the mean attribution share per structure."""
    from rtrai.core.outputs import atomic_file
    from rtrai.core.progress import track
    from rtrai.io.case_io import read_case
    from rtrai.io.images import write_image

    spec = model.spec
    ids = [i["id"] for i in infos]
    cams = []
    for k in track(range(len(X)), progress, message="Grad-CAM"):
        cam = model.gradcam(X[k:k + 1])[0]
        cams.append(cam)
        write_image(cam_to_case(cam, infos[k], spec), out_dir / "gradcam" / f"{ids[k]}.nrrd")
    cams = np.stack(cams)
    montage(X, cams, spec, ids, p, y, out_dir / "gradcam_montage.png")
    positive = np.asarray(y) == 1 if y is not None else np.ones(len(X), bool)
    if positive.any():
        write_image(box_image(cams[positive].mean(0), spec), out_dir / "gradcam_mean_positive.nrrd")
        if "dose" in spec.channels:
            dose = crop(X[positive], spec)[:, spec.channels.index("dose")].astype(np.float32).mean(0)
            write_image(box_image(dose * spec.dose_scale, spec), out_dir / "dose_mean_positive.nrrd")
    rows = []
    for k, info in enumerate(infos):  # on each case's own grid, for every structure it has
        case = read_case(info["path"])
        # copies, not views: a view of a temporary image reads freed memory once the image is collected
        cam = sitk.GetArrayFromImage(cam_to_case(cams[k], info, spec))
        masks = {n: sitk.GetArrayViewFromImage(m) != 0 for n, m in case.structures.items()
                 if m.GetSize() == tuple(info["grid"]["size"])}
        groups = {"+".join(spec.structures): spec.structures} if len(spec.structures) > 1 else {}
        covered = sitk.GetArrayFromImage(cam_to_case(np.ones_like(cams[k]), info, spec)) > 0.5  # the box
        rows += [{"ID": ids[k], **row} for row in attribution_shares(cam, masks, groups, covered)]
    shares = pd.DataFrame(rows, columns=["ID", "structure", "attribution_share", "volume_share", "enrichment"])
    summary = {}
    if not shares.empty:
        with atomic_file(out_dir / "gradcam_structures.csv", suffix=".csv") as tmp:
            shares.to_csv(tmp, index=False, float_format="%.5g")
        for name, group in shares.groupby("structure", sort=False):
            summary[name] = {"attribution_share_mean": float(group["attribution_share"].mean()),
                             "attribution_share_median": float(group["attribution_share"].median()),
                             "volume_share_mean": float(group["volume_share"].mean()),
                             "enrichment_median": float(group["enrichment"].median()),
                             "cases": int(group["attribution_share"].notna().sum())}
    return {"maps": len(cams), "layer": gradcam_layer(model.manifest["network"]), "structures": summary}

"""From cases to training arrays: channel preprocessing, preloading, foreground-biased patches, augmentation.

Arrays are (channel, z, y, x) in the LPS-oriented image (``DICOMOrient``), so the last axis is always the patient's
right-to-left axis: that is the axis the lateral flip mirrors, swapping ``*_L`` and ``*_R`` label channels with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.structures import LATERAL_PAIRS

PAD_VALUE = -1.0  # the bottom of every window: air for CT


def orient(image: sitk.Image) -> sitk.Image:
    """The image in LPS orientation (identity direction), so array axes are (S->I... z, P y, L x) everywhere."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if np.allclose(direction, np.eye(3)):
        return image
    return sitk.DICOMOrient(image, "LPS")


def window(array: np.ndarray, bounds) -> np.ndarray:
    """Clip to the window and scale it to [-1, 1]."""
    low, high = float(bounds[0]), float(bounds[1])
    return (np.clip(array.astype(np.float32), low, high) - low) * (2.0 / (high - low)) - 1.0


def channel_images(case: Case, inputs: list[dict], folder: str | os.PathLike | None = None) -> list[sitk.Image]:
    """The input images a config asks for: the case's CT for "CT", else ``<name>.nrrd`` in the case's folder
    (``folder``, or the folder the case was read from), resampled onto the CT grid when it is on another."""
    images = []
    for spec in inputs:
        name = spec["name"]
        if name == "CT":
            if case.ct is None:
                raise InputError(f"{case.patient_id}: the model needs a CT and the case has none")
            images.append(case.ct)
            continue
        where = folder or case.metadata.get("source_path")
        path = Path(where) / f"{name}.nrrd" if where else None
        if path is None or not path.is_file():
            raise InputError(f"{case.patient_id}: the model needs input channel '{name}' ({name}.nrrd in the case "
                             "folder) and the case has none")
        image = sitk.ReadImage(str(path))
        if image.GetSize() != case.ct.GetSize() or not np.allclose(image.GetSpacing(), case.ct.GetSpacing()):
            image = sitk.Resample(image, case.ct, sitk.Transform(), sitk.sitkLinear, float(spec["window"][0]))
        images.append(image)
    return images


def check_intensities(image: sitk.Image, spec: dict, patient: str) -> None:
    """Refuse an image that cannot be the modality the model was trained on (a CT model given an MR, ...)."""
    if spec.get("modality") != "CT":
        return
    array = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(array[:: 4, :: 4, :: 4], [1, 99])
    if low > -500 or high < -200 or high - low < 300:
        raise InputError(f"{patient}: intensities from {low:.0f} to {high:.0f} do not look like a CT in HU "
                         "(no air near -1000 HU, or too narrow a range); this model needs CT")


def preprocess(case: Case, inputs: list[dict], folder: str | os.PathLike | None = None) -> np.ndarray:
    """Input channels as float32 (C, z, y, x), each windowed to [-1, 1]."""
    channels = []
    for spec, image in zip(inputs, channel_images(case, inputs, folder)):
        check_intensities(image, spec, case.patient_id)
        channels.append(window(sitk.GetArrayFromImage(orient(image)), spec["window"]))
    return np.stack(channels)


def label_array(case: Case, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(L, z, y, x) uint8 masks and a (L,) bool 'contoured' vector; absent structures are zeros marked absent."""
    shape = sitk.GetArrayViewFromImage(case.ct).shape
    masks = np.zeros((len(labels),) + shape, dtype=np.uint8)
    present = np.zeros(len(labels), dtype=bool)
    for i, name in enumerate(labels):
        if name in case.structures:
            masks[i] = sitk.GetArrayFromImage(orient(case.structures[name])) != 0
            present[i] = True
    return masks, present


@dataclass
class Sample:
    patient: str
    image: np.ndarray  # (C, z, y, x) float16
    bits: np.ndarray  # (1, z, y, x) labels packed as bits (label k is bit k): 7 masks in one byte per voxel
    present: np.ndarray  # (L,) bool
    centres: list  # per label: (n, 3) int voxel indices inside it (subsampled), empty when absent
    body: np.ndarray  # (n, 3) voxel indices inside the body, for background patches
    spacing: tuple  # (x, y, z) mm of the CT as read (before any down-sampling)
    scored: np.ndarray | None = None  # (z,) bool: the slices with image data (leak-free OpenKBP), None: all


def load_samples(paths: list[Path], config: dict, progress=None, max_points: int = 4096, seed: int = 0,
                 skipped: list | None = None) -> list[Sample]:
    """Read and preprocess cases once (float16 images, uint8 labels: about 18 MB per OpenKBP patient). With
    ``leak_free``, a patient whose leak-free CT the model's own intake check refuses (OpenKBP's train pt_143 keeps
    CT only in 0.4 % of its volume, pt_170 on a few slices) would teach blank images: it is left out and
    "name: reason" appended to ``skipped``."""
    from rtrai.core.progress import track
    from rtrai.io.case_io import read_case

    rng = np.random.default_rng(seed)
    factor = int(config.get("downsample", 1))
    samples = []
    for path in track(paths, progress, message=""):
        case = read_case(path)
        scored = None
        if config.get("leak_free") and case.metadata.get("source") == "openkbp":
            from rtrai.io.openkbp import imaged_slices, leak_free

            scored, case = imaged_slices(case), leak_free(case)  # OpenKBP's grid is already LPS: z is z
            try:
                for spec in config["inputs"]:
                    check_intensities(case.ct, spec, Path(path).name)
            except InputError as exc:
                if skipped is not None:
                    skipped.append(str(exc).split(" do not look")[0])
                continue
        image = preprocess(case, config["inputs"], path if Path(path).is_dir() else None)
        labels, present = label_array(case, config["labels"])
        if factor > 1:
            image, labels = downsample(image, factor), downsample(labels, factor, is_label=True)
            if scored is not None:
                scored = downsample(scored[None, :, None, None], factor, is_label=True)[0, :, 0, 0].astype(bool)
        points = []
        for i in range(len(config["labels"])):
            found = np.argwhere(labels[i]) if present[i] else np.zeros((0, 3), dtype=np.int64)
            if config.get("imaged_slices_only") and scored is not None:
                found = found[scored[found[:, 0]]]
            if len(found) > max_points:
                found = found[rng.choice(len(found), max_points, replace=False)]
            points.append(found.astype(np.int16))
        body = np.argwhere(image[0] > -0.6)  # soft tissue and denser in the first channel's window
        body = body[rng.choice(len(body), min(len(body), max_points), replace=False)] if len(body) else body
        samples.append(Sample(Path(path).name, image.astype(np.float16), pack(labels), present, points,
                              body.astype(np.int16), tuple(orient(case.ct).GetSpacing()), scored))
    return samples


def pack(labels: np.ndarray) -> np.ndarray:
    """(L, z, y, x) binary masks -> (1, z, y, x) with bit k set where label k is (preloading 68 cases in 0.4 GB)."""
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= len(labels))
    packed = np.zeros((1,) + labels.shape[1:], dtype=dtype)
    for k, mask in enumerate(labels):
        packed[0] |= (mask.astype(dtype) << dtype(k))
    return packed


def unpack(packed: np.ndarray, count: int) -> np.ndarray:
    """(1, z, y, x) bits -> (count, z, y, x) uint8 masks."""
    return np.stack([((packed[0] >> k) & 1).astype(np.uint8) for k in range(count)])


def downsample(array: np.ndarray, factor: int, is_label: bool = False) -> np.ndarray:
    """Average-pool (images) or max-pool (labels: small organs must not vanish) each channel by ``factor``."""
    c, z, y, x = array.shape
    pad = [(0, 0)] + [(0, (-n) % factor) for n in (z, y, x)]
    array = np.pad(array, pad, mode="edge")
    shape = (c, array.shape[1] // factor, factor, array.shape[2] // factor, factor, array.shape[3] // factor, factor)
    blocks = array.reshape(shape)
    return blocks.max(axis=(2, 4, 6)) if is_label else blocks.astype(np.float32).mean(axis=(2, 4, 6))


def crop(array: np.ndarray, centre, size, fill) -> np.ndarray:
    """The (C, *size) box centred on ``centre``, padded with ``fill`` where it leaves the volume."""
    out = np.full((array.shape[0],) + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, array.shape[1:]):
        start = int(c) - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


class PatchSampler:
    """Foreground-biased patches: a label is drawn uniformly (small organs as often as the mandible), then a patient
    that has it, then one of its voxels (jittered) as the patch centre; otherwise a random body voxel."""

    def __init__(self, samples: list[Sample], config: dict):
        self.samples = samples
        self.patch = tuple(int(p) for p in config["patch"])
        self.foreground = float(config["foreground_fraction"])
        self.count = len(config["labels"])
        # imaged_slices_only: the loss sees only the slices with image data of leak-free OpenKBP cases (their contours
        # go on beyond the CT's cut, where no network can see them), and patches are centred there.
        self.imaged_only = bool(config.get("imaged_slices_only"))
        self.with_label = [[i for i, s in enumerate(samples) if s.present[k] and len(s.centres[k])]
                           for k in range(len(config["labels"]))]
        if not any(self.with_label):
            raise InputError("none of the training cases has any of the labels to learn")

    def draw(self, rng: np.random.Generator) -> dict:
        labels = [k for k, cases in enumerate(self.with_label) if cases]
        if rng.random() < self.foreground:
            k = labels[rng.integers(len(labels))]
            sample = self.samples[self.with_label[k][rng.integers(len(self.with_label[k]))]]
            centre = sample.centres[k][rng.integers(len(sample.centres[k]))].astype(int)
            centre = centre + rng.integers(-self.patch[0] // 4, self.patch[0] // 4 + 1, size=3)
        else:
            sample = self.samples[rng.integers(len(self.samples))]
            pool = sample.body if len(sample.body) else np.array([[n // 2 for n in sample.image.shape[1:]]])
            centre = pool[rng.integers(len(pool))].astype(int)
        patch = {"image": crop(sample.image, centre, self.patch, PAD_VALUE).astype(np.float32),
                 "label": unpack(crop(sample.bits, centre, self.patch, 0), self.count).astype(np.float32),
                 "present": sample.present.astype(np.float32)}
        if self.imaged_only:
            patch["weight"] = self.slice_weight(sample, centre)
        return patch

    def slice_weight(self, sample: Sample, centre) -> np.ndarray:
        """(1, *patch) float32: 0 on the case's slices without image data, 1 elsewhere (beyond the volume too, where
        the labels are empty and the image padding: there it teaches background, as without the weight; and on every
        slice of a case that is not a leak-free OpenKBP one)."""
        if sample.scored is None:
            return np.ones((1, *self.patch), dtype=np.float32)
        weight = np.ones((1, len(sample.scored), 1, 1), dtype=np.float32)
        weight[0, ~sample.scored] = 0.0
        weight = crop(weight, (centre[0], 0, 0), (self.patch[0], 1, 1), 1.0)
        return np.ascontiguousarray(np.broadcast_to(weight, (1, *self.patch)))


def lateral_order(labels: list[str]) -> list[int]:
    """The label channel order of the mirrored patient: each left channel (Parotid_L) takes its right twin's place."""
    index = {name: i for i, name in enumerate(labels)}
    return [index.get(LATERAL_PAIRS.get(name), i) for i, name in enumerate(labels)]


def augmentation(config: dict):
    """MONAI augmentation on {"image", "label", "present"[, "weight"]} dicts: lateral flip with label swap, small
    affine (the weight moved with the labels), intensity scale/shift and noise on the image only."""
    from monai.transforms import (Compose, MapTransform, RandAffined, RandGaussianNoised, RandomizableTransform,
                                  RandScaleIntensityd, RandShiftIntensityd)

    aug = config["augment"]
    order = lateral_order(config["labels"])

    class RandLateralFlipd(RandomizableTransform, MapTransform):
        """Mirror left-right (the last array axis) and swap the left/right label channels and their 'present'."""

        def __init__(self, prob: float):
            RandomizableTransform.__init__(self, prob)
            MapTransform.__init__(self, ["image", "label"])

        def __call__(self, data: dict) -> dict:
            self.randomize(None)
            if not self._do_transform:
                return data
            return lateral_flip(data, order)

    angle = np.deg2rad(float(aug["rotate_deg"]))
    return Compose([
        RandLateralFlipd(prob=float(aug["flip"])),
        RandAffined(keys=["image", "label", "weight"], prob=float(aug["affine"]), rotate_range=(angle, angle, angle),
                    scale_range=(aug["scale"],) * 3, mode=("bilinear", "nearest", "nearest"), padding_mode="border",
                    allow_missing_keys=True),
        RandScaleIntensityd(keys="image", factors=0.1, prob=float(aug["intensity"])),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=float(aug["intensity"])),
        RandGaussianNoised(keys="image", std=0.02, prob=float(aug["noise"])),
    ])


def lateral_flip(data: dict, order: list[int]) -> dict:
    """Mirror along x and swap left/right label channels (and whether each was contoured); ``order``: lateral_order."""
    out = dict(data)
    out["image"] = np.ascontiguousarray(np.flip(np.asarray(data["image"]), axis=-1))
    out["label"] = np.ascontiguousarray(np.flip(np.asarray(data["label"]), axis=-1)[order])
    out["present"] = np.asarray(data["present"])[order]
    return out


def case_paths(folder: str | os.PathLike) -> list[Path]:
    from rtrai.io.case_io import list_cases

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"training data folder not found: {folder}")
    paths = list_cases(folder)
    if not paths:
        raise InputError(f"{folder}: no patients (OpenKBP, case or DICOM folders) inside")
    return paths

"""Training augmentation of encoded dose cases (inputs and dose alike): the left-right flip that swaps the paired
organs, and a random affine warp of whole volumes (MONAI's :class:`~monai.transforms.Affine`) with a CT intensity
jitter, against overfitting a few dozen patients.

The random numbers come from the training run's ``numpy`` generator in a fixed order (angle, scale, shift, then the
jitter), so a run is reproduced by its seed and resumed by the generator's state in its checkpoint.
"""

from __future__ import annotations

import math

import numpy as np

from rtrai.dose.encoding import CHANNELS, FLIP_PAIRS, MASK_CHANNELS, PRIOR, TARGETS


def flip_left_right(x: np.ndarray, y: np.ndarray | None = None):
    """Mirror the last (x) axis, the left-right one, and swap the channels of paired organs (Parotid_L <-> _R):
    the mirrored inputs (a copy), or (inputs, dose) when a dose is given (the dose as a mirrored view)."""
    x = x[..., ::-1].copy()
    for a, b in FLIP_PAIRS:
        x[[a, b]] = x[[b, a]]
    return x if y is None else (x, y[..., ::-1])


def random_affine(rng: np.random.Generator, spec: dict, shape_zyx) -> np.ndarray:
    """A random axial rotation (``rotate_deg``), isotropic scaling (``scale``, a fraction) and shift (``shift_vox``)
    as the 4 x 4 matrix MONAI's Affine takes: output voxel -> input voxel, (z, y, x) voxel coordinates about the
    volume's centre. The rotation and scaling act on coordinates normalised to [-1, 1] per axis (as
    ``torch.nn.functional.affine_grid`` does), the convention the shipped models were trained with."""
    angle = math.radians(rng.uniform(-1, 1) * float(spec.get("rotate_deg", 0)))
    scale = 1.0 + rng.uniform(-1, 1) * float(spec.get("scale", 0))
    shift = rng.integers(-int(spec.get("shift_vox", 0)), int(spec.get("shift_vox", 0)) + 1, 3)  # x, y, z voxels
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    normalised = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0 / scale]])  # x, y, z
    half = np.array(shape_zyx[::-1], float) / 2  # voxels per unit of normalised coordinate, x, y, z
    voxels = (half[:, None] * normalised / half[None, :])[::-1, ::-1]  # to voxel units, then to z, y, x order
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = voxels, shift[::-1]
    return matrix


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """A random axial rotation, isotropic scaling and shift of a whole volume (inputs and dose alike), then a CT
    intensity jitter. Rotation is in the axial plane, where the pixels are square. CT, prior and dose are resampled
    linearly, masks and target levels by nearest voxel (the binary masks packed as bits of one channel: 5x cheaper).
    The possible-dose mask moves with the anatomy, so the loss only sees resampled voxels."""
    import torch
    from monai.transforms import Affine

    matrix = torch.as_tensor(random_affine(rng, spec, x.shape[1:]), dtype=torch.float64)
    bits = sum(x[c].astype(np.int32) << i for i, c in enumerate(MASK_CHANNELS)).astype(np.float32)
    extra = list(range(len(CHANNELS), x.shape[0]))  # channels after CHANNELS (the beam prior): smooth, like the prior
    smooth = torch.from_numpy(np.stack([x[0] + 1.0, x[PRIOR], y] + [x[c] for c in extra]))  # CT + 1: air -> 0
    nearest = torch.from_numpy(np.stack([bits, x[TARGETS]]))

    def warp(channels, mode: str) -> np.ndarray:
        moved = Affine(affine=matrix, mode=mode, padding_mode="zeros", image_only=True)(channels)
        return np.asarray(moved.as_tensor() if hasattr(moved, "as_tensor") else moved, dtype=np.float32)

    smooth, nearest = warp(smooth, "bilinear"), warp(nearest, "nearest")
    out = np.empty_like(x)
    jitter = float(spec.get("ct_jitter", 0))
    out[0] = (smooth[0] - 1.0) * (1 + rng.uniform(-jitter, jitter)) + rng.uniform(-jitter, jitter)
    out[PRIOR], out[TARGETS] = smooth[1], nearest[1]
    for i, c in enumerate(extra):
        out[c] = smooth[3 + i]
    packed = nearest[0].astype(np.int32)
    for i, c in enumerate(MASK_CHANNELS):
        out[c] = (packed >> i) & 1
    return out, smooth[2]

"""Post-processing of predicted masks on an LPS-oriented (z, y, x) grid: left/right consistency, largest component."""

from __future__ import annotations

import numpy as np

from rtrai.core.structures import LATERAL_PAIRS


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (empty stays empty)."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return (labelled == int(np.argmax(sizes))).astype(np.uint8)


def midline_x(image: np.ndarray) -> float:
    """The body's centre along x (array index), from the voxels denser than air in the first input channel."""
    body = image > -0.6
    if not body.any():
        return (image.shape[-1] - 1) / 2.0
    return float(np.nonzero(body)[-1].mean())


def lateral_consistency(masks: dict[str, np.ndarray], midline: float) -> dict[str, np.ndarray]:
    """Left organs lie on the patient's left (+x in LPS), right organs on the right: a pair predicted on the wrong
    sides is swapped, and voxels of a lateral organ beyond the midline are dropped."""
    out = dict(masks)
    columns = None
    for left, right in ((a, b) for a, b in LATERAL_PAIRS.items() if a.endswith("_L")):
        if left not in out or right not in out:
            continue
        if columns is None:
            columns = np.arange(next(iter(out.values())).shape[-1])
        centre = {n: float(np.argwhere(out[n])[:, -1].mean()) if out[n].any() else None for n in (left, right)}
        if centre[left] is not None and centre[right] is not None and centre[left] < centre[right]:
            out[left], out[right] = out[right], out[left]
        out[left] = out[left] * (columns >= midline)
        out[right] = out[right] * (columns <= midline)
    return {k: v.astype(np.uint8) for k, v in out.items()}


def postprocess(masks: np.ndarray, labels: list[str], midline: float, largest: bool = True) -> np.ndarray:
    """Apply lateral consistency about ``midline`` (x index, see :func:`midline_x`) then (optionally) the largest
    component per label to (L, z, y, x) masks."""
    named = lateral_consistency({name: masks[i] for i, name in enumerate(labels)}, midline)
    return np.stack([largest_component(named[n]) if largest else named[n] for n in labels])

"""A ray-traced beam prior: where coplanar photon beams aimed at the targets deposit dose, before any optimisation.

OpenKBP's plans (and most head-and-neck IMRT) use 9 equispaced coplanar 6 MV beams. For each gantry angle the
targets of one prescription level are projected along the beam onto the plane across it (the beam's-eye view of the
target: the open aperture, parallel rays), and every voxel on a ray through that aperture gets ``exp(-mu d)``, ``d``
the radiological depth (density-weighted path in mm from where the ray enters the patient). The beams are averaged;
per level the result is scaled by ``Rx / 70 Gy`` and the maximum over levels kept, as the geometric prior does. It is
zero outside the body.

What it adds to the isotropic fall-off of :func:`rtrai.dose.encoding.geometric_prior`: the dose spreads along beam
paths (a star, not a ball), attenuated by the anatomy it crosses (bone, air), with the entrance dose where the beams
enter. Computed per axial slice by rotating the slice so that the beam runs along an array axis (torch
``grid_sample``, z as the batch) on the slices the targets span.
"""

from __future__ import annotations

import math

import numpy as np

GANTRY_ANGLES_DEG = tuple(range(0, 360, 40))  # OpenKBP: 9 equispaced coplanar beams
MU_PER_MM = 0.0035  # effective attenuation of a 6 MV beam in water with scatter (about 3.5 % per cm beyond d_max)


def density_from_hu(ct_hu: np.ndarray) -> np.ndarray:
    """Relative electron density from HU (a two-segment line: air 0, water 1, cortical bone ~1.6)."""
    hu = ct_hu.astype(np.float32)
    return np.clip(np.where(hu <= 0, 1.0 + hu / 1000.0, 1.0 + hu / 1950.0), 0.0, 2.5)


def beam_prior(ct_hu: np.ndarray, levels: list[tuple[float, np.ndarray]], body: np.ndarray,
               spacing_zyx: tuple[float, float, float], angles_deg=GANTRY_ANGLES_DEG,
               mu_per_mm: float = MU_PER_MM, scale_gy: float = 70.0) -> np.ndarray:
    """The beam prior (z, y, x) float32 in units of ``scale_gy``.

    ``levels``: (prescription in Gy, target mask (z, y, x) bool) per dose level. The isocentre is the centroid of all
    targets; rays are parallel (no divergence) and coplanar (in the axial plane).
    """
    import torch
    import torch.nn.functional as F

    targets = np.zeros(body.shape, bool)
    for _, mask in levels:
        targets |= mask
    prior = np.zeros(body.shape, np.float32)
    if not targets.any():
        return prior
    # Coplanar beams aimed at the targets only cross the axial slices the targets are on.
    rows = np.flatnonzero(targets.any(axis=(1, 2)))
    window = slice(int(rows[0]), int(rows[-1]) + 1)
    ct_hu, body, targets = ct_hu[window], body[window], targets[window]
    levels = [(level, mask[window]) for level, mask in levels]
    nz, ny, nx = body.shape
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    # Normalised coordinates (align_corners=False): x_n = (2 i + 1) / n - 1, so one normalised unit is n s / 2 mm.
    half = torch.tensor([nx * sx / 2.0, ny * sy / 2.0], dtype=torch.float32)
    _, cy, cx = np.argwhere(targets).mean(axis=0)
    centre_mm = torch.tensor([(cx + 0.5) * sx, (cy + 0.5) * sy], dtype=torch.float32) - half  # from the grid centre
    density = torch.from_numpy(density_from_hu(ct_hu) * body)[:, None]  # (z, 1, y, x)
    masks = torch.from_numpy(np.stack([m for _, m in levels]).astype(np.float32)).permute(1, 0, 2, 3)  # (z, L, y, x)
    sources = torch.cat([density, masks], 1)
    step_mm = sy  # each beam's frame is sampled on the grid's own pixels: one row is sy mm along the beam
    total = torch.zeros((nz, len(levels), ny, nx))
    for angle in angles_deg:
        theta = math.radians(angle)
        rotation = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        to_beam, from_beam = _affine(rotation, centre_mm, half), _affine(rotation.T, centre_mm, half)
        grid = F.affine_grid(to_beam.expand(nz, 2, 3), [nz, 1, ny, nx], align_corners=False)
        frame = F.grid_sample(sources, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        rho, target = frame[:, :1], frame[:, 1:] > 0.5
        # The beam enters at row 0 and travels along +y of its frame: depth is the density summed up to each row.
        depth = (torch.cumsum(rho, dim=2) - 0.5 * rho) * step_mm
        aperture = target.any(dim=2, keepdim=True).float()  # (z, L, 1, x): the target's projection along the beam
        dose = aperture * torch.exp(-mu_per_mm * depth) * (rho > 0.05)
        back = F.affine_grid(from_beam.expand(nz, 2, 3), [nz, 1, ny, nx], align_corners=False)
        total += F.grid_sample(dose, back, mode="bilinear", padding_mode="zeros", align_corners=False)
    total = (total / len(angles_deg)).numpy()
    part = prior[window]
    for i, (level, _) in enumerate(levels):
        np.maximum(part, (level / scale_gy) * total[:, i], out=part)
    part *= body
    return prior


def _affine(rotation, centre_mm, half):
    """The 2 x 3 normalised affine that samples, for each output pixel of one frame, the input pixel rotated by
    ``rotation`` about the isocentre (in mm, anisotropic pixels handled by working in mm)."""
    import torch

    scale = torch.diag(half)
    inverse = torch.diag(1.0 / half)
    matrix = inverse @ rotation @ scale
    offset = inverse @ (centre_mm - rotation @ centre_mm)
    return torch.cat([matrix, offset[:, None]], 1)[None]

"""A synthetic head-and-neck patient with known ground truth: CT in HU, TG-263 structures, a plausible dose in Gy.

It is the built-in demo data (``rtrai demo``) and a test case whose every answer is known: the tissue of each voxel
(:func:`tissue_map`), the structures, the prescription and the dose model. It is built analytically from ellipses,
ellipsoids and elliptic cylinders on the voxel grid, so it is fast (a few tenths of a second) and deterministic.

Geometry follows the project's convention: arrays are (z, y, x), physical space is LPS with an identity direction,
so +x is the patient's LEFT, +y POSTERIOR and +z SUPERIOR, and the grid is centred on the origin (as
:mod:`rtrai.io.openkbp` places OpenKBP patients). The default grid is OpenKBP's 128^3 at 3.5 x 3.5 x 2.5 mm, so the
phantom can be written as an OpenKBP patient and fed to models trained on OpenKBP.

``seed`` 0 is the nominal anatomy (the canonical demo case). Any other seed is another "patient": body size scaled
by a few per cent, every organ shifted by up to 3 mm and resized by up to 8 %, the PTV70 on the right or the left
side and 0.85-1.25 times its nominal size. Image noise is drawn from the seed as well, so the same arguments always
give identical arrays.

Dose model (not a dose calculation): for each target level L (70 and 56 Gy), ``L * g(d)`` where ``d`` is the
distance in mm outside the target and ``g(d) = 0.55 exp(-d^2 / (2 * 9^2)) + 0.45 exp(-d / 45)`` (a steep penumbra
and a long low-dose tail), ``L`` times a gentle build-up of up to 3 % inside the target; the dose is the maximum
over levels, modulated by at most +-3 % with smooth seeded waves and zero outside the body (the possible-dose mask).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.image import from_array

PHANTOM_VERSION = 1
DEFAULT_SIZE = (128, 128, 128)  # (x, y, z) voxels as SimpleITK counts them: OpenKBP's grid
DEFAULT_SPACING = (3.5, 3.5, 2.5)  # mm, (x, y, z): a typical OpenKBP voxel
PRESCRIPTION = {"PTV70": 70.0, "PTV56": 56.0}
FRACTIONS = 35
OARS = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Esophagus", "Larynx", "Bone_Mandible")

# Tissue classes of :func:`tissue_map` (label = position in this dict) and the mean HU the CT gives them.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,  # outside the body
    "fat": -100.0,
    "soft_tissue": 40.0,
    "gland": 10.0,  # parotids: fattier than muscle, as on real CT
    "nervous": 35.0,  # brain, brainstem, spinal cord
    "csf": 8.0,
    "cartilage": 150.0,  # intervertebral discs, laryngeal and tracheal cartilage
    "cancellous_bone": 350.0,
    "cortical_bone": 1100.0,
    "airway": -1000.0,  # air inside the patient: larynx, trachea, pharynx
}
TISSUES = {name: label for label, name in enumerate(TISSUE_HU)}

# Smooth body outline as ellipses in the axial plane, interpolated over z (mm): shoulders at the bottom, the neck,
# the lower face at the mandible, the head at the top (closed by a dome above _DOME_Z).
_BODY_Z = np.array([-160.0, -125.0, -95.0, -60.0, -40.0, 20.0, 45.0, 200.0])
_BODY_CY = np.array([20.0, 18.0, 15.0, 15.0, 5.0, 5.0, 5.0, 5.0])
_BODY_AX = np.array([150.0, 95.0, 60.0, 60.0, 75.0, 78.0, 78.0, 78.0])
_BODY_AY = np.array([95.0, 75.0, 65.0, 65.0, 85.0, 85.0, 95.0, 95.0])
_FAT_MM = np.array([10.0, 9.0, 8.0, 8.0, 8.0, 8.0, 4.0, 4.0])
_DOME_Z, _DOME_HEIGHT = 75.0, 60.0
_SKULL_Z = 28.0  # top of the skull base; the cranial vault and the brain lie above
_SKULL_BASE_Z = 20.0
_SCALP_MM, _SKULL_MM = 5.0, 7.0
_VERTEBRA_TOP, _VERTEBRA_PERIOD, _VERTEBRA_HEIGHT = 18.0, 20.0, 15.0
_CORD_OVERLAP_MM = 4.0  # the cord reaches this far into the tip of the brainstem (then carved), so they join

# Nominal organs (centre and semi-axes in mm); seeds other than 0 jitter them.
_NOMINAL = {
    "Brainstem": ((0.0, 34.0, 56.0), (14.0, 13.0, 30.0)),
    "Parotid_L": ((56.0, 26.0, 0.0), (14.0, 17.0, 23.0)),
    "Parotid_R": ((-56.0, 26.0, 0.0), (14.0, 17.0, 23.0)),
    "Larynx": ((0.0, -24.0, -62.0), (16.0, 12.0, 18.0)),  # elliptic cylinder: z half-height
    "Esophagus": ((4.0, -4.0, -64.0), (8.0, 6.0, 0.0)),  # elliptic cylinder from the bottom of the scan to z
    "Bone_Mandible": ((0.0, -5.0, -28.0), (48.0, 55.0, 14.0)),  # horseshoe centre line, half-height of the body
    "PTV70": ((-14.0, -12.0, -22.0), (30.0, 25.0, 34.0)),  # primary; the involved node follows it
}
_PTV70_NODE = ((-34.0, 8.0, -36.0), (13.0, 13.0, 16.0))
_PTV56_NODES = ((34.0, 6.0), (12.0, 16.0), (-100.0, -10.0))  # bilateral neck levels II-IV: (|x|, y), radii, z range
_PTV_SKIN_MM = 5.0  # targets are cropped this far inside the skin
_PTV56_MARGIN_MM = 10.0  # PTV56 also wraps PTV70 with this margin (minus PTV70: targets do not overlap)


def make_phantom(seed: int = 0, size=DEFAULT_SIZE, spacing=DEFAULT_SPACING, noise_hu: float = 10.0,
                 ptv70_side: str | None = None) -> Case:
    """A synthetic head-and-neck :class:`Case`: CT (int16 HU), 10 structures, dose (float32 Gy), prescription.

    ``size`` and ``spacing`` are (x, y, z) in voxels and mm; the anatomy is defined in mm, so they only change the
    sampling (a structure that falls entirely outside a small field of view is absent, not empty). ``noise_hu`` is
    the standard deviation of the image noise (0 for a noise-free CT). ``ptv70_side`` ('left' or 'right') overrides
    the side of the primary target that the seed chooses.
    """
    if not np.isfinite(noise_hu) or noise_hu < 0:
        raise InputError(f"noise_hu must be a finite standard deviation >= 0 HU, got {noise_hu}")
    anatomy = _Anatomy(seed, size, spacing, ptv70_side)
    grid = anatomy.reference_image()

    hu = np.asarray(list(TISSUE_HU.values()), dtype=np.float32)[anatomy.tissues()]
    if noise_hu > 0:
        hu += np.random.default_rng([seed, 2]).standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    case = Case(ct=from_array(ct, grid), prescription=dict(PRESCRIPTION), fractions=FRACTIONS)
    structures = anatomy.structures()
    for name in (*OARS, "PTV70", "PTV56", "External"):
        if structures[name].any():  # missing is not empty: a structure outside the field of view is left out
            case.add_structure(name, from_array(structures[name].astype(np.uint8), grid))
    body = structures["External"]
    case.possible_dose_mask = from_array(body.astype(np.uint8), grid)
    case.dose = from_array(_dose(anatomy, structures, seed), grid)
    case.metadata = {
        "patient_id": f"phantom-{seed}",
        "synthetic": True,
        "source": "phantom",
        "phantom_version": PHANTOM_VERSION,
        "seed": int(seed),
        "noise_hu": float(noise_hu),
        "ptv70_side": anatomy.ptv70_side,
        "body_scale_xy": anatomy.scale_xy,
        "body_scale_z": anatomy.scale_z,
        "description": "synthetic head-and-neck phantom (rtrai.phantom): not patient data",
    }
    return case


def tissue_map(seed: int = 0, size=DEFAULT_SIZE, spacing=DEFAULT_SPACING) -> sitk.Image:
    """The ground-truth tissue label of every voxel of :func:`make_phantom` (labels in :data:`TISSUES`)."""
    anatomy = _Anatomy(seed, size, spacing, None)
    return from_array(anatomy.tissues(), anatomy.reference_image())


def make_cohort(n: int, seed: int = 0, **kwargs) -> list[Case]:
    """``n`` phantom patients with seeds ``seed, seed + 1, ...`` (so ``make_cohort(n, 0)[0]`` is the demo case)."""
    if int(n) != n or n < 1:
        raise InputError(f"a cohort needs a whole number of patients >= 1, got {n}")
    return [make_phantom(seed=seed + i, **kwargs) for i in range(int(n))]


class _Anatomy:
    """The phantom's geometry on one grid: nominal anatomy in mm, jittered by the seed, evaluated on voxel centres."""

    def __init__(self, seed, size, spacing, ptv70_side):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"the phantom seed must be an integer >= 0, got {seed!r}")
        size = tuple(size)
        spacing = tuple(float(s) for s in spacing)
        if len(size) != 3 or any(int(s) != s or s < 1 for s in size):
            raise InputError(f"phantom size must be three whole numbers of voxels (x, y, z) >= 1, got {size}")
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"phantom spacing must be three positive lengths in mm (x, y, z), got {spacing}")
        if ptv70_side not in (None, "left", "right"):
            raise InputError(f"ptv70_side must be 'left', 'right' or None (chosen by the seed), got {ptv70_side!r}")
        self.size = tuple(int(s) for s in size)
        self.spacing = spacing
        self.origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(self.size, self.spacing))
        self.shape = tuple(reversed(self.size))
        self._draw(int(seed), ptv70_side)
        # Voxel centres in mm, divided by the patient's body scale: the anatomy below is written in nominal mm.
        x, y, z = (o + s * np.arange(n, dtype=np.float64) for o, s, n in zip(self.origin, self.spacing, self.size))
        self.x = (x / self.scale_xy).astype(np.float32)
        self.y = (y / self.scale_xy).astype(np.float32)
        self.z = (z / self.scale_z).astype(np.float32)
        self._cache: dict[str, np.ndarray] = {}

    def _draw(self, seed: int, ptv70_side) -> None:
        """Per-patient variation; seed 0 is the nominal anatomy."""
        self.organs = {name: (np.array(c), np.array(r)) for name, (c, r) in _NOMINAL.items()}
        self.scale_xy = self.scale_z = 1.0
        side = "right"
        if seed != 0:
            rng = np.random.default_rng([seed, 1])
            self.scale_xy = round(float(rng.uniform(0.94, 1.06)), 4)
            self.scale_z = round(float(rng.uniform(0.95, 1.05)), 4)
            side = "left" if rng.random() < 0.5 else "right"
            for name, (centre, radii) in self.organs.items():
                target = name == "PTV70"
                shift = np.clip(rng.normal(0.0, 3.0 if target else 1.5, 3), -6.0 if target else -3.0,
                                6.0 if target else 3.0)
                factor = rng.uniform(0.85, 1.25) ** (1 / 3) if target else rng.uniform(0.92, 1.08)
                self.organs[name] = (centre + shift, radii * factor)
        self.ptv70_side = ptv70_side or side

    def reference_image(self) -> sitk.Image:
        image = sitk.Image(self.size, sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        return image

    # -- primitives: boolean (z, y, x) arrays, evaluated only inside each shape's bounding box -------------------
    def _slices(self, lo, hi) -> tuple[slice, slice, slice]:
        """Index slices (z, y, x) of the voxel centres inside the box [lo, hi] (nominal mm, x y z)."""
        out = []
        for axis, coords in ((2, self.z), (1, self.y), (0, self.x)):
            out.append(slice(int(np.searchsorted(coords, lo[axis], "left")),
                             int(np.searchsorted(coords, hi[axis], "right"))))
        return tuple(out)

    def ellipsoid(self, centre, radii) -> np.ndarray:
        centre, radii = np.asarray(centre, float), np.asarray(radii, float)
        out = np.zeros(self.shape, bool)
        sz, sy, sx = self._slices(centre - radii, centre + radii)
        dz = ((self.z[sz] - centre[2]) / radii[2]) ** 2
        dy = ((self.y[sy] - centre[1]) / radii[1]) ** 2
        dx = ((self.x[sx] - centre[0]) / radii[0]) ** 2
        out[sz, sy, sx] = dz[:, None, None] + dy[None, :, None] + dx[None, None, :] <= 1.0
        return out

    def cylinder(self, cx, cy, rx, ry, z0, z1) -> np.ndarray:
        """Elliptic cylinder along z between z0 and z1; ``cy`` may be a function of z (a curved axis)."""
        out = np.zeros(self.shape, bool)
        sz = self._slices((0, 0, z0), (0, 0, z1))[0]
        z = self.z[sz]
        cy_z = cy(z) if callable(cy) else np.full_like(z, cy)
        inside = (((self.x[None, None, :] - cx) / rx) ** 2
                  + ((self.y[None, :, None] - cy_z[:, None, None]) / ry) ** 2) <= 1.0
        out[sz] = inside
        return out

    def slab(self, z0, z1) -> np.ndarray:
        """(nz, 1, 1) boolean: voxel centres with z0 <= z <= z1."""
        return ((self.z >= z0) & (self.z <= z1))[:, None, None]

    # -- the body ----------------------------------------------------------------------------------------------
    def _outline(self):
        z = self.z.astype(np.float64)
        dome = np.sqrt(np.clip(1.0 - (np.maximum(z - _DOME_Z, 0.0) / _DOME_HEIGHT) ** 2, 0.0, 1.0))
        ax = np.interp(z, _BODY_Z, _BODY_AX) * dome
        ay = np.interp(z, _BODY_Z, _BODY_AY) * dome
        cy = np.interp(z, _BODY_Z, _BODY_CY)
        return ax, ay, cy

    def inside_body(self, margin_mm) -> np.ndarray:
        """Voxels inside the body outline shrunk by ``margin_mm`` (a number or one per slice)."""
        ax, ay, cy = self._outline()
        margin = np.broadcast_to(np.asarray(margin_mm, float), ax.shape)
        rx, ry = ax - margin, ay - margin
        valid = (rx > 0) & (ry > 0)
        rx, ry = np.where(valid, rx, 1.0), np.where(valid, ry, 1.0)
        rho = ((self.x[None, None, :] / rx[:, None, None].astype(np.float32)) ** 2
               + ((self.y[None, :, None] - cy[:, None, None].astype(np.float32))
                  / ry[:, None, None].astype(np.float32)) ** 2)
        return (rho <= 1.0) & valid[:, None, None]

    def fat_thickness(self) -> np.ndarray:
        return np.interp(self.z.astype(np.float64), _BODY_Z, _FAT_MM)

    @staticmethod
    def cord_y(z):
        """The spinal canal runs straight down the neck and bends forward to the foramen magnum."""
        return np.interp(z, [-200.0, 0.0, 28.0], [44.0, 44.0, 37.0]).astype(np.float32)

    @property
    def cord_top(self) -> float:
        (_, _, cz), (_, _, rz) = self.organs["Brainstem"]
        return float(cz - rz + _CORD_OVERLAP_MM)

    # -- organs as masks ---------------------------------------------------------------------------------------
    def mask(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = getattr(self, "_" + name.lower())()
        return self._cache[name]

    def _external(self):
        return self.inside_body(0.0)

    def _brainstem(self):
        return self.ellipsoid(*self.organs["Brainstem"])

    def _spinalcord(self):
        return self.cylinder(0.0, self.cord_y, 6.5, 5.5, -np.inf, self.cord_top) & ~self.mask("Brainstem")

    def _parotid(self, name):
        return self.ellipsoid(*self.organs[name]) & self.mask("External") & ~self.mask("bone")

    def _parotid_l(self):
        return self._parotid("Parotid_L")

    def _parotid_r(self):
        return self._parotid("Parotid_R")

    def _larynx(self):
        (cx, cy, cz), (rx, ry, rz) = self.organs["Larynx"]
        return self.cylinder(cx, cy, rx, ry, cz - rz, cz + rz)

    def _esophagus(self):
        (cx, cy, top), (rx, ry, _) = self.organs["Esophagus"]
        return self.cylinder(cx, cy, rx, ry, -1e9, top) & ~self.mask("Larynx")

    def _bone_mandible(self):
        return self._mandible_parts()[0]

    def _mandible_parts(self):
        """(whole mandible, its cancellous core): a horseshoe body in front and two rami rising behind it."""
        (cx, cy, cz), (ax, ay, half_height) = self.organs["Bone_Mandible"]
        half_width, core_width = 5.0 / ((ax + ay) / 2), 2.0 / ((ax + ay) / 2)  # radial half-thickness, relative
        sz = self._slices((0, 0, cz - half_height), (0, 0, cz + half_height))[0]
        rho = np.sqrt(((self.x[None, :] - cx) / ax) ** 2 + ((self.y[:, None] - cy) / ay) ** 2)
        front = (self.y[:, None] <= cy)
        arc = (np.abs(rho - 1.0) <= half_width) & front
        arc_core = (np.abs(rho - 1.0) <= core_width) & front
        whole = np.zeros(self.shape, bool)
        core = np.zeros(self.shape, bool)
        whole[sz] = arc
        core_z = self.slab(cz - half_height + 3.0, cz + half_height - 3.0)
        core[sz] = arc_core & core_z[sz]
        # Rami: plates 8 mm thick at the ends of the horseshoe, from the angle up to the condyle below the skull base.
        ramus_y = (self.y >= cy - 8.0) & (self.y <= cy + 12.0)
        for side in (-1.0, 1.0):
            ramus_x = np.abs(self.x - (cx + side * ax)) <= 4.0
            plate = self.slab(cz - half_height, _SKULL_BASE_Z - 4.0) & ramus_y[None, :, None] & ramus_x[None, None, :]
            whole |= plate
        return whole, core

    def _bone(self):
        """All bone (skull, skull base, vertebrae, mandible): organs are carved out of it."""
        return np.isin(self.tissues(), (TISSUES["cancellous_bone"], TISSUES["cortical_bone"]))

    def _ptv70(self):
        (cx, cy, cz), radii = self.organs["PTV70"]
        (nx, ny, nz), node_radii = _PTV70_NODE
        sign = 1.0 if self.ptv70_side == "right" else -1.0  # nominal centres are on the right (x < 0)
        primary = self.ellipsoid((sign * cx, cy, cz), radii)
        scale = radii / np.asarray(_NOMINAL["PTV70"][1])
        node = self.ellipsoid((sign * nx, ny, nz), np.asarray(node_radii) * scale)
        return (primary | node) & self.deeper_than(_PTV_SKIN_MM)

    def _ptv56(self):
        (x, y), (rx, ry), (z0, z1) = _PTV56_NODES
        nodes = self.cylinder(x, y, rx, ry, z0, z1) | self.cylinder(-x, y, rx, ry, z0, z1)
        ptv70 = self.mask("PTV70")
        margin = self.distance_outside("PTV70") <= _PTV56_MARGIN_MM
        return (nodes | margin) & ~ptv70 & self.deeper_than(_PTV_SKIN_MM)

    def distance_outside(self, name: str) -> np.ndarray:
        """Signed distance in mm to the surface of a structure inside the body (negative inside); far outside the
        body's bounding box, where neither dose nor targets exist, it is reported as infinite."""
        key = "distance:" + name
        if key not in self._cache:
            box = self._body_box()
            image = from_array(self.mask(name)[box].astype(np.uint8), spacing=self.spacing)
            distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                    useImageSpacing=True)
            full = np.full(self.shape, np.inf, np.float32)
            full[box] = sitk.GetArrayViewFromImage(distance)
            self._cache[key] = full
        return self._cache[key]

    def deeper_than(self, depth_mm: float) -> np.ndarray:
        """Body voxels at least ``depth_mm`` under the skin (3D distance between voxel centres)."""
        return self.distance_outside("External") <= -depth_mm

    def _body_box(self) -> tuple[slice, slice, slice]:
        """The body's bounding box with a one-voxel margin: distance maps are computed there only, for speed."""
        nonzero = [np.flatnonzero(self.mask("External").any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
        return tuple(slice(max(int(ix[0]) - 1, 0), int(ix[-1]) + 2) if ix.size else slice(0, 0) for ix in nonzero)

    def structures(self) -> dict[str, np.ndarray]:
        return {name: self.mask(name) for name in (*OARS, "PTV70", "PTV56", "External")}

    # -- tissues -----------------------------------------------------------------------------------------------
    def tissues(self) -> np.ndarray:
        """uint8 tissue labels (:data:`TISSUES`), painted from the outside in: later tissues overwrite earlier."""
        if "tissues" in self._cache:
            return self._cache["tissues"]
        t = TISSUES
        labels = np.zeros(self.shape, np.uint8)
        body = self.mask("External")
        labels[body] = t["fat"]
        fat = self.fat_thickness()
        labels[self.inside_body(fat)] = t["soft_tissue"]

        for name in ("Parotid_L", "Parotid_R"):
            labels[self.ellipsoid(*self.organs[name]) & body] = t["gland"]

        # Cranial vault above the skull base, brain inside it; the skull base with the foramen magnum below.
        above = self.slab(_SKULL_Z, np.inf)
        labels[self.inside_body(_SCALP_MM) & above] = t["cortical_bone"]
        labels[self.inside_body(_SCALP_MM + _SKULL_MM) & above] = t["nervous"]
        base = self.inside_body(_SCALP_MM) & self.slab(_SKULL_BASE_Z, _SKULL_Z) & (self.y >= -35.0)[None, :, None]
        foramen = self.cylinder(0.0, self.cord_y, 16.0, 16.0, _SKULL_BASE_Z, _SKULL_Z)
        labels[base & ~foramen] = t["cortical_bone"]

        # Cervical (and upper thoracic) vertebrae: bodies with a cortical rim and discs between them, arches around
        # the spinal canal, spinous and transverse processes.
        phase = np.mod(_VERTEBRA_TOP - self.z, _VERTEBRA_PERIOD)
        in_vertebra = ((phase <= _VERTEBRA_HEIGHT) & (self.z <= _VERTEBRA_TOP))[:, None, None]
        in_column = self.slab(-np.inf, _VERTEBRA_TOP)
        vb_outer = self.cylinder(0.0, 16.0, 16.0, 12.0, -np.inf, _VERTEBRA_TOP)
        vb_inner = self.cylinder(0.0, 16.0, 14.0, 10.0, -np.inf, _VERTEBRA_TOP)
        labels[vb_outer & in_column & ~in_vertebra] = t["cartilage"]
        arch = self.cylinder(0.0, self.cord_y, 14.0, 14.0, -np.inf, _VERTEBRA_TOP)
        y, x = self.y[None, :, None], self.x[None, None, :]
        spinous = (np.abs(x) <= 3.5) & (y >= 50.0) & (y <= 66.0)
        transverse = (np.abs(x) >= 12.0) & (np.abs(x) <= 30.0) & (y >= 30.0) & (y <= 40.0)
        labels[(vb_outer | arch | spinous | transverse) & in_vertebra] = t["cortical_bone"]
        labels[vb_inner & in_vertebra] = t["cancellous_bone"]
        labels[self.cylinder(0.0, self.cord_y, 9.0, 9.0, -np.inf, self.cord_top)] = t["csf"]

        mandible, core = self._mandible_parts()
        labels[mandible] = t["cortical_bone"]
        labels[core] = t["cancellous_bone"]

        # Airway and swallowing tube: trachea below the larynx, larynx (cartilage rim, air lumen), pharynx above it.
        (lx, ly, lz), (lrx, lry, lrz) = self.organs["Larynx"]
        larynx_bottom, larynx_top = lz - lrz, lz + lrz
        labels[self.cylinder(lx, ly + 4.0, 10.0, 10.0, -np.inf, larynx_bottom)] = t["cartilage"]
        labels[self.cylinder(lx, ly + 4.0, 8.0, 8.0, -np.inf, larynx_bottom)] = t["airway"]
        larynx = self.mask("Larynx")
        labels[larynx] = t["cartilage"]
        labels[self.cylinder(lx, ly, lrx - 2.0, lry - 2.0, larynx_bottom, larynx_top)] = t["soft_tissue"]
        labels[self.cylinder(lx, ly + 2.0, 6.0, 4.5, larynx_bottom, larynx_top)] = t["airway"]
        labels[self.cylinder(0.0, -8.0, 11.0, 4.5, larynx_top, _SKULL_BASE_Z - 2.0)] = t["airway"]
        labels[self.mask("Esophagus")] = t["soft_tissue"]

        labels[self.mask("SpinalCord") | self.mask("Brainstem")] = t["nervous"]
        labels[~body] = t["air"]
        self._cache["tissues"] = labels
        return labels


def _falloff(distance_mm: np.ndarray) -> np.ndarray:
    """Relative dose at a distance outside a target: a steep penumbra and a long low-dose tail (1 at the edge)."""
    d = np.maximum(distance_mm, 0.0)
    return 0.55 * np.exp(-d * d / (2 * 9.0 ** 2)) + 0.45 * np.exp(-d / 45.0)


def _dose(anatomy: _Anatomy, structures: dict[str, np.ndarray], seed: int) -> np.ndarray:
    dose = np.zeros(anatomy.shape, np.float32)
    for name, level in PRESCRIPTION.items():
        if not structures[name].any():
            continue
        d = anatomy.distance_outside(name)
        buildup = 1.0 + 0.03 * (1.0 - np.exp(np.minimum(d, 0.0) / 8.0))  # up to 3 % hotter deep inside
        dose = np.maximum(dose, (level * np.where(structures[name], buildup, _falloff(d))).astype(np.float32))
    # Smooth seeded modulation of at most +-3 % (three 1 % waves, wavelengths 60-120 mm): no two plans are alike.
    rng = np.random.default_rng([seed, 3])
    wave = np.float32(1.0)
    for coords, axis in ((anatomy.z, 0), (anatomy.y, 1), (anatomy.x, 2)):
        k = 2 * np.pi / rng.uniform(60.0, 120.0)
        shape = [1, 1, 1]
        shape[axis] = -1
        wave = wave + 0.01 * np.sin(k * coords + rng.uniform(0, 2 * np.pi)).astype(np.float32).reshape(shape)
    dose *= wave
    dose[~structures["External"]] = 0.0
    return dose

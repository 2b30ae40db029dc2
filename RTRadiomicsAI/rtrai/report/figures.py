"""Figures people would rather look at than read: orthogonal CT slices with structure outlines and a dose wash."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError
from rtrai.core.image import mask_array, same_grid
from rtrai.core.outputs import atomic_file


def _centre(case: Case) -> tuple[int, int, int]:
    """(z, y, x) index of the highest-priority target's centre, else of the image centre."""
    shape = case.grid.shape
    for name in sorted(case.targets(), key=lambda n: -(case.prescription_for(n) or 0)):
        idx = np.argwhere(mask_array(case.structures[name]))
        if idx.size:
            return tuple(int(v) for v in idx.mean(axis=0).round())
    return tuple(s // 2 for s in shape)


def orthogonal_slices(case: Case, path: str | os.PathLike, title: str | None = None, dpi: int = 110) -> Path:
    """Axial, coronal and sagittal CT slices through the main target, with outlines and the dose (if any) in colour."""
    import matplotlib.pyplot as plt

    fig = orthogonal_slices_figure(case, title)
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor="black", bbox_inches="tight")
    plt.close(fig)
    return path


def figure_png(fig, dpi: int = 100, facecolor: str | None = None) -> bytes:
    """The PNG bytes of a matplotlib figure, which is then closed (for pages that embed their images)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight",
                **({"facecolor": facecolor} if facecolor else {}))
    plt.close(fig)
    return buffer.getvalue()


def orthogonal_slices_figure(case: Case, title: str | None = None):
    """The figure of :func:`orthogonal_slices` (the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if case.ct is None:
        raise InputError("a slice figure needs a CT")
    ct = sitk.GetArrayViewFromImage(case.ct)
    dose = sitk.GetArrayViewFromImage(case.dose) if case.dose is not None and same_grid(case.dose, case.ct) else None
    masks = {n: mask_array(m) for n, m in case.structures.items() if n != "External"}
    sx, sy, sz = case.ct.GetSpacing()
    z, y, x = _centre(case)
    # Crop every view to the body (plus a margin): a neck in a 45 cm field of view is otherwise a small island.
    body = np.argwhere(ct > -500)
    lo = np.maximum(body.min(axis=0) - 4, 0) if body.size else np.zeros(3, int)
    hi = body.max(axis=0) + 5 if body.size else np.array(ct.shape)
    ct = ct[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    z, y, x = (int(np.clip(c - o, 0, n - 1)) for c, o, n in zip((z, y, x), lo, ct.shape))
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    # Each view: (slicer of a (z, y, x) array, aspect = row spacing / column spacing, flip rows so superior is up).
    views = [("axial", lambda a: a[z], sy / sx, False),
             ("coronal", lambda a: a[:, y, :], sz / sx, True),
             ("sagittal", lambda a: a[:, :, x], sz / sy, True)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black", layout="constrained")
    dose = dose[crop] if dose is not None else None
    masks = {n: m[crop] for n, m in masks.items()}
    vmax = float(dose.max()) if dose is not None else 0.0
    for ax, (name, cut, aspect, flip) in zip(axes, views):
        def show(a):
            return np.flipud(a) if flip else a

        ax.imshow(show(cut(ct)), cmap="gray", vmin=-160, vmax=240, aspect=aspect, interpolation="bilinear")
        if dose is not None and vmax > 0:
            wash = np.ma.masked_less(show(cut(dose)), 0.1 * vmax)
            ax.imshow(wash, cmap="jet", alpha=0.35, vmin=0, vmax=vmax, aspect=aspect, interpolation="bilinear")
        for structure, mask in masks.items():
            plane = show(cut(mask)).astype(float)
            if plane.any():
                ax.contour(plane, levels=[0.5], colors=[case.color(structure)], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=case.color(n), lw=2, label=n) for n in masks]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8,
               labelcolor="white")
    if dose is not None and vmax > 0:
        bar = fig.colorbar(plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, vmax)), ax=axes, shrink=0.7)
        bar.set_label("dose (Gy)", color="white")
        bar.ax.tick_params(colors="white")
    fig.suptitle(title or case.patient_id, color="white")
    return fig

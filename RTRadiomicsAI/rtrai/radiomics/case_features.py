"""Radiomics of a whole case: CT and dose features inside every target and organ at risk.

This is the radiomics step of ``rtrai run`` (and of the demo's synthetic cohort). Settings are the shipped presets:
``CT`` on the CT's own grid (the preset's 1 mm resampling is switched off: on a 900 cc target it costs over a minute
per structure, against 3 s on the grid itself) and ``dose`` (0.5 Gy bins) with the DVH columns of dosiomics. The dose
is resampled onto the CT grid (linear) when it lives on its own grid, so both images see the same masks.

The structures of one image are computed together (:mod:`rtrai.radiomics.shared_image`: the image's work done
once, each row equal to pyradiomics' own result for that pair). Shape features belong to the mask, so only the CT
rows carry them. Output, long format (one row per structure and
image, pyradiomics' own column names, diagnostics left out)::

    ID, Structure, Image (CT | dose), error, original_shape_..., original_firstorder_..., ..., dvh_...

and :func:`wide_features` turns it into one row per patient (``<Image>_<Structure>_<feature>`` columns), the table
``rtrai outcome fit`` and outcome models read.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import SimpleITK as sitk

from rtrai.core.case import Case
from rtrai.core.errors import InputError, RTRAIError
from rtrai.core.image import Grid, resample_to

IMAGES = ("CT", "dose")
# Diagnostics are left out of the table, so pyradiomics need not compute them (additionalInfo).
SETTINGS = {"CT": ("CT", {"resampledPixelSpacing": None, "additionalInfo": False}),
            "dose": ("dose", {"additionalInfo": False})}
ID_COLUMNS = ("ID", "Structure", "Image", "error")
SKIP_STRUCTURES = ("External",)

_TASK: dict = {}  # what forked workers read: images, masks, extractor settings
_EXTRACTORS: dict = {}  # (image kind, feature classes) -> extractor: building one parses YAML (0.1 s)


def structure_order(case: Case) -> list[str]:
    """Targets first (highest prescription first), then the other structures in the case's order; no External."""
    targets = sorted(case.targets(), key=lambda n: -(case.prescription_for(n) or 0))
    others = [n for n in case.structures if n not in targets and n not in SKIP_STRUCTURES]
    return targets + others


def _extractor(image_kind: str, feature_classes):
    """The preset's extractor (built once per process); dose rows leave out the shape class (a mask's shape is in
    its CT row already)."""
    key = (image_kind, None if feature_classes is None else tuple(feature_classes))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _new_extractor(image_kind, feature_classes)
    return _EXTRACTORS[key]


def _new_extractor(image_kind: str, feature_classes):
    from rtrai.radiomics.extract import make_extractor

    preset, overrides = SETTINGS[image_kind]
    extractor = make_extractor(preset=preset, **overrides)
    classes = list(extractor.enabledFeatures) if feature_classes is None else list(feature_classes)
    if image_kind != "CT":
        classes = [c for c in classes if c != "shape"]
    extractor.disableAllFeatures()
    for name in classes:
        extractor.enableFeatureClassByName(name)
    return extractor


def _one_image(task: tuple[str, tuple[str, ...]]) -> list[tuple[tuple[str, str], OrderedDict, str]]:
    """((structure, image kind), values, error) for the structures of one image, computed together."""
    from rtrai.radiomics.extract import Inputs, dvh_features, extract_rows

    image_kind, structures = task
    image = _TASK["images"][image_kind]
    inputs = [Inputs(image, _TASK["masks"][s], 1, _TASK["id"], image_kind, s) for s in structures]
    try:
        rows = extract_rows(_extractor(image_kind, _TASK["classes"]), inputs)
    except RTRAIError as exc:
        rows = [exc] * len(inputs)
    out = []
    for item, row in zip(inputs, rows):
        key = (item.mask_source, image_kind)
        if isinstance(row, RTRAIError):
            out.append((key, OrderedDict(), str(row)))
            continue
        values = OrderedDict((k, _number(v)) for k, v in row.items()
                             if k not in ("ID", "Image", "Mask", "Label") and not k.startswith("diagnostics_"))
        if image_kind == "dose":
            values.update(dvh_features(image, item.mask))
        out.append((key, values, ""))
    return out


def _number(value):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return float(value) if isinstance(value, (int, float, np.integer, np.floating)) else value


def case_features(case: Case, structures: list[str] | None = None, images=IMAGES, feature_classes=None,
                  jobs: int = 1, progress=None):
    """Features of ``case`` as a long ``pandas.DataFrame`` (see the module docstring).

    ``structures``: default every target and OAR (:func:`structure_order`); ``images``: "CT" and/or "dose" (the
    dose is skipped when the case has none); ``feature_classes``: pyradiomics classes to compute (default: all of
    the preset); ``jobs`` > 1 extracts in that many forked processes. A structure pyradiomics refuses (a few voxels)
    gets a row with the reason in ``error`` and no values.
    """
    import pandas as pd

    from rtrai.core.progress import silent
    from rtrai.radiomics.shared_image import split_groups

    report = progress or silent
    if case.ct is None:
        raise InputError("radiomics of a case needs its CT")
    names = structure_order(case) if structures is None else [n for n in structures if n in case.structures]
    if not names:
        raise InputError("the case has no structure to extract features from")
    volumes = {"CT": case.ct}
    if "dose" in images and case.dose is not None:
        dose = sitk.Cast(case.dose, sitk.sitkFloat32)
        volumes["dose"] = dose if not Grid.of(dose).differences(Grid.of(case.ct)) else \
            resample_to(dose, case.ct, "linear", 0.0)
    kinds = [k for k in images if k in volumes]
    keys = [(s, k) for s in names for k in kinds]
    _TASK.clear()
    _TASK.update(images=volumes, masks={n: case.structures[n] for n in names}, classes=feature_classes,
                 id=case.patient_id)
    tasks = [(kind, tuple(part)) for kind in kinds
             for part in split_groups([names], max(1, int(jobs)) // len(kinds) if _can_fork() else 1)]
    results = {}
    jobs = max(1, min(int(jobs), len(tasks))) if _can_fork() else 1
    if jobs == 1:
        for i, task in enumerate(tasks):
            report(i / len(tasks), f"{task[0]} features of {len(task[1])} structures")
            results.update((key, (values, error)) for key, values, error in _one_image(task))
    else:
        from concurrent.futures import as_completed

        from rtrai.core.workers import process_pool

        with process_pool(jobs, "fork") as pool:  # workers read _TASK from this process's memory; exit with it
            futures = [pool.submit(_one_image, task) for task in tasks]
            for i, future in enumerate(as_completed(futures)):
                results.update((key, (values, error)) for key, values, error in future.result())
                report((i + 1) / len(tasks), f"{i + 1}/{len(tasks)} images' features")
    _TASK.clear()
    rows = []
    for key in keys:
        values, error = results[key]
        rows.append({"ID": case.patient_id, "Structure": key[0], "Image": key[1], "error": error, **values})
    report(1.0, "features done")
    frame = pd.DataFrame(rows)
    columns = list(ID_COLUMNS) + [c for c in frame.columns if c not in ID_COLUMNS]
    return frame.reindex(columns=columns)


def default_jobs() -> int:
    """Worker processes for a case's radiomics: the CPUs this process may use, at most 4 (1 where processes cannot be
    forked: the workers read the case from the parent's memory)."""
    if not _can_fork():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def wide_features(frame):
    """One row per ID: numeric feature columns named ``<Image>_<Structure>_<feature>`` (failed rows left out)."""
    import pandas as pd

    out = {}
    for _, row in frame.iterrows():
        if isinstance(row.get("error"), str) and row["error"]:
            continue
        target = out.setdefault(row["ID"], {"ID": row["ID"]})
        for column, value in row.items():
            if column in ID_COLUMNS or value is None:
                continue
            if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
                target[f"{row['Image']}_{row['Structure']}_{column}"] = float(value)
    return pd.DataFrame(list(out.values()))

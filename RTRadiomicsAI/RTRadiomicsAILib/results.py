"""The commands' result files into MRML nodes, on any scene (no Qt, no ``slicer.app``: tested on slicer-core).

Doses, segmentations, gamma maps and DVHs have their loaders in :mod:`rtrai.mrml`; this adds what several modules
load alike: heat maps (Grad-CAM attribution, contour uncertainty) as scalar volumes, CSV tables as table nodes, and
the flags of ``rtrai segment --qa`` / ``rtrai segment qa`` (contour QA) and ``rtrai dose qa`` (plan QA) in one line.
"""

from __future__ import annotations

from pathlib import Path

# Slicer's perceptually uniform heat colour table (vtkMRMLColorLogic's file colour "Inferno"); a scene without
# Slicer's colour logic (slicer-core) has no colour tables, and the map keeps its default grey.
HEAT_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
CONTOUR_QA_FILE = "contour_qa.csv"


def gradcamMaps(folder) -> list[Path]:
    """The Grad-CAM maps a command wrote: ``gradcam/<ID>.nrrd`` (``rtrai outcome cnn evaluate --gradcam``, one per
    patient) and ``gradcam_<STRUCTURE>.nrrd`` (``rtrai segment --gradcam STRUCTURE``), sorted by name."""
    folder = Path(folder)
    return sorted([*(folder / "gradcam").glob("*.nrrd"), *folder.glob("gradcam_*.nrrd")], key=mapName)


def mapName(path) -> str:
    """What a map is of: the ID, the structure or the file name (``gradcam/pt_1.nrrd`` -> pt_1,
    ``gradcam_Parotid_L.nrrd`` -> Parotid_L, ``uncertainty/Parotid_L.nrrd`` -> Parotid_L)."""
    return Path(path).name.removesuffix(".nrrd").removeprefix("gradcam_")


def uncertaintyMaps(folder) -> list[Path]:
    """The uncertainty maps ``rtrai segment --qa`` wrote: ``uncertainty/<structure>.nrrd`` (in each patient's folder
    for a folder of patients)."""
    return sorted(Path(folder).rglob("uncertainty/*.nrrd"))


def loadHeatMap(path, scene, name: str):
    """A map in an image file as a new scalar volume, shown in a heat colour table."""
    from rtrai.io.images import read_image
    from rtrai.mrml import image_to_volume_node

    node = image_to_volume_node(read_image(path), scene, name)
    heat = scene.GetNodeByID(HEAT_COLOR_NODE_ID)
    if heat is not None:
        node.GetDisplayNode().SetAndObserveColorNodeID(heat.GetID())
    return node


def loadHeatMaps(paths, scene, prefix: str) -> list:
    """One volume per map, named ``<prefix> <what it is of>`` (:func:`mapName`)."""
    return [loadHeatMap(path, scene, f"{prefix} {mapName(path)}") for path in paths]


def loadCsvTable(path, scene, name: str, node=None, **read_csv):
    """A CSV file as a table node (``node``'s content is replaced)."""
    import pandas as pd

    from rtrai.core.errors import InputError
    from rtrai.mrml import table_to_node

    path = Path(path)
    if not path.is_file():
        raise InputError(f"result file not found: {path}")
    return table_to_node(pd.read_csv(path, **read_csv), scene, name, node=node)


def _flagged(column):
    """The rows a flag column marks (booleans, or their text as pandas reads a CSV column with empty cells)."""
    return column.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes"))


def describeContourQa(frame) -> str:
    """One line on ``contour_qa.csv`` (structure, one column per check, flagged, reason)."""
    if frame.empty:
        return "Contour QA: no structure was checked."
    flagged = frame[_flagged(frame["flagged"])]
    if flagged.empty:
        return f"Contour QA: none of {len(frame)} structure(s) flagged."
    reasons = "; ".join(f"{row.structure}: {row.reason}" for row in flagged.itertuples())
    return f"Contour QA: {len(flagged)} of {len(frame)} structure(s) flagged ({reasons})."


def describePlanQa(frame) -> str:
    """One line on ``qa.csv`` (structure, metric, plan, predicted, excess, flag): the flagged checks, worst first."""
    flagged = frame[_flagged(frame["flag"])]
    if flagged.empty:
        return f"Plan QA: no flag in {len(frame)} check(s)."
    worst = flagged.sort_values("excess", ascending=False)
    items = ", ".join(f"{r.structure} {r.metric} {float(r.excess):+.1f} Gy" for r in worst.itertuples())
    return f"Plan QA: {len(flagged)} of {len(frame)} check(s) flagged: {items}."

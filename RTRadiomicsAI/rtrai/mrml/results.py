"""The results of ``rtrai run`` (or ``rtrai demo``) in a scene: what the hub module shows after "Run all".

:func:`results_to_scene` puts the case (CT, AutoSegment's or the given structures, the dose used) into nodes as
:func:`~rtrai.mrml.scene.case_to_scene` lays them out, and the result tables of the output folder (workflow steps, DVH
constraints, DVH metrics, radiomics features) into table nodes under the same study; :func:`add_result_tables` is the
part the pipeline uses for the tables of its own ``scene.mrb``. Reading the case files is the caller's
(``rtrai.pipeline.load_results``), so this package keeps depending on ``rtrai.core`` only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rtrai.core.errors import InputError

TABLE_FILES = (("DVH constraints", "constraints.csv"), ("DVH metrics", "dvh_metrics.csv"),
               ("Radiomics features", "features.csv"))


def add_result_tables(scene, tables: dict, parent_item: int | None = None) -> dict:
    """One table node per DataFrame (``name -> frame``), under ``parent_item`` in the subject hierarchy if given."""
    from rtrai.mrml import slicerrt
    from rtrai.mrml.tables import table_to_node

    nodes = {}
    for name, frame in tables.items():
        node = table_to_node(frame, scene, name)
        if parent_item is not None:
            slicerrt.place_under(scene, node, parent_item)
        nodes[name] = node
    return nodes


def run_tables(folder: str | os.PathLike, steps: list[dict] | None = None) -> dict:
    """The result tables of a run folder as DataFrames (``name -> frame``), from its files (the workflow steps from
    ``steps`` when given, else from its provenance.json)."""
    import pandas as pd

    from rtrai.mrml.tables import metrics_by_structure

    folder = Path(folder)
    tables = {}
    steps = read_provenance(folder).get("steps") if steps is None else steps
    if steps:
        tables["Workflow steps"] = pd.DataFrame(steps)
    for name, file in TABLE_FILES:
        if (folder / file).is_file():
            frame = pd.read_csv(folder / file, dtype={"ID": str, "error": str, "structure": str, "Structure": str})
            tables[name] = metrics_by_structure(frame) if file == "dvh_metrics.csv" else frame
    return tables


def read_provenance(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "provenance.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def results_to_scene(case, folder: str | os.PathLike, scene=None) -> dict:
    """Put a run's case (read from its output ``folder``) and the tables of that folder into ``scene`` (a new one
    when None).

    Returns the nodes by role as :func:`~rtrai.mrml.scene.case_to_scene` does (``"scene"``, ``"ct"``,
    ``"structures"``, ``"dose"``, ...) plus ``"tables"`` (name -> table node), ``"report"`` (the path of report.html,
    or None) and ``"steps"`` (the workflow steps from provenance.json: name, status, seconds, summary, reason).
    """
    from rtrai.mrml.scene import case_to_scene

    folder = Path(folder)
    if not (folder / "provenance.json").is_file():
        raise InputError(f"{folder} is not the output folder of rtrai run (no provenance.json)")
    nodes = dict(case_to_scene(case, scene=scene))
    nodes["tables"] = add_result_tables(nodes["scene"], run_tables(folder), nodes.get("study_item"))
    report = folder / "report.html"
    nodes["report"] = report if report.is_file() else None
    nodes["steps"] = read_provenance(folder).get("steps", [])
    nodes["case"] = case
    return nodes

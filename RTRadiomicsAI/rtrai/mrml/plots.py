"""DVHs and DVH metrics (``rtrai dvh``'s dvh.csv and metrics.csv) as Slicer plot and table nodes.

:func:`dvh_chart` makes one table node (a dose column and one volume-% column per structure), one line
(``vtkMRMLPlotSeriesNode``) per structure in its colour, and a ``vtkMRMLPlotChartNode`` holding them, which Slicer's
Plots module and plot views show. :func:`dvh_metrics_table` puts the metrics in a table with one row per structure.
"""

from __future__ import annotations

import pandas as pd

from rtrai.core.errors import InputError
from rtrai.core.structures import color_of
from rtrai.mrml._slicer import slicer
from rtrai.mrml.slicerrt import safe_node_name
from rtrai.mrml.tables import metrics_by_structure, table_to_node

DOSE_COLUMN = "Dose (Gy)"
DVH_COLUMNS = ("structure", "dose_gy", "volume_pct")
METRIC_COLUMNS = ("structure", "metric", "value")


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} lacks the column(s) {missing} (columns: {list(frame.columns)})")


def _remove_old_series(chart) -> None:
    """Remove a chart's lines and their tables from the scene, so a rerun replaces them instead of piling up."""
    scene = chart.GetScene()
    old = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    chart.RemoveAllPlotSeriesNodeIDs()
    tables = {s.GetTableNode() for s in old if s is not None and s.GetTableNode() is not None}
    for node in [s for s in old if s is not None] + list(tables):
        scene.RemoveNode(node)


def dvh_chart(frame: pd.DataFrame, scene, name: str, colors: dict | None = None, chart=None):
    """A plot chart node of cumulative DVHs from ``dvh.csv`` rows (structure, dose_gy, volume_pct).

    ``colors``: structure name -> RGB in 0..1 (the segments' colours); standard TG-263 colours otherwise.
    ``chart``: an existing chart whose lines (and their table) are replaced; a new chart named ``name`` otherwise.
    """
    _require(frame, DVH_COLUMNS, "the DVH table")
    structures = list(pd.unique(frame["structure"]))
    if not structures:
        raise InputError("the DVH table has no rows")
    rows = frame.groupby("structure", sort=False).size()
    wide = frame.pivot(index="dose_gy", columns="structure", values="volume_pct")[structures].sort_index()
    if (rows != len(wide)).any():  # one line per structure needs one shared dose column
        raise InputError("the DVH table's structures do not share the same dose bins")
    wide = wide.reset_index().rename(columns={"dose_gy": DOSE_COLUMN})
    wide.columns = [str(c) for c in wide.columns]
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", safe_node_name(name))
    else:
        _remove_old_series(chart)
    table = table_to_node(wide, scene, f"{name} table")
    for structure in structures:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", safe_node_name(f"{name} {structure}"))
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(DOSE_COLUMN)
        series.SetYColumnName(str(structure))
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)  # scatter: x from a column, not row index
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetColor(*[float(c) for c in (colors or {}).get(structure, color_of(str(structure)))])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(DOSE_COLUMN)
    chart.SetYAxisTitle("Volume (%)")
    chart.SetLegendVisibility(True)
    return chart


def dvh_metrics_table(frame: pd.DataFrame, scene, name: str, node=None):
    """``metrics.csv`` rows (structure, metric, value) as a table node: one row per structure, one column per
    metric, both in the order of the file. ``node``: an existing table whose content is replaced."""
    _require(frame, METRIC_COLUMNS, "the DVH metrics table")
    wide = metrics_by_structure(frame).rename(columns={"structure": "Structure"})
    wide["Structure"] = wide["Structure"].astype(str)
    return table_to_node(wide, scene, name, node=node)

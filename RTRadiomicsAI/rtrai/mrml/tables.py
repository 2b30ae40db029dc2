"""pandas DataFrames <-> ``vtkMRMLTableNode`` (Slicer's Tables module; saved as .tsv with a .schema.tsv of types).

Column types: booleans -> ``vtkBitArray``, integers and floats -> the VTK array of the same width, everything else ->
``vtkStringArray`` (missing values become empty strings). A DataFrame index other than the default 0..n-1 range becomes
leading column(s), since MRML tables have no index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtrai.core.errors import InputError


def metrics_by_structure(frame: pd.DataFrame) -> pd.DataFrame:
    """DVH metrics in the long form ``rtrai dvh`` and ``rtrai run`` write (``structure,metric,value``) as one row
    per structure and one column per metric, both in the order of the file."""
    structures, metrics = list(pd.unique(frame["structure"])), list(pd.unique(frame["metric"]))
    wide = frame.pivot(index="structure", columns="metric", values="value").loc[structures, metrics].reset_index()
    wide.columns = [str(c) for c in wide.columns]
    return wide


def table_to_node(frame: pd.DataFrame, scene, name: str, node=None):
    """Put ``frame`` in a table node: a new one named ``name`` (characters unsafe in file names become '_'), or
    ``node``, whose content is replaced."""
    import vtk

    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"table '{name}' must be a pandas DataFrame, not {type(frame).__name__}")
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0 or frame.index.step != 1:
        frame = frame.reset_index()
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise InputError(f"table '{name}' has duplicate column names")
    table = vtk.vtkTable()
    for column_name, column in zip(names, (frame[c] for c in frame.columns)):
        table.AddColumn(_vtk_column(column_name, column))
    if node is None:
        from rtrai.mrml.slicerrt import safe_node_name

        node = scene.AddNewNodeByClass("vtkMRMLTableNode", safe_node_name(name))
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    return node


def _vtk_column(name: str, column: pd.Series):
    import vtk
    from vtk.util import numpy_support

    if pd.api.types.is_bool_dtype(column.dtype):
        array = vtk.vtkBitArray()
        array.SetNumberOfValues(len(column))
        for index, value in enumerate(column.to_numpy()):
            array.SetValue(index, int(bool(value)))
    elif pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_complex_dtype(column.dtype):
        values = column.to_numpy()
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
    else:
        array = vtk.vtkStringArray()
        array.SetNumberOfValues(len(column))
        for index, value in enumerate(column.to_numpy()):
            array.SetValue(index, "" if _missing(value) else str(value))
    array.SetName(name)
    return array


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values, not missing
        return False


def node_to_table(node) -> pd.DataFrame:
    """The content of a table node as a DataFrame (a copy; numeric columns keep their type)."""
    from vtk.util import numpy_support

    if node is None or not node.IsA("vtkMRMLTableNode"):
        raise InputError("node_to_table needs a vtkMRMLTableNode")
    table = node.GetTable()
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        array = table.GetColumn(index)
        name = array.GetName() or f"column{index}"
        if array.IsA("vtkBitArray"):
            columns[name] = np.array([bool(array.GetValue(i)) for i in range(array.GetNumberOfValues())], dtype=bool)
        elif array.IsA("vtkDataArray"):
            if array.GetNumberOfComponents() != 1:
                raise InputError(f"column '{name}' of table '{node.GetName()}' has "
                                 f"{array.GetNumberOfComponents()} components; only scalar columns are read")
            columns[name] = numpy_support.vtk_to_numpy(array).copy()
        else:
            columns[name] = np.array([array.GetValue(i) for i in range(array.GetNumberOfValues())], dtype=object)
    return pd.DataFrame(columns)

"""A finished run's output folder read back into an MRML scene (what the hub module does after "Run all")."""

from __future__ import annotations

from pathlib import Path


def load_results(folder, scene=None) -> dict:
    """Read a run's output folder and put it into an MRML scene (:func:`rtrai.mrml.results.results_to_scene`): the
    case, the result tables, the report's path and the steps. What the hub module does after "Run all"."""
    from rtrai.core.errors import InputError
    from rtrai.io.case_io import is_case_folder, read_case
    from rtrai.mrml.results import results_to_scene

    folder = Path(folder)
    if not is_case_folder(folder):
        raise InputError(f"{folder} is not the output folder of rtrai run (no CT.nrrd or Structures.seg.nrrd)")
    return results_to_scene(read_case(folder), folder, scene)


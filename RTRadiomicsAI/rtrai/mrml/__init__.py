"""Case <-> MRML scene: the bridge between the rtrai library and 3D Slicer.

Works on the real MRML library both inside Slicer (the application's ``slicer``) and outside it (the ``slicer-core``
wheel); nothing here needs ``slicer.app`` or ``slicer.modules``. Importing this package without MRML raises
:class:`MRMLUnavailable` (an ``ImportError`` and a :class:`~rtrai.core.errors.DependencyError`).

- :func:`case_to_scene` / :func:`scene_to_case`: CT, structures (one segmentation), dose (a SlicerRT dose volume),
  possible-dose mask, prescription and metadata, and back.
- :func:`table_to_node` / :func:`node_to_table`: pandas DataFrames as table nodes.
- :func:`save_scene_bundle` / :func:`load_scene`: .mrb bundles Slicer opens, and reading .mrb/.mrml into a new scene.
- Building blocks for module logic: :func:`image_to_volume_node`, :func:`volume_node_to_image`,
  :func:`masks_to_segmentation`, :func:`segmentation_to_masks`, :func:`show_as_dose`, :func:`dose_node_in_gy`.
- Background jobs of the modules (:mod:`.exchange`, :mod:`.plots`): :func:`nodes_to_case` (inputs),
  :func:`load_segmentation_file`, :func:`load_dose_file`, :func:`load_gamma_map`, :func:`dvh_chart` and
  :func:`dvh_metrics_table` (results).

Images in rtrai are LPS; MRML is RAS. The conversion lives in :mod:`rtrai.mrml.geometry` and nowhere else.
"""

from rtrai.mrml._slicer import MRMLUnavailable
from rtrai.mrml.bundle import load_scene, save_scene_bundle
from rtrai.mrml.exchange import (guess_targets, load_dose_file, load_gamma_map, load_segmentation_file, nodes_to_case,
                                 parse_targets, prescription_text, segment_names)
from rtrai.mrml.geometry import image_to_volume_node, node_grid, volume_node_to_image
from rtrai.mrml.plots import dvh_chart, dvh_metrics_table
from rtrai.mrml.scene import case_to_scene, dose_node_in_gy, scene_to_case
from rtrai.mrml.segmentation import masks_to_segmentation, segmentation_to_masks
from rtrai.mrml.slicerrt import is_dose_volume, show_as_dose
from rtrai.mrml.tables import node_to_table, table_to_node

__all__ = ["MRMLUnavailable", "case_to_scene", "dose_node_in_gy", "dvh_chart", "dvh_metrics_table", "guess_targets",
           "image_to_volume_node", "is_dose_volume", "load_dose_file", "load_gamma_map", "load_scene",
           "load_segmentation_file", "masks_to_segmentation", "node_grid", "node_to_table", "nodes_to_case",
           "parse_targets", "prescription_text", "save_scene_bundle", "scene_to_case", "segment_names",
           "segmentation_to_masks", "show_as_dose", "table_to_node", "volume_node_to_image"]

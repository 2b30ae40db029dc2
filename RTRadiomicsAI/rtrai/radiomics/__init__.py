"""Radiomics: pyradiomics-identical extraction (single case, cohorts, voxel maps), dosiomics (dose features and DVH
columns), contour robustness (ICC), and IBSI-1 features through mirp.

Modules: :mod:`.extract` (parameters, inputs, one case), :mod:`.shared_image` (the structures of one image computed
together, with :mod:`.glcm_mcc`), :mod:`.cohort`, :mod:`.case_features` (``rtrai run``'s CT and dose features),
:mod:`.voxel_maps` (with the engine's :mod:`.voxel_plan`, :mod:`.voxel_firstorder`, :mod:`.voxel_glcm`,
:mod:`.voxel_numpy_order`), :mod:`.robustness`, :mod:`.ibsi`; the command line is in :mod:`.commands`. Heavy libraries
load on first use.
"""

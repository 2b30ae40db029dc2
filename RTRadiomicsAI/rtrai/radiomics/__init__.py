"""Radiomics: pyradiomics-identical extraction (single case, cohorts, voxel maps), dosiomics (dose features and DVH
columns), contour robustness (ICC), and IBSI-1 features through mirp.

Modules: :mod:`.extract` (parameters, inputs, one case), :mod:`.cohort`, :mod:`.voxel`, :mod:`.robustness`,
:mod:`.ibsi`; the command line is in :mod:`.commands`. Heavy libraries load on first use.
"""

"""pyradiomics' GLCM feature class with a faster Maximal Correlation Coefficient (segment mode).

Once the image-wide work is shared (:mod:`rtrai.radiomics.shared_image`), the costliest pyradiomics feature of a
radiotherapy structure is GLCM's MCC: it builds ``Q(i, j) = sum_k p(i,k) p(j,k) / (p_x(i) p_y(k) + eps)`` with one
(Ng x Ng x angles) array operation per grey level ``k`` in Python, then takes the eigenvalues of Q for every angle.
Here Q is the same expression -- the same terms, ``eps`` included -- as one matrix product per angle,
``(p / (p_x p_y^T + eps)) @ p^T``, and the eigenvalues, their order and the mean over angles are pyradiomics' own calls
on it. Only the rounding of the sum over ``k`` differs: MCC agrees to about 1e-15 relative (tested on OpenKBP CT and
dose structures and pyradiomics' test cases), at half the cost. Voxel mode (``voxelBased``) and every other feature
are pyradiomics' code unchanged. ``RTRAI_RADIOMICS_ENGINE=pyradiomics`` uses pyradiomics' class as it is.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy


def engine_disabled() -> bool:
    """``RTRAI_RADIOMICS_ENGINE=pyradiomics`` keeps pyradiomics' own GLCM class (for comparisons)."""
    return os.environ.get("RTRAI_RADIOMICS_ENGINE", "").lower() == "pyradiomics"


@functools.cache
def glcm_class():
    """pyradiomics' ``RadiomicsGLCM`` with :func:`maximal_correlation` as its MCC (segment mode)."""
    from radiomics import glcm

    class RadiomicsGLCM(glcm.RadiomicsGLCM):
        __doc__ = glcm.RadiomicsGLCM.__doc__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.logger = logging.getLogger(glcm.__name__)  # pyradiomics' logger, so its verbosity applies

        def getMCCFeatureValue(self):  # noqa: N802 - pyradiomics' name, found by getattr
            if self.voxelBased:
                return super().getMCCFeatureValue()
            return maximal_correlation(self.P_glcm, self.coefficients["px"], self.coefficients["py"],
                                       self.coefficients["eps"])

    RadiomicsGLCM.getMCCFeatureValue.__doc__ = glcm.RadiomicsGLCM.getMCCFeatureValue.__doc__
    return RadiomicsGLCM


def maximal_correlation(p_glcm: numpy.ndarray, px: numpy.ndarray, py: numpy.ndarray, eps: float):
    """pyradiomics' ``getMCCFeatureValue`` of ``P_glcm`` (shape (1, Ng, Ng, angles)) and its marginals ``px``
    (1, Ng, 1, angles) and ``py`` (1, 1, Ng, angles)."""
    p = numpy.moveaxis(p_glcm, -1, 1)  # (v, angles, i, k)
    x = numpy.moveaxis(px[:, :, 0, :], -1, 1)  # (v, angles, i)
    y = numpy.moveaxis(py[:, 0, :, :], -1, 1)  # (v, angles, k)
    q = (p / (x[..., :, None] * y[..., None, :] + eps)) @ numpy.swapaxes(p, -1, -2)  # (v, angles, i, j)
    eigenvalues = numpy.linalg.eigvals(q)  # as pyradiomics: eigenvalues of Q per angle, sorted low to high
    eigenvalues.sort()
    if eigenvalues.shape[2] < 2:
        return 1  # flat region
    return numpy.nanmean(numpy.sqrt(eigenvalues[:, :, -2]), 1).real

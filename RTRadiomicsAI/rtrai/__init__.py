"""rtrai: the Qt-free library behind the RTRadiomicsAI 3D Slicer extension.

Capabilities live in sub-packages (``core``, ``io``, ``mrml``, ``segmentation``, ``dose``, ``radiomics``,
``outcome``); importing ``rtrai`` itself stays cheap so that the command line starts fast.
"""

__version__ = "0.1.0"

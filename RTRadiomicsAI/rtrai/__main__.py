"""``python -m rtrai`` (and ``PythonSlicer -m rtrai`` inside Slicer) runs the command line."""

import sys

from rtrai.cli import main

sys.exit(main())

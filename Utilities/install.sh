#!/usr/bin/env bash
# Installs everything the library, its tests and its benchmarks need on a fresh Debian machine with Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian tools the tests use: dciodvfy (dicom3tools) validates the DICOM-RT we write; headless Chromium opens the
# HTML report in a real browser (Testing/test_pipeline.py).
missing=()
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The CPU build of torch first: an open `torch` requirement would otherwise pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[all]"
# pyRadPlan (rtrai plan) without its declared dependencies: they cap numpy below 2.4 (it runs on 2.4) and pull
# pydantic-ai's LLM stack; the [plan] extra above installs what it imports.
"$PYTHON" -m pip install -q --no-deps "pyRadPlan==0.5.0"

# shap depends on a PyPI package named `slicer` that shares its folder with slicer-core's `slicer` meta-package;
# when it is installed last it hides MRML. Reinstalling slicer-core restores the meta-package (which keeps shap's
# names too).
if ! "$PYTHON" -c "from slicer import vtkMRMLScene" >/dev/null 2>&1; then
  version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('slicer-core'))")
  "$PYTHON" -m pip install -q --force-reinstall --no-deps "slicer-core==$version"
fi
"$PYTHON" -c "from slicer import vtkMRMLScene; import rtrai; print('rtrai installed')"

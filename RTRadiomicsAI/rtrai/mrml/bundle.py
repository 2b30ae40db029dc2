"""Scenes on disk: Slicer scene bundles (.mrb) and scene files (.mrml), with MRML's own writers and readers.

:func:`save_scene_bundle` uses ``vtkMRMLScene.WriteToMRB``, the call behind Slicer's "Save scene as .mrb": every
storable node without a storage node gets its default one (NRRD for volumes, ``.seg.nrrd`` for segmentations, ``.tsv``
for tables, ``.csv`` for colour tables), the data files and the .mrml go into a zip that Slicer opens with
File > Add Data or drag and drop. The bundle is written in a hidden folder beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from rtrai.core.errors import FormatError, InputError
from rtrai.mrml._slicer import slicer


def save_scene_bundle(scene, path: str | os.PathLike) -> Path:
    """Write ``scene`` as a Slicer scene bundle (``path`` must end in .mrb); returns the path."""
    path = Path(path).absolute()  # MRML refuses a relative folder ("given directory is not a full path")
    if path.suffix.lower() != ".mrb":
        raise InputError(f"a scene bundle must be named *.mrb, not '{path.name}'")
    messages = slicer.vtkMRMLMessageCollection()
    url = scene.GetURL()
    path.parent.mkdir(parents=True, exist_ok=True)
    # MRML names the folder inside the bundle after the file: write under the final name in a hidden folder beside
    # the target, then rename into place, so that a failed write leaves nothing where the user looks.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
    try:
        written = staging / path.name
        with _keep_working_directory():
            ok = scene.WriteToMRB(str(written), None, messages)
        if not ok or not written.is_file() or written.stat().st_size == 0:
            raise FormatError(f"writing the scene bundle {path} failed: {_text(messages) or 'no message from MRML'}")
        os.replace(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        scene.SetURL(url)  # writing a bundle points the scene at its temporary folder; give the caller theirs back
    return path


def load_scene(path: str | os.PathLike):
    """Read a .mrb bundle or a .mrml scene file into a new scene, data included; returns the scene."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scene file not found: {path}")
    scene = slicer.vtkMRMLScene()
    messages = slicer.vtkMRMLMessageCollection()
    suffix = path.suffix.lower()
    if suffix == ".mrb":
        # MRML unpacks a bundle into its cache folder (Slicer's is in the user's cache); ours is temporary.
        with tempfile.TemporaryDirectory(prefix="rtrai-mrb-") as cache:
            cache_manager = slicer.vtkCacheManager()
            cache_manager.SetRemoteCacheDirectory(cache)
            io_manager = slicer.vtkDataIOManager()
            io_manager.SetCacheManager(cache_manager)
            scene.SetDataIOManager(io_manager)
            scene.SetCacheManager(cache_manager)
            try:
                with _keep_working_directory():
                    ok = scene.ReadFromMRB(str(path.resolve()), True, messages)
            finally:
                scene.SetDataIOManager(None)
                scene.SetCacheManager(None)
    elif suffix == ".mrml":
        scene.SetURL(str(path.resolve()))
        ok = bool(scene.Connect(messages))
    else:
        raise InputError(f"'{path.name}' is neither a scene bundle (.mrb) nor a scene file (.mrml)")
    if not ok or _has_errors(messages):
        raise FormatError(f"reading the scene {path} failed: {_text(messages) or 'no message from MRML'}")
    return scene


@contextlib.contextmanager
def _keep_working_directory():
    """MRML's zip code changes the working directory and, when unzipping fails, does not change it back."""
    cwd = os.getcwd()
    try:
        yield
    finally:
        os.chdir(cwd)


def _text(messages) -> str:
    return " ".join(messages.GetAllMessagesAsString().split())


def _has_errors(messages) -> bool:
    import vtk

    count = messages.GetNumberOfMessages()
    return any(messages.GetNthMessageType(i) == vtk.vtkCommand.ErrorEvent for i in range(count))

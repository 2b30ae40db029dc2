"""The hub's application settings (compute device, model folder), kept in Slicer's QSettings.

They reach the ``rtrai`` library through this process's environment (:func:`publishSettings`) and every module's
background jobs through :func:`jobEnvironment`, read from the saved settings each time, so a job gets them whether or
not the hub module was ever opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import qt
import slicer

DEVICES = ("auto", "cpu", "cuda")
SETTINGS_DEVICE = "RTRadiomicsAI/Device"
SETTINGS_MODEL_CACHE = "RTRadiomicsAI/ModelCacheFolder"
# The variables rtrai reads (rtrai.models.device, rtrai.models CACHE_VARIABLE).
ENV_DEVICE = "RTRAI_DEVICE"
ENV_MODEL_CACHE = "RTRAI_MODEL_CACHE"


def defaultModelCacheFolder() -> Path:
    return Path(slicer.app.cachePath) / "RTRadiomicsAI" / "models"


def savedSettings() -> tuple[str, Path]:
    """(device, model folder) from the application settings, with defaults."""
    settings = qt.QSettings()
    device = str(settings.value(SETTINGS_DEVICE, "auto"))
    folder = str(settings.value(SETTINGS_MODEL_CACHE, "")) or str(defaultModelCacheFolder())
    return (device if device in DEVICES else "auto"), Path(folder)


def publishSettings(device: str, modelCacheFolder: Path) -> None:
    """Put the settings in this process's environment, where the library reads them (model lists, device)."""
    os.environ[ENV_DEVICE] = device
    os.environ[ENV_MODEL_CACHE] = str(modelCacheFolder)


def saveSettings(device: str, modelCacheFolder: Path) -> None:
    settings = qt.QSettings()
    settings.setValue(SETTINGS_DEVICE, device)
    settings.setValue(SETTINGS_MODEL_CACHE, str(modelCacheFolder))
    publishSettings(device, modelCacheFolder)


def jobEnvironment() -> dict:
    """The environment of a background job: Slicer's startup environment (without the settings the launcher added for
    the application itself) plus the saved device and model folder."""
    env = dict(slicer.util.startupEnvironment())
    device, folder = savedSettings()
    env[ENV_DEVICE] = device
    env[ENV_MODEL_CACHE] = str(folder)
    return env

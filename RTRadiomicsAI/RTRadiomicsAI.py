"""RTRadiomicsAI hub module: settings, Python dependencies and case loading for the whole extension.

The work itself lives in the Qt-free library ``rtrai`` (shipped beside this file); this module only connects it to
Slicer: it keeps the application-wide settings (compute device, model cache folder), lists the optional Python
packages and installs the missing ones when the user asks, and brings a case (OpenKBP folder, NRRD/NIfTI file,
DICOM folder, or a case folder written by ``rtrai convert``) into the scene through ``rtrai.mrml``.
"""

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# The library is installed next to this file (same qt-scripted-modules folder); when Slicer did not put that folder
# on sys.path (a module path added by hand, a source checkout), add it, so `import rtrai` works everywhere.
try:
    import rtrai  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rtrai  # noqa: F401

DEVICES = ("auto", "cpu", "cuda")
SETTINGS_DEVICE = "RTRadiomicsAI/Device"
SETTINGS_MODEL_CACHE = "RTRadiomicsAI/ModelCacheFolder"
# Environment variables through which the settings reach the `rtrai` library and the background `rtrai` processes
# started by every module of the extension (modules may not import each other, so they share settings this way).
ENV_DEVICE = "RTRAI_DEVICE"
ENV_MODEL_CACHE = "RTRAI_MODEL_CACHE"


def defaultModelCacheFolder() -> Path:
    return Path(slicer.app.cachePath) / "RTRadiomicsAI" / "models"


def savedSettings() -> tuple:
    """(device, model cache folder) from the application settings, with defaults."""
    settings = qt.QSettings()
    device = str(settings.value(SETTINGS_DEVICE, "auto"))
    folder = str(settings.value(SETTINGS_MODEL_CACHE, "")) or str(defaultModelCacheFolder())
    return (device if device in DEVICES else "auto"), Path(folder)


def publishSettings(device: str, modelCacheFolder: Path) -> None:
    """Put the settings in this process's environment, where the library and its child processes read them."""
    os.environ[ENV_DEVICE] = device
    os.environ[ENV_MODEL_CACHE] = str(modelCacheFolder)


def saveSettings(device: str, modelCacheFolder: Path) -> None:
    settings = qt.QSettings()
    settings.setValue(SETTINGS_DEVICE, device)
    settings.setValue(SETTINGS_MODEL_CACHE, str(modelCacheFolder))
    publishSettings(device, modelCacheFolder)


#
# RTRadiomicsAI
#


class RTRadiomicsAI(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RTRadiomicsAI"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["RTRadiomicsAI developers"]
        self.parent.helpText = """
Hub of the RTRadiomicsAI extension (AI for radiotherapy: auto-contouring, dose prediction, radiomics and outcome
models).<br>
<b>Settings</b>: compute device and the folder where downloaded models are kept; every module of the extension uses
them.<br>
<b>Python packages</b>: shows which optional packages are installed and installs the missing ones on request
(PyTorch through the PyTorch extension).<br>
<b>Load case</b>: brings an OpenKBP patient folder, a NRRD/NIfTI image, a DICOM CT folder or a case folder written by
<code>rtrai convert</code> into the scene, with structures as a segmentation and dose as a dose volume.<br>
The same library runs outside Slicer: <code>pip install rtradiomicsai</code>, then <code>rtrai --help</code>.
"""
        self.parent.acknowledgementText = """
Built on 3D Slicer, SlicerRT, MONAI, PyTorch, pyradiomics, SimpleITK, pydicom, scikit-learn and scikit-survival.
OpenKBP data: Babier et al., Med. Phys. 48:5549-5561 (2021).
"""
        # Publish the saved settings early so that every module's background jobs see them, even if the user never
        # opens this module. Reading QSettings is cheap; nothing heavy is imported here.
        publishSettings(*savedSettings())


#
# RTRadiomicsAIParameterNode
#


@parameterNodeWrapper
class RTRadiomicsAIParameterNode:
    """The GUI state of the hub.

    device - where models run: "auto" (CUDA when available), "cpu" or "cuda".
    modelCacheFolder - where downloaded model weights are kept.
    casePath - the file or folder that "Load case" reads.
    """

    device: Annotated[str, Choice(DEVICES), Default("auto")]
    modelCacheFolder: Path
    casePath: Path


#
# RTRadiomicsAIWidget
#


class RTRadiomicsAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The hub's panel: settings, Python packages, load case."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RTRadiomicsAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = RTRadiomicsAILogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.refreshPackagesButton.connect("clicked(bool)", self.updatePackageTable)
        self.ui.installPackagesButton.connect("clicked(bool)", self.onInstallPackages)
        self.ui.chooseCaseFolderButton.connect("clicked(bool)", self.onChooseCaseFolder)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)

        self.initializeParameterNode()
        self.updatePackageTable()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.logic.applySettings(self._parameterNode)
        path = str(self._parameterNode.casePath)
        canLoad = path not in ("", ".") and os.path.exists(path)
        self.ui.loadCaseButton.enabled = canLoad
        self.ui.loadCaseButton.toolTip = ("Read the case and add it to the scene." if canLoad
                                          else "Choose an existing file or folder first.")

    # -- Python packages ---------------------------------------------------------------------------------------
    def updatePackageTable(self) -> None:
        rows = self.logic.packageStatus()
        table = self.ui.packagesTable
        table.setRowCount(len(rows))
        for row, status in enumerate(rows):
            for column, text in enumerate((status.package.distribution, status.version or "not installed",
                                           status.package.purpose)):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                if column == 1 and not status.present:
                    item.setForeground(qt.QBrush(qt.QColor("darkorange")))
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        missing = [s.package.distribution for s in rows if not s.present]
        self.ui.packagesStatusLabel.text = ("All optional packages are installed." if not missing
                                            else f"Missing: {', '.join(missing)}.")
        self.ui.installPackagesButton.enabled = bool(missing)

    def onInstallPackages(self) -> None:
        with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
            self.logic.installMissingPackages()
        self.updatePackageTable()

    # -- Load case ---------------------------------------------------------------------------------------------
    def onChooseCaseFolder(self) -> None:
        start = str(self._parameterNode.casePath) if self._parameterNode else ""
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Choose an OpenKBP patient, DICOM or case folder", start)
        if folder and self._parameterNode:
            self._parameterNode.casePath = Path(folder)

    def onLoadCase(self) -> None:
        from rtrai.core.errors import RTRAIError

        path = self._parameterNode.casePath
        try:
            with slicer.util.WaitCursor():
                loaded = self.logic.loadCase(path)
        except RTRAIError as exc:
            # A refused input is the user's to fix: one clear sentence, no traceback.
            slicer.util.errorDisplay(f"Cannot load {path}: {exc}")
            return
        self.logic.showCase(loaded)
        self.ui.caseSummaryLabel.text = self.logic.describeCase(loaded)


#
# RTRadiomicsAILogic
#


class RTRadiomicsAILogic(ScriptedLoadableModuleLogic):
    """Settings, dependencies and case loading, usable without the widget (Python console, tests)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        parameterNode = RTRadiomicsAIParameterNode(super().getParameterNode())
        # Device and model folder are application settings, not scene data: the saved ones win over whatever a
        # scene (perhaps from another computer) carries. Assign only on change to avoid needless Modified events.
        device, folder = savedSettings()
        if parameterNode.device != device:
            parameterNode.device = device
        if parameterNode.modelCacheFolder != folder:
            parameterNode.modelCacheFolder = folder
        return parameterNode

    # -- settings ----------------------------------------------------------------------------------------------
    def applySettings(self, parameterNode) -> None:
        folder = parameterNode.modelCacheFolder
        if str(folder) in ("", "."):
            folder = defaultModelCacheFolder()
        saveSettings(parameterNode.device, folder)

    @staticmethod
    def resolvedDevice(device: str) -> str:
        """'cpu' or 'cuda' for a setting; 'auto' picks CUDA only when torch is installed and sees a GPU."""
        if device != "auto":
            return device
        from rtrai.core.dependencies import by_module, version_of

        if version_of(by_module("torch")) is None:
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- Python packages ---------------------------------------------------------------------------------------
    @staticmethod
    def packageStatus():
        from rtrai.core import dependencies

        return dependencies.status()

    def installMissingPackages(self, packages=None) -> None:
        """Install the given (default: all missing) optional packages: torch through the PyTorch extension, the
        others with pip. Only ever called from a button: nothing is installed at import or startup."""
        from rtrai.core import dependencies

        packages = dependencies.missing() if packages is None else packages
        viaTorch = [p for p in packages if p.in_slicer == "pytorch"]
        viaPip = [p for p in packages if p.in_slicer == "pip"]
        if viaTorch:
            self.installTorch(viaTorch[0].requirement)
        if viaPip:
            self.pipInstall(viaPip)

    @staticmethod
    def installTorch(requirement: str = "torch") -> None:
        """Install PyTorch with the PyTorch extension, which picks the build that matches the GPU driver."""
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("PyTorch is installed through the 'PyTorch' extension: install it from the "
                               "Extensions Manager, restart Slicer, then try again.") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return
        versionRequirement = requirement[len("torch"):] if requirement.startswith("torch") else ""
        torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=versionRequirement or None)
        if torch is None:
            raise RuntimeError("PyTorch was not installed.")

    @staticmethod
    def pipInstall(packages) -> None:
        requirements = [p.requirement for p in packages]
        skip = sorted({name for p in packages for name in p.skip_in_slicer})
        packaging = _slicerPackaging()
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            # Slicer >= 5.12: checks, asks the user, shows progress and offers a restart when needed.
            packaging.pip_ensure(requirements, skip_packages=skip or None, requester="RTRadiomicsAI")
            return
        blocked = [p.distribution for p in packages if p.skip_in_slicer]
        if blocked:
            raise RuntimeError(f"{', '.join(blocked)} cannot be installed safely in this Slicer version (its "
                               "dependencies would replace Slicer's own packages); use Slicer 5.12 or newer.")
        if not slicer.util.confirmOkCancelDisplay(
                "RTRadiomicsAI will download and install these Python packages:\n" + "\n".join(requirements),
                "Install Python packages"):
            raise RuntimeError("Installation cancelled.")
        slicer.util.pip_install(requirements)

    # -- cases -------------------------------------------------------------------------------------------------
    @staticmethod
    def loadCase(path, scene=None) -> dict:
        """Read a case with rtrai and add it to the scene. Returns the nodes (see ``rtrai.mrml.case_to_scene``)
        plus the case itself under ``"case"``. Raises ``rtrai.core.errors.RTRAIError`` for input it refuses."""
        from rtrai.io.case_io import read_case
        from rtrai.mrml import case_to_scene

        case = read_case(Path(path))
        nodes = dict(case_to_scene(case, scene=scene or slicer.mrmlScene))
        nodes["case"] = case
        logging.info(f"RTRadiomicsAI: loaded {case.patient_id} from {path}")
        return nodes

    @staticmethod
    def showCase(loaded: dict) -> None:
        """CT in the slice views, dose as a colour wash over it, segmentation outlines."""
        ct, dose = loaded.get("ct"), loaded.get("dose")
        if ct is None:
            return
        slicer.util.setSliceViewerLayers(background=ct, foreground=dose,
                                         foregroundOpacity=0.4 if dose is not None else 0.0, fit=True)

    @staticmethod
    def describeCase(loaded: dict) -> str:
        case = loaded["case"]
        parts = [f"{case.patient_id}: {len(case.structures)} structures"]
        if case.ct is not None:
            parts.append("size " + " x ".join(str(s) for s in case.ct.GetSize()))
        if case.dose is not None:
            parts.append("with dose")
        return ", ".join(parts)

    @staticmethod
    def jobEnvironment() -> dict:
        """Environment for child processes: the application's startup environment (without the settings the
        launcher added for Slicer itself) plus the current settings."""
        env = dict(slicer.util.startupEnvironment())
        env[ENV_DEVICE] = os.environ.get(ENV_DEVICE, "auto")
        env[ENV_MODEL_CACHE] = os.environ.get(ENV_MODEL_CACHE, str(defaultModelCacheFolder()))
        return env

    def backgroundJob(self, *args):
        """A not-yet-started ``rtrai ARGS`` child process (see ``rtrai.core.jobs.Job``); poll it from a QTimer."""
        from rtrai.core.jobs import Job

        return Job.rtrai(*args, env=self.jobEnvironment())


def _slicerPackaging():
    """``slicer.packaging`` (Slicer >= 5.12) or None. Imported by name so that ``slicer`` stays the global."""
    try:
        return importlib.import_module("slicer.packaging")
    except ImportError:
        return None


#
# RTRadiomicsAITest
#


class RTRadiomicsAITest(ScriptedLoadableModuleTest):
    """GUI-level smoke test run by "Reload and Test" and by ctest (py_RTRadiomicsAI). The logic is tested in
    Testing/Python/RTRadiomicsAIModuleTest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WidgetBindsSettings()

    def test_WidgetBindsSettings(self):
        self.delayDisplay("Opening the module")
        slicer.util.selectModule("RTRadiomicsAI")
        widget = slicer.util.getModuleWidget("RTRadiomicsAI")
        parameterNode = widget.logic.getParameterNode()
        savedDevice = parameterNode.device  # "Reload and Test" runs on the user's own settings: put them back
        try:
            # GUI -> parameter node -> environment for child processes.
            widget.ui.deviceComboBox.setCurrentIndex(DEVICES.index("cpu"))
            self.assertEqual(parameterNode.device, "cpu")
            self.assertEqual(os.environ[ENV_DEVICE], "cpu")

            # Parameter node -> GUI.
            parameterNode.device = "cuda"
            self.assertEqual(widget.ui.deviceComboBox.currentText, "cuda")
        finally:
            parameterNode.device = savedDevice

        # The package table lists every optional package and "Load case" waits for an existing path.
        from rtrai.core.dependencies import PACKAGES

        self.assertEqual(widget.ui.packagesTable.rowCount, len(PACKAGES))
        parameterNode.casePath = Path(slicer.app.temporaryPath) / "does-not-exist"
        self.assertFalse(widget.ui.loadCaseButton.enabled)
        self.delayDisplay("Test passed")

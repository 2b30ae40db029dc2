"""RTRadiomicsAI hub module: settings, Python dependencies, case loading and the end-to-end workflow.

The work itself lives in the Qt-free library ``rtrai`` (shipped beside this file); this module only connects it to
Slicer: it keeps the application-wide settings (compute device, model cache folder), lists the optional Python
packages and installs the missing ones when the user asks, brings a case (OpenKBP folder, NRRD/NIfTI file, DICOM
folder, or a case folder written by ``rtrai convert``) into the scene through ``rtrai.mrml``, and runs the workflow
(load, AutoSegment, DosePredict, DVH, radiomics, outcome, report: ``rtrai.pipeline``) as ``rtrai run`` in a
background process with progress and cancel, then loads its results into the scene (``rtrai.pipeline.load_results``).
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
<b>Workflow</b>: runs the case end to end (AutoSegment, DosePredict, DVH and constraints, radiomics, outcome model,
HTML report) in a background process, shows each step's status, and loads the results into the scene. <i>Run demo</i>
does the same on the built-in synthetic phantom.<br>
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
    casePath - the file or folder that "Load case" and the workflow read.
    outputFolder - where the workflow writes its results (empty: a folder named after the case).
    outcomeModelFolder - an outcome model folder for the workflow's outcome step (optional).
    keepStructures - use the case's own structures instead of AutoSegment's.
    """

    device: Annotated[str, Choice(DEVICES), Default("auto")]
    modelCacheFolder: Path
    casePath: Path
    outputFolder: Path
    outcomeModelFolder: Path
    keepStructures: bool = False


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
        self._job = None
        self._jobOutput = None
        self._steps = []
        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._pollWorkflow)

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
        self.ui.runAllButton.connect("clicked(bool)", self.onRunAll)
        self.ui.runDemoButton.connect("clicked(bool)", self.onRunDemo)
        self.ui.cancelWorkflowButton.connect("clicked(bool)", self.onCancelWorkflow)
        self.ui.loadResultsButton.connect("clicked(bool)", self.onLoadResults)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)

        self.initializeParameterNode()
        self.updatePackageTable()
        self.showSteps(self.logic.emptySteps())

    def cleanup(self) -> None:
        self.onCancelWorkflow()
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
        idle = self._job is None
        self.ui.runAllButton.enabled = canLoad and idle
        self.ui.runDemoButton.enabled = idle
        output = self.logic.outputFolderFor(self._parameterNode)
        self.ui.loadResultsButton.enabled = idle and output is not None and (output / "provenance.json").is_file()
        self.ui.openReportButton.enabled = output is not None and (output / "report.html").is_file()

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

    # -- Workflow ----------------------------------------------------------------------------------------------
    def showSteps(self, steps) -> None:
        """Fill the steps table from ``[{"title", "status", "seconds", "summary", "reason"}, ...]``."""
        table = self.ui.workflowStepsTable
        table.setRowCount(len(steps))
        colours = {"done": "darkgreen", "skipped": "darkorange", "running": "royalblue", "failed": "darkred",
                   "cancelled": "darkred"}
        for row, step in enumerate(steps):
            seconds = step.get("seconds")
            texts = (step["title"], step["status"], f"{seconds:.1f}" if seconds else "",
                     step.get("reason") or step.get("summary") or "")
            for column, text in enumerate(texts):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                if column == 1 and step["status"] in colours:
                    item.setForeground(qt.QBrush(qt.QColor(colours[step["status"]])))
                if column == 3:
                    item.setToolTip(text)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()

    def onRunAll(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the workflow.", waitCursor=True):
            output = self.logic.outputFolderFor(p)
            job = self.logic.startWorkflow(p.casePath, output, keepStructures=p.keepStructures,
                                           outcomeModel=self._optionalPath(p.outcomeModelFolder))
            self._startJob(job, output)

    def onRunDemo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the demo.", waitCursor=True):
            output = self.logic.outputFolderFor(self._parameterNode, demo=True)
            self._startJob(self.logic.startDemo(output), output)

    @staticmethod
    def _optionalPath(path):
        return None if str(path) in ("", ".") else Path(path)

    def _startJob(self, job, output) -> None:
        self._job, self._jobOutput = job, Path(output)
        self._steps = self.logic.emptySteps()
        self.showSteps(self._steps)
        self.ui.workflowProgressBar.value = 0
        self.ui.workflowStatusLabel.text = f"Running into {output} ..."
        self.ui.cancelWorkflowButton.enabled = True
        self._refreshButtons()
        self._timer.start()

    def _pollWorkflow(self) -> None:
        update = self._job.poll()
        self.ui.workflowProgressBar.value = int(round(100 * update.fraction))
        if update.message:
            self.ui.workflowStatusLabel.text = update.message
            self._steps = self.logic.stepsFromMessage(update.message, self._steps)
            self.showSteps(self._steps)
        if not update.finished:
            return
        self._timer.stop()
        job, output = self._job, self._jobOutput
        self._job = None
        self.ui.cancelWorkflowButton.enabled = False
        if update.state == "succeeded":
            self.ui.workflowStatusLabel.text = f"Done: results in {output}."
            with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                self._showResults(self.logic.loadResults(output))
        elif update.state == "cancelled":
            self.showSteps([{**s, "status": "cancelled"} if s["status"] in ("pending", "running") else s
                            for s in self._steps])
            self.ui.workflowStatusLabel.text = "Cancelled: nothing was written."
        else:
            self.ui.workflowStatusLabel.text = job.last_error or "The background process failed."
            slicer.util.errorDisplay(self.ui.workflowStatusLabel.text, detailedText="\n".join(job.log[-50:]))
        self._refreshButtons()

    def onCancelWorkflow(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def onLoadResults(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
            self._showResults(self.logic.loadResults(self.logic.outputFolderFor(self._parameterNode)))

    def _showResults(self, loaded: dict) -> None:
        self.showSteps(loaded["steps"])
        self.logic.showCase(loaded)
        self.ui.caseSummaryLabel.text = self.logic.describeCase(loaded)
        self._refreshButtons()

    def _refreshButtons(self) -> None:
        if self._parameterNode:
            self._onParameterNodeModified()

    def onOpenReport(self) -> None:
        report = self.logic.outputFolderFor(self._parameterNode) / "report.html"
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(report)))


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

    # -- workflow ----------------------------------------------------------------------------------------------
    @staticmethod
    def outputFolderFor(parameterNode, demo: bool = False):
        """The workflow's output folder: the chosen one, else ``<scene folder>/RTRadiomicsAI/<case name>`` (or
        ``.../demo-output`` for the demo); None when there is neither a folder nor a case."""
        if parameterNode is None:
            return None
        chosen = str(parameterNode.outputFolder)
        if chosen not in ("", "."):
            return Path(chosen)
        case = str(parameterNode.casePath)
        name = "demo-output" if demo else (Path(case).name if case not in ("", ".") else "")
        if not name:
            return None
        return Path(slicer.app.defaultScenePath) / "RTRadiomicsAI" / name.replace(".", "_")

    @staticmethod
    def workflowArguments(casePath, outputFolder, keepStructures: bool = False, outcomeModel=None,
                          device: str | None = None) -> list:
        """The ``rtrai run`` arguments of the workflow (the command line a user can repeat outside Slicer)."""
        args = ["run", str(casePath), "-o", str(outputFolder)]
        if keepStructures:
            args.append("--keep-structures")
        if outcomeModel:
            args += ["--outcome-model", str(outcomeModel)]
        if device:
            args += ["--device", device]
        return args

    def startWorkflow(self, casePath, outputFolder, keepStructures: bool = False, outcomeModel=None):
        """Start ``rtrai run`` on the case in a background process; returns the started job."""
        if str(casePath) in ("", ".") or not os.path.exists(str(casePath)):
            raise ValueError("Choose an existing case (file or folder) first.")
        if outputFolder is None:
            raise ValueError("Choose an output folder.")
        if outcomeModel is not None and not Path(outcomeModel).exists():
            raise ValueError(f"Outcome model folder not found: {outcomeModel}")
        args = self.workflowArguments(casePath, outputFolder, keepStructures, outcomeModel,
                                      os.environ.get(ENV_DEVICE, "auto"))
        logging.info("RTRadiomicsAI: rtrai " + " ".join(args))
        return self.backgroundJob(*args).start()

    def startDemo(self, outputFolder):
        """Start ``rtrai demo`` (the synthetic phantom end to end) in a background process."""
        if outputFolder is None:
            raise ValueError("Choose an output folder.")
        return self.backgroundJob("demo", "-o", str(outputFolder), "--device",
                                  os.environ.get(ENV_DEVICE, "auto")).start()

    @staticmethod
    def emptySteps() -> list:
        from rtrai.pipeline import STEP_TITLES, STEPS

        return [{"name": n, "title": STEP_TITLES[n], "status": "pending", "seconds": None, "summary": "",
                 "reason": ""} for n in STEPS]

    @staticmethod
    def stepsFromMessage(message: str, steps: list) -> list:
        """Step statuses while a run goes on, from its progress message (``"<step>: ..."``, ``"<step>: done"``):
        the step named is running (or done/skipped when the message says so) and the steps before it finished
        (their final status comes from provenance.json when the run ends)."""
        name, _, rest = message.partition(":")
        names = [s["name"] for s in steps]
        if name not in names:
            return steps
        index = names.index(name)
        out = []
        for i, step in enumerate(steps):
            step = dict(step)
            if i < index and step["status"] in ("pending", "running"):
                step["status"] = "finished"
            elif i == index:
                word = rest.strip()
                step["status"] = word if word in ("done", "skipped") else "running"
            out.append(step)
        return out

    @staticmethod
    def loadResults(outputFolder, scene=None) -> dict:
        """Load a run's output folder into the scene (``rtrai.pipeline.load_results``): CT, structures, dose,
        tables (workflow steps, DVH constraints and metrics, radiomics features), and the steps' statuses."""
        from rtrai.pipeline import load_results

        loaded = load_results(Path(outputFolder), scene or slicer.mrmlScene)
        logging.info(f"RTRadiomicsAI: loaded the results in {outputFolder}")
        return loaded


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
        from rtrai.pipeline import STEPS

        self.assertEqual(widget.ui.packagesTable.rowCount, len(PACKAGES))
        parameterNode.casePath = Path(slicer.app.temporaryPath) / "does-not-exist"
        self.assertFalse(widget.ui.loadCaseButton.enabled)
        # The workflow lists every step and waits for an existing case too.
        self.assertEqual(widget.ui.workflowStepsTable.rowCount, len(STEPS))
        self.assertFalse(widget.ui.runAllButton.enabled)
        self.assertTrue(widget.ui.runDemoButton.enabled)
        self.delayDisplay("Test passed")

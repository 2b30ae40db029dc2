"""RTRadiomicsAI hub module: settings, Python dependencies, case loading and the end-to-end workflow.

The work itself lives in the Qt-free library ``rtrai`` (shipped beside this file); this module only connects it to
Slicer: it keeps the application-wide settings (compute device, model cache folder), lists the optional Python
packages and installs the missing ones when the user asks, brings a case (OpenKBP folder, NRRD/NIfTI file, DICOM
folder, or a case folder written by ``rtrai convert``) into the scene through ``rtrai.mrml``, and runs the workflow
(load, AutoSegment, DosePredict, DVH, radiomics, outcome, report: ``rtrai.pipeline``) as ``rtrai run`` in a
background process with progress and cancel (:class:`RTRadiomicsAILib.jobs.BackgroundJobPanel`, shared with the other
modules), follows its steps from the structured step events the job reports (:mod:`RTRadiomicsAILib.workflow`), then
loads its results into the scene (``rtrai.pipeline.load_results``).
"""

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

# The library is installed next to this file (same qt-scripted-modules folder); when Slicer did not put that folder
# on sys.path (a module path added by hand, a source checkout), add it, so `import rtrai` works everywhere.
try:
    import rtrai  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rtrai  # noqa: F401

# The package the modules share sits beside this file, like rtrai. The settings (device, model folder) live there:
# every module's background jobs get them from RTRadiomicsAILib.settings.jobEnvironment.
from RTRadiomicsAILib import workflow  # noqa: E402
from RTRadiomicsAILib.jobs import startJob  # noqa: E402
from RTRadiomicsAILib.settings import (DEVICES, ENV_DEVICE, defaultModelCacheFolder,  # noqa: E402
                                       publishSettings, saveSettings, savedSettings)
from RTRadiomicsAILib.template import ModuleWidget, describeModule  # noqa: E402


#
# RTRadiomicsAI
#


class RTRadiomicsAI(ScriptedLoadableModule):
    def __init__(self, parent):
        describeModule(self, parent, "RTRadiomicsAI", ["Radiotherapy"], HELP, ACKNOWLEDGEMENT)
        # Publish the saved settings early so that the library sees them (model lists, device) even if the user never
        # opens this module. Reading QSettings is cheap; nothing heavy is imported here.
        publishSettings(*savedSettings())


# The module's entry in Slicer's help panel.
HELP = """
Hub of the RTRadiomicsAI extension (AI for radiotherapy: auto-contouring, dose prediction, radiomics and outcome
models).<br>
<b>Settings</b>: compute device and the folder where downloaded models are kept; every module of the extension uses
them.<br>
<b>Python packages</b>: shows which optional packages are installed and installs the missing ones on request
(PyTorch through the PyTorch extension).<br>
<b>Load case</b>: brings an OpenKBP patient folder, a NRRD/NIfTI image, a DICOM CT folder or a case folder written by
<code>rtrai convert</code> into the scene, with structures as a segmentation and dose as a dose volume.<br>
<b>Workflow</b>: runs the case end to end (AutoSegment, DosePredict, DVH and constraints, radiomics, outcome model,
HTML report) in a background process, follows each step as it starts and ends, and loads the results into the
scene. <i>Run demo</i> does the same on the built-in synthetic phantom.<br>
The same library runs outside Slicer: <code>pip install rtradiomicsai</code>, then <code>rtrai --help</code>.
"""
ACKNOWLEDGEMENT = """
Built on 3D Slicer, SlicerRT, MONAI, PyTorch, pyradiomics, SimpleITK, pydicom, scikit-learn and scikit-survival.
OpenKBP data: Babier et al., Med. Phys. 48:5549-5561 (2021).
"""


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


class RTRadiomicsAIWidget(ModuleWidget, ScriptedLoadableModuleWidget):
    """The hub's panel: settings, Python packages, load case, workflow."""

    UI_FILE = "UI/RTRadiomicsAI.ui"
    JOB_WIDGETS = ("workflowProgressBar", "workflowStatusLabel", "cancelWorkflowButton")

    def __init__(self, parent=None) -> None:
        self._steps = []
        ModuleWidget.__init__(self, parent)

    def createLogic(self):
        return RTRadiomicsAILogic()

    def connectWidgets(self) -> None:
        self.updatePackageTable()
        self.showSteps(self.logic.emptySteps())

    def updateButtons(self) -> None:
        p = self.parameterNode
        if p is None:
            return
        self.logic.applySettings(p)
        path = str(p.casePath)
        canLoad = path not in ("", ".") and os.path.exists(path)
        self.ui.loadCaseButton.enabled = canLoad
        self.ui.loadCaseButton.toolTip = ("Read the case and add it to the scene." if canLoad
                                          else "Choose an existing file or folder first.")
        self.ui.runAllButton.enabled = canLoad and self.idle
        self.ui.runDemoButton.enabled = self.idle
        output = self.logic.outputFolderFor(p)
        self.ui.loadResultsButton.enabled = (self.idle and output is not None
                                             and (output / "provenance.json").is_file())
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

    def onRefreshPackages(self) -> None:
        self.updatePackageTable()

    def onInstallPackages(self) -> None:
        with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
            self.logic.installMissingPackages()
        self.updatePackageTable()

    # -- Load case ---------------------------------------------------------------------------------------------
    def onChooseCaseFolder(self) -> None:
        start = str(self.parameterNode.casePath) if self.parameterNode else ""
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Choose an OpenKBP patient, DICOM or case folder", start)
        if folder and self.parameterNode:
            self.parameterNode.casePath = Path(folder)

    def onLoadCase(self) -> None:
        from rtrai.core.errors import RTRAIError

        path = self.parameterNode.casePath
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
        """Fill the steps table from rows of :mod:`RTRadiomicsAILib.workflow`."""
        table = self.ui.workflowStepsTable
        table.setRowCount(len(steps))
        colours = {"done": "darkgreen", "skipped": "darkorange", "running": "royalblue", "failed": "darkred",
                   "cancelled": "darkred"}
        for row, step in enumerate(steps):
            for column, text in enumerate(workflow.stepCells(step)):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                if column == 1 and step["status"] in colours:
                    item.setForeground(qt.QBrush(qt.QColor(colours[step["status"]])))
                if column == 3:
                    item.setToolTip(text)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()

    def onRunAll(self) -> None:
        p = self.parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the workflow.", waitCursor=True):
            output = self.logic.outputFolderFor(p)
            job = self.logic.startWorkflow(p.casePath, output, keepStructures=p.keepStructures,
                                           outcomeModel=self._optionalPath(p.outcomeModelFolder))
            self._startJob(job, output)

    def onRunDemo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the demo.", waitCursor=True):
            output = self.logic.outputFolderFor(self.parameterNode, demo=True)
            self._startJob(self.logic.startDemo(output), output)

    @staticmethod
    def _optionalPath(path):
        return None if str(path) in ("", ".") else Path(path)

    def _startJob(self, job, output) -> None:
        output = Path(output)
        self._steps = self.logic.emptySteps()
        self.showSteps(self._steps)
        self.ui.workflowStatusLabel.text = f"Running into {output} ..."

        def onUpdate(update):
            if update.steps:
                self._steps = workflow.applyStepEvents(self._steps, update.steps)
                self.showSteps(self._steps)

        def onSucceeded():
            self.ui.workflowStatusLabel.text = f"Done: results in {output}."
            self._showResults(self.logic.loadResults(output))  # the final statuses, from provenance.json

        def onEnded(state):
            if state == "cancelled":
                self._steps = workflow.cancelledSteps(self._steps)
                self.showSteps(self._steps)
                self.ui.workflowStatusLabel.text = "Cancelled: nothing was written."

        self.jobs.start(job, onSucceeded, onUpdate, onEnded)

    def onLoadResults(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
            self._showResults(self.logic.loadResults(self.logic.outputFolderFor(self.parameterNode)))

    def _showResults(self, loaded: dict) -> None:
        self.showSteps(loaded["steps"])
        self.logic.showCase(loaded)
        self.ui.caseSummaryLabel.text = self.logic.describeCase(loaded)
        self.updateButtons()

    def onOpenReport(self) -> None:
        report = self.logic.outputFolderFor(self.parameterNode) / "report.html"
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
        args = self.workflowArguments(casePath, outputFolder, keepStructures, outcomeModel, savedSettings()[0])
        logging.info("RTRadiomicsAI: rtrai " + " ".join(args))
        return startJob(*args)

    def startDemo(self, outputFolder):
        """Start ``rtrai demo`` (the synthetic phantom end to end) in a background process."""
        if outputFolder is None:
            raise ValueError("Choose an output folder.")
        return startJob("demo", "-o", str(outputFolder), "--device", savedSettings()[0])

    @staticmethod
    def emptySteps() -> list:
        from rtrai.pipeline import STEP_TITLES, STEPS

        return workflow.emptySteps(STEPS, STEP_TITLES)

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

"""Slicer's scripted-module template, once for the extension's modules.

:func:`describeModule` fills a module's entry in Slicer's module list and help panel. :class:`ModuleWidget` loads the
module's .ui, binds the parameter node to it (``connectGui``, the widgets' ``SlicerParameterName``) and follows it,
lets the parameter node go when the scene closes and takes the new one after, fills empty inputs from the scene, lists
the zoo's models in the model box, owns the module's :class:`~RTRadiomicsAILib.jobs.BackgroundJobPanel`
(``self.jobs``), and connects each push button ``<name>Button`` of the .ui to the widget's method ``on<Name>`` where
there is one (``segmentButton`` -> ``onSegment``), as Qt's auto-connection does. :class:`ModuleTest` runs each test
on an empty scene. A module widget names its .ui and logic and keeps only its own panels' logic::

    class AutoSegmentWidget(ModuleWidget, ScriptedLoadableModuleWidget):
        UI_FILE = "UI/AutoSegment.ui"
        DEFAULT_INPUTS = {"inputVolume": "vtkMRMLScalarVolumeNode"}
        MODEL_TASK = "segmentation"

        def createLogic(self): ...          # the module's logic
        def connectWidgets(self): ...       # what is not a button's click (optional)
        def updateButtons(self): ...        # enable them from self.parameterNode and self.idle

(``ScriptedLoadableModuleWidget`` is named as a base too: it is what Slicer's template, and the packaging test,
look for.)
"""
from __future__ import annotations

import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from RTRadiomicsAILib.jobs import BackgroundJobPanel


def describeModule(module, parent, title: str, categories: list, helpText: str, acknowledgementText: str) -> None:
    """Initialise a ScriptedLoadableModule with its entry in Slicer's module list and help panel."""
    ScriptedLoadableModule.__init__(module, parent)
    parent.title = title
    parent.categories = categories
    parent.dependencies = []
    parent.contributors = ["RTRadiomicsAI contributors"]
    parent.helpText = helpText
    parent.acknowledgementText = acknowledgementText


def zooModels(task: str) -> list:
    """The names of the zoo's models for a task ("segmentation", "dose"), shipped and installed."""
    from rtrai.models import list_models

    return [m["name"] for m in list_models() if m.get("task") == task]


def fillModelComboBox(comboBox, names) -> None:
    """An editable model box filled with the zoo's models, keeping the text typed or chosen (a model folder or file).
    Filled by hand: parameter binding of a combo box needs its choices when the class is defined, and the zoo may
    change while Slicer runs (a model that finished training, one installed in the model folder)."""
    current = comboBox.currentText
    comboBox.clear()
    for name in names:
        comboBox.addItem(name)
    comboBox.setEditText(current if current else (names[0] if names else ""))


class ModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    UI_FILE = ""  # the module's .ui, relative to its Resources folder
    JOB_WIDGETS = ("progressBar", "statusLabel", "cancelButton")  # names in the .ui: progress, status, Cancel
    DEFAULT_INPUTS: dict[str, str] = {}  # parameter -> node class: an empty input takes the first such node
    MODEL_TASK = ""  # "segmentation", "dose": the .ui's editable modelComboBox lists the zoo's models of that task

    def __init__(self, parent=None) -> None:
        # Set before Slicer's __init__, which calls setup() at once when there is no parent widget.
        self.logic = self.jobs = self.parameterNode = None
        self._guiTag = None
        ScriptedLoadableModuleWidget.__init__(self, parent)  # initialises VTKObservationMixin too (cooperative)

    # -- what a module provides --------------------------------------------------------------------------------
    def createLogic(self):
        raise NotImplementedError

    def connectWidgets(self) -> None:
        """Connect what the buttons' auto-connection does not (after the .ui is loaded, before the parameter node is
        bound)."""

    def updateButtons(self) -> None:
        """Called when the parameter node changes, another one is set, or a job starts or ends."""

    # -- the template ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(self.UI_FILE))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.jobs = BackgroundJobPanel(*(getattr(self.ui, name) for name in self.JOB_WIDGETS),
                                       onBusyChanged=lambda busy: self._modified())
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self._onSceneEndClose)
        self._connectButtons()
        if self.MODEL_TASK:
            self.ui.modelComboBox.connect("editTextChanged(QString)", lambda text: self.updateButtons())
            self.fillModels()
        self.connectWidgets()
        self.initializeParameterNode()

    def _connectButtons(self) -> None:
        for name in dir(self.ui):
            if name.endswith("Button") and len(name) > len("Button"):
                handler = getattr(self, f"on{name[0].upper()}{name[1:-len('Button')]}", None)
                if callable(handler):
                    getattr(self.ui, name).connect("clicked(bool)", lambda checked=False, handler=handler: handler())

    def cleanup(self) -> None:
        """A running job is stopped and its patient data removed."""
        self.jobs.cleanup()
        self._disconnectParameterNode()
        self.removeObservers()

    def enter(self) -> None:
        if self.MODEL_TASK:
            self.fillModels()  # a model added since (one that finished training, one installed) shows up
        self.initializeParameterNode()

    def fillModels(self) -> list:
        """The zoo's models of the module's task into its model box; returns them."""
        models = zooModels(self.MODEL_TASK)
        fillModelComboBox(self.ui.modelComboBox, models)
        self.updateButtons()
        return models

    def exit(self) -> None:
        self._disconnectParameterNode()

    @property
    def idle(self) -> bool:
        return self.jobs is not None and not self.jobs.busy

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        for name, nodeClass in self.DEFAULT_INPUTS.items():
            if not getattr(self.parameterNode, name):
                setattr(self.parameterNode, name, slicer.mrmlScene.GetFirstNodeByClass(nodeClass))

    def setParameterNode(self, parameterNode) -> None:
        self._disconnectParameterNode()
        self.parameterNode = parameterNode
        if parameterNode:
            self._guiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self._modified)
        self._modified()

    def _disconnectParameterNode(self) -> None:
        if self.parameterNode:
            self.parameterNode.disconnectGui(self._guiTag)
            self._guiTag = None
            self.removeObserver(self.parameterNode, vtk.vtkCommand.ModifiedEvent, self._modified)

    def _modified(self, caller=None, event=None) -> None:
        if self.jobs is not None:  # not while setup() builds the panel
            self.updateButtons()

    def _onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def _onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()


class ModuleTest(ScriptedLoadableModuleTest):
    """The base of the modules' tests in Slicer's runner: each test on an empty scene; ``runTest`` ("Reload and
    Test") runs the test_ methods in the order they are defined."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in [n for n in type(self).__dict__ if n.startswith("test_")]:
            self.setUp()
            getattr(self, name)()

    def waitForJob(self, job, seconds: float = 900):
        """Keep the application responsive until ``job`` ends (at most ``seconds``), and check that it succeeded."""
        import time

        deadline = time.time() + seconds
        while not job.poll().finished and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(job.state, "succeeded", job.last_error)

"""One background ``rtrai`` command at a time for a module panel.

A module's logic starts the command with :func:`startJob` (the job environment: device and model folder for every
module) and hands the job, with the function that loads its results, to its widget's :class:`BackgroundJobPanel`
(:meth:`BackgroundJobPanel.run`), which polls it from a ``qt.QTimer`` on the main
thread (progress bar, status line), offers Cancel, calls back on the main thread when it ends (MRML is touched there
only), and removes the job's temporary folders of patient data (``rtrai.core.jobs.job_folder``) when it ends, when
the scene closes and when the module is closed.

Stopping a process waits for it (``Job.cancel`` gives it a grace period, then kills it); that wait runs on a worker
thread, so neither Cancel nor closing the scene ever blocks the GUI thread.
"""

from __future__ import annotations

import threading

import qt
import slicer
from rtrai.core.jobs import CANCELLED, SUCCEEDED, Job
from slicer.util import VTKObservationMixin

from RTRadiomicsAILib.settings import jobEnvironment

POLL_INTERVAL_MS = 200


def startJob(*args: str, temporary=()) -> Job:
    """``rtrai ARGS`` started in a background process with the job environment; ``temporary``: folders of patient
    data the job owns (removed when it ends or is given up)."""
    return Job.rtrai(*args, env=jobEnvironment(), temporary=temporary).start()


def _offTheGuiThread(function, name: str, daemon: bool) -> None:
    threading.Thread(target=function, name=name, daemon=daemon).start()


class BackgroundJobPanel(VTKObservationMixin):
    """Follows one job at a time in a progress bar, a status label and a Cancel button of a module's panel.

    ``onBusyChanged(busy)`` is called when a job starts or ends (the module enables its buttons from it).
    """

    def __init__(self, progressBar, statusLabel, cancelButton, onBusyChanged=None) -> None:
        VTKObservationMixin.__init__(self)
        self.progressBar, self.statusLabel, self.cancelButton = progressBar, statusLabel, cancelButton
        self._onBusyChanged = onBusyChanged
        self._job = None
        self._callbacks = (None, None, None)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        self.cancelButton.enabled = False
        self.cancelButton.connect("clicked(bool)", self.cancel)
        # A job works on the scene's data: closing the scene gives it up.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose)

    @property
    def busy(self) -> bool:
        return self._job is not None

    def start(self, job: Job, onSucceeded, onUpdate=None, onEnded=None) -> None:
        """Follow a started ``job``: ``onSucceeded()`` loads its results (errors are shown to the user),
        ``onUpdate(update)`` sees every :class:`rtrai.core.jobs.JobUpdate`, ``onEnded(state)`` runs after any end."""
        if self.busy:
            job.remove_temporary()
            raise RuntimeError("Another background job of this module is still running.")
        self._job, self._callbacks = job, (onSucceeded, onUpdate, onEnded)
        self.progressBar.value = 0
        self.cancelButton.enabled = True
        self._timer.start()
        self._busyChanged()

    def run(self, what: str, startWithLoader, onResults, onUpdate=None, onEnded=None) -> None:
        """Start a job and follow it: ``startWithLoader()`` (a module logic's ``start...``) returns the started job and
        the function that loads its results into MRML; those results go to ``onResults(results)`` when it succeeded.
        A refusal to start (bad input) is shown as "Could not start <what>." with the reason."""
        with slicer.util.tryWithErrorDisplay(f"Could not start {what}.", waitCursor=True):
            job, loadResults = startWithLoader()
            self.start(job, lambda: onResults(loadResults()), onUpdate, onEnded)

    def cancel(self) -> None:
        """Ask the job to stop; the timer sees it end (state "cancelled")."""
        if self._job is None:
            return
        self.cancelButton.enabled = False
        self.statusLabel.text = "Cancelling..."
        _offTheGuiThread(self._job.cancel, "rtrai-cancel", daemon=True)

    def discard(self) -> None:
        """Give the job up without loading anything: stop it and remove its patient data (off the GUI thread; not a
        daemon thread, so the removal finishes even when Slicer is closing)."""
        job = self._job
        if job is None:
            return
        self._timer.stop()
        self._job, self._callbacks = None, (None, None, None)
        self.cancelButton.enabled = False
        self.statusLabel.text = "Stopped: the scene was closed."
        _offTheGuiThread(job.remove_temporary, "rtrai-discard", daemon=False)
        self._busyChanged()

    def cleanup(self) -> None:
        """For the module widget's cleanup()."""
        self.discard()
        self.removeObservers()

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        self.discard()

    def _busyChanged(self) -> None:
        if self._onBusyChanged is not None:
            self._onBusyChanged(self.busy)

    def _poll(self) -> None:
        job = self._job
        if job is None:
            return
        onSucceeded, onUpdate, onEnded = self._callbacks
        update = job.poll()
        self.progressBar.value = round(100 * update.fraction)
        if update.message:
            self.statusLabel.text = update.message
        if onUpdate is not None:
            onUpdate(update)
        if not update.finished:
            return
        self._timer.stop()
        self._job, self._callbacks = None, (None, None, None)
        self.cancelButton.enabled = False
        try:
            if update.state == SUCCEEDED:
                with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                    onSucceeded()  # may start the next job of a chain
            elif update.state == CANCELLED:
                self.statusLabel.text = "Cancelled."
            else:
                self.statusLabel.text = job.last_error or "The background process failed."
                slicer.util.errorDisplay(self.statusLabel.text, detailedText="\n".join(job.log[-50:]))
            if onEnded is not None:
                onEnded(update.state)
        finally:
            job.remove_temporary()  # the exported patient data and the results, loaded by now
            self._busyChanged()

"""The background jobs of the dock widgets: one helper runs the engine off the GUI thread for all of them.

    job = Job("Training", status, progress, buttons=[start], stop_buttons=[stop])
    job.start(train, config, run_dir, control=job.control, yielded=on_event)  # in a background thread
    job.stop()                                      # asks the run to stop after its current step

A :class:`Job` runs a function or a generator of the engine in napari's thread worker. While it runs, the buttons
that start work are disabled and the stop buttons enabled; a generator's items and a function's result come back
on the GUI thread; a failure is said in one line (an :class:`~napari_pgps.errors.InputError`'s text as it is) as a
napari notification and in the status line; a cancel goes through the engine's own mechanism, the
:class:`~napari_pgps.engine.control.TrainingControl` that the training loop and the segmentation poll.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from ..engine.control import TrainingControl
from ..errors import InputError

log = logging.getLogger(__name__)


def error_line(exc: BaseException) -> str:
    """``exc`` told in one line: an :class:`InputError`'s message as it is (the user can act on it), any other
    exception's type and the first line of its message (its traceback goes to the log)."""
    if isinstance(exc, InputError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class Job:
    """One kind of background work of a widget (a training, a segmentation, a memory estimate, a review).

    Args:
        what: what the job does, as the start of its failure notice ("Training" -> "Training failed: ...").
        status: the widget's status line; a failure puts ``"failed: LINE"`` (after ``failed_prefix``) there.
        progress: the widget's progress bar, if it has one: busy while the job starts, left as the job's events
            set it (:meth:`show_progress`), "failed" after a failure.
        buttons: disabled while the job runs (the buttons that start work).
        stop_buttons: enabled only while the job runs (Stop, Cancel, Pause).
        cancelled: the status line when the engine honours a cancel by raising
            :class:`~napari_pgps.engine.inference.Cancelled` (a segmentation stopped between window batches).
        failed_prefix: put before "failed: " in the status line (e.g. "comparison ").
    """

    def __init__(self, what: str, status: QLabel, progress: Optional[QProgressBar] = None, *,
                 buttons: Sequence[QPushButton] = (), stop_buttons: Sequence[QPushButton] = (),
                 cancelled: str = "cancelled", failed_prefix: str = "") -> None:
        self.what, self.status, self.progress = what, status, progress
        self.buttons, self.stop_buttons = list(buttons), list(stop_buttons)
        self.cancelled, self.failed_prefix = cancelled, failed_prefix
        self.worker = None
        """napari's worker while the job runs, ``None`` when idle."""
        self.control = TrainingControl()
        """The stop (and pause) requests of the running job, or of the next one while idle: give it to the engine
        function (``job.start(train, ..., control=job.control)``). A new one after each job."""
        self._set_running(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, function: Callable, *args: Any, yielded: Optional[Callable[[Any], None]] = None,
              returned: Optional[Callable[[Any], None]] = None, failed: Optional[Callable[[BaseException], None]] = None,
              finished: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        """Run ``function(*args, **kwargs)`` (a function or a generator) in a background thread.

        Args:
            yielded: called on the GUI thread with each item a generator yields.
            returned: called with the function's (or generator's) return value.
            failed: called with the exception after it was reported (not for a cancel).
            finished: called last, whatever happened, once the buttons are back as they were.
        """
        from napari.qt.threading import thread_worker

        if self.running:
            raise RuntimeError(f"{self.what} is already running")

        def done() -> None:
            self.worker = None
            self.control = TrainingControl()
            self._set_running(False)
            if self.progress is not None and self.progress.maximum() == 0:  # still busy: nothing came to show
                self.progress.setRange(0, 1)
            if finished is not None:
                finished()

        # every handler given at creation: an "errored" handler connected later would not stop napari's re-raise
        handlers = {"errored": lambda exc: self._report(exc, failed), "finished": done}
        if yielded is not None:
            handlers["yielded"] = yielded
        if returned is not None:
            handlers["returned"] = returned
        self.worker = thread_worker(function, connect=handlers, start_thread=False)(*args, **kwargs)
        if self.progress is not None:
            self.show_progress("%p%")
        self._set_running(True)
        self.worker.start()

    def stop(self) -> None:
        """Ask the running job to stop: a training after its current step (its last checkpoint is kept), a
        segmentation before its next window batch, a batch of segmentations after the case under way."""
        if self.running:
            self.control.stop()

    def show_progress(self, text: str, done: int = 0, total: int = 0) -> None:
        """The progress bar at ``done`` of ``total`` with ``text`` (Qt's ``%v``, ``%m``, ``%p`` allowed), or busy
        while ``total`` is 0."""
        if self.progress is None:
            return
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(text)

    def _report(self, exc: BaseException, failed: Optional[Callable[[BaseException], None]]) -> None:
        from napari.utils.notifications import show_error

        from ..engine.inference import Cancelled

        if isinstance(exc, Cancelled):
            self.status.setText(self.cancelled)
            return
        if not isinstance(exc, InputError):
            log.error("%s failed", self.what, exc_info=exc)
        line = error_line(exc)
        show_error(f"{self.what} failed: {line}")
        self.show_progress("failed", 0, 1)
        self.status.setText(f"{self.failed_prefix}failed: {line}")
        if failed is not None:
            failed(exc)

    def _set_running(self, running: bool) -> None:
        for button in self.buttons:
            button.setEnabled(not running)
        for button in self.stop_buttons:
            button.setEnabled(running)

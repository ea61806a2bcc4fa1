"""Stop and pause requests for a running training, safe to call from any thread."""

from __future__ import annotations

import threading


class TrainingControl:
    """Flags the training loop checks between steps.

    ``stop()`` ends the run after the current step (the last checkpoint is
    kept); ``pause()`` holds it before the next step until ``resume()``.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_until_resumed(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds while paused; true once running (or stopping)."""
        return self._running.wait(timeout)

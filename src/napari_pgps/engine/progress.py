"""One fold of the event stream: what every face shows of a run, and one text for each event.

    progress = TrainingProgress()
    for event in train(config, run_dir):
        progress.update(event)
        line = describe_event(event, progress)

The command line and the headless demo print :func:`describe_event`'s lines,
the widgets draw :class:`TrainingProgress`'s curves, the bench and the
benchmark scripts read their figures from it, and :func:`read_events` turns
a run folder's ``metrics.jsonl`` back into the same events, so a finished run
folds the same way as a live one.
"""

from __future__ import annotations

import dataclasses

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..events import (
    CasesAdded,
    ChannelPruningStep,
    CheckpointSaved,
    Event,
    Finished,
    Paused,
    Preparing,
    PruningReport,
    PruningStep,
    Replanned,
    Resumed,
    RunStarted,
    StageFinished,
    StageStarted,
    StepDone,
    Validated,
    event_from_dict,
)

METRICS_FILE = "metrics.jsonl"
"""A run's log: each event of the run as one line of JSON (:meth:`~napari_pgps.events.Event.to_dict`), in a run
folder (:mod:`.run_folder`)."""
RECENT_STEPS = 10
"""Steps the "recent class balance" averages over."""


@dataclass(frozen=True)
class ValidationPoint:
    """A validation and where in the run it happened."""

    step: int
    """Global step of the last step before it."""
    training_seconds: float
    """Summed step times of this run so far (validation excluded)."""
    result: Validated


@dataclass(frozen=True)
class EpochSummary:
    """An epoch's mean loss and its last step's time, reported when its checkpoint is written."""

    epoch: int
    mean_loss: float
    step_seconds: float


@dataclass
class TrainingProgress:
    """The state of a run as its events tell it; feed every event to :meth:`update`, in order."""

    preparing: Optional[Preparing] = None
    """The data preparation's last progress (before the run starts)."""
    started: Optional[RunStarted] = None
    steps: list[StepDone] = field(default_factory=list)
    """This run's steps (a resumed run starts a new list)."""
    stage: Optional[StageStarted] = None
    stages_started: list[StageStarted] = field(default_factory=list)
    stages_finished: list[StageFinished] = field(default_factory=list)
    validations: list[ValidationPoint] = field(default_factory=list)
    cases: Optional[CasesAdded] = None
    """The PDL pool after its last widening."""
    parameters: list[tuple[int, int]] = field(default_factory=list)
    """(epoch, or channel-pruning step; parameters) each time pruning changed the network, the start first."""
    report: Optional[PruningReport] = None
    checkpoint: Optional[str] = None
    """The last checkpoint written."""
    epoch_summary: Optional[EpochSummary] = None
    """Set by the first checkpoint after an epoch's steps, cleared by the next event."""
    paused: bool = False
    finished: Optional[Finished] = None
    training_seconds: float = 0.0
    """Summed step times of this run (validation excluded)."""
    _epoch_losses: list[float] = field(default_factory=list)
    _wall_start: float = field(default_factory=time.perf_counter)

    def update(self, event: Event) -> "TrainingProgress":
        """Fold one event in; returns self."""
        self.epoch_summary = None
        if isinstance(event, Preparing):
            self.preparing = event
        elif isinstance(event, RunStarted):
            self.started = event
            self.steps = []
            self.training_seconds = 0.0
            self._wall_start = time.perf_counter()
            if not self.parameters:
                self.parameters.append((event.start_epoch, event.parameters))
        elif isinstance(event, Replanned) and self.started is not None:
            steps = event.iterations_per_epoch or self.started.iterations_per_epoch
            self.started = dataclasses.replace(self.started, epochs=event.epochs, expected_seconds=event.expected_seconds,
                                               iterations_per_epoch=steps)
        elif isinstance(event, StepDone):
            self.steps.append(event)
            self.training_seconds += event.seconds
            self._epoch_losses.append(event.loss)
        elif isinstance(event, StageStarted):
            self.stage = event
            self.stages_started.append(event)
        elif isinstance(event, StageFinished):
            self.stages_finished.append(event)
        elif isinstance(event, Validated):
            self.validations.append(ValidationPoint(self.step, self.training_seconds, event))
        elif isinstance(event, CheckpointSaved):
            self.checkpoint = event.path
            if self._epoch_losses:
                self.epoch_summary = EpochSummary(event.epoch, statistics.fmean(self._epoch_losses), self.steps[-1].seconds)
                self._epoch_losses = []
        elif isinstance(event, CasesAdded):
            self.cases = event
        elif isinstance(event, PruningStep):
            self.parameters.append((event.epoch, event.parameters))
        elif isinstance(event, ChannelPruningStep):
            self.parameters.append((event.step, event.parameters))
        elif isinstance(event, PruningReport):
            self.report = event
        elif isinstance(event, Paused):
            self.paused = True
        elif isinstance(event, Resumed):
            self.paused = False
        elif isinstance(event, Finished):
            self.finished = event
            self.paused = False
            self.checkpoint = event.checkpoint or self.checkpoint
        return self

    # -- figures every face shows ---------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Steps this run takes, from its start (or resumed) epoch to the end."""
        if self.started is None:
            return 0
        return (self.started.epochs - self.started.start_epoch) * self.started.iterations_per_epoch

    @property
    def step(self) -> int:
        """Global step of the last step (0 before the first)."""
        if self.steps:
            return self.steps[-1].step
        return self.started.start_epoch * self.started.iterations_per_epoch if self.started else 0

    @property
    def steps_done(self) -> int:
        """Steps this run has taken."""
        return len(self.steps)

    @property
    def eta_seconds(self) -> Optional[float]:
        """Wall time left: for a run planned to a time budget, its plan's (made again as the run goes), whose
        later, larger PGPS stages cost more a step than its first (at the pace so far, a 2-hour left-atrium run said
        16 minutes were left after 40), and never past the budget's end; else at this run's pace so far
        (validations included). ``None`` before the first step."""
        if not self.steps:
            return None
        if self.steps_done >= self.total_steps:
            return 0.0
        elapsed = time.perf_counter() - self._wall_start
        expected = self.started.expected_seconds if self.started is not None else None
        left = elapsed / self.steps_done * (self.total_steps - self.steps_done) if expected is None else max(
            expected - elapsed, 0.0)
        budget = self.started.time_budget if self.started is not None else None
        return min(left, max(budget - elapsed, 0.0)) if budget else left

    @property
    def data_wait_share(self) -> Optional[float]:
        """Share of this run's step time spent waiting for batches to be cut and augmented."""
        if not self.training_seconds:
            return None
        return sum(s.data_seconds for s in self.steps) / self.training_seconds

    @property
    def last_dice(self) -> Optional[float]:
        """Mean Dice of the last validation."""
        return self.validations[-1].result.mean_dice if self.validations else None

    def recent_class_fractions(self, steps: int = RECENT_STEPS) -> Optional[tuple[float, ...]]:
        """Mean label fractions (background first) of the last ``steps`` steps' crops."""
        recent = self.steps[-steps:]
        if not recent:
            return None
        return tuple(statistics.fmean(fractions) for fractions in zip(*(s.class_fractions for s in recent)))


# -- one text per event ----------------------------------------------------------------
def describe_event(event: Event, progress: TrainingProgress, *, quiet: bool = False) -> Optional[str]:
    """One line telling a person what ``event`` means, after ``progress.update(event)``; ``None`` if nothing to say.

    ``quiet`` keeps only validations, pruning, reports and the end.
    """
    if isinstance(event, Preparing):
        if event.task == "timing":
            return "recipe: timing a training step at the final patch, to choose the spacing" if not event.done else None
        if event.done != event.total:
            return None
        return (f"data: {event.total} cases fingerprinted" if event.task == "fingerprint" else
                f"data: {event.total} cases preprocessed (kept for later runs on these files)")
    if isinstance(event, RunStarted):
        resuming = f" (resuming at epoch {event.start_epoch})" if event.start_epoch else ""
        planned = ""
        if event.expected_seconds is not None:
            planned = (f"; planned from measured step times to fit {duration_text(event.time_budget)}: "
                       f"expected {duration_text(event.expected_seconds)}")
        return (f"training {event.kind} model ({event.architecture} network) on {event.device}: "
                f"{event.training_cases} training / {event.validation_cases} validation cases, "
                f"{event.parameters:,} parameters, final patch {size_text(event.final_patch)}, "
                f"{event.epochs} epochs x {event.iterations_per_epoch} steps{resuming}{planned}"
                + "".join(f"\nnote: {note}" for note in event.notes)
                + "".join(f"\nrecipe: {line}" for line in event.recipe))
    if isinstance(event, Replanned):
        within = f" (ended after {event.after_steps} steps)" if event.after_steps is not None else ""
        steps = f" x {event.iterations_per_epoch} steps" if event.iterations_per_epoch is not None else ""
        return (f"epoch {event.epoch}{within}: steps took {event.slowdown:.2f}x the planned time; re-planned to "
                f"{event.epochs} epochs{steps}, expected {duration_text(event.expected_seconds)}")
    if isinstance(event, Validated):
        dice = ", ".join(f"{name} {value:.4f}" for name, value in event.dice_per_label.items())
        where = " (on the training cases: none left to hold out)" if event.on_training_cases else ""
        raw = f" of the weight average; raw weights {event.raw_mean_dice:.4f}" if event.raw_mean_dice is not None else ""
        return f"epoch {event.epoch}: validation Dice {dice} (mean {event.mean_dice:.4f}{raw}){where}"
    if isinstance(event, PruningStep):
        return f"epoch {event.epoch}: pruning {event.action} {', '.join(event.branches)}; {event.parameters:,} parameters"
    if isinstance(event, ChannelPruningStep):
        return f"channel pruning step {event.step}/{event.steps}: {event.parameters:,} parameters"
    if isinstance(event, PruningReport):
        return f"\n{event.table}\nreport: {event.path}"
    if isinstance(event, Finished):
        state = "stopped" if event.stopped else "finished"
        dice = f", final mean Dice {event.final_mean_dice:.4f}" if event.final_mean_dice is not None else ""
        redone = f" ({event.steps_redone_in_fp32} bf16 steps redone in fp32)" if event.steps_redone_in_fp32 else ""
        return (f"{state} after {event.epochs_completed} epochs, {event.steps} steps{redone}, "
                f"{duration_text(event.training_seconds)} training{dice}; checkpoint: {event.checkpoint}")
    if quiet:
        return None
    if isinstance(event, StageStarted):
        return f"stage {event.stage + 1}: patch {size_text(event.patch)}, batch {event.batch} (from epoch {event.epoch + 1})"
    if isinstance(event, CheckpointSaved) and progress.epoch_summary is not None:
        summary = progress.epoch_summary
        eta = progress.eta_seconds
        return (f"epoch {summary.epoch}: loss {summary.mean_loss:.4f}, {summary.step_seconds:.2f} s/step"
                + (f", ETA {duration_text(eta)}" if eta is not None else ""))
    if isinstance(event, CasesAdded):
        return f"epoch {event.epoch}: PDL trains on the {event.cases} most similar of {event.total} cases"
    if isinstance(event, Paused):
        return "paused"
    if isinstance(event, Resumed):
        return "resumed"
    return None


def size_text(patch: Iterable[int]) -> str:
    """``(40, 56, 40)`` -> ``"40x56x40"``."""
    return "x".join(str(p) for p in patch)


def duration_text(seconds: float) -> str:
    """``754`` -> ``"12m34s"``; under a minute ``"42s"``."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# -- reading a run's log back ------------------------------------------------------------
def read_events(path: str | os.PathLike) -> Iterator[Event]:
    """The events of a ``metrics.jsonl`` (a run folder's, or the file itself), in order.

    Raises:
        FileNotFoundError: no such log.
        ValueError: a line is not an event.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    with open(path) as handle:
        for line in handle:
            if line.strip():
                yield event_from_dict(json.loads(line))


def restart_log(path: str | os.PathLike, epoch: int, step: int) -> None:
    """Make a run's ``metrics.jsonl`` end where the run starts, so that it tells every step once.

    A new run (``epoch`` 0) starts with no log: that of an earlier run in the folder that ended before its first
    checkpoint goes. A run resumed from the checkpoint of ``epoch`` (after global step ``step``) keeps the events
    up to that checkpoint's ``CheckpointSaved`` lines; the steps after it, which the resumed run takes again, and
    the earlier run's ``Finished`` go. Without such a line (the process died between writing the checkpoint and
    logging it) the events before the first step after ``step`` stay. A last line cut short by a crash goes too.
    The file is cut in one system call, so a crash leaves either the old log or the new one.
    """
    path = Path(path)
    if epoch == 0:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    saved_end = later_step_start = None
    offset = parsed_end = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):  # the last line, cut short by a crash
                break
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            parsed_end = offset
            if not isinstance(record, dict):
                continue
            if record.get("event") == "CheckpointSaved" and record.get("epoch") == epoch:
                saved_end = offset
            elif record.get("event") == "StepDone" and later_step_start is None and record.get("step", 0) > step:
                later_step_start = start
    end = saved_end if saved_end is not None else later_step_start if later_step_start is not None else parsed_end
    if end < path.stat().st_size:
        os.truncate(path, end)


def fold(events: Iterable[Event]) -> TrainingProgress:
    """The progress after every one of ``events``."""
    progress = TrainingProgress()
    for event in events:
        progress.update(event)
    return progress

"""The small typed events a training (or pruning) run yields.

The command line prints and logs them, the widgets turn them into plots and
overlays, tests iterate them directly; :class:`napari_pgps.engine.progress.TrainingProgress`
folds them into what every face shows. Each is a frozen dataclass with
:meth:`Event.to_dict` giving one JSON-ready line for the run's metrics log
(``metrics.jsonl``), and :func:`event_from_dict` reads such a line back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Event:
    """Base of every event."""

    def to_dict(self) -> dict[str, Any]:
        """``{"event": class name, **fields}``, JSON-ready."""
        values = dataclasses.asdict(self)
        return {"event": type(self).__name__, **values}


@dataclass(frozen=True)
class Preparing(Event):
    """Before training: ``done`` of ``total`` cases fingerprinted (``task`` "fingerprint") or preprocessed
    ("preprocessing"), or a training step timed to choose the recipe's spacing ("timing", 0 then 1 of 1). Cases already done by an earlier run are not counted again. Not written to ``metrics.jsonl``:
    it tells of the dataset's cache, not of the run."""

    task: str
    done: int
    total: int


@dataclass(frozen=True)
class RunStarted(Event):
    """Training begins (or resumes at ``start_epoch``)."""

    run_dir: Optional[str]
    device: str
    training_cases: int
    validation_cases: int
    parameters: int
    start_epoch: int
    epochs: int
    iterations_per_epoch: int
    final_patch: tuple[int, int, int]
    schedule: str
    label_names: tuple[str, ...]
    """Background first; the order of every ``class_fractions``."""
    volume_class_fractions: tuple[float, ...]
    """Voxel fraction of each label in the whole training volumes."""
    kind: str = "FP"
    """The model kind (FP, AP, HN, PGPS, RPSS; see :data:`napari_pgps.models.MODEL_KINDS`)."""
    architecture: str = "dynunet"
    """The network (``model.architecture``: dynunet, unet, unetr, swinunetr, prm, hypernet)."""
    time_budget: Optional[float] = None
    """Seconds the run was planned to fit, if it was planned to a budget."""
    expected_seconds: Optional[float] = None
    """The planned run's predicted duration (steps and validations), when planned to a budget."""
    notes: tuple[str, ...] = ()
    """What the user should know before the run, one sentence each: the run folder's (a folder reused from a run
    that ended before its first checkpoint) first, then the time budget's (too short for a working model), then the
    training-loop plug-ins'."""
    recipe: tuple[str, ...] = ()
    """The run's recipe, one line per part: what it trains with and why (:mod:`napari_pgps.engine.recipe`)."""


@dataclass(frozen=True)
class Replanned(Event):
    """A run planned to a time budget, at the end of an epoch (or within it: then the epoch ended there): its steps so
    far (those of stages with at least a quarter of the final step's voxels) took ``slowdown`` times the time the
    plan had measured, at which pace the run would end more than 5% of the budget or 60 s, whichever is less, before
    or after it (e.g. a machine busy while the plan was timed), so the epochs left were planned again with every cost
    scaled by it. ``epochs``, ``iterations_per_epoch`` and ``expected_seconds`` replace :class:`RunStarted`'s (or the
    last re-plan's)."""

    epoch: int
    """Epochs completed when it was re-planned (the one ended early among them)."""
    slowdown: float
    epochs: int
    expected_seconds: float
    iterations_per_epoch: Optional[int] = None
    """Steps in each epoch left (the configured number again once the time allows); ``None``: unchanged."""
    after_steps: Optional[int] = None
    """Re-planned within epoch ``epoch`` after this many of its steps, where that epoch ended; ``None``: at its end."""


@dataclass(frozen=True)
class StageStarted(Event):
    """A curriculum stage begins: from now on crops have this patch and batch size."""

    stage: int
    epoch: int
    patch: tuple[int, int, int]
    batch: int


@dataclass(frozen=True)
class StageFinished(Event):
    """A curriculum stage ended; ``class_fractions`` is the mean label fraction of its sampled crops."""

    stage: int
    epoch: int
    patch: tuple[int, int, int]
    batch: int
    steps: int
    class_fractions: tuple[float, ...]


@dataclass(frozen=True)
class CasesAdded(Event):
    """The PDL data curriculum widened the training pool to the ``cases`` most similar cases."""

    epoch: int
    cases: int
    total: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class PruningStep(Event):
    """Progressive pruning masked, restored (rolled back) or removed PRM branches at the start of ``epoch``."""

    epoch: int
    action: str
    """"masked", "restored" or "removed"."""
    branches: tuple[str, ...]
    """E.g. ``("bottleneck 1x3x1", "decoder 2 1x1x1")``."""
    parameters: int
    """Parameters of the network after this step (masked branches count until removed)."""
    prune_step: int
    """Branches the next mask takes."""


@dataclass(frozen=True)
class ChannelPruningStep(Event):
    """One of Torch-Pruning's iterative steps on a trained network."""

    step: int
    steps: int
    parameters: int


@dataclass(frozen=True)
class PruningReport(Event):
    """Before/after figures of a pruned network (see :class:`napari_pgps.tasks.pruning_report.ModelProfile`)."""

    before_name: str
    before: dict[str, Any]
    after: dict[str, Any]
    table: str
    """The same figures as a Markdown table."""
    path: Optional[str]
    """``pruning_report.json`` in the run folder."""


@dataclass(frozen=True)
class StepDone(Event):
    """One optimisation step.

    ``class_fractions`` is the voxel fraction of each label (background first)
    in this step's crops; ``seconds`` the wall time of the step, waiting for its
    batch included (``data_seconds`` of it).
    """

    epoch: int
    step: int
    loss: float
    patch: tuple[int, int, int]
    batch: int
    class_fractions: tuple[float, ...]
    seconds: float
    learning_rate: float
    crop_cases: tuple[str, ...] = ()
    """Name of the case each crop was cut from (the overlay draws them over the matching layer)."""
    crop_origins: tuple[tuple[int, int, int], ...] = ()
    """First voxel (Z, Y, X) of each crop on its case's own grid (as stored; nearest voxel where resampled)."""
    crop_sizes: tuple[tuple[int, int, int], ...] = ()
    """Each crop's size (Z, Y, X) on its case's own grid (the patch, unless the case is resampled or reoriented)."""
    data_seconds: float = 0.0
    """Of ``seconds``, the time the step waited for its batch to be cut and augmented."""
    augmentation_strength: float = 1.0
    """The strength (0: none, 1: full) its crops were augmented at (``data.augmentation_ramp``)."""


@dataclass(frozen=True)
class Validated(Event):
    """Dice on the held-out cases by sliding window at the final patch size."""

    epoch: int
    dice_per_label: dict[str, float]
    mean_dice: float
    seconds: float
    on_training_cases: bool = False
    """True when there was no case to hold out (e.g. one pair of layers): then Dice is on the training cases."""
    raw_dice_per_label: Optional[dict[str, float]] = None
    raw_mean_dice: Optional[float] = None
    """Once weight averaging has begun (``training.weight_averaging``), ``dice_per_label`` and ``mean_dice`` score the
    averaged weights, the model the run keeps, and these the weights being trained, for comparison; ``None`` before."""


@dataclass(frozen=True)
class CheckpointSaved(Event):
    epoch: int
    path: str


@dataclass(frozen=True)
class Paused(Event):
    epoch: int
    step: int


@dataclass(frozen=True)
class Resumed(Event):
    epoch: int
    step: int


@dataclass(frozen=True)
class Finished(Event):
    """The run ended: completed, or ``stopped`` early (the last checkpoint is kept)."""

    stopped: bool
    epochs_completed: int
    steps: int
    training_seconds: float
    final_mean_dice: Optional[float]
    checkpoint: Optional[str]
    steps_redone_in_fp32: int = 0  # bf16 steps whose gradient was not finite, computed again in fp32


def event_from_dict(values: dict[str, Any]) -> Event:
    """The event a :meth:`Event.to_dict` line describes (JSON lists become the fields' tuples again).

    Raises:
        ValueError: the line names no known event or does not fit its fields.
    """
    kinds = {kind.__name__: kind for kind in _subclasses(Event)}
    fields = dict(values)
    kind = kinds.get(fields.pop("event", None))
    if kind is None:
        raise ValueError(f"not a napari-pgps event: {values.get('event')!r}")
    return kind(**{name: _tuples(value) for name, value in fields.items()})


def _subclasses(kind: type) -> list[type]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_subclasses(direct))]


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value

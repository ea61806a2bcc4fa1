"""The configuration of a run: one dataclass tree with defaults.

The command line flags, the YAML files of a run folder and the widgets are
all views of :class:`RunConfig`. Values left as ``None`` are *automatic*:
:func:`napari_pgps.engine.resolve.resolve_config` fills them from the data,
the device and the other choices before training starts, and the resolved
tree is what a run folder and every checkpoint store, so a checkpoint alone
is enough to rebuild the network and segment.

Axis order everywhere is (Z, Y, X) = the array axes of a volume as loaded by
:mod:`napari_pgps.data.volume`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import InputError
from .files import write_text_atomically

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
RUNTIMES = ("torch", "onnx")
"""What runs the network in the sliding window: torch, or ONNX Runtime on the CPU (the ONNX network inside a package
exported with --onnx)."""


@dataclass
class DataConfig:
    """Where the training data is, how it is split, sampled, augmented and loaded."""

    path: Optional[str] = None
    """Dataset folder (Decathlon or nnU-Net v2 raw layout)."""
    validation_fraction: float = 0.2
    """Share of the cases held out for validation, drawn with ``TrainingConfig.seed`` (when ``fold`` is ``None``)."""
    fold: Optional[int] = None
    """Train fold K (0-based) of a ``folds``-fold cross-validation instead of the single held-out split."""
    folds: int = 5
    """Folds of the cross-validation; the cases are shuffled with ``TrainingConfig.seed`` and cut into this many."""
    foreground_oversampling: float = 0.33
    """Share of crops forced onto a foreground voxel, applied as ``oversampling`` says (nnU-Net's setting: 0.33,
    which its per-batch rule turns into one crop of two at B = 2, not a third of the crops)."""
    oversampling: str = "batch"
    """How the share is applied: "batch" (nnU-Net: the last ``round(B x share)`` crops of each batch, one of two at
    B = 2) or "crop" (each crop with that probability)."""
    max_cases: Optional[int] = None
    """Use only the first N cases (sorted by name); for quick runs and tests."""
    test_fraction: float = 0.0
    """Share of the cases set aside as a test split before the validation split (or the folds) is drawn: the same
    cases for every seed and fold (drawn with a fixed seed), never trained on nor used to choose anything (best
    checkpoint, recipe rules), so that their Dice is an honest estimate (``splits.json``'s "test"; ``evaluate
    --split test``)."""
    augmentation: Optional[str] = None
    """"nnunet" (rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma, mirroring, as nnU-Net's
    defaults), "mirror" (mirroring only) or "none"; from the device profile when ``None``."""
    augmentation_ramp: Optional[tuple[float, float]] = None
    """An augmentation curriculum: the strength of ``augmentation`` (its probabilities and magnitudes) rises from
    none at this (start, end) share of the run's epochs to full at the end share; ``None``: full strength
    throughout (or as the run's recipe chooses, see :mod:`napari_pgps.engine.recipe`)."""
    loader_workers: Optional[int] = None
    """Processes that cut and augment crops ahead of the training step (0: in the training process); from the device
    profile when ``None``."""
    preprocessed: Optional[str] = None
    """Folder for preprocessed datasets (reused by later runs); ``$NAPARI_PGPS_CACHE`` or ``~/.cache/napari-pgps``
    when ``None``."""


@dataclass
class PreprocessingConfig:
    """How every case is brought to the grid the network trains on (and every input before it is segmented)."""

    orientation: str = "RAS"
    """The canonical orientation: the axis codes of the NIfTI voxel axes (i, j, k)."""
    resample: bool = True
    """Resample to the target spacing (``model.spacing``); off: cases keep their voxel size."""
    crop_to_nonzero: bool = True
    """Cut each case to the box around its nonzero voxels (nnU-Net)."""


@dataclass
class NormalizationConfig:
    """How one channel's intensities are normalised; fitted on the dataset (see :mod:`napari_pgps.data.normalization`).

    ``scheme`` is ``"zscore"`` (each case by its own mean and standard
    deviation) or ``"ct"`` (clip to the dataset's 0.5/99.5 foreground
    percentiles, then subtract the dataset's foreground mean and divide by its
    standard deviation).
    """

    scheme: Optional[str] = None
    clip_low: Optional[float] = None
    clip_high: Optional[float] = None
    mean: Optional[float] = None
    std: Optional[float] = None
    nonzero_mask: bool = False
    """zscore: statistics inside the case's nonzero region only, and 0 outside it."""


@dataclass
class ModelConfig:
    """The network. Planned fields are filled by ``resolve_config``."""

    architecture: Optional[str] = None
    """The network (see ``napari_pgps.models.architectures``); "prm" when progressive pruning is on, else "dynunet"."""
    patch_size: Optional[tuple[int, int, int]] = None
    """Final training patch (Z, Y, X); planned from the median case shape when ``None``."""
    base_channels: Optional[int] = None
    """Feature maps of the first level; chosen from the device when ``None``."""
    max_channels: int = 320
    deep_supervision: bool = True
    # Planned (nnU-Net style) from the patch and the median spacing:
    spacing: Optional[tuple[float, float, float]] = None
    """The target spacing in mm (Z, Y, X) cases are resampled to: nnU-Net's rule over the dataset's cases."""
    kernel_sizes: Optional[list[tuple[int, int, int]]] = None
    strides: Optional[list[tuple[int, int, int]]] = None
    channels: Optional[list[int]] = None
    in_channels: int = 1
    """Input channels, set from the dataset; their names, in order, are ``RunConfig.channels``."""
    out_channels: Optional[int] = None
    """Number of labels, background included."""
    hypernet_hidden: int = 50
    """"hypernet": width of the MLP (3 -> H -> H -> H) that generates the DynUNet's weights from the patch size."""
    prm_variant: str = "S"
    """PSP-Seg network size when ``architecture`` is "prm": "S", "B" or "L"."""
    prm_branches: Optional[list[list[tuple[int, int, int]]]] = None
    """Kernels of the branches left in each PRM (encoder levels 1.., then decoder); all of the variant's when ``None``."""
    prm_downsampling: Optional[str] = None
    """"prm": "residual" (the PSP-Seg reference's two 3x3x3 convs with a strided 1x1x1 bypass; a new network's default)
    or "strided-conv" (one conv, kernel = stride). ``None`` in a saved config (before this field): "strided-conv"."""
    prm_skips: Optional[str] = None
    """"prm": how a decoder level joins its skip, "add" (the reference's; a new network's default) or "concat"
    (concatenation and a 1x1x1 fusion). ``None`` in a saved config (before this field): "concat"."""
    channels_pruned: bool = False
    """The convolutions were channel-pruned: their sizes are read from the checkpoint's weights."""


@dataclass
class PDLConfig:
    """Progressive Deep Learning: training cases ranked by similarity and added in groups."""

    enabled: bool = False
    metric: str = "ssim"
    """Similarity to the reference case: "mse", "psnr", "ssim" or "uqi" (Wang & Bovik's Universal Quality Index)."""
    groups: int = 4
    """The ranked cases are split into this many groups."""
    every_epochs: Optional[int] = None
    """Add the next group every N epochs; by default the groups are spread evenly over the first half of training."""
    reference: Optional[str] = None
    """Reference case name; by default the case closest (MSE) to the mean of all training cases."""


@dataclass
class ScheduleOptions:
    """The tuning knobs of the patch schedules (:mod:`napari_pgps.curriculum.schedules`), all optional."""

    growth: str = "journal"
    """PGPS growth rule: "journal" (smallest next size first) or "miccai" (round-robin from axis Y)."""
    start_fraction: float = 0.0
    """Start growing from the first size holding at least this fraction of the final voxels (start later)."""
    growth_fraction: float = 1.0
    """Share of the epochs the growing stages take; the final size trains for the rest (stop earlier)."""
    max_batch: Optional[int] = None
    """Cap on the Performance mode's batch size (a memory budget)."""
    performance_batch: str = "voxels"
    """Performance mode's batch rule: "voxels" (the journal's, floor(B x final voxels / patch voxels)) or "miccai"
    (PGPS+, the MICCAI paper's: backwards from the last stage, each batch the next one's x the voxel ratio, rounded
    down). ``augment`` keeps the voxels whatever this is: its patches are not stages."""
    single_voxel_bottleneck: bool = False
    """Start from the reference's minimum patch (a 1-voxel bottleneck); by default growth starts one step later,
    where the bottleneck holds 2 voxels, because instance normalisation cannot normalise a single voxel."""
    augment_range: tuple[float, float] = (0.25, 1.5)
    """augment: each axis drawn from the sizes the network takes in [low, high] x final (the paper: 32..192 for 128)."""
    augment_final_share: float = 0.25
    """augment: share of the steps trained at the final patch instead of a drawn one (the paper: 0; ours: see
    docs/benchmarks.md section 5, where the paper's rule lost 5 Dice points at the training patch)."""
    augment_mode: str = "performance"
    """augment: batch rule of a drawn patch, "performance" (the final voxels per step, like PGPS Performance; ours)
    or "efficiency" (the batch size for every size, the paper)."""
    rpss_mode: str = "efficiency"
    """rpss: batch rule of the stages drawn ("efficiency" or "performance")."""


@dataclass
class CurriculumConfig:
    """How the patch size, the batch size and the training cases change over training."""

    schedule: Optional[str] = None
    """constant, pgps-efficiency, pgps-performance, rpss or augment; by default the network's own (the hypernetwork
    trains with augment, every other network with constant)."""
    options: ScheduleOptions = field(default_factory=ScheduleOptions)
    """The schedules' tuning knobs. A configuration may also write them flat in ``curriculum`` (``curriculum.growth``,
    the form before they were nested): :meth:`RunConfig.from_dict` reads both."""
    pdl: PDLConfig = field(default_factory=PDLConfig)


@dataclass
class TrainingConfig:
    """The optimisation. ``None`` values are chosen from the device."""

    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    time_budget: Optional[float] = None
    """Seconds the run may take (steps and validations; the data's one-time preparation aside). With a budget the
    epochs (and, if even one would not fit, the steps per epoch) are planned from measured step times; ``epochs``
    then caps them. From the device profile when ``None`` and ``epochs`` is not given either."""
    batch_size: int = 2
    optimizer: Optional[str] = None
    """"sgd" (Nesterov, as nnU-Net) or "adamw"; chosen from the device when ``None``."""
    learning_rate: Optional[float] = None
    """1e-2 for SGD, 1e-3 for AdamW when ``None``."""
    weight_decay: float = 3e-5
    momentum: float = 0.99
    poly_exponent: float = 0.9
    gradient_clip: float = 12.0
    seed: int = 0
    device: str = "auto"
    weight_averaging: Optional[str] = None
    """"ema" (an exponential moving average of the weights over the last part of the run is the model kept,
    validated and saved as the final checkpoint) or "none"; from the run's recipe when ``None``."""
    averaging_start: float = 0.5
    """"ema": share of the run's epochs after which the weights are averaged."""
    mixed_precision: bool = True
    """Train in lower precision where it is native: fp16 autocast with loss scaling on CUDA, bf16 autocast on a
    CPU with AVX512-BF16 or AMX (decided at run time; channels-last memory measured slower with it), fp32 elsewhere. Validation and
    segmentation stay in fp32 on the CPU."""
    validate_every: Optional[int] = None
    """Validate on the held-out cases every N epochs (and after the last); from the device when ``None``."""
    init_from: Optional[str] = None
    """A trained model (run folder, checkpoint or model package) whose weights the run starts from (``train
    --init-from``): its network, preprocessing and normalisation are taken, its labels and channels must be the
    data's. Not a resume: a fresh optimiser and schedule from epoch 0. Resolved to the checkpoint or package read."""


@dataclass
class PruningConfig:
    """PSP-Seg progressive pruning of a "prm" network's branches during training.

    The defaults follow the PSP-Seg reference code; each earlier choice of ours is the other value of its option.
    """

    enabled: bool = False
    prune_step: int = 2
    """Branches masked at a time: in every PRM ("per-prm" selection) or in all ("global")."""
    selection: str = "per-prm"
    """"per-prm" (the reference's): in every PRM, the combination of ``prune_step`` branches whose joint removal
    changes its output least; "global": the ``prune_step`` branches of the whole network that change their PRM's
    output least, each scored alone."""
    judge: str = "convergence"
    """When masks are judged and placed: "convergence" (the reference's) at the next convergence event (none of the
    total, feature-decoupling and foreground losses has set a new minimum since the last event for ``patience``
    epochs), rolled back if any of the three is worse; "next-epoch": judged at the next epoch start on the
    segmentation loss, placed after ``patience`` epochs without a new minimum of any loss."""
    rollback: str = "decrement"
    """After a rollback ``prune_step`` goes down by 1 and pruning stops at 0 ("decrement", the reference's) or halves,
    keeping at least 1 ("halve")."""
    patience: Optional[int] = 10
    """Epochs without a new loss minimum before a check (the reference: 10); ``None``: 10 per 1000 epochs (0 = every epoch)."""
    stop_fraction: float = 0.4
    """No masks placed from this share of the epochs on (a pending one is still judged)."""
    tolerance: float = 0.001
    """A prune is rolled back when a judged loss's minimum since it is >= its earlier minimum + this."""
    calibration_batches: int = 8
    """Batches whose PRM inputs are cached to score the branches (the paper: ~100 on a GPU)."""
    min_branches: int = 0
    """Branches every PRM keeps (the reference: 0, an empty PRM passes its input on)."""
    decoupling_weight: float = 0.1
    """Weight of the functional decoupling loss (cosine + foreground BCE); 0 turns it off."""
    retrain: bool = False
    """After pruning, train the final architecture again from fresh weights for the same epochs (the reference's
    retraining; ``prune --progressive --retrain``)."""


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    normalization: list[NormalizationConfig] = field(default_factory=list)
    """One per input channel; fitted on the dataset when empty."""
    model: ModelConfig = field(default_factory=ModelConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    labels: Optional[dict[int, str]] = None
    """Label value -> name, background (0) included; read from ``dataset.json``. The classes the network predicts:
    nnU-Net v2's ``ignore`` label is not among them (see ``ignore_label``)."""
    ignore_label: Optional[int] = None
    """The value of nnU-Net v2's ``ignore`` label in the training label maps (unannotated voxels: left out of the
    loss and the validation Dice, never predicted), or ``None``; read from ``dataset.json``."""
    channels: Optional[list[str]] = None
    """The input channels' names in the order the model takes them (e.g. ["FLAIR", "T1c"]); from ``dataset.json``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, numbers and strings (safe for YAML and ``torch.load(weights_only=True)``)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> "RunConfig":
        """Build a config from a (possibly partial) nested dict; unknown keys are an error.

        The schedule options may be written flat in ``curriculum`` (the form before ``curriculum.options``: a
        ``config.yaml`` or checkpoint written then); they mean the same.
        """
        return _build(cls, _nested_schedule_options(values, source), source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as YAML atomically."""
        write_text_atomically(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a YAML config (``yaml.safe_load``: no code in the file is run) and :meth:`validate` it.

        Raises:
            InputError: one line: the file is missing or not YAML (naming the line and column of the fault), a
                setting is unknown, of the wrong type or out of its range.
        """
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: configuration file not found.") from None
        except yaml.YAMLError as exc:
            raise InputError(_yaml_fault(path, exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable YAML configuration ({exc}).") from None
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise InputError(f"{path}: a configuration must be a YAML mapping of sections.")
        return cls.from_dict(values, source=str(path)).validate(source=str(path))

    def validate(self, source: str = "") -> "RunConfig":
        """Check that every number is in its range; automatic (``None``) values pass. Returns the config.

        Called when a configuration is read (:meth:`load`), by the command line once its flags are applied, and
        by :func:`napari_pgps.engine.resolve.resolve_config` before a run, so that a bad value is refused before
        any work, never met as a traceback mid-run.

        Args:
            source: where the values come from (a file), to name in the message.

        Raises:
            InputError: one line naming the option (its flag, where it has one), the value and the range.
        """
        data, model, training, pruning = self.data, self.model, self.training, self.pruning

        def check(flag: Optional[str], setting: str, value: Any, rule: str, holds) -> None:
            if value is None or holds(value):
                return
            name = f"{flag} ({setting})" if flag else setting
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            raise InputError(f"{source + ': ' if source else ''}{name} is {shown}; it must be {rule}.")

        check("--learning-rate", "training.learning_rate", training.learning_rate,
              "a number of 0 or more (0 leaves the weights as they start)", lambda v: 0 <= v < float("inf"))
        check("--epochs", "training.epochs", training.epochs, "at least 1", lambda v: v >= 1)
        check("--iterations-per-epoch", "training.iterations_per_epoch", training.iterations_per_epoch, "at least 1",
              lambda v: v >= 1)
        check("--batch-size", "training.batch_size", training.batch_size, "at least 1", lambda v: v >= 1)
        check("--time-budget", "training.time_budget", training.time_budget, "longer than zero", lambda v: v > 0)
        check(None, "training.validate_every", training.validate_every, "at least 1", lambda v: v >= 1)
        check(None, "training.weight_decay", training.weight_decay, "0 or more", lambda v: v >= 0)
        check(None, "training.momentum", training.momentum, "in [0, 1)", lambda v: 0 <= v < 1)
        check(None, "training.poly_exponent", training.poly_exponent, "0 or more", lambda v: v >= 0)
        check(None, "training.gradient_clip", training.gradient_clip, "greater than 0", lambda v: v > 0)
        check("--max-cases", "data.max_cases", data.max_cases, "at least 1", lambda v: v >= 1)
        check("--folds", "data.folds", data.folds, "at least 2", lambda v: v >= 2)
        check("--fold", "data.fold", data.fold, f"a fold of the {data.folds}-fold cross-validation, 0 to {data.folds - 1}",
              lambda v: 0 <= v < data.folds)
        check(None, "data.validation_fraction", data.validation_fraction, "in [0, 1)", lambda v: 0 <= v < 1)
        check("--test-fraction", "data.test_fraction", data.test_fraction, "in [0, 1)", lambda v: 0 <= v < 1)
        check(None, "data.augmentation_ramp", data.augmentation_ramp, "two shares 0 <= start <= end <= 1",
              lambda v: 0 <= v[0] <= v[1] <= 1)
        check(None, "training.weight_averaging", training.weight_averaging, "'ema' or 'none'",
              lambda v: v in ("ema", "none"))
        check(None, "training.averaging_start", training.averaging_start, "in [0, 1)", lambda v: 0 <= v < 1)
        check(None, "data.foreground_oversampling", data.foreground_oversampling, "a probability in [0, 1]",
              lambda v: 0 <= v <= 1)
        check(None, "data.loader_workers", data.loader_workers, "0 or more", lambda v: v >= 0)
        check("--patch-size", "model.patch_size", model.patch_size, "three sizes of at least 1 voxel",
              lambda v: len(v) == 3 and min(v) >= 1)
        check("--spacing", "model.spacing", model.spacing, "three spacings greater than 0 mm",
              lambda v: len(v) == 3 and min(v) > 0)
        check(None, "model.base_channels", model.base_channels, "at least 1", lambda v: v >= 1)
        check(None, "model.max_channels", model.max_channels, "at least 1", lambda v: v >= 1)
        check(None, "model.hypernet_hidden", model.hypernet_hidden, "at least 1", lambda v: v >= 1)
        check(None, "pruning.prune_step", pruning.prune_step, "at least 1", lambda v: v >= 1)
        check(None, "pruning.stop_fraction", pruning.stop_fraction, "in [0, 1]", lambda v: 0 <= v <= 1)
        check(None, "pruning.min_branches", pruning.min_branches, "0 or more", lambda v: v >= 0)
        check(None, "pruning.patience", pruning.patience, "0 or more", lambda v: v >= 0)
        check(None, "pruning.calibration_batches", pruning.calibration_batches, "at least 1", lambda v: v >= 1)
        return self


def _yaml_fault(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a file that is not YAML: where (line, column) and what the parser met."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(problem.replace("\t", "\\t").split())
    return (f"{path}{where}: not a readable YAML configuration ({problem}); correct the file there (indent with "
            "spaces, put ': ' after each name, close quotes and brackets).")


PRUNING_RULES = {
    "reference": {"pruning": {"selection": "per-prm", "judge": "convergence", "rollback": "decrement", "patience": 10,
                              "min_branches": 0},
                  "model": {"prm_downsampling": "residual", "prm_skips": "add"}},
    "short-run": {"pruning": {"selection": "global", "judge": "next-epoch", "rollback": "halve", "patience": None,
                              "min_branches": 1},
                  "model": {"prm_downsampling": "strided-conv", "prm_skips": "concat"}},
}
"""PSP-Seg's options as a set: "reference" (the PSP-Seg code's behaviour, the defaults; made for nnU-Net's 1,000
epochs) and "short-run" (our earlier choices, which prune within tens of epochs; docs/benchmarks.md section 6)."""


def use_pruning_rule(config: RunConfig, rule: str) -> None:
    """Set the ``pruning`` and ``model`` options of a :data:`PRUNING_RULES` entry in ``config``.

    Raises:
        InputError: an unknown rule.
    """
    if rule not in PRUNING_RULES:
        raise InputError(f"pruning rule '{rule}' is not one of {', '.join(PRUNING_RULES)}.")
    for section, values in PRUNING_RULES[rule].items():
        for name, value in values.items():
            setattr(getattr(config, section), name, value)


PDL_METHOD = "pdl"
"""The name of PDL's training-loop plug-in (:class:`napari_pgps.curriculum.pdl.PDLCurriculum`): its key in
checkpoints."""
PSP_SEG_METHOD = "psp-seg"
"""The name of PSP-Seg's training-loop plug-in (:class:`napari_pgps.pruning.psp_seg.PSPSeg`): its key in checkpoints."""


def training_methods(config: RunConfig) -> list[str]:
    """The training-loop plug-ins (``napari_pgps.plugins.TrainingPlugin.name``) this configuration asks for."""
    asked = {PDL_METHOD: config.curriculum.pdl.enabled, PSP_SEG_METHOD: config.pruning.enabled}
    return [name for name, on in asked.items() if on]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _nested_schedule_options(values: Any, where: str) -> Any:
    """``values`` with the schedule options written flat in its ``curriculum`` section moved into
    ``curriculum.options`` (anything else unchanged: :func:`_build` judges it).

    Raises:
        InputError: an option given both flat and in ``curriculum.options``.
    """
    curriculum = values.get("curriculum") if isinstance(values, dict) else None
    if not isinstance(curriculum, dict):
        return values
    names = {f.name for f in dataclasses.fields(ScheduleOptions)}
    flat = {key: value for key, value in curriculum.items() if key in names}
    nested = curriculum.get("options") or {}
    if not flat or not isinstance(nested, dict):
        return values
    twice = sorted(set(flat) & set(nested))
    if twice:
        raise InputError(f"{where}: curriculum: {', '.join(twice)} given twice, in curriculum and in "
                         "curriculum.options; keep one.")
    rest = {key: value for key, value in curriculum.items() if key not in names}
    return {**values, "curriculum": {**rest, "options": {**flat, **nested}}}


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a mapping for '{cls.__name__}', got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise InputError(
            f"{where}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(names))}."
        )
    kwargs = {key: _convert(hints[key], value, f"{where}: {key}") for key, value in values.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        return _convert(hint, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    try:
        if origin is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise InputError(f"{where}: expected {len(args)} values, got {value!r}.")
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise InputError(f"{where}: expected a list, got {value!r}.")
            return [_convert(args[0], v, where) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise InputError(f"{where}: expected a mapping, got {value!r}.")
            return {_convert(args[0], k, where): _convert(args[1], v, where) for k, v in value.items()}
        if hint is bool:
            if not isinstance(value, bool):
                raise InputError(f"{where}: expected true or false, got {value!r}.")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, (int, str)) or int(value) != float(value):
                raise InputError(f"{where}: expected a whole number, got {value!r}.")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise InputError(f"{where}: expected a number, got {value!r}.")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise InputError(f"{where}: expected text, got {value!r}.")
            return value
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{where}: {value!r} is not valid ({exc}).") from None
    return value

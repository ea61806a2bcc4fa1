"""The quick demo: a PGPS schedule on generated phantoms, in napari or headless."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ._sample_data import PHANTOM_SPACING, make_phantom, write_phantom_dataset
from .config import RunConfig

DEMO_MINUTES = 2

WORKING_DICE = 0.5
"""The unseen phantom's mean Dice (lesion and vessel) from which the demo calls its model one that segments: half its
voxels right. A model trained one step under load scored 0.006 (issue 33), one of 40 steps 0.31 (lesion 0.51,
vessel 0.10; see ``engine.budget.MIN_STEPS``)."""


def demo_config(data: Path | None = None, device: str = "auto") -> RunConfig:
    """A PGPS Performance schedule planned to two minutes of training (on any machine): it shows the patch
    growing and gives a usable phantom segmentation."""
    config = RunConfig()
    config.data.path = str(data) if data else None
    config.model.patch_size = (16, 64, 64)
    config.model.spacing = PHANTOM_SPACING
    config.curriculum.schedule = "pgps-performance"
    config.training.time_budget = DEMO_MINUTES * 60.0  # the planner sets the epochs
    config.training.iterations_per_epoch = 20
    config.training.validate_every = 3
    config.training.device = device
    return config


def open_demo_viewer(device: str = "auto"):
    """napari with the phantom, the Curriculum, Train, Segment and Review widgets docked (tabbed) and the demo
    schedule set.

    Returns:
        (viewer, (curriculum widget, train widget, segment widget, review widget), their dock widgets)
    """
    import napari

    from ._sample_data import phantom_layers
    from ._widgets.curriculum_widget import CurriculumWidget
    from ._widgets.review_widget import ReviewWidget
    from ._widgets.segment_widget import SegmentWidget
    from ._widgets.state import state_for
    from ._widgets.train_widget import TrainWidget

    viewer = napari.Viewer(title="napari-pgps demo")
    for data, meta, kind in phantom_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    state_for(viewer).config = demo_config(device=device)  # the widgets read it as they are built
    curriculum, trainer, segmenter, reviewer = (CurriculumWidget(viewer), TrainWidget(viewer), SegmentWidget(viewer),
                                                ReviewWidget(viewer))
    trainer.device.setCurrentText(device)
    trainer.time_budget.setValue(DEMO_MINUTES)
    docks = (
        viewer.window.add_dock_widget(curriculum, name="Curriculum", area="right"),
        viewer.window.add_dock_widget(trainer, name="Train", area="right", tabify=True),
        viewer.window.add_dock_widget(segmenter, name="Segment", area="right", tabify=True),
        viewer.window.add_dock_widget(reviewer, name="Review", area="right", tabify=True),
    )
    docks[0].raise_()
    return viewer, (curriculum, trainer, segmenter, reviewer), docks


def run_headless_demo(out: Path, device: str = "auto") -> dict:
    """Generate phantoms, train with the demo schedule, write figures, segment an unseen phantom and say plainly
    whether the model segments it (:func:`demo_verdict`).

    Returns:
        {"lesion": Dice, "vessel": Dice, "steps": steps trained, "working": whether the model segments}
    """
    from .data.geometry import affine_from_spacing
    from .data.volume import Volume, write_volume
    from .engine import TrainingProgress, describe_event, load_model, segment_volume
    from .engine.metrics import dice_per_label
    from .tasks.training import train

    out.mkdir(parents=True, exist_ok=True)
    data = write_phantom_dataset(out / "data", cases=12)
    print(f"wrote 12 phantom cases to {data}", flush=True)
    run_dir = out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = TrainingProgress()
    for event in train(demo_config(data, device), run_dir):
        line = describe_event(event, progress.update(event))
        if line is not None:
            print(line, flush=True)
    figures = write_demo_figures(progress, out)
    image, truth = make_phantom(seed=1000)
    affine = affine_from_spacing(PHANTOM_SPACING)
    write_volume(Volume(image, affine), out / "unseen_phantom.nii.gz")
    model = load_model(run_dir, device)
    result = segment_volume(model, Volume(image, affine))
    write_volume(result.labels, out / "unseen_phantom_segmentation.nii.gz")
    dice = dice_per_label(result.labels.array, truth, 3)
    summary = {"lesion": float(dice[0]), "vessel": float(dice[1]), "steps": progress.steps_done}
    print(f"segmented an unseen phantom: Dice lesion {summary['lesion']:.3f}, vessel {summary['vessel']:.3f}")
    for name, volume in result.volumes.items():
        true_ml = float(np.sum(truth == (1 if name == "lesion" else 2)) * np.prod(PHANTOM_SPACING) / 1000)
        print(f"  {name}: {volume['ml']:.2f} mL segmented, {true_ml:.2f} mL true")
    summary["working"], verdict = demo_verdict(float(np.mean(dice)), progress, data, _machine_load())
    print(verdict)
    print(f"results in {out}: {', '.join(p.name for p in figures)}, unseen_phantom_segmentation.nii.gz, run {run_dir.name}")
    return summary


def demo_verdict(mean_dice: float, progress, data: Path, load: Optional[tuple[float, int]] = None) -> tuple[bool, str]:
    """Whether the demo's model segments (mean Dice on the unseen phantom of at least ``WORKING_DICE``, after at
    least ``MIN_STEPS`` steps), and a plain sentence saying so; when it does not, why (the steps it trained, the
    seconds a step took, whether the machine was busy) and what to do.

    Args:
        mean_dice: the unseen phantom's Dice, lesion and vessel averaged.
        progress: the finished run's :class:`napari_pgps.engine.TrainingProgress`.
        data: the demo's phantom dataset (for the command to train longer).
        load: (the machine's load average over the last minute, its CPU cores), if known.
    """
    from .engine.budget import MIN_STEPS

    steps = progress.steps_done
    if mean_dice >= WORKING_DICE and steps >= MIN_STEPS:
        return True, (f"the model segments the unseen phantom (mean Dice {mean_dice:.2f}; from {WORKING_DICE} a model "
                      f"segments) after {steps} steps")
    if mean_dice < WORKING_DICE:
        verdict = (f"the model did NOT learn to segment in the {DEMO_MINUTES} minutes it had (mean Dice "
                   f"{mean_dice:.2f} on the unseen phantom, under {WORKING_DICE})")
    else:
        verdict = f"the model trained too few steps to be relied on (mean Dice {mean_dice:.2f} on the unseen phantom)"
    per_step = progress.training_seconds / steps if steps else float("nan")
    reasons = [f"it trained {steps} step{'s' * (steps != 1)} at {per_step:.2f} s a step"
               + (f", fewer than the {MIN_STEPS} a model needs" if steps < MIN_STEPS else "")]
    if load is not None and load[0] > load[1]:
        reasons.append(f"the machine was busy (load {load[0]:.1f} on {load[1]} CPU cores: other programs used them)")
    return False, (f"{verdict}: {'; '.join(reasons)}. Run the demo again when the machine is not busy, or train "
                   f"longer on its phantoms: napari-pgps train --data {data} --out RUN --time-budget 10m")


def _machine_load() -> Optional[tuple[float, int]]:
    """(load average over the last minute, CPU cores), or ``None`` where the system does not say (Windows)."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):
        return None


def write_demo_figures(progress, out: Path) -> list[Path]:
    """demo_training.png (loss, patch and batch over the steps) and demo_class_balance.png (per stage),
    from a finished run's :class:`napari_pgps.engine.TrainingProgress`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, stages, run = progress.steps, progress.stages_finished, progress.started
    fig, (loss_ax, size_ax) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    loss_ax.plot([s.step for s in steps], [s.loss for s in steps], lw=0.8)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"{run.schedule}: the patch grows, the batch shrinks")
    for axis, name in enumerate("ZYX"):
        size_ax.step([s.step for s in steps], [s.patch[axis] for s in steps], where="post", label=f"patch {name}")
    twin = size_ax.twinx()
    twin.step([s.step for s in steps], [s.batch for s in steps], where="post", color="black", ls="--")
    twin.set_ylabel("batch (dashed)")
    size_ax.set_ylabel("patch (voxels)")
    size_ax.set_xlabel("step")
    size_ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "demo_training.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(1, len(stages) + 1)
    for k, name in enumerate(run.label_names[1:], start=1):
        line = ax.plot(xs, [s.class_fractions[k] for s in stages], "o-", label=f"{name} in patches")
        ax.axhline(run.volume_class_fractions[k], color=line[0].get_color(), ls=":", label=f"{name} in volumes")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(["x".join(map(str, s.patch)) for s in stages], rotation=45, fontsize=7)
    ax.set_ylabel("voxel fraction")
    ax.set_title("class balance per stage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "demo_class_balance.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths

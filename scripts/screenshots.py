"""Regenerate the user guide's screenshots from the real widgets (docs/images/).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py [OUT_DIR]
        [--only SHOT ...] [--model RUN_DIR] [--epochs N] [--slow FACTOR]

Opens the demo viewer, shows the Curriculum widget, trains the demo schedule on
the CPU (pictures after 45 steps), lets it finish (about two minutes on 2
cores), segments the phantom, compares the result with the phantom's labels in
the Review widget (the comparison table and the disagreement layer), segments
it again with the uncertainty layer, segments two open phantoms with "Segment
all open images",
then exports the model as a package, starts a new run from it and stops that
run after its first epoch (the Train widget offering Resume run and Start from
model). It saves a picture of each widget and of the whole window at each point.

The shots (``--only`` takes any of them):

- ``curriculum``: curriculum_widget.png, window_curriculum.png
- ``training``: train_widget.png, window_training.png
- ``segment``: segment_widget.png, window_segmented.png
- ``review``: review_widget.png, window_review.png
- ``uncertainty``: window_uncertainty.png
- ``batch``: segment_batch.png
- ``resume``: train_resume.png
- ``dicom``: dicom_series_seg.png (no training: the phantom written as an oblique DICOM series and its labels as a
  DICOM SEG, both opened with the napari-pgps reader)

The shots after ``training`` need a trained model: the demo run, or ``--model
RUN_DIR`` (a finished run of the demo viewer, e.g. from an earlier run of this
script), which skips the training. On a machine busy with other work the demo's
time budget may be planned to a single step: ``--epochs 12`` trains the 240
steps the budget gives on an idle 2-core machine instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_pgps.demo import open_demo_viewer

SHOTS = ("curriculum", "training", "segment", "review", "uncertainty", "batch", "resume", "dicom")


TIMEOUT_SCALE = 1.0
"""Multiplies every wait's limit (``--slow``: a machine busy with other work)."""


def wait_until(condition, timeout: float, widget=None) -> None:
    """Process Qt events until ``condition()`` holds; raise after ``timeout`` seconds (times
    :data:`TIMEOUT_SCALE`), saying ``widget``'s status line."""
    end = time.time() + timeout * TIMEOUT_SCALE
    while not condition() and time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    if not condition():
        said = f" (status: {widget.status.text()!r})" if widget is not None else ""
        raise TimeoutError(f"the widgets did not reach the expected state in time{said}")


def settle(seconds: float = 0.3) -> None:
    """Let Qt draw what was just changed."""
    QApplication.processEvents()
    time.sleep(seconds)
    QApplication.processEvents()


def main(out: Path, shots: tuple[str, ...] = SHOTS, model: Optional[Path] = None, epochs: Optional[int] = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if "dicom" in shots:
        dicom_series_and_seg(out)
        if shots == ("dicom",):
            return
    viewer, (curriculum, trainer, segmenter, reviewer), docks = open_demo_viewer(device="cpu")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window.show()
    QApplication.processEvents()
    docks[0].raise_()  # the Curriculum tab in front (raised before the window was shown, the last tab would be)
    viewer.dims.ndisplay = 2
    labels = viewer.layers["phantom labels"]
    busiest = int((labels.data > 0).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, busiest * labels.scale[0])
    wait_until(lambda: curriculum.preview.redraws > 0, 10)
    settle(0.5)
    if "curriculum" in shots:
        curriculum.grab().save(str(out / "curriculum_widget.png"))
        viewer.screenshot(str(out / "window_curriculum.png"), canvas_only=False)

    runs = Path(tempfile.mkdtemp(prefix="napari-pgps-screens-"))
    trainer.run_root.setText(str(runs))
    if epochs is not None:  # these epochs, not the demo's time budget
        curriculum.epochs.setValue(epochs)
        trainer.time_budget.setValue(0)
    if model is None and set(shots) - {"curriculum"}:
        docks[1].raise_()
        trainer.start_training()
        if "training" in shots:
            wait_until(lambda: len(trainer.history.steps) >= 45, 600, trainer)
            trainer.curves.redraw_now()
            trainer.balance.redraw_now()
            settle()
            trainer.grab().save(str(out / "train_widget.png"))
            viewer.screenshot(str(out / "window_training.png"), canvas_only=False)
        wait_until(lambda: trainer.worker is None, 900, trainer)
        model = trainer.run_dir
        print(f"trained {model}", flush=True)
    elif model is not None:
        segmenter.offer_model(model)

    if set(shots) & {"segment", "review", "uncertainty", "batch"}:
        docks[2].raise_()
        segmenter.image.layer.setCurrentText("phantom")
        # the segment shot shows no uncertainty layer; without it, one segmentation serves the uncertainty shot too
        segmenter.uncertainty.setChecked("uncertainty" in shots and "segment" not in shots)
        segmenter.segment()
        wait_until(lambda: segmenter.result_layer is not None and segmenter.worker is None, 300, segmenter)
        show_only(viewer, "phantom", segmenter.result_layer.name)
        viewer.reset_view()
        settle()
        if "segment" in shots:
            segmenter.grab().save(str(out / "segment_widget.png"))
            viewer.screenshot(str(out / "window_segmented.png"), canvas_only=False)
    if "review" in shots:
        docks[3].raise_()
        review(viewer, segmenter, reviewer, out)
    if "uncertainty" in shots:
        docks[2].raise_()
        uncertainty(viewer, segmenter, reviewer, out)
    if "batch" in shots:
        docks[2].raise_()
        batch(viewer, segmenter, out)
    if "resume" in shots:
        resume(trainer, docks[1], model, runs, out)
    viewer.close()
    print(f"screenshots written to {out}")


def show_only(viewer, *names: str) -> None:
    """Hide every layer but ``names``."""
    for layer in viewer.layers:
        layer.visible = layer.name in names


def review(viewer, segmenter, reviewer, out: Path) -> None:
    """The phantom's segmentation compared with its labels in the Review widget: the table's Dice, HD95 and volume
    difference, and the disagreement layer (red false positive, blue false negative) over the image."""
    reviewer.compare_with.setCurrentText("phantom labels")
    reviewer.compare_result.setCurrentText(segmenter.result_layer.name)
    reviewer.compare()
    wait_until(lambda: reviewer.review_worker is None and reviewer.disagreement_layer is not None, 120, reviewer)
    show_only(viewer, "phantom", reviewer.disagreement_layer.name)
    viewer.layers.selection.active = reviewer.disagreement_layer
    settle()
    reviewer.grab().save(str(out / "review_widget.png"))
    viewer.screenshot(str(out / "window_review.png"), canvas_only=False)


def uncertainty(viewer, segmenter, reviewer, out: Path) -> None:
    """The phantom's uncertainty (entropy) layer over the image (segmented again with it if the first segmentation
    made none)."""
    if "phantom uncertainty" not in viewer.layers:
        reviewer.compare_with.setCurrentText("(none)")  # no review of this segmentation
        segmenter.uncertainty.setChecked(True)
        segmenter.segment()
        wait_until(lambda: segmenter.worker is None, 300, segmenter)
    show_only(viewer, "phantom", "phantom uncertainty")
    settle()
    viewer.screenshot(str(out / "window_uncertainty.png"), canvas_only=False)
    segmenter.uncertainty.setChecked(False)


def batch(viewer, segmenter, out: Path) -> None:
    """A second phantom opened beside the first, and both segmented with "Segment all open images"."""
    from napari_pgps._sample_data import make_phantom

    first = viewer.layers["phantom"]
    viewer.add_image(make_phantom(7)[0], name="phantom 2", scale=first.scale, metadata=dict(first.metadata))
    segmenter.segment_all()
    wait_until(lambda: segmenter.worker is None, 600, segmenter)
    settle()
    segmenter.grab().save(str(out / "segment_batch.png"))


def resume(trainer, dock, model: Path, runs: Path, out: Path) -> None:
    """The trained model exported as a package; a new run started from it (Start from model) and stopped after its
    first epoch, so that the Train widget offers it under Stopped run with Resume run."""
    from napari_pgps.tasks.export import export_model

    package = export_model(model, runs / "phantom-model.zip")
    dock.raise_()
    trainer.init_from.setText(str(package))
    trainer.time_budget.setValue(0)  # the schedule's epochs: a time budget on a busy machine may plan only one
    trainer.start_training()
    wait_until(lambda: (trainer.run_dir / "checkpoint_last.pt").is_file(), 600, trainer)
    trainer.stop_training()
    wait_until(lambda: trainer.worker is None, 300, trainer)
    trainer.curves.redraw_now()
    trainer.balance.redraw_now()
    settle()
    trainer.grab().save(str(out / "train_resume.png"))


def dicom_series_and_seg(out: Path) -> None:
    """A phantom written as an oblique DICOM series (by code, into a temporary folder) and its labels as a DICOM
    SEG beside it; the series folder and the SEG opened with the napari-pgps reader in a viewer of their own, the
    SEG's labels over the series, at a slice showing both labels."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dicom_series import oblique_cosines, write_series

    from napari_pgps._sample_data import PHANTOM_LABELS, PHANTOM_SPACING, make_phantom
    from napari_pgps.data.dicom_seg import write_dicom_seg

    folder = Path(tempfile.mkdtemp(prefix="napari-pgps-dicom-"))
    image, labels = make_phantom(10)  # a phantom with a slice through both the lesion and the vessel
    row, column = oblique_cosines()
    files = write_series(folder / "phantom-series", image, row=row, column=column, spacing=PHANTOM_SPACING,
                         description="phantom (oblique)")
    seg = write_dicom_seg(labels, files, PHANTOM_LABELS, folder / "phantom-seg.dcm")
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window.show()
    viewer.open(str(folder / "phantom-series"), plugin="napari-pgps")
    segmentation = viewer.open(str(seg), plugin="napari-pgps")[0]
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    data = segmentation.data
    # the slice showing the most labels (lesion and vessel together where a slice has both), then the most voxels
    busiest = max(range(len(data)), key=lambda z: (len(np.unique(data[z])), int((data[z] > 0).sum())))
    # napari slices an oblique layer by the slider's axis alone (the out-of-slice rotation left out): its data slice
    # is that axis' row of the inverse affine applied to the slider's world value
    to_data = np.linalg.inv(segmentation.affine.affine_matrix)
    viewer.dims.set_point(0, (busiest - to_data[0, 3]) / to_data[0, 0])
    viewer.layers.selection.active = segmentation
    settle(0.5)
    viewer.screenshot(str(out / "dicom_series_seg.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path("docs/images"), help="folder (default docs/images)")
    parser.add_argument("--only", nargs="+", choices=SHOTS, default=SHOTS, metavar="SHOT",
                        help="take only these shots: " + ", ".join(SHOTS))
    parser.add_argument("--model", type=Path, metavar="RUN_DIR",
                        help="segment with this finished run instead of training one (not with the training shot)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="train N epochs instead of planning the demo's time budget (a busy machine)")
    parser.add_argument("--slow", type=float, default=1.0, metavar="FACTOR",
                        help="wait FACTOR times longer for each step (a machine busy with other work)")
    args = parser.parse_args()
    TIMEOUT_SCALE = args.slow
    if args.model is not None and "training" in args.only:
        parser.error("--model skips the training: leave out the training shot (--only ...)")
    main(args.out, tuple(args.only), args.model, args.epochs)
    napari.Viewer.close_all()

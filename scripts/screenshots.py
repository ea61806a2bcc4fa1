"""Regenerate the user guide's screenshots from the real widgets (docs/images/).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py [OUT_DIR]

Opens the demo viewer, shows the Curriculum widget, trains the demo schedule on
the CPU (pictures after 45 steps), lets it finish (about two minutes on 2
cores), segments the phantom, and saves a picture of each widget and of the
whole window at each point.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_pgps.demo import open_demo_viewer


def wait_until(condition, timeout: float) -> None:
    end = time.time() + timeout
    while not condition() and time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    if not condition():
        raise TimeoutError("the widgets did not reach the expected state in time")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    viewer, (curriculum, trainer, segmenter), docks = open_demo_viewer(device="cpu")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window.show()
    viewer.dims.ndisplay = 2
    labels = viewer.layers["phantom labels"]
    busiest = int((labels.data > 0).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, busiest * labels.scale[0])
    wait_until(lambda: curriculum.preview.redraws > 0, 10)
    time.sleep(0.5)
    QApplication.processEvents()
    curriculum.grab().save(str(out / "curriculum_widget.png"))
    viewer.screenshot(str(out / "window_curriculum.png"), canvas_only=False)

    docks[1].raise_()
    trainer.run_root.setText(tempfile.mkdtemp(prefix="napari-pgps-screens-"))
    trainer.start_training()
    wait_until(lambda: len(trainer.steps) >= 45, 600)
    trainer.curves.redraw_now()
    trainer.balance.redraw_now()
    QApplication.processEvents()
    time.sleep(0.3)
    QApplication.processEvents()
    trainer.grab().save(str(out / "train_widget.png"))
    viewer.screenshot(str(out / "window_training.png"), canvas_only=False)
    wait_until(lambda: trainer.worker is None, 900)

    docks[2].raise_()
    segmenter.image.setCurrentText("phantom")
    segmenter.uncertainty.setChecked(False)
    segmenter.segment()
    wait_until(lambda: segmenter.result_layer is not None and segmenter.worker is None, 300)
    viewer.layers["training patches"].visible = False
    viewer.layers["phantom labels"].visible = False
    viewer.reset_view()
    QApplication.processEvents()
    time.sleep(0.3)
    QApplication.processEvents()
    segmenter.grab().save(str(out / "segment_widget.png"))
    viewer.screenshot(str(out / "window_segmented.png"), canvas_only=False)
    viewer.close()
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images"))
    napari.Viewer.close_all()

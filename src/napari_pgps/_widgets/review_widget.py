"""The Review widget: compare a segmentation with a reference labels layer, label by label and voxel by voxel."""

from __future__ import annotations

from typing import Optional

import numpy as np
from magicgui.widgets import ComboBox, PushButton
from qtpy.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from .forms import form
from .jobs import Job
from .layers import find_layer, label_names_of, nifti_affine, placement, source_grid
from .state import DERIVED, state_for

NO_REFERENCE = "(none)"
REVIEW_COLUMNS = ["label", "voxels", "volume (mL)", "Dice", "HD95 (mm)", "volume difference (mL)"]


class ReviewWidget(QWidget):
    """A result and a reference labels layer; per label Dice, HD95 and volume difference in a table, and a
    disagreement layer (1 false positive, 2 false negative) placed as the result.

    The scores are the engine's (:func:`napari_pgps.engine.review.review_labels`, those of ``napari-pgps
    evaluate``). The Segment widget's newest result is chosen as it is made, and one segmented alone is reviewed at
    once when a reference is chosen.
    """

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.review = None
        """The last comparison (:class:`~napari_pgps.engine.review.Review`)."""
        self.disagreement_layer = None

        result = ComboBox(label="Result layer", choices=self._labels_layers,
                          tooltip="the segmentation to compare with the reference")
        reference = ComboBox(label="Compare with", choices=lambda _: [NO_REFERENCE, *self._labels_layers()],
                             tooltip="a labels layer to review the result against (same shape and placement): per "
                                     "label Dice, HD95 and volume difference, and a disagreement layer")
        compare = PushButton(text="Compare")
        self.form = form(result, reference, compare)
        self.compare_result, self.compare_with, self.compare_button = result.native, reference.native, compare.native
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(REVIEW_COLUMNS))
        self.table.setHorizontalHeaderLabels(REVIEW_COLUMNS)
        layout = QVBoxLayout(self)
        for widget in (self.form.native, self.status, self.table):
            layout.addWidget(widget)

        self.job = Job("Comparison", self.status, buttons=[self.compare_button], failed_prefix="comparison ")
        compare.clicked.connect(self.compare)
        napari_viewer.layers.events.inserted.connect(self.form.reset_choices)
        napari_viewer.layers.events.removed.connect(self.form.reset_choices)
        state_for(napari_viewer).segmented.connect(self.follow)

    @property
    def review_worker(self):
        """napari's worker while a comparison is under way, ``None`` when idle."""
        return self.job.worker

    def _labels_layers(self, *_) -> list[str]:
        """The open Labels layers, not the disagreement layers made here."""
        from napari.layers import Labels

        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, Labels) and not (layer.metadata or {}).get(DERIVED)]

    def reference_layer(self):
        """The labels layer chosen under "Compare with", or ``None``."""
        name = self.compare_with.currentText()
        return None if name in ("", NO_REFERENCE) else find_layer(self.viewer, name)

    def follow(self, layer, alone: bool) -> None:
        """Choose the Segment widget's newest result ``layer``; compare it at once with the reference if there is
        one and it was segmented ``alone`` (each result of "Segment all open images" is compared when asked)."""
        self.compare_result.setCurrentText(layer.name)
        reference = self.reference_layer()
        if alone and reference is not None:
            self.compare_layers(layer, reference)

    def compare(self) -> None:
        """Compare the chosen result layer with the reference chosen under "Compare with"."""
        from napari.utils.notifications import show_error

        result, reference = find_layer(self.viewer, self.compare_result.currentText()), self.reference_layer()
        if result is None or reference is None:
            show_error("choose a result layer and a reference labels layer under 'Compare with'.")
            return
        self.compare_layers(result, reference)

    def compare_layers(self, result_layer, reference_layer) -> None:
        """Per-label Dice, HD95 and volume difference of ``result_layer`` against ``reference_layer`` into the
        table, and a disagreement layer placed as the result (background thread). Layers that differ in shape or
        placement are refused with a notification; neither layer is changed."""
        from napari.utils.notifications import show_error

        from ..data.geometry import spacing_of
        from ..engine.review import review_labels
        from .review import placement_difference

        problem = placement_difference(result_layer, reference_layer)
        if problem is None and result_layer is reference_layer:
            problem = f"'{result_layer.name}' is the reference itself; choose another layer to compare."
        if problem is None and self.job.running:
            problem = "a comparison is under way; wait for it to finish."
        if problem is None:
            for layer in (result_layer, reference_layer):
                if not np.issubdtype(np.asarray(layer.data).dtype, np.integer):
                    problem = f"'{layer.name}' holds {np.asarray(layer.data).dtype} values; labels are whole numbers."
        if problem is not None:
            show_error(problem)
            self.status.setText(problem)
            return
        result = np.array(result_layer.data, copy=True)  # copies: the layers are read, never changed
        reference = np.array(reference_layer.data, copy=True)
        labels = label_names_of(reference_layer) | label_names_of(result_layer)
        self.status.setText(f"comparing '{result_layer.name}' with '{reference_layer.name}'...")
        self.job.start(review_labels, result, reference, spacing_of(nifti_affine(result_layer)), labels,
                       returned=lambda review: self._show_review(result_layer, reference_layer, review))

    def _show_review(self, result_layer, reference_layer, review) -> None:
        import pandas as pd
        from napari.utils.colormaps import DirectLabelColormap

        from ..engine.review import DISAGREEMENT_NAMES
        from .review import DISAGREEMENT_COLORS

        self.review = review
        self.table.setRowCount(0)

        def number(value: float, digits: int) -> str:
            return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"

        for row, label in enumerate(review.labels):
            self.table.insertRow(row)
            texts = (label.name, f"{label.voxels}", f"{label.ml:.3f}", number(label.dice, 3), number(label.hd95, 2),
                     f"{label.ml_difference:+.3f}")
            for column, text in enumerate(texts):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        source = (result_layer.metadata or {}).get("source") or result_layer.name
        name = f"{source} disagreement"
        old = find_layer(self.viewer, name)
        if old is not None and (old.metadata or {}).get(DERIVED) == "disagreement":
            self.viewer.layers.remove(old)
        values = sorted(DISAGREEMENT_NAMES)
        features = pd.DataFrame({"index": values, "name": [DISAGREEMENT_NAMES[v] for v in values]})
        self.disagreement_layer = self.viewer.add_labels(
            review.disagreement, name=name, features=features, opacity=0.7,
            colormap=DirectLabelColormap(color_dict=DISAGREEMENT_COLORS),
            metadata={DERIVED: "disagreement", "source": source, "result": result_layer.name,
                      "reference": reference_layer.name, "label_names": DISAGREEMENT_NAMES,
                      **source_grid(result_layer)},
            **placement(result_layer),
        )
        self.status.setText(
            f"'{result_layer.name}' against '{reference_layer.name}' (spacing "
            + " x ".join(f"{s:g}" for s in review.spacing)
            + f" mm): {review.false_positives} false-positive and {review.false_negatives} false-negative voxels in "
            f"'{self.disagreement_layer.name}'"
        )

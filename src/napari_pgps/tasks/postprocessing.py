"""Choosing a model's post-processing on its validation predictions, and keeping it with the model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ..engine import SegmentationModel, segment_volume
from ..engine.postprocessing import Postprocessing, choose_postprocessing
from ..errors import InputError
from .evaluation import labelled_cases


def choose_for_models(
    models: Sequence[SegmentationModel],
    data: str | Path,
    *,
    progress: Optional[Callable[[str], None]] = None,
) -> tuple[Postprocessing, dict]:
    """Decide the post-processing on the validation cases of the models (one, or the folds of a cross-validation,
    pooled) and write it into each model's run folder (``postprocessing.json``).

    Returns:
        (the choice, the evidence: mean Dice per label before and after each step tried).
    """
    pairs, ignore_label = [], None
    for model in models:
        cases = labelled_cases(model, data, "validation")
        ignore_label = cases.info.ignore_label
        for case in cases:
            labels = segment_volume(model, case.image, postprocess=False).labels
            pairs.append((labels.array, case.labels.array))
            if progress is not None:
                progress(case.name)
    if not pairs:
        raise InputError("no validation case to decide the post-processing on; the models hold out no case.")
    chosen, evidence = choose_postprocessing(pairs, models[0].config.labels, ignore_label)
    evidence["cases"] = len(pairs)
    for model in models:
        chosen.save(Path(model.checkpoint).parent, evidence)
        model.postprocessing = chosen
    return chosen, evidence

"""A run's preparation (resume, split, start-from model, fingerprint, resolve, preprocess) as one stage."""

import pytest
from helpers import quick_config, write_dataset

from napari_pgps.engine.preparation import prepare_run
from napari_pgps.errors import InputError
from napari_pgps.events import Preparing


def _prepare(config, run_dir=None, **options):
    """Run the stage to its end: (its Preparing events, the PreparedRun)."""
    events, stage = [], prepare_run(config, run_dir, **options)
    while True:
        try:
            events.append(next(stage))
        except StopIteration as done:
            return events, done.value


def test_a_run_is_prepared_into_a_resolved_configuration_a_split_and_its_preprocessed_cases(tmp_path):
    config = quick_config(write_dataset(tmp_path / "dataset", cases=6, seed=40))  # not preprocessed before
    config.model.patch_size = None  # automatic: resolved from the data
    events, prepared = _prepare(config)
    try:
        assert events and all(isinstance(e, Preparing) for e in events)
        assert {e.task for e in events} == {"fingerprint", "preprocessing"}
        assert prepared.config.model.patch_size is not None and config.model.patch_size is None  # the given one stays
        assert prepared.config.labels and prepared.device.type == "cpu"
        cases = prepared.split["training"] + prepared.split["validation"]
        assert sorted(cases) == sorted(f"case_{i:03d}" for i in range(6)) and prepared.split["validation"]
        image = prepared.store.image(prepared.split["training"][0])
        assert image.ndim == 4 and image.shape[0] == 1  # (C, Z, Y, X)
        fractions = prepared.label_fractions()
        assert len(fractions) == len(prepared.config.labels) and sum(fractions) == pytest.approx(1.0)
        assert fractions[0] > 0.5  # mostly background
        assert prepared.checkpoint is None and prepared.initial_weights is None
    finally:
        prepared.close()


def test_a_method_the_loop_was_not_given_is_refused_before_the_data_is_read(phantom_dataset):
    config = quick_config(phantom_dataset)
    config.curriculum.pdl.enabled = True
    with pytest.raises(InputError, match="this training loop was not given"):
        _prepare(config)


def test_the_data_source_is_closed_when_the_preparation_fails_or_is_given_up(phantom_dataset, monkeypatch):
    from napari_pgps.data.source import DataSource
    from napari_pgps.engine import preparation

    closed = []
    monkeypatch.setattr(DataSource, "close", lambda self: closed.append(self))

    def refused(*args, **kwargs):
        raise InputError("refused")

    monkeypatch.setattr(preparation, "resolve_config", refused)
    with pytest.raises(InputError, match="refused"):
        _prepare(quick_config(phantom_dataset))
    assert len(closed) == 1

    def fingerprinting(self, *args):
        yield 0, 6
        raise AssertionError("the preparation goes on after it was given up")

    monkeypatch.setattr(DataSource, "fingerprint", fingerprinting)
    stage = prepare_run(quick_config(phantom_dataset), None)
    assert next(stage) == Preparing(task="fingerprint", done=0, total=6)
    stage.close()  # e.g. the run's events closed by a stop while fingerprinting
    assert len(closed) == 2


def test_a_resumed_run_is_prepared_from_its_checkpoint_on_its_own_split(phantom_dataset, tmp_path):
    from napari_pgps.engine.checkpoint import save_checkpoint
    from napari_pgps.engine.file_names import LAST

    _, first = _prepare(quick_config(phantom_dataset))
    first.close()
    first.config.training.epochs = 9
    split = {"training": ["case_000", "case_001"], "validation": ["case_002"]}
    save_checkpoint({"config": first.config.to_dict(), "model": {}, "split": split}, tmp_path / LAST)
    asked = quick_config(phantom_dataset, epochs=2)
    _, resumed = _prepare(asked, tmp_path, resume=True)
    resumed.close()
    assert resumed.split == split and resumed.checkpoint["split"] == split
    assert resumed.config.training.epochs == 9  # the checkpoint's configuration, not the one given

    split["training"].append("case_999")
    save_checkpoint({"config": first.config.to_dict(), "model": {}, "split": split}, tmp_path / LAST)
    with pytest.raises(InputError, match="not in its data now: case_999"):
        _prepare(asked, tmp_path, resume=True)


def test_a_budget_of_few_steps_at_the_final_patch_trains_one_level_coarser(tmp_path, monkeypatch):
    """The recipe's spacing rule before preprocessing: a final patch that leaves part of the median case out (a
    small voxel cap here) and a budget that holds fewer than ``COARSE_SPACING_STEPS`` timed steps at it: the run
    is planned and preprocessed at twice the fine axes' spacing, and its recipe says why; a fast step keeps the
    data's spacing."""
    import dataclasses

    from napari_pgps.engine import preparation
    from napari_pgps.engine.recipe import COARSE_SPACING_STEPS
    from napari_pgps.engine.resolve import PROFILES

    monkeypatch.setitem(PROFILES, "cpu", dataclasses.replace(PROFILES["cpu"], max_patch_voxels=8 * 16 * 16))
    timed = []
    monkeypatch.setattr(preparation, "measure_network_step_seconds",
                        lambda network, shape, *args: timed.append(tuple(shape)) or 1.0)
    config = quick_config(write_dataset(tmp_path / "dataset", cases=4, seed=41))  # 16 x 40 x 40 of 2.5 x 0.8 x 0.8 mm
    config.model.patch_size, config.training.epochs, config.training.time_budget = None, None, 60.0
    events, prepared = _prepare(config)
    try:
        assert timed == [(2, 1, 6, 16, 20)]  # the batch of the final patch at the data's spacing, timed once
        assert [e.done for e in events if e.task == "timing"] == [0, 1]
        assert prepared.config.model.spacing == pytest.approx((2.5, 1.6, 1.6)) and config.model.spacing is None
        assert prepared.store.image(prepared.split["training"][0]).shape[1:] == (16, 20, 20)
        spacing = next(c.line() for c in prepared.recipe if c.part == "spacing")
        assert spacing.startswith("spacing: 2.5 x 1.6 x 1.6 mm (the budget holds at most 60 steps at the data's "
                                  "2.5 x 0.8 x 0.8 mm final patch 6x16x20 (1.0 s a step timed on this machine)")
    finally:
        prepared.close()
    monkeypatch.setattr(preparation, "measure_network_step_seconds", lambda *args: 60.0 / COARSE_SPACING_STEPS)
    _, prepared = _prepare(config)
    try:
        assert prepared.config.model.spacing == pytest.approx((2.5, 0.8, 0.8))
        assert "train at full resolution" in next(c.line() for c in prepared.recipe if c.part == "spacing")
    finally:
        prepared.close()

"""The test split (``data.test_fraction``): set aside first with a fixed seed, never seen by the run, scored by
``evaluate --split test``."""

from __future__ import annotations

import json

import pytest

from napari_pgps.cli import main
from napari_pgps.data.dataset import split_cases
from napari_pgps.data.source import DataSource


def _source(tmp_path, count=20) -> DataSource:
    cases = [(f"case_{i:03d}", lambda: None) for i in range(count)]
    return DataSource(cases, {0: "background", 1: "organ"}, ["MRI"], tmp_path)


def test_the_test_cases_are_the_same_for_every_seed_and_fold_and_disjoint_from_the_rest(tmp_path):
    source = _source(tmp_path)
    splits = [source.split(None, 5, 0.2, seed, test_fraction=0.2) for seed in (0, 1, 2)]
    splits += [source.split(fold, 4, 0.2, seed, test_fraction=0.2) for fold in (0, 3) for seed in (0, 1)]
    test = splits[0]["test"]
    assert len(test) == 4 and all(split["test"] == test for split in splits)
    for split in splits:
        assert set(test).isdisjoint(split["training"]) and set(test).isdisjoint(split["validation"])
        assert sorted(split["training"] + split["validation"] + test) == source.names
        assert all(set(test).isdisjoint(fold["training"] + fold["validation"]) for fold in split.get("all_folds", []))
    assert splits[0]["validation"] != splits[1]["validation"]  # the seed still draws the validation cases
    assert (tmp_path / "splits-4-seed0-test0.2.json").is_file()  # beside, not over, the folds without a test split


def test_no_test_fraction_gives_todays_splits_without_a_test_key(tmp_path):
    source = _source(tmp_path)
    assert source.split(None, 5, 0.2, 3) == dict(zip(("training", "validation"), split_cases(source.names, 0.2, 3)))
    assert "test" not in source.split(1, 5, 0.2, 3, test_fraction=0.0)


def test_train_sets_the_test_cases_aside_and_evaluate_scores_only_them(tmp_path, phantom_dataset, trained_phantom_run,
                                                                       capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(phantom_dataset), "--out", str(run), "--test-fraction", "0.34", "--epochs", "1",
                 "--iterations-per-epoch", "2", "--patch-size", "8", "32", "32", "--device", "cpu", "--quiet",
                 "--config", str(_small_network(tmp_path))]) == 0
    split = json.loads((run / "splits.json").read_text())
    assert len(split["test"]) == 2 and set(split["test"]).isdisjoint(split["training"] + split["validation"])
    cache = next(p for p in (tmp_path / "cache").iterdir())
    fingerprint = json.loads(next(cache.glob("fingerprint-*-without-*/fingerprint.json")).read_text())
    assert set(split["test"]).isdisjoint(fingerprint["cases"])  # nothing is planned from the test cases
    store = next(cache.glob("plan-*"))
    assert not [p for p in store.rglob("*") if any(name in p.name for name in split["test"])]  # nor preprocessed
    report = tmp_path / "test.json"
    assert main(["evaluate", "--model", str(run), "--data", str(phantom_dataset), "--split", "test", "--json",
                 str(report), "--device", "cpu"]) == 0
    assert sorted(row["case"] for row in json.loads(report.read_text())["cases"]) == split["test"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained_phantom_run), "--data", str(phantom_dataset), "--split", "test",
                 "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert "has no test split" in message and "train with --test-fraction F" in message  # what is wrong, what to do


def _small_network(tmp_path):
    """A configuration with a small network, and its cache folder in ``tmp_path``."""
    from napari_pgps.config import RunConfig

    config = RunConfig()
    config.model.base_channels = 8
    config.data.preprocessed = str(tmp_path / "cache")
    path = tmp_path / "config.yaml"
    config.save(path)
    return path


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_test_fraction_out_of_range_is_refused(tmp_path, phantom_dataset, fraction, capsys):
    assert main(["train", "--data", str(phantom_dataset), "--out", str(tmp_path / "run"), "--test-fraction",
                 str(fraction)]) == 2
    assert "--test-fraction" in capsys.readouterr().err

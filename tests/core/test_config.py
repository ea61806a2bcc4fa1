from pathlib import Path

import pytest

from napari_pgps.config import RunConfig
from napari_pgps.errors import InputError


def test_yaml_round_trip_keeps_every_value(tmp_path):
    config = RunConfig()
    config.data.path = "/data/task"
    config.model.patch_size = (40, 56, 40)
    config.model.kernel_sizes = [(1, 3, 3), (3, 3, 3)]
    config.training.epochs = 7
    config.training.learning_rate = 0.005
    config.labels = {0: "background", 1: "anterior"}
    config.save(tmp_path / "c.yaml")
    loaded = RunConfig.load(tmp_path / "c.yaml")
    assert loaded == config
    assert loaded.model.patch_size == (40, 56, 40)
    assert loaded.labels == {0: "background", 1: "anterior"}


def test_partial_yaml_keeps_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epochs: 3\n")
    loaded = RunConfig.load(tmp_path / "c.yaml")
    assert loaded.training.epochs == 3
    assert loaded.training.batch_size == RunConfig().training.batch_size


def test_unknown_setting_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epoch: 3\n")
    with pytest.raises(InputError, match="unknown setting.*epoch"):
        RunConfig.load(tmp_path / "c.yaml")


def test_wrong_type_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epochs: three\n")
    with pytest.raises(InputError, match="training: epochs"):
        RunConfig.load(tmp_path / "c.yaml")


def test_yaml_with_python_tags_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "c.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError, match="not a readable YAML"):
        RunConfig.load(tmp_path / "c.yaml")
    assert not marker.exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        RunConfig.load(Path(tmp_path / "nope.yaml"))


def test_malformed_yaml_is_one_line_naming_line_and_column(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epochs: 3\n  batch_size: 'two\n")
    with pytest.raises(InputError) as error:
        RunConfig.load(tmp_path / "c.yaml")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'c.yaml'}, line 4, column 1: not a readable YAML configuration (")
    assert "correct the file there" in message


def test_a_tab_in_yaml_is_named_on_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n\tepochs: 3\n")
    with pytest.raises(InputError, match=r"line 2, column 1: .*found character '\\t'") as error:
        RunConfig.load(tmp_path / "c.yaml")
    assert "\n" not in str(error.value) and "\t" not in str(error.value)


@pytest.mark.parametrize("section, name, value, says", [
    ("training", "learning_rate", -1.0, "--learning-rate (training.learning_rate) is -1.0; it must be a number of 0 or more"),
    ("training", "epochs", 0, "--epochs (training.epochs) is 0; it must be at least 1"),
    ("training", "iterations_per_epoch", 0, "--iterations-per-epoch"),
    ("training", "batch_size", 0, "--batch-size"),
    ("training", "time_budget", 0.0, "--time-budget (training.time_budget) is 0.0; it must be longer than zero"),
    ("training", "momentum", 1.0, "training.momentum is 1.0; it must be in [0, 1)"),
    ("data", "max_cases", 0, "--max-cases"),
    ("data", "folds", 1, "--folds (data.folds) is 1; it must be at least 2"),
    ("data", "fold", 3, "--fold (data.fold) is 3; it must be a fold of the 3-fold cross-validation, 0 to 2"),
    ("data", "foreground_oversampling", -0.1, "data.foreground_oversampling is -0.1; it must be a probability in [0, 1]"),
    ("data", "validation_fraction", 1.0, "data.validation_fraction"),
    ("model", "patch_size", (8, 0, 32), "--patch-size (model.patch_size) is 8 0 32; it must be three sizes"),
    ("pruning", "stop_fraction", 2.0, "pruning.stop_fraction"),
])
def test_validate_names_the_option_out_of_range(section, name, value, says):
    config = RunConfig()
    config.data.folds = 3
    setattr(getattr(config, section), name, value)
    with pytest.raises(InputError) as error:
        config.validate()
    assert says in str(error.value) and "\n" not in str(error.value)


def test_validate_passes_the_defaults_and_automatic_values():
    config = RunConfig()
    assert config.validate() is config
    config.data.fold, config.training.learning_rate, config.training.epochs = 4, 3e-4, 1
    config.validate()


def test_a_config_file_is_validated_when_read(tmp_path):
    (tmp_path / "c.yaml").write_text("training: {batch_size: 0}\n")
    with pytest.raises(InputError, match=r"c.yaml: --batch-size \(training.batch_size\) is 0; it must be at least 1"):
        RunConfig.load(tmp_path / "c.yaml")


def test_resolve_validates_a_config_given_in_python(phantom_dataset):
    """The widgets and Python train without the command line's checks: resolve_config refuses the value too."""
    from helpers import quick_config

    from napari_pgps import train

    config = quick_config(phantom_dataset)
    config.training.learning_rate = -1.0
    with pytest.raises(InputError, match="--learning-rate"):
        for _ in train(config):
            pass


def test_schedule_options_written_flat_mean_the_same_as_nested(tmp_path):
    """A config.yaml (or checkpoint) written before the options were nested in curriculum.options still reads."""
    (tmp_path / "flat.yaml").write_text("curriculum:\n  schedule: pgps-performance\n  growth: miccai\n  max_batch: 16\n"
                                        "  augment_range: [0.25, 2.0]\n  rpss_mode: performance\n  pdl:\n    enabled: true\n")
    (tmp_path / "nested.yaml").write_text("curriculum:\n  schedule: pgps-performance\n  options:\n    growth: miccai\n"
                                          "    max_batch: 16\n    augment_range: [0.25, 2.0]\n    rpss_mode: performance\n"
                                          "  pdl:\n    enabled: true\n")
    flat, nested = RunConfig.load(tmp_path / "flat.yaml"), RunConfig.load(tmp_path / "nested.yaml")
    assert flat == nested
    options = flat.curriculum.options
    assert (options.growth, options.max_batch, options.augment_range, options.rpss_mode) == ("miccai", 16, (0.25, 2.0), "performance")
    assert options.performance_batch == "voxels" and flat.curriculum.pdl.enabled
    # written back nested, and read again the same
    assert "growth" not in flat.to_dict()["curriculum"] and flat.to_dict()["curriculum"]["options"]["growth"] == "miccai"
    assert RunConfig.from_dict(flat.to_dict()) == flat
    # flat and nested together: each option once
    mixed = RunConfig.from_dict({"curriculum": {"growth": "miccai", "options": {"max_batch": 16}}})
    assert (mixed.curriculum.options.growth, mixed.curriculum.options.max_batch) == ("miccai", 16)
    with pytest.raises(InputError, match="curriculum: growth given twice"):
        RunConfig.from_dict({"curriculum": {"growth": "miccai", "options": {"growth": "journal"}}})
    with pytest.raises(InputError, match=r"curriculum: options: unknown setting\(s\) growht; known: .*growth"):
        RunConfig.from_dict({"curriculum": {"options": {"growht": "miccai"}}})


def test_a_bench_run_saved_with_flat_schedule_options_counts_as_measured(tmp_path):
    import json

    from napari_pgps.engine.recipe import RECIPE_VERSION
    from napari_pgps.tasks.bench import _measured_before

    config = RunConfig()
    config.curriculum.options.growth = "miccai"
    nested = config.to_dict()
    flat = json.loads(json.dumps(nested))
    flat["curriculum"].update(flat["curriculum"].pop("options"))  # as a bench before curriculum.options saved it
    saved = tmp_path / "constant-seed0.json"
    version = {"recipe_version": RECIPE_VERSION}
    saved.write_text(json.dumps({"config": flat, **version, "result": {"mean_dice": 0.5}}))
    assert _measured_before(saved, nested) == {"mean_dice": 0.5}
    flat["curriculum"]["growth"] = "journal"
    saved.write_text(json.dumps({"config": flat, **version, "result": {"mean_dice": 0.5}}))
    assert _measured_before(saved, nested) is None

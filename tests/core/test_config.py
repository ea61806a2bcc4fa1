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

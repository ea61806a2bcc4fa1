"""The run-folder reader (RunFolder) and the configuration of a model path without its weights (model_config)."""

import shutil
import zipfile

import pytest
import torch

from napari_pgps.engine.checkpoint import load_checkpoint
from napari_pgps.engine.package import read_model_package
from napari_pgps.engine.run_folder import STOPPED_RUN, RunFolder, model_config
from napari_pgps.errors import CheckpointError, InputError
from napari_pgps.events import CheckpointSaved, Finished, RunStarted, Validated
from napari_pgps.tasks.export import export_model


@pytest.fixture(scope="module")
def package(tmp_path_factory, trained_phantom_run):
    return export_model(trained_phantom_run, tmp_path_factory.mktemp("package") / "phantom.zip")


@pytest.fixture()
def run(tmp_path, trained_phantom_run):
    """A copy of the finished phantom run, to change."""
    return shutil.copytree(trained_phantom_run, tmp_path / "run")


def test_a_finished_run_folder_reads_back(trained_phantom_run):
    folder = RunFolder(trained_phantom_run)
    assert folder.path == trained_phantom_run
    trained = load_checkpoint(trained_phantom_run / "checkpoint_final.pt")
    assert folder.config().to_dict() == trained["config"]
    split = folder.split()
    assert split["training"] == trained["split"]["training"] and split["validation"] == trained["split"]["validation"]
    events = folder.events()
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], Finished)
    assert sum(isinstance(e, CheckpointSaved) for e in events) >= 2 and any(isinstance(e, Validated) for e in events)
    assert folder.checkpoint("final") == trained_phantom_run / "checkpoint_final.pt"
    assert folder.checkpoint() == trained_phantom_run / "checkpoint_last.pt"
    assert folder.checkpoint("best") in (None, trained_phantom_run / "checkpoint_best.pt")
    assert not folder.resumable
    with pytest.raises(ValueError, match="no checkpoint 'first'"):
        folder.checkpoint("first")


def test_a_stopped_run_is_resumable(run):
    (run / "checkpoint_final.pt").unlink()
    folder = RunFolder(run)
    assert folder.resumable and folder.checkpoint("final") is None
    assert RunFolder.to_resume(run).path == run
    (run / "checkpoint_last.pt").unlink()
    assert not RunFolder(run).resumable
    with pytest.raises(InputError, match="nothing to resume; choose the folder of a stopped run"):
        RunFolder.to_resume(run)
    with pytest.raises(InputError, match="no run folder: nothing to resume"):
        RunFolder.to_resume(None)
    assert "checkpoint_last.pt" in STOPPED_RUN and "checkpoint_final.pt" in STOPPED_RUN


def test_the_configuration_falls_back_on_the_checkpoint(run):
    expected = RunFolder(run).config().to_dict()
    (run / "config.yaml").write_text("model: [not, a, mapping\n")
    assert RunFolder(run).config().to_dict() == expected  # the final checkpoint's
    (run / "config.yaml").unlink()
    assert model_config(run).to_dict() == expected
    for name in ("checkpoint_final.pt", "checkpoint_last.pt", "checkpoint_best.pt"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(InputError, match="configuration file not found"):
        RunFolder(run).config()


def test_a_run_that_wrote_nothing_yet_reads_as_empty(tmp_path):
    (tmp_path / "config.yaml").write_text("training: {epochs: 3}\n")
    folder = RunFolder(tmp_path)
    assert folder.config().training.epochs == 3
    assert folder.split() is None and folder.events() == [] and folder.checkpoint("last") is None
    assert not folder.resumable


def test_damaged_split_and_log_are_input_errors(run):
    (run / "splits.json").write_text('{"training": ["a"]}')
    with pytest.raises(InputError, match="splits.json: does not hold the training and validation case names"):
        RunFolder(run).split()
    (run / "splits.json").write_text("{not json")
    with pytest.raises(InputError, match="splits.json: not readable"):
        RunFolder(run).split()
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"event": "NoSuchEvent"}\n')
    with pytest.raises(InputError, match="metrics.jsonl: not a readable event log"):
        RunFolder(run).events()


def test_what_is_not_a_run_folder(tmp_path, run):
    with pytest.raises(InputError, match="no such folder"):
        RunFolder(tmp_path / "missing")
    with pytest.raises(InputError, match="a file"):
        RunFolder(run / "config.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a napari-pgps run folder"):
        RunFolder(tmp_path / "empty")
    assert RunFolder.holding(run / "checkpoint_final.pt").path == run
    assert RunFolder.holding(tmp_path / "empty" / "model.pt") is None


def test_model_config_of_a_run_folder_checkpoint_and_package(trained_phantom_run, package):
    expected = load_checkpoint(trained_phantom_run / "checkpoint_final.pt")["config"]
    assert model_config(trained_phantom_run).to_dict() == expected
    assert model_config(trained_phantom_run / "checkpoint_final.pt").to_dict() == expected
    assert model_config(str(trained_phantom_run / "checkpoint_last.pt")).model.patch_size == (8, 32, 32)
    assert model_config(package).to_dict() == expected


def test_model_config_reads_no_weights(tmp_path, package, trained_phantom_run, monkeypatch):
    # a package whose weights are damaged: loading it fails, its configuration still reads (the weights are not read)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, bytes(b ^ 0xFF for b in data) if info.filename == "weights.pt" else data)
    with pytest.raises(CheckpointError, match="weights.pt is not the file its manifest describes"):
        read_model_package(damaged)
    assert model_config(damaged).to_dict() == model_config(package).to_dict()

    # a checkpoint's tensors are mapped from the file, not read
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or original(*args, **kwargs))
    model_config(trained_phantom_run / "checkpoint_final.pt")
    assert [call.get("mmap") for call in loads] == [True]


def test_model_config_of_what_is_no_model(tmp_path):
    with pytest.raises(InputError, match="model not found; give a run folder, a checkpoint file or a model package"):
        model_config(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="not a napari-pgps run folder"):
        model_config(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: damaged or not a napari-pgps checkpoint"):
        model_config(tmp_path / "notes.txt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a napari-pgps model package"):
        model_config(tmp_path / "other.zip")

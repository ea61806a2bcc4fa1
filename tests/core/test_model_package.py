"""Model packages (napari-pgps export) and starting a run from a trained model (train --init-from)."""

import hashlib
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
import yaml

from helpers import quick_config, run_events
from napari_pgps import train
from napari_pgps._sample_data import make_phantom
from napari_pgps.cli import main
from napari_pgps.config import RunConfig
from napari_pgps.data.volume import Volume, affine_from_spacing, write_volume
from napari_pgps.engine import TrainingControl, load_checkpoint, load_model, predict_probabilities
from napari_pgps.engine.file_names import MANIFEST
from napari_pgps.engine.postprocessing import Postprocessing
from napari_pgps.errors import CheckpointError, InputError
from napari_pgps.events import Finished, RunStarted
from napari_pgps.plugins import TrainingPlugin
from napari_pgps.tasks.export import export_model

SPACING = (2.5, 0.8, 0.8)
MEMBERS = {MANIFEST, "weights.pt", "config.yaml", "splits.json", "model_card.md"}


@pytest.fixture(scope="module")
def package(tmp_path_factory, trained_phantom_run):
    return export_model(trained_phantom_run, tmp_path_factory.mktemp("package") / "phantom.zip")


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(source, target, *, replace=None, drop=(), add=None, list_in_manifest=True):
    """A copy of a package with members replaced, dropped or added; replaced members are listed with their new
    size and hash (so that only the check under test can refuse them) unless ``list_in_manifest`` is false."""
    members = _members(source)
    manifest = json.loads(members.pop(MANIFEST))
    for name, data in (replace or {}).items():
        members[name] = data
        if list_in_manifest:
            manifest["members"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with zipfile.ZipFile(target, "w") as archive:
        if MANIFEST not in drop:
            archive.writestr(MANIFEST, json.dumps(manifest))
        for name, data in {**members, **(add or {})}.items():
            if name not in drop:
                archive.writestr(name, data)
    return target


def _image():
    image, _ = make_phantom(7, shape=(16, 40, 40), spacing=SPACING)
    return ((image - image.mean()) / image.std()).astype(np.float32)


def test_export_then_load_gives_bit_identical_probabilities(trained_phantom_run, package):
    members = _members(package)
    assert set(members) == MEMBERS
    manifest = json.loads(members[MANIFEST])
    assert manifest["format"] == "napari-pgps-model" and manifest["version"] == 1
    assert set(manifest["members"]) == MEMBERS - {MANIFEST}
    payload = load_checkpoint(trained_phantom_run / "checkpoint_final.pt")
    assert yaml.safe_load(members["config.yaml"]) == RunConfig.from_dict(payload["config"]).to_dict()
    assert json.loads(members["splits.json"]) == json.loads((trained_phantom_run / "splits.json").read_text())
    card = members["model_card.md"].decode()
    assert "dynunet" in card and "mean Dice" in card and "held out for validation" in card and "napari-pgps 0." in card
    assert not [p for p in package.parent.iterdir() if p != package]  # the temporary file is gone

    from_run, from_zip = load_model(trained_phantom_run, "cpu"), load_model(package, "cpu")
    assert from_zip.config.to_dict() == from_run.config.to_dict() and from_zip.split == from_run.split
    assert from_zip.postprocessing is None
    for (name, a), (other, b) in zip(from_run.network.state_dict().items(), from_zip.network.state_dict().items()):
        assert name == other and torch.equal(a, b)
    image = _image()
    expected = predict_probabilities(from_run.network, image, from_run.patch_size, from_run.device)
    got = predict_probabilities(from_zip.network, image, from_zip.patch_size, from_zip.device)
    np.testing.assert_array_equal(got, expected)


def test_postprocessing_travels_in_the_package(tmp_path, trained_phantom_run):
    run = shutil.copytree(trained_phantom_run, tmp_path / "run")
    Postprocessing(foreground=True, labels=[2]).save(run, {"before": {"lesion": 0.5}})
    out = export_model(run / "checkpoint_final.pt", tmp_path / "out" / "model.zip")
    assert "postprocessing.json" in _members(out)
    (out.parent / "postprocessing.json").write_text('{"foreground": false, "labels": [1]}')  # beside it: not its own
    assert load_model(out, "cpu").postprocessing == Postprocessing(foreground=True, labels=[2])


def test_cli_export_refuses_to_replace_or_misname(tmp_path, trained_phantom_run, capsys):
    with pytest.raises(SystemExit) as help_exit:
        main(["export", "--help"])
    assert help_exit.value.code == 0 and "weights_only=True" in capsys.readouterr().out
    out = tmp_path / "model.zip"
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(out)]) == 0
    assert "weights.pt" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(out), "--force"]) == 0
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(tmp_path / "model.pt")]) == 2
    assert ".zip" in capsys.readouterr().err


class _Payload:
    """Unpickling this would run code (create a file) if the loader were unsafe."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_holding_a_pickled_object_are_refused(tmp_path, package):
    _Payload.marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"conv.weight": _Payload()}, evil)
    bad = _rewrite(package, tmp_path / "pickled.zip", replace={"weights.pt": evil.read_bytes()})
    with pytest.raises(CheckpointError, match=r"pickled\.zip: weights\.pt is not a plain file of tensors"):
        load_model(bad, "cpu")
    raw = _rewrite(package, tmp_path / "raw.zip", replace={"weights.pt": pickle.dumps({"w": _Payload()})})
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_model(raw, "cpu")
    assert not _Payload.marker.exists()

    evil_bytes = evil.read_bytes()
    torch.save({"conv.weight": "not a tensor"}, evil)
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_model(_rewrite(package, tmp_path / "text.zip", replace={"weights.pt": evil.read_bytes()}), "cpu")
    altered = _rewrite(package, tmp_path / "altered.zip", replace={"weights.pt": evil_bytes}, list_in_manifest=False)
    with pytest.raises(CheckpointError, match="altered.zip: weights.pt is not the file its manifest describes"):
        load_model(altered, "cpu")


def test_missing_members_damaged_and_foreign_zips_are_refused(tmp_path, package, capsys):
    no_config = _rewrite(package, tmp_path / "no-config.zip", drop=("config.yaml",))
    with pytest.raises(CheckpointError, match="config.yaml is missing"):
        load_model(no_config, "cpu")
    no_manifest = _rewrite(package, tmp_path / "no-manifest.zip", drop=(MANIFEST,))
    with pytest.raises(CheckpointError, match="not a napari-pgps model package"):
        load_model(no_manifest, "cpu")
    (tmp_path / "truncated.zip").write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.zip: not a readable zip file"):
        load_model(tmp_path / "truncated.zip", "cpu")
    bad_yaml = _rewrite(package, tmp_path / "bad-config.zip", replace={"config.yaml": b"model: {layers: 3}\n"})
    with pytest.raises(CheckpointError, match=r"bad-config.zip \(config.yaml\)"):
        load_model(bad_yaml, "cpu")
    # a package renamed .pt is recognised by its content; a foreign zip named .pt is not taken for one
    renamed = shutil.copy(package, tmp_path / "renamed.pt")
    assert load_model(renamed, "cpu").config.labels == load_model(package, "cpu").config.labels
    source = tmp_path / "image.nii.gz"
    write_volume(Volume(make_phantom(3, shape=(16, 40, 40), spacing=SPACING)[0], affine_from_spacing(SPACING)), source)
    assert main(["segment", "--model", str(no_config), "--input", str(source), "--output", str(tmp_path / "s.nii.gz")]) == 2
    assert "no-config.zip" in capsys.readouterr().err and not (tmp_path / "s.nii.gz").exists()


@pytest.mark.parametrize("name", ["../evil", "/tmp/napari-pgps-evil", "sub/../../evil"])
def test_members_with_unsafe_paths_are_refused_without_touching_the_disk(tmp_path, package, name, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    bad = _rewrite(package, work / "bad.zip", add={name: b"payload"})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match="absolute or parent"):
        load_model(bad, "cpu")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not os.path.exists("/tmp/napari-pgps-evil")


class _StartingWeights(TrainingPlugin):
    name = "starting-weights"

    def start(self, run):
        self.weights = {k: v.detach().clone() for k, v in run.network.state_dict().items()}
        self.config = run.config


def _start(config, run_dir, stop=False):
    seen = _StartingWeights()
    control = TrainingControl()
    if stop:
        control.stop()
    events = run_events(train(config, run_dir, control=control, plugins=[seen]))
    return seen, events


def test_init_from_starts_from_the_models_weights(tmp_path, phantom_dataset, package):
    model = load_model(package, "cpu").network.state_dict()
    config = quick_config(phantom_dataset, epochs=1, iterations=1)
    config.model.patch_size = config.model.base_channels = None  # both come from the model
    config.training.seed = 5
    config.training.init_from = str(package)
    seen, events = _start(config, tmp_path / "run")
    assert seen.weights.keys() == model.keys() and all(torch.equal(seen.weights[k], model[k]) for k in model)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.start_epoch == 0 and isinstance(events[-1], Finished) and not events[-1].stopped
    said = {line.partition(":")[0]: line for line in started.recipe}
    for part in ("network", "spacing", "final patch"):  # the model's, not the configuration's
        assert said[part].endswith(f"(the model this run starts from ({package.name}))"), said[part]
    assert said["length"].startswith("length: 1 epochs x 1 steps (your configuration)")
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.training.init_from == str(package.resolve())
    assert saved.model.patch_size == load_model(package, "cpu").config.model.patch_size
    assert load_checkpoint(tmp_path / "run" / "checkpoint_final.pt")["epoch"] == 1  # a new run, not a resume

    fresh = quick_config(phantom_dataset, epochs=1, iterations=1)
    fresh.training.seed = 5
    seen_fresh, _ = _start(fresh, None, stop=True)
    assert any(not torch.equal(seen_fresh.weights[k], model[k]) for k in model)  # the check above can fail


def test_cli_train_init_from_a_run_folder(tmp_path, phantom_dataset, trained_phantom_run):
    # with a learning rate of 0 the step leaves the weights as they started: the model's
    assert main(["train", "--data", str(phantom_dataset), "--out", str(tmp_path / "run"), "--init-from",
                 str(trained_phantom_run), "--epochs", "1", "--iterations-per-epoch", "1", "--learning-rate", "0",
                 "--device", "cpu", "--quiet"]) == 0
    final = load_checkpoint(tmp_path / "run" / "checkpoint_final.pt")
    model = load_checkpoint(trained_phantom_run / "checkpoint_final.pt")["model"]
    assert all(torch.equal(final["model"][k], model[k]) for k in model)
    assert final["config"]["training"]["init_from"] == str((trained_phantom_run / "checkpoint_final.pt").resolve())
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--init-from", str(trained_phantom_run)]) == 2


def _dataset_with(tmp_path, phantom_dataset, **changes):
    data = shutil.copytree(phantom_dataset, tmp_path / "data")
    meta = json.loads((data / "dataset.json").read_text())
    meta.update(changes)
    (data / "dataset.json").write_text(json.dumps(meta))
    return data


@pytest.mark.parametrize("changes, message", [
    ({"labels": {"0": "background", "1": "lesion", "2": "artery"}}, "2 is 'vessel' in the model, 'artery' in the data"),
    ({"labels": {"0": "background", "1": "lesion", "2": "vessel", "3": "cyst"}}, r"3 \('cyst'\) only in the data"),
    ({"modality": {"0": "CT"}}, r"takes the channels \['MRI'\], the data has \['CT'\]"),
])
def test_init_from_refuses_other_labels_or_channels(tmp_path, phantom_dataset, package, changes, message):
    config = quick_config(_dataset_with(tmp_path, phantom_dataset, **changes), epochs=1, iterations=1)
    config.training.init_from = str(package)
    with pytest.raises(InputError, match=message):
        _start(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_init_from_refuses_another_network(tmp_path, phantom_dataset, package):
    config = quick_config(phantom_dataset, epochs=1, iterations=1)
    config.training.init_from = str(package)
    config.model.architecture = "unet"
    with pytest.raises(InputError, match="architecture is dynunet there, unet here"):
        _start(config, tmp_path / "run")
    config.model.architecture = None
    config.model.patch_size = (9, 32, 32)
    with pytest.raises(InputError, match="cannot be taken by the network"):
        _start(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()

import pickle

import pytest
import torch

from napari_pgps.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from napari_pgps.errors import CheckpointError, InputError


class _Payload:
    """Pickling this object would run code on load if the loader were unsafe."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_round_trip(tmp_path):
    path = save_checkpoint({"config": {"a": [1, 2]}, "model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "c.pt")
    payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and payload["config"] == {"a": [1, 2]}
    torch.testing.assert_close(payload["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_damaged_and_malicious_files_are_refused(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-pgps checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")

    good = save_checkpoint({"config": {}, "model": {}}, tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "truncated.pt")

    _Payload.marker = tmp_path / "code-ran"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"format": "napari-pgps-checkpoint", "config": _Payload(), "model": {}}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not _Payload.marker.exists()


def test_find_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(InputError, match="run folder"):
        find_checkpoint(tmp_path)
    save_checkpoint({"config": {}, "model": {}}, tmp_path / "checkpoint_last.pt")
    assert find_checkpoint(tmp_path).name == "checkpoint_last.pt"
    save_checkpoint({"config": {}, "model": {}}, tmp_path / "checkpoint_final.pt")
    assert find_checkpoint(tmp_path).name == "checkpoint_final.pt"

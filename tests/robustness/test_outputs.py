"""Outputs never lose data, as issue 31's probe tried them: a segmentation onto its own input, outputs that exist,
output folders that cannot be written, a full disk while writing, bad numbers and malformed YAML on the command line,
the permissions of written files and a run's data path (generated here, tiny)."""

import errno
import gc
import json
import os
import shutil
import stat
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from napari_pgps.cli import file_fault, main
from napari_pgps.files import WriteError, atomic_path, check_outputs, check_writable, write_text_atomically


def _refused(capsys, command: str) -> str:
    """The one line a refused command printed on stderr (nothing on stdout but progress)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"napari-pgps {command}: error: "), err
    assert "Traceback" not in err
    return err


def _segment(run, source, output, *extra):
    return main(["segment", "--model", str(run), "--input", str(source), "--output", str(output), "--device", "cpu",
                 *extra])


@pytest.fixture()
def image(tmp_path, phantom_dataset):
    """A copy of one phantom image to segment (tests may try to overwrite it)."""
    path = tmp_path / "in" / "v.nii.gz"
    path.parent.mkdir()
    shutil.copy(phantom_dataset / "imagesTr" / "case_000.nii.gz", path)
    return path


# -- never an input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_segment_onto_its_own_input_is_refused(trained_phantom_run, image, capsys, extra):
    before = image.read_bytes()
    assert _segment(trained_phantom_run, image, image, *extra) == 2
    err = _refused(capsys, "segment")
    assert str(image) in err and "inputs" in err
    assert image.read_bytes() == before
    assert sorted(p.name for p in image.parent.iterdir()) == ["v.nii.gz"]


def test_segment_onto_a_link_to_its_input_is_refused(trained_phantom_run, image, capsys):
    link = image.parent.parent / "link.nii.gz"
    os.link(image, link)
    before = image.read_bytes()
    assert _segment(trained_phantom_run, image, link, "--overwrite") == 2
    assert "inputs" in _refused(capsys, "segment")
    assert image.read_bytes() == before


def test_segment_a_folder_into_itself_is_refused(trained_phantom_run, image, capsys):
    shutil.copy(image, image.with_name("w_0000.nii.gz"))  # nnU-Net names: the output w.nii.gz would be a new file
    before = {p.name: p.read_bytes() for p in image.parent.iterdir()}
    assert _segment(trained_phantom_run, image.parent, image.parent, "--overwrite") == 2
    assert "is the input folder" in _refused(capsys, "segment")
    assert {p.name: p.read_bytes() for p in image.parent.iterdir()} == before


def test_two_inputs_onto_one_output_are_refused(trained_phantom_run, image, tmp_path, capsys):
    shutil.copy(image, image.with_name("v_0000.nii.gz"))  # v_0000.nii.gz and v.nii.gz both give v.nii.gz
    assert _segment(trained_phantom_run, image.parent, tmp_path / "out") == 2
    assert "two inputs" in _refused(capsys, "segment")
    assert not (tmp_path / "out").exists()


def test_evaluate_json_onto_the_dataset_is_refused(trained_phantom_run, phantom_dataset, capsys):
    before = (phantom_dataset / "dataset.json").read_bytes()
    assert main(["evaluate", "--model", str(trained_phantom_run), "--data", str(phantom_dataset), "--json",
                 str(phantom_dataset / "dataset.json"), "--overwrite", "--device", "cpu"]) == 2
    assert "inputs" in _refused(capsys, "evaluate")
    assert (phantom_dataset / "dataset.json").read_bytes() == before


def test_export_onto_the_package_it_reads_is_refused(trained_phantom_run, tmp_path, capsys):
    package = tmp_path / "model.zip"
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(package)]) == 0
    capsys.readouterr()
    before = package.read_bytes()
    assert main(["export", "--model", str(package), "--out", str(package), "--force"]) == 2
    assert "inputs" in _refused(capsys, "export")
    assert package.read_bytes() == before


# -- an existing output only with --overwrite -------------------------------------------------------------------
def test_segment_replaces_an_existing_output_only_with_overwrite(trained_phantom_run, image, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an earlier result")
    assert _segment(trained_phantom_run, image, out) == 2
    err = _refused(capsys, "segment")
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier result"
    assert _segment(trained_phantom_run, image, out, "--overwrite") == 0
    assert nib.load(str(out)).shape == nib.load(str(image)).shape


def test_an_existing_uncertainty_file_is_refused_before_any_output(trained_phantom_run, image, tmp_path, capsys):
    (tmp_path / "seg_uncertainty.nii.gz").write_bytes(b"kept")
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nii.gz", "--uncertainty") == 2
    assert "seg_uncertainty.nii.gz" in _refused(capsys, "segment")
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("kept", ["seg_probabilities.npz", "seg_probabilities.nii.gz", "report.csv"])
def test_existing_probabilities_or_report_are_refused_before_any_output(trained_phantom_run, image, tmp_path, capsys,
                                                                        kept):
    (tmp_path / kept).write_bytes(b"kept")
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nrrd", "--save-probabilities", "--report",
                    str(tmp_path / "report.csv")) == 2
    assert kept in _refused(capsys, "segment")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", kept] and (tmp_path / kept).read_bytes() == b"kept"


def test_a_report_onto_an_input_or_its_reference_is_refused(trained_phantom_run, image, tmp_path, capsys):
    reference = tmp_path / "reference.nii.gz"
    shutil.copy(image, reference)
    for onto in (image, reference):
        assert _segment(trained_phantom_run, image, tmp_path / "seg.nii.gz", "--report", str(onto), "--reference",
                        str(reference), "--overwrite") == 2
        assert "is one of this command's inputs" in _refused(capsys, "segment")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_export_takes_overwrite_and_its_older_name_force(trained_phantom_run, tmp_path, capsys):
    package = tmp_path / "model.zip"
    package.write_bytes(b"an earlier package")
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(package)]) == 2
    assert "--overwrite" in _refused(capsys, "export")
    assert package.read_bytes() == b"an earlier package"
    for flag in ("--overwrite", "--force"):
        assert main(["export", "--model", str(trained_phantom_run), "--out", str(package), flag]) == 0
        assert package.read_bytes()[:2] == b"PK"


def test_bench_refuses_to_replace_runs_of_another_configuration(phantom_dataset, tmp_path, capsys):
    kept = tmp_path / "bench" / "runs" / "constant-seed0.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"config": {"training": {"epochs": 99}}, "result": {"mean_dice": 0.5}}))
    assert main(["bench", "--data", str(phantom_dataset), "--out", str(tmp_path / "bench"), "--schedules", "constant",
                 "--seeds", "1", "--profile", "quick", "--device", "cpu"]) == 2
    err = _refused(capsys, "bench")
    assert "another configuration" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "bench").rglob("*")) == ["constant-seed0.json", "runs"]


# -- output folders checked before any work ---------------------------------------------------------------------
def _commands_writing_under(blocker, run, data, image):
    """Every command that writes an output, pointed at a path under ``blocker``."""
    return {
        "segment": ["segment", "--model", str(run), "--input", str(image), "--output", str(blocker / "s.nii.gz")],
        "evaluate": ["evaluate", "--model", str(run), "--data", str(data), "--json", str(blocker / "e.json")],
        "train": ["train", "--data", str(data), "--out", str(blocker / "run"), "--epochs", "1", "--device", "cpu"],
        "prune": ["prune", "--model", str(run), "--data", str(data), "--out", str(blocker / "run"), "--device", "cpu"],
        "bench": ["bench", "--data", str(data), "--out", str(blocker / "bench"), "--profile", "quick", "--seeds", "1"],
        "demo": ["demo", "--headless", "--out", str(blocker / "demo"), "--device", "cpu"],
        "export": ["export", "--model", str(run), "--out", str(blocker / "m.zip")],
    }


@pytest.mark.parametrize("command", ["segment", "evaluate", "train", "prune", "bench", "demo", "export"])
def test_an_output_under_a_file_is_refused_before_any_work(trained_phantom_run, phantom_dataset, image, tmp_path,
                                                           capsys, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    argv = _commands_writing_under(blocker, trained_phantom_run, phantom_dataset, image)[command]
    assert main(argv) == 2
    err = _refused(capsys, command)
    assert f"{blocker} is a file, not a folder" in err
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize("command", ["segment", "evaluate", "train", "export"])
def test_an_output_in_a_read_only_folder_is_refused_before_any_work(trained_phantom_run, phantom_dataset, image,
                                                                    tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("runs as root (or with CAP_DAC_OVERRIDE): a read-only folder is writable here")
        assert main(_commands_writing_under(locked, trained_phantom_run, phantom_dataset, image)[command]) == 2
        assert f"no permission to write in {locked}" in _refused(capsys, command)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_check_writable_names_what_is_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_writable(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new" / "deeper" / "x.json"
    assert check_writable(tmp_path / "d", folder=True) == tmp_path / "d"
    with pytest.raises(ValueError, match="is a folder; give the name of the file"):
        check_writable(tmp_path / "d")
    with pytest.raises(ValueError, match="is a file, not a folder; choose a folder"):
        check_writable(tmp_path / "f", folder=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'f'} is a file, not a folder"):
        check_writable(tmp_path / "f" / "a" / "b.json")


def test_check_outputs_allows_new_files_beside_inputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    check_outputs([data / "report.json"], [data])  # a new file in an input folder
    with pytest.raises(ValueError, match="inputs"):
        check_outputs([data / "dataset.json"], [data], overwrite=True)


def _background(models, image, **options):
    """A stand-in for the network where what is tested is the files: an all-background segmentation."""
    from napari_pgps.engine.inference import Segmentation

    return Segmentation(labels=image.with_array(np.zeros(image.array.shape[-3:], np.uint8)), volumes={})


# -- a full disk while writing ----------------------------------------------------------------------------------
def test_a_full_disk_ends_with_one_line_and_keeps_the_old_file(trained_phantom_run, image, tmp_path, monkeypatch,
                                                              capsys):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an earlier result")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("napari_pgps.engine.segment_volume", _background)
    monkeypatch.setattr(nib, "save", full)
    assert _segment(trained_phantom_run, image, out, "--overwrite") == 2
    err = _refused(capsys, "segment")
    assert f"cannot write {out}: No space left on device; free space or choose another folder" in err
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "seg.nii.gz"]  # no temporary file left


def test_a_full_disk_while_writing_json_ends_with_one_line(phantom_dataset, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    shutil.copytree(phantom_dataset / "labelsTr", tmp_path / "predictions")
    monkeypatch.setattr(os, "fsync", full)
    report = tmp_path / "out" / "eval.json"
    assert main(["evaluate", "--predictions", str(tmp_path / "predictions"), "--data", str(phantom_dataset),
                 "--json", str(report)]) == 2
    assert f"cannot write {report}: No space left on device" in _refused(capsys, "evaluate")
    assert list((tmp_path / "out").iterdir()) == []


def test_system_errors_are_told_as_file_faults_or_left_as_program_faults():
    assert file_fault(OSError(errno.ENOSPC, "No space left on device")) == \
        "cannot write: No space left on device; free space or choose another folder."
    assert file_fault(WriteError(errno.EACCES, "Permission denied", "/x/y.json")).startswith("cannot write /x/y.json:")
    assert file_fault(PermissionError(errno.EACCES, "Permission denied", "/x/in.nii")).startswith("cannot use /x/in.nii:")
    assert file_fault(ConnectionResetError(errno.ECONNRESET, "Connection reset")) is None


# -- numbers and YAML on the command line -----------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--learning-rate", "-1"], "--learning-rate (training.learning_rate) is -1.0"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--epochs", "0"], "--epochs"),
    (["--iterations-per-epoch", "0"], "--iterations-per-epoch"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-cases", "0"], "--max-cases"),
    (["--folds", "1"], "--folds"),
    (["--fold", "5"], "--fold (data.fold) is 5; it must be a fold of the 5-fold cross-validation, 0 to 4"),
    (["--fold", "-1"], "--fold"),
    (["--patch-size", "0", "32", "32"], "--patch-size (model.patch_size) is 0 32 32"),
    (["--spacing", "0", "1", "1"], "--spacing (model.spacing) is 0.0 1.0 1.0"),
    (["--spacing", "nan", "1", "1"], "--spacing (model.spacing) is nan 1.0 1.0"),
])
def test_bad_training_numbers_are_refused_in_one_line(phantom_dataset, tmp_path, capsys, flags, named):
    argv = ["train", "--data", str(phantom_dataset), "--out", str(tmp_path / "run"), "--device", "cpu", *flags]
    if "--epochs" not in flags:
        argv += ["--epochs", "1"]
    assert main(argv) == 2
    assert named in _refused(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_bad_numbers_in_a_config_file_name_the_file_and_setting(phantom_dataset, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {foreground_oversampling: 1.5}\n")
    assert main(["train", "--data", str(phantom_dataset), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    err = _refused(capsys, "train")
    assert f"{config}: data.foreground_oversampling is 1.5; it must be a probability in [0, 1]" in err


def test_malformed_yaml_is_one_line_with_its_line_and_column(phantom_dataset, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  epochs: 3\n batch_size: [2\n")
    assert main(["train", "--data", str(phantom_dataset), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    err = _refused(capsys, "train")
    assert f"{config}, line 3, column 2: not a readable YAML configuration" in err and "correct the file" in err


# -- the data path of a run --------------------------------------------------------------------------------------
def test_a_run_stores_its_data_path_absolute_and_resumes_from_another_folder(phantom_dataset, tmp_path, monkeypatch,
                                                                            capsys):
    from helpers import quick_config

    from napari_pgps import train
    from napari_pgps.engine import TrainingControl
    from napari_pgps.events import CheckpointSaved

    shutil.copytree(phantom_dataset, tmp_path / "work" / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    control = TrainingControl()
    for event in train(quick_config(Path("data"), epochs=2, iterations=1), tmp_path / "run", control=control):
        if isinstance(event, CheckpointSaved) and event.epoch == 1:
            control.stop()  # as Ctrl-C would
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()


# -- permissions of written files --------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = write_text_atomically(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.npy", suffix=".npy") as tmp:
            np.save(tmp, np.zeros(2))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.npy").stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomically(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


# -- one image in memory at a time ----------------------------------------------------------------------------------
def test_segment_holds_one_image_at_a_time(trained_phantom_run, image, tmp_path, monkeypatch, capsys):
    import napari_pgps.data.volume as volume
    import napari_pgps.engine as engine

    shutil.copy(image, image.with_name("w.nii.gz"))
    read, alive_at_each = [], []
    real_read = volume.read_image

    def reading(paths, **options):
        result = real_read(paths, **options)
        read.append(weakref.ref(result))
        return result

    def segmenting(models, image, **options):
        gc.collect()
        alive_at_each.append(sum(ref() is not None for ref in read))
        return _background(models, image, **options)

    monkeypatch.setattr(volume, "read_image", reading)
    monkeypatch.setattr(engine, "segment_volume", segmenting)
    assert _segment(trained_phantom_run, image.parent, tmp_path / "out") == 0
    assert len(read) == 4  # every input checked, then read again to segment
    assert alive_at_each == [1, 1]  # all the images were held at once before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.nii.gz", "w.nii.gz"]

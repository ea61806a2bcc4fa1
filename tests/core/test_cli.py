import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import write_dataset
from napari_pgps.cli import main


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--iterations-per-epoch", "2",
            "--patch-size", "8", "32", "32", "--device", "cpu", "--quiet", *extra]


@pytest.mark.parametrize("command", ["train", "segment", "evaluate", "schedule", "bench", "prune", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as ended:
        main([command, "--help"])
    assert ended.value.code == 0
    assert "usage: napari-pgps " + command in capsys.readouterr().out


def test_the_package_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "napari_pgps", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: napari-pgps train" in out.stdout


def test_the_cli_package_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "napari_pgps.cli", "schedule", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: napari-pgps schedule" in out.stdout


def test_train_segment_evaluate(tmp_path, phantom_dataset, capsys):
    assert main(_train_args(phantom_dataset, tmp_path / "run")) == 0
    assert "finished after 1 epochs" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "checkpoint_final.pt", "checkpoint_last.pt"):
        assert (tmp_path / "run" / name).is_file()

    source = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    assert main(["segment", "--model", str(tmp_path / "run"), "--input", str(source), "--output", str(tmp_path / "seg.nii.gz")]) == 0
    assert "lesion" in capsys.readouterr().out
    written, original = nib.load(str(tmp_path / "seg.nii.gz")), nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)

    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(phantom_dataset), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report) == {"mean_dice", "dice_per_label", "metrics", "means", "tolerance_mm", "cases"}
    assert set(report["dice_per_label"]) == {"lesion", "vessel"}
    assert len(report["cases"]) == 6 and report["cases"][0]["case"] == "case_000"
    assert f"mean Dice {report['mean_dice']:.4f}" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(phantom_dataset), "--split", "validation",
                 "--json", str(report_path)]) == 2  # the report of the first evaluation is kept...
    assert "--overwrite" in capsys.readouterr().err and len(json.loads(report_path.read_text())["cases"]) == 6
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(phantom_dataset), "--split", "validation",
                 "--json", str(report_path), "--overwrite"]) == 0  # ...unless replaced on purpose
    assert len(json.loads(report_path.read_text())["cases"]) == 1


def test_a_spacing_given_trains_at_it_and_segments_onto_the_inputs_grid(tmp_path, phantom_dataset):
    """``--spacing``: the run trains at it (the phantoms are 2.5 x 0.8 x 0.8 mm), and a segmentation lands back on
    the input's own grid and affine."""
    import yaml

    run = tmp_path / "run"
    assert main(_train_args(phantom_dataset, run, "--spacing", "2.5", "1.6", "1.6")) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["spacing"] == [2.5, 1.6, 1.6]
    source = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    assert main(["segment", "--model", str(run), "--input", str(source), "--output", str(tmp_path / "seg.nii.gz")]) == 0
    written, original = nib.load(str(tmp_path / "seg.nii.gz")), nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)


def test_segment_a_folder_with_nnunet_names(tmp_path, trained_phantom_run, phantom_dataset):
    (tmp_path / "in").mkdir()
    for i in range(2):
        shutil.copy(phantom_dataset / "imagesTr" / f"case_00{i}.nii.gz", tmp_path / "in" / f"p{i}_0000.nii.gz")
    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--tta"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.nii.gz", "p1.nii.gz"]


def _break(dataset, kind):
    image = dataset / "imagesTr" / "case_001.nii.gz"
    label = dataset / "labelsTr" / "case_001.nii.gz"
    loaded = nib.load(str(image))
    data = np.asanyarray(loaded.dataobj).astype(np.float32)
    if kind == "nan":
        data[1, 1, 1] = np.nan
        nib.save(nib.Nifti1Image(data, loaded.affine), str(image))
    elif kind == "2d":
        nib.save(nib.Nifti1Image(data[:, :, 0], loaded.affine), str(image))
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), loaded.affine), str(image))
    elif kind == "unreadable":
        image.write_bytes(b"\x1f\x8b garbage")
    elif kind == "missing":
        image.unlink()
    elif kind == "empty":
        shutil.rmtree(dataset / "imagesTr")
        (dataset / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}}))
    elif kind == "undeclared":
        data = np.asanyarray(nib.load(str(label)).dataobj).copy()
        data[0, 0, 0] = 9
        nib.save(nib.Nifti1Image(data, loaded.affine), str(label))
    elif kind == "shape":
        data = np.asanyarray(nib.load(str(label)).dataobj)[:-2]
        nib.save(nib.Nifti1Image(data, loaded.affine), str(label))
    elif kind == "affine":
        data = np.asanyarray(nib.load(str(label)).dataobj)
        nib.save(nib.Nifti1Image(data, loaded.affine * 2), str(label))
    elif kind == "fractional":
        data = np.asanyarray(nib.load(str(label)).dataobj).astype(np.float32) + 0.5
        nib.save(nib.Nifti1Image(data, loaded.affine), str(label))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("nan", "NaN or infinite"),
        ("2d", "2D"),
        ("4d", "2 channel(s), but dataset.json declares 1"),
        ("unreadable", "cannot read"),
        ("missing", "file not found"),
        ("empty", "no training case"),
        ("undeclared", "not declared in dataset.json"),
        ("shape", "label shape"),
        ("affine", "grid differs from the image's"),
        ("fractional", "non-integer"),
    ],
)
def test_bad_datasets_exit_2_and_write_nothing(tmp_path, kind, message, capsys):
    dataset = write_dataset(tmp_path / "data", cases=3)
    _break(dataset, kind)
    assert main(_train_args(dataset, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("napari-pgps train: error:")
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_options_and_run_folders(tmp_path, phantom_dataset, trained_phantom_run, capsys):
    assert main(_train_args(phantom_dataset, tmp_path / "run")[:-7] + ["--patch-size", "9", "32", "32", "--device", "cpu"]) == 2
    assert "cannot be taken by the network" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    assert main(_train_args(tmp_path / "nowhere", tmp_path / "run")) == 2
    assert "dataset folder not found" in capsys.readouterr().err

    assert main(_train_args(phantom_dataset, trained_phantom_run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    assert "no checkpoint_last.pt to resume from" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "3"], "--epochs"),
    (["--pdl"], "--pdl"),
    (["--prm-variant", "B"], "--prm-variant"),
    (["--progressive-pruning"], "--progressive-pruning"),
    (["--pruning-rule", "short-run"], "--pruning-rule"),
])
def test_resume_refuses_the_flags_it_would_ignore(tmp_path, flags, named, capsys):
    # a resumed run keeps its stored configuration: a flag that would change it is refused, not silently dropped
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert "--resume continues with the run's stored configuration" in err and named in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [(b"garbage", "damaged or not a napari-pgps checkpoint"), (None, "not a napari-pgps checkpoint")])
def test_bad_checkpoints_exit_2(tmp_path, phantom_dataset, content, message, capsys):
    checkpoint = tmp_path / "model.pt"
    if content is None:
        torch.save({"state_dict": {}}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    source = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    assert main(["segment", "--model", str(checkpoint), "--input", str(source), "--output", str(tmp_path / "o.nii.gz")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_segment_checks_every_input_before_writing(tmp_path, trained_phantom_run, phantom_dataset, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(phantom_dataset / "imagesTr" / "case_000.nii.gz", tmp_path / "in" / "a.nii.gz")
    bad = np.zeros((8, 8, 8), np.float32)
    bad[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "in" / "b.nii.gz"))
    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2
    assert "b.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(tmp_path / "in" / "a.nii.gz"),
                 "--output", str(tmp_path / "o.nii.gz"), "--patch-size", "5", "32", "32"]) == 2
    assert "cannot be taken" in capsys.readouterr().err


@pytest.mark.parametrize("bad, words", [((1, 16, 16), "a single slice"), ((8, 8, 8, 2), "2 channel(s), but the model")],
                         ids=["single-slice", "two-channels"])
def test_segment_refuses_a_volume_it_cannot_segment_before_writing_any(tmp_path, trained_phantom_run, phantom_dataset,
                                                                      capsys, bad, words):
    (tmp_path / "in").mkdir()  # a.nii.gz is segmented first, z.nii.gz (bad) last
    shutil.copy(phantom_dataset / "imagesTr" / "case_000.nii.gz", tmp_path / "in" / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.random.rand(*bad).astype(np.float32), np.eye(4)), str(tmp_path / "in" / "z.nii.gz"))
    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out") + "/"]) == 2
    err = capsys.readouterr().err
    assert "z.nii.gz" in err and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_demo_without_a_display_runs_headless(tmp_path, monkeypatch, capsys):
    import napari_pgps.demo as demo

    ran = []
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(demo, "run_headless_demo", lambda out, device: ran.append((out, device)))
    assert main(["demo", "--out", str(tmp_path / "d"), "--device", "cpu"]) == 0
    assert ran == [(tmp_path / "d", "cpu")]
    assert "no display found" in capsys.readouterr().out


def test_patch_size_lists_ranges_and_per_axis_sizes():
    from napari_pgps.cli.evaluate import parse_patch_sizes
    from napari_pgps.errors import InputError

    assert parse_patch_sizes(["16:32:8", "40x56x40", "24"]) == [(16, 16, 16), (24, 24, 24), (32, 32, 32), (40, 56, 40), (24, 24, 24)]
    for bad in ("16:8:8", "4x4", "big"):
        with pytest.raises(InputError, match="--patch-sizes"):
            parse_patch_sizes([bad])


def test_evaluate_sweeps_inference_patch_sizes(tmp_path, trained_phantom_run, phantom_dataset, capsys):
    out = tmp_path / "sweep.json"
    assert main(["evaluate", "--model", str(trained_phantom_run), "--data", str(phantom_dataset), "--split", "validation",
                 "--patch-sizes", "8x16x16", "8x32x32", "16x32x32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["patch"] for row in report["patch_sizes"]] == [[8, 16, 16], [8, 32, 32], [16, 32, 32]]
    assert report["training_patch"] == [8, 32, 32]
    assert all(0 <= row["mean_dice"] <= 1 and set(row["dice_per_label"]) == {"lesion", "vessel"} for row in report["patch_sizes"])
    assert capsys.readouterr().out.count("mean Dice") == 3
    assert main(["evaluate", "--model", str(trained_phantom_run), "--data", str(phantom_dataset), "--patch-sizes", "9x32x32"]) == 2
    assert "cannot be taken" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_sigterm_ends_the_bench_and_its_training_process(phantom_dataset, tmp_path):
    """A bench stopped with SIGTERM (kill, a scheduler, a CI limit) takes its training process with it: a left-over
    one would hold the CPU for the rest of its run."""
    import os
    import signal
    import time

    command = [sys.executable, "-m", "napari_pgps", "bench", "--data", str(phantom_dataset), "--out",
               str(tmp_path / "bench"), "--profile", "quick", "--seeds", "1", "--epochs", "200", "--device", "cpu"]
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [bench.stdout.readline() for _ in range(1)]
        while "training..." not in lines[-1] and lines[-1] and len(lines) < 50:
            lines.append(bench.stdout.readline())
        assert "training..." in lines[-1], lines
        children: list[int] = []
        for _ in range(200):  # the training process has started
            children = [int(c) for c in open(f"/proc/{bench.pid}/task/{bench.pid}/children").read().split()]
            if children:
                break
            time.sleep(0.1)
        assert children
        time.sleep(3)  # into its training
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        for _ in range(100):
            alive = [c for c in children if os.path.exists(f"/proc/{c}") and "Z" not in _state(c)]
            if not alive:
                break
            time.sleep(0.1)
        assert not alive
    finally:
        bench.kill()
        bench.wait()


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_segment_groups_nnunet_channel_files_and_names_outputs_by_case(tmp_path):
    import argparse

    from napari_pgps.cli.segment import segment_inputs, segment_plan
    from napari_pgps.errors import InputError

    source = tmp_path / "in"
    source.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (source / name).write_bytes(b"")
    assert segment_inputs(source, 2) == [[source / "a_0000.nii.gz", source / "a_0001.nii.gz"],
                                         [source / "b_0000.nii.gz", source / "b_0001.nii.gz"]]
    assert len(segment_inputs(source, 1)) == 4  # one channel: every volume file is an image of its own
    args = argparse.Namespace(input=str(source), output=str(tmp_path / "out") + "/", uncertainty=True, model=[],
                              overwrite=False, series=None, output_format=None, save_probabilities=False, report=None,
                              reference=None)
    assert [job.output.name for job in segment_plan(args, 2)] == ["a.nii.gz", "b.nii.gz"]
    (source / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="the model takes 2 channels; case 'b' lacks b_0001.nii.gz"):
        segment_inputs(source, 2)


@pytest.mark.parametrize("mode, options", [("pgps-efficiency", []), ("pgps-performance", ["--performance-batch", "miccai"]),
                                           ("rpss", []), ("augment", []), ("pgps-efficiency", ["--growth", "miccai"])])
def test_schedule_prints_the_schedule_of_a_network_with_the_poolings_given(mode, options, capsys):
    from napari_pgps.config import ScheduleOptions
    from napari_pgps.curriculum import build_schedule

    assert main(["schedule", "--final-patch", "40", "64", "48", "--poolings", "3", "4", "4", "--epochs", "30",
                 "--batch-size", "2", "--mode", mode, "--json", *options]) == 0
    growth = "miccai" if "--growth" in options else "journal"
    performance_batch = "miccai" if "--performance-batch" in options else "voxels"
    expected = build_schedule(mode, (40, 64, 48), (3, 4, 4), 30, 2,
                              ScheduleOptions(growth=growth, performance_batch=performance_batch))
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(expected.to_dict()))


def test_schedule_refuses_a_patch_off_the_grid_and_negative_poolings(capsys):
    base = ["schedule", "--epochs", "10", "--batch-size", "2", "--mode", "constant", "--final-patch"]
    assert main([*base, "40", "56", "40", "--poolings", "3", "4", "3"]) == 2
    assert "multiple of 8 x 16 x 8 (its poolings). Try 40 64 40." in capsys.readouterr().err
    assert main([*base, "64", "64", "64", "--poolings", "-1", "2", "2"]) == 2
    assert "--poolings: a network pools each axis 0 or more times, got -1 2 2." in capsys.readouterr().err

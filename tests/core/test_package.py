"""The package's faces: no Qt in the engine, a valid napari manifest, the sample data."""

import subprocess
import sys

import numpy as np

ENGINE_MODULES = ["napari_pgps", "napari_pgps.engine", "napari_pgps.cli", "napari_pgps.tasks.evaluation", "napari_pgps.demo",
                  "napari_pgps.data", "napari_pgps.models", "napari_pgps.curriculum", "napari_pgps._sample_data",
                  "napari_pgps.tasks.pruning", "napari_pgps.tasks.bench", "napari_pgps.tasks.training"]


def test_engine_imports_no_qt_and_no_napari():
    code = (
        f"import importlib, sys\nfor m in {ENGINE_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_opening_and_saving_a_file_waits_for_no_torch():
    """napari imports the reader and the writer to open or save a file: they need neither torch nor MONAI (seconds
    to import), and the package's API (``napari_pgps.train`` ...) is imported when first used."""
    code = ("import sys\nimport napari_pgps._reader, napari_pgps._writer, napari_pgps._sample_data\n"
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
            "from napari_pgps import train\nprint(train.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "napari_pgps.tasks.training True"]


def test_the_command_lines_help_waits_for_no_torch():
    """``napari-pgps --help``, a command's help and a refused flag are answered before torch is imported: the
    command line's modules take their constants from the engine's light modules, and a package's names are imported
    when first used."""
    code = ("import sys\nfrom napari_pgps.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['segment', '--runtime', 'nope']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n        print('exit', exc.code, file=sys.stderr)\n"
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
            "import napari_pgps.engine as engine\nprint(engine.load_model.__module__, 'load_model' in dir(engine))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("exit 0") == 2 and "exit 2" in out.stderr and "invalid choice: 'nope'" in out.stderr
    assert out.stdout.splitlines()[-2:] == ["[]", "napari_pgps.engine.inference True"]
    assert "--time-budget DURATION" in out.stdout and "checkpoint_final.pt" in out.stdout


def test_manifest_is_valid_and_sample_data_resolves():
    from npe2 import PluginManifest
    from npe2.manifest.utils import import_python_name

    manifest = PluginManifest.from_distribution("napari-pgps")
    assert manifest.name == "napari-pgps"
    sample = manifest.contributions.sample_data[0]
    command = next(c for c in manifest.contributions.commands if c.id == sample.command)
    layers = import_python_name(command.python_name)()
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = layers
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (32, 96, 96)
    assert image_meta["scale"] == labels_meta["scale"] == (2.5, 0.8, 0.8)
    fractions = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert 0 < fractions[1] < 0.02 and 0 < fractions[2] < 0.02


def test_npe2_validate_passes():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-pgps"], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_the_packaged_manifest_is_the_top_level_one():
    """napari.yaml lives at the top level; the package's copy is a link to it (or, in a wheel, its copy)."""
    from pathlib import Path

    import napari_pgps

    packaged = Path(napari_pgps.__file__).with_name("napari.yaml")
    top_level = Path(__file__).resolve().parents[2] / "napari.yaml"
    assert packaged.read_bytes() == top_level.read_bytes()

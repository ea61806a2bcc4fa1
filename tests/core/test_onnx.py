"""ONNX: export --onnx puts the network that segments into MODEL.zip as network.onnx, checked against torch;
segment and evaluate --runtime onnx run the same sliding window with ONNX Runtime on the CPU, from the zip."""

import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'napari-pgps[onnx]')")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'napari-pgps[onnx]')")

from helpers import assert_same_labels, quick_config  # noqa: E402
from napari_pgps._sample_data import make_phantom  # noqa: E402
from napari_pgps.cli import main  # noqa: E402
from napari_pgps.data.preprocessing import PreprocessingPlan, preprocess_image  # noqa: E402
from napari_pgps.data.volume import Volume, affine_from_spacing, read_volume, write_volume  # noqa: E402
from napari_pgps.engine import load_model, onnx_runtime, segment_volume  # noqa: E402
from napari_pgps.engine.device import cpu_convolutions  # noqa: E402
from napari_pgps.engine.onnx_runtime import OnnxExportError, OnnxNetwork  # noqa: E402
from napari_pgps.engine.file_names import MANIFEST, ONNX  # noqa: E402
from napari_pgps.errors import CheckpointError, InputError  # noqa: E402
from napari_pgps.tasks.export import export_model  # noqa: E402

SPACING = (2.5, 0.8, 0.8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_phantom_run):
    """The phantom model exported with --onnx: the package, which holds its ONNX network."""
    return export_model(trained_phantom_run, tmp_path_factory.mktemp("onnx-package") / "phantom.zip", onnx=True)


def _manifest(package):
    with zipfile.ZipFile(package) as archive:
        return json.loads(archive.read(MANIFEST))


def _onnx_member(package):
    with zipfile.ZipFile(package) as archive:
        return archive.read(ONNX)


def _with_onnx_member(package, target, data, *, relist):
    """A copy of ``package`` whose ONNX member holds ``data``; listed in the manifest with its own size and hash when
    ``relist`` (so that only the ONNX reader can refuse it), else under the original's."""
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(target, "w") as archive:
        for name in source.namelist():
            content = source.read(name)
            if name == MANIFEST and relist:
                manifest = json.loads(content)
                manifest["members"][ONNX] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                content = json.dumps(manifest).encode()
            archive.writestr(name, data if name == ONNX else content)
    return target


def _phantom_volume(seed=7):
    image, _ = make_phantom(seed, shape=(16, 40, 40), spacing=SPACING)
    return Volume(image.astype(np.float32), affine_from_spacing(SPACING))


def _torch_logits(network, windows):
    with torch.inference_mode(), cpu_convolutions(torch.device("cpu")):
        return network(torch.as_tensor(windows)).numpy()


def test_export_puts_a_checked_onnx_network_with_a_dynamic_batch_into_the_package(exported, trained_phantom_run):
    package = exported
    assert [p.name for p in package.parent.iterdir()] == ["phantom.zip"]  # one file: no .onnx beside, no temporary
    with zipfile.ZipFile(package) as archive:
        assert ONNX in archive.namelist() and archive.getinfo(ONNX).compress_type == zipfile.ZIP_STORED
    manifest = _manifest(package)
    record, data = manifest["onnx"], _onnx_member(package)
    assert manifest["members"][ONNX] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert record["member"] == ONNX and "file" not in record
    assert record["opset"] == onnx_runtime.OPSET and record["batch"] == "dynamic"
    assert record["patch_size"] == [8, 32, 32] and record["baked_from_hypernetwork"] is False
    assert record["max_abs_logit_difference"] <= 1e-4 and "a window of case" in record["checked_on"]
    with zipfile.ZipFile(package) as archive:
        card = archive.read("model_card.md").decode()
    assert "**ONNX network**: `network.onnx`, windows of 8 x 32 x 32" in card  # the people it is shared with are told

    graph = onnx.load_from_string(data)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == ["logits"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 32, 32]
    # no deep-supervision head is in the graph: the only 1x1x1 convolution to the 3 labels is the output block
    heads = [t for t in graph.graph.initializer if len(t.dims) == 5 and t.dims[0] == 3 and list(t.dims[2:]) == [1, 1, 1]]
    assert len(heads) == 1

    model = load_model(trained_phantom_run, "cpu")
    preprocessed, _ = preprocess_image(_phantom_volume(), PreprocessingPlan.of(model.config))
    window = preprocessed[None, :, 4:12, 4:36, 4:36]  # a phantom window (1, 1, 8, 32, 32)
    session = OnnxNetwork(data)
    assert session.patch_size == (8, 32, 32) and (session.in_channels, session.out_channels) == (1, 3)
    rng = np.random.default_rng(1)
    for batch in (window, np.concatenate([window, rng.standard_normal((2, 1, 8, 32, 32)).astype(np.float32)])):
        got = session(torch.as_tensor(batch)).numpy()
        expected = _torch_logits(model.network.eval(), batch)
        assert got.shape == expected.shape == (len(batch), 3, 8, 32, 32)
        assert np.abs(got - expected).max() <= 1e-4


def test_segment_with_onnx_runtime_gives_torch_labels(exported, tmp_path, capsys):
    package = exported
    image = _phantom_volume()
    by_torch = segment_volume(load_model(package, "cpu"), image, keep_probabilities=True)
    by_onnx = segment_volume(load_model(package, "cpu", runtime="onnx"), image, keep_probabilities=True)
    assert np.abs(by_onnx.probabilities - by_torch.probabilities).max() <= 1e-4
    assert_same_labels(by_onnx, by_torch)

    source = write_volume(image, tmp_path / "case.nii.gz")
    for runtime in ("torch", "onnx"):
        assert main(["segment", "--model", str(package), "--input", str(source), "--output",
                     str(tmp_path / f"{runtime}.nii.gz"), "--runtime", runtime]) == 0
    for runtime, result in (("torch", by_torch), ("onnx", by_onnx)):  # the command line segments the same way
        np.testing.assert_array_equal(read_volume(tmp_path / f"{runtime}.nii.gz", kind="labels").array,
                                      result.labels.array)
    capsys.readouterr()
    assert main(["segment", "--model", str(package), "--input", str(source), "--output", str(tmp_path / "x.nii.gz"),
                 "--runtime", "onnx", "--patch-size", "8", "16", "16"]) == 2
    assert "takes windows of 8 x 32 x 32 only" in capsys.readouterr().err
    with pytest.raises(InputError, match="runs on the CPU"):
        load_model(package, "cuda", runtime="onnx")


def test_evaluate_with_onnx_runtime_gives_torch_dice(exported, trained_phantom_run, phantom_dataset, tmp_path,
                                                      monkeypatch, capsys):
    windows = []  # the window batches ONNX Runtime segments: evaluate must send them there, not to torch
    run = OnnxNetwork.__call__
    monkeypatch.setattr(OnnxNetwork, "__call__", lambda self, batch: windows.append(len(batch)) or run(self, batch))
    reports = {}
    for runtime in ("torch", "onnx"):
        before = len(windows)
        assert main(["evaluate", "--model", str(exported), "--data", str(phantom_dataset), "--runtime", runtime,
                     "--device", "cpu", "--json", str(tmp_path / f"{runtime}.json")]) == 0
        assert (len(windows) > before) == (runtime == "onnx")
        reports[runtime] = json.loads((tmp_path / f"{runtime}.json").read_text())
    by_torch, by_onnx = reports["torch"], reports["onnx"]
    assert len(by_onnx["cases"]) == len(by_torch["cases"]) == 6
    assert by_onnx["mean_dice"] == pytest.approx(by_torch["mean_dice"], abs=1e-4) and by_torch["mean_dice"] > 0
    for onnx_case, torch_case in zip(by_onnx["cases"], by_torch["cases"]):
        assert onnx_case["case"] == torch_case["case"]
        assert onnx_case["dice_per_label"] == pytest.approx(torch_case["dice_per_label"], abs=1e-4)
    capsys.readouterr()

    plain = export_model(trained_phantom_run, tmp_path / "plain.zip")
    assert main(["evaluate", "--model", str(plain), "--data", str(phantom_dataset), "--runtime", "onnx"]) == 2
    assert "holds no ONNX network" in capsys.readouterr().err


def test_onnx_runtime_needs_a_package_exported_with_onnx(exported, trained_phantom_run, tmp_path, capsys,
                                                         monkeypatch):
    plain = export_model(trained_phantom_run, tmp_path / "plain.zip")
    assert ONNX not in zipfile.ZipFile(plain).namelist() and "onnx" not in _manifest(plain)
    source = write_volume(_phantom_volume(), tmp_path / "case.nii.gz")
    assert main(["segment", "--model", str(plain), "--input", str(source), "--output", str(tmp_path / "seg.nii.gz"),
                 "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "holds no ONNX network" in err and "--onnx" in err and not (tmp_path / "seg.nii.gz").exists()
    with pytest.raises(InputError, match="export --model RUN_DIR --out MODEL.zip --onnx"):
        load_model(trained_phantom_run, "cpu", runtime="onnx")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as without the onnx extra
    with pytest.raises(InputError, match=r"pip install 'napari-pgps\[onnx\]'"):
        load_model(exported, "cpu", runtime="onnx")
    monkeypatch.undo()
    alone = tmp_path / "elsewhere" / "renamed.zip"  # the package is all it takes: moved and renamed, it still runs
    alone.parent.mkdir()
    alone.write_bytes(exported.read_bytes())
    assert load_model(alone, "cpu", runtime="onnx").onnx.patch_size == (8, 32, 32)
    assert [p.name for p in alone.parent.iterdir()] == ["renamed.zip"]  # nothing was extracted beside it


def test_a_damaged_onnx_member_is_refused(exported, tmp_path, capsys):
    package = exported
    # bytes flipped inside the stored member of the zip file itself: its CRC no longer holds
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo(ONNX)
    raw = bytearray(package.read_bytes())
    name_and_extra = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") + int.from_bytes(
        raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[info.header_offset + 30 + name_and_extra + info.file_size // 2] ^= 0xFF
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(bytes(raw))
    for runtime in ("onnx", "torch"):  # a damaged package is refused whatever runs it
        with pytest.raises(CheckpointError, match=r"flipped\.zip: network\.onnx cannot be read .*the package is damaged"):
            load_model(flipped, "cpu", runtime=runtime)

    # a member replaced inside a well-formed zip (a byte changed, then cut short): not what the manifest lists
    data = bytearray(_onnx_member(package))
    data[len(data) // 2] ^= 0xFF
    altered = _with_onnx_member(package, tmp_path / "altered.zip", bytes(data), relist=False)
    with pytest.raises(CheckpointError, match=r"altered\.zip: network\.onnx is not the file its manifest describes"):
        load_model(altered, "cpu", runtime="onnx")
    cut = _with_onnx_member(package, tmp_path / "cut.zip", bytes(data[:1000]), relist=False)
    source = write_volume(_phantom_volume(), tmp_path / "case.nii.gz")
    assert main(["segment", "--model", str(cut), "--input", str(source), "--output", str(tmp_path / "seg.nii.gz"),
                 "--runtime", "onnx"]) == 2
    assert "altered or damaged" in capsys.readouterr().err and not (tmp_path / "seg.nii.gz").exists()

    # garbage listed in the manifest with its own size and hash: refused by the ONNX reader, never run
    garbage = b"\x08\x07garbage that is not an ONNX graph" * 10
    relisted = _with_onnx_member(package, tmp_path / "relisted.zip", garbage, relist=True)
    assert load_model(relisted, "cpu").onnx is None  # torch does not need the ONNX network
    with pytest.raises(CheckpointError, match=r"relisted\.zip \(network\.onnx\): (not a readable ONNX file|ONNX "
                                              r"Runtime cannot load)"):
        load_model(relisted, "cpu", runtime="onnx")
    with pytest.raises(CheckpointError, match="export the model again with its ONNX network"):
        OnnxNetwork(b"not onnx at all")


def test_a_graph_with_external_data_is_refused():
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="/etc/passwd")
    node = helper.make_node("Add", ["image", "w"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, 2, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1, 2, 2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CheckpointError, match="external data"):
        OnnxNetwork(model.SerializeToString())


def test_export_refuses_an_onnx_network_that_computes_other_logits(trained_phantom_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(onnx_runtime, "logit_difference", lambda network, session, windows: 3e-3)
    with pytest.raises(OnnxExportError, match=r"differ from torch's by up to 0\.003 .*at most 0\.0001"):
        export_model(trained_phantom_run, tmp_path / "model.zip", onnx=True)
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(tmp_path / "model.zip"), "--onnx"]) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    assert main(["export", "--model", str(trained_phantom_run), "--out", str(tmp_path / "model.zip"),
                 "--patch-size", "8", "32", "32"]) == 2
    assert "goes with --onnx" in capsys.readouterr().err
    assert main(["export", "--model", str(trained_phantom_run), "--out", str(tmp_path / "model.zip"), "--onnx",
                 "--patch-size", "8", "30", "32"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_hypernetwork_is_baked_at_the_chosen_window(tmp_path, phantom_dataset, capsys):
    from napari_pgps import train

    config = quick_config(phantom_dataset, epochs=1, iterations=2)
    config.model.architecture = "hypernet"
    config.model.hypernet_hidden = 8
    for _ in train(config, tmp_path / "hn"):
        pass
    package = tmp_path / "hn.zip"
    assert main(["export", "--model", str(tmp_path / "hn"), "--out", str(package), "--onnx",
                 "--patch-size", "8", "16", "16"]) == 0
    assert "hn.zip (network.onnx): ONNX network, opset 17, windows of 8 x 16 x 16, dynamic batch" in capsys.readouterr().out
    record = _manifest(package)["onnx"]
    assert record["baked_from_hypernetwork"] is True and record["patch_size"] == [8, 16, 16]

    image = _phantom_volume(3)
    by_onnx = segment_volume(load_model(package, "cpu", runtime="onnx"), image, keep_probabilities=True)
    by_torch = segment_volume(load_model(package, "cpu"), image, patch_size=(8, 16, 16), keep_probabilities=True)
    assert np.abs(by_onnx.probabilities - by_torch.probabilities).max() <= 1e-4
    assert_same_labels(by_onnx, by_torch)


@pytest.mark.parametrize("name", ["unet", "prm"])
def test_other_networks_export_with_the_same_logits(name):
    from napari_pgps.config import ModelConfig
    from napari_pgps.models import architecture, build_network, level_channels, plan_unet

    plan = plan_unet((16, 32, 32), (1.0, 1.0, 1.0))
    model = ModelConfig(architecture=name, patch_size=(16, 32, 32), kernel_sizes=plan.kernel_sizes,
                        strides=plan.strides, channels=level_channels(len(plan.strides), 8, 64), out_channels=3)
    if architecture(model).resolve is not None:
        model.channels = None
        architecture(model).resolve(model)
    torch.manual_seed(0)
    network = build_network(model).eval()
    windows = np.random.default_rng(0).standard_normal((2, 1, 16, 32, 32)).astype(np.float32)
    data, difference = onnx_runtime.export_checked(network, 1, (16, 32, 32), windows)
    assert difference <= 1e-4 and OnnxNetwork(data).patch_size == (16, 32, 32)


def test_instance_norm_is_exported_as_exactly_as_torch_computes_it():
    """ONNX Runtime's InstanceNormalization sums a whole window in one float32 pass (errors of ~1e-4 on large
    windows); the exported graph takes the means one axis at a time instead."""
    import onnxruntime

    norm = torch.nn.InstanceNorm3d(4, affine=True).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(1, 4, 64, 64, 64, generator=torch.Generator().manual_seed(0)) * 3 + 100
    with torch.no_grad():
        reference = norm.double()(x.double()).numpy()
        norm.float()
        staged = onnx_runtime._StagedInstanceNorm(norm)(x).numpy()
    assert np.abs(staged - reference).max() < 2e-5
    session = onnxruntime.InferenceSession(onnx_runtime.onnx_bytes(norm, 4, (64, 64, 64)),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    assert np.abs(got - reference).max() < 2e-5

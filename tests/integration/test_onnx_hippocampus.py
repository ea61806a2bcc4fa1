"""ONNX on real MRI (Task04 hippocampus, from ../shared/data): ONNX Runtime computes torch's probabilities.

A default-sized network (the planned patch and channels) trained for a few
steps is exported with --onnx, which checks it on a window of a real case;
then a held-out case is segmented with both runtimes through the whole path
(reorientation, resampling, sliding window, restoring to the input's grid).
"""

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'napari-pgps[onnx]')")

from helpers import assert_same_labels  # noqa: E402
from napari_pgps import train  # noqa: E402
from napari_pgps.config import RunConfig  # noqa: E402
from napari_pgps.data.dataset import case_files, read_case, read_dataset_info  # noqa: E402
from napari_pgps.engine import load_model, segment_volume  # noqa: E402
from napari_pgps.tasks.export import export_model  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hippocampus_package(tmp_path_factory, hippocampus):
    config = RunConfig()
    config.data.path = str(hippocampus)
    config.data.max_cases = 6
    config.training.device = "cpu"
    config.training.epochs = 1
    config.training.iterations_per_epoch = 4
    config.training.validate_every = 1
    folder = tmp_path_factory.mktemp("onnx-hippocampus")
    for _ in train(config, folder / "run"):
        pass
    return export_model(folder / "run", folder / "hippocampus.zip", onnx=True)


def test_onnx_probabilities_and_labels_match_torch_on_a_real_case(hippocampus_package, hippocampus):
    torch_model = load_model(hippocampus_package, "cpu")
    onnx_model = load_model(hippocampus_package, "cpu", runtime="onnx")
    record = onnx_model.onnx
    assert record.patch_size == torch_model.patch_size and max(torch_model.patch_size) >= 32  # the planned patch
    info = read_dataset_info(hippocampus)
    held_out = [f for f in case_files(info, require_labels=False) if f.name not in set(torch_model.split["training"])]
    case = read_case(info, held_out[-1])  # a case the network has not seen

    by_torch = segment_volume(torch_model, case.image, keep_probabilities=True)
    by_onnx = segment_volume(onnx_model, case.image, keep_probabilities=True)
    assert by_onnx.probabilities.shape == by_torch.probabilities.shape == (3, *case.image.shape)
    difference = np.abs(by_onnx.probabilities - by_torch.probabilities).max()
    assert difference <= 1e-4, f"ONNX Runtime's probabilities differ from torch's by {difference:.3g} on {case.name}"
    assert_same_labels(by_onnx, by_torch)
    assert by_onnx.labels.affine.tolist() == by_torch.labels.affine.tolist()

"""The segmenting network as an ONNX graph, and ONNX Runtime as the sliding window's predictor.

``napari-pgps export --onnx`` writes the network that segments (for a
hypernetwork, the plain network baked at the chosen patch) into the model
package as its optional member ``network.onnx``
(:data:`~napari_pgps.engine.file_names.ONNX`): the manifest lists its size and
SHA-256 as it lists every member, and records under ``onnx`` the opset, the
window it takes and how far its logits were from torch's when it was written.
``segment`` / ``evaluate --runtime onnx`` (``load_model(..., runtime="onnx")``)
take the member's bytes, already checked against the manifest when the
package was read, hand them to an ONNX Runtime session (from memory: nothing
is extracted) and run it on the CPU in place of the torch network; everything
around the network (preprocessing, sliding window, Gaussian weighting,
restoring, post-processing) stays the same.

The graph maps preprocessed windows ``image`` (batch, channels, Z, Y, X) to
``logits`` (batch, labels, Z, Y, X): the batch axis is dynamic, the spatial
axes are the window it was exported for (the sliding window always feeds that
window). It is written by torch's TorchScript-based exporter (``dynamo=False``;
it needs no ``onnxscript``), which traces the inference forward (eval mode: no
deep-supervision head reaches the output) and also takes the PSP-Seg network,
whose branch masks decide its control flow (torch.export refuses it).

Instance normalisation is written as its arithmetic, with the mean taken one
axis at a time (:class:`_StagedInstanceNorm`): ONNX Runtime's own
``InstanceNormalization`` and ``ReduceMean`` over a whole window sum in one
float32 pass, which put a trained LA network's logits (96^3 windows) 2.8e-4
from torch's and from a float64 reference (torch: 6e-6); summed per axis they
are as close as torch's (6e-6). The price, in a smoke run on a loaded machine:
a hippocampus window batch took 6% longer than with the fused kernel.

An ONNX file is data: it is read with ``onnx`` (checked, never run) and run by
ONNX Runtime's CPU provider, with no custom operator library; a graph that
points at external data files is refused. ``onnx`` and ``onnxruntime`` are the
optional ``onnx`` extra (``pip install 'napari-pgps[onnx]'``) and are imported
only when ONNX is asked for.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError
from .device import cpu_convolutions
from .file_names import ONNX

OPSET = 17
"""ONNX opset of the exported graph: every operator the networks use is in it, and ONNX Runtime has run it since 1.13."""
INPUT = "image"
OUTPUT = "logits"
TOLERANCE = 1e-4
"""The largest absolute difference of logits between ONNX Runtime and torch an export accepts."""
MANIFEST_KEY = "onnx"
"""The package manifest's record of its ONNX network (opset, window, check against torch)."""

_INSTALL_HINT = "ONNX needs the onnx extra: pip install 'napari-pgps[onnx]' (the onnx and onnxruntime packages)"
_EXPORT_HINT = "export the model again with its ONNX network (napari-pgps export --model RUN_DIR --out MODEL.zip --onnx)"


class OnnxExportError(InputError):
    """The ONNX graph of a network cannot be written, or it does not compute what the torch network computes."""


def _modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise InputError(f"{_INSTALL_HINT}; {exc}.") from None
    return onnx, onnxruntime


def onnx_bytes(network: nn.Module, in_channels: int, patch_size: Sequence[int], *,
               metadata: Optional[dict[str, str]] = None) -> bytes:
    """The ONNX graph (bytes of a ``.onnx`` file) of ``network``'s inference forward for windows of ``patch_size``.

    A copy of the network is traced on the CPU in eval mode, its instance
    norms rewritten (:class:`_StagedInstanceNorm`); the network itself is not
    changed. Its input ``image`` and output ``logits`` have a dynamic batch
    axis. ``metadata`` goes into the model's properties.

    Raises:
        OnnxExportError: the exporter cannot trace the network.
    """
    onnx, _ = _modules()
    patch = tuple(int(p) for p in patch_size)
    example = torch.zeros((1, int(in_channels), *patch), dtype=torch.float32)
    parameter = next(network.parameters(), None)
    if parameter is not None and (parameter.device.type != "cpu" or parameter.dtype != torch.float32):
        raise OnnxExportError("export the network on the CPU in float32 (it is on "
                              f"{parameter.device} in {parameter.dtype}).")
    traced = _with_staged_instance_norms(copy.deepcopy(network)).eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # tracing warns about Python branches (PSP-Seg's branch masks are constants of a trained model)
            warnings.simplefilter("ignore")
            # no constant folding here: on an untrained PSP-Seg network (equal norm weights) the exporter's folding
            # left a node reading an initializer it had dropped; ONNX Runtime folds the constants when it loads
            torch.onnx.export(traced, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                              do_constant_folding=False)
    except Exception as exc:  # the exporter raises many kinds: every one means this network cannot be exported
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise OnnxExportError(f"torch could not export the {type(network).__name__} network to ONNX "
                              f"({type(exc).__name__}: {first}).") from None
    model = onnx.load_from_string(buffer.getvalue())
    if metadata:
        onnx.helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    return model.SerializeToString()


class _StagedInstanceNorm(nn.Module):
    """Instance normalisation (input statistics, biased variance) computed as the exported graph should compute it:
    means taken one spatial axis at a time, so that no float32 sum runs over a whole window."""

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mean(values: torch.Tensor) -> torch.Tensor:
            for axis in range(values.dim() - 1, 1, -1):
                values = values.mean(axis, keepdim=True)
            return values

        centred = x - mean(x)
        scale = torch.rsqrt(mean(centred * centred) + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            scale = scale * self.weight.reshape(shape)
        out = centred * scale
        return out + self.bias.reshape(shape) if self.bias is not None else out


_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _with_staged_instance_norms(network: nn.Module) -> nn.Module:
    """``network`` with every instance norm that uses its input's statistics replaced by :class:`_StagedInstanceNorm`
    (wherever a module is reached from, as DynUNet reaches some by two paths)."""
    if isinstance(network, _INSTANCE_NORMS) and not network.track_running_stats:
        return _StagedInstanceNorm(network)
    replaced: dict[int, nn.Module] = {}
    for _, parent in list(network.named_modules(remove_duplicate=False)):
        for name, child in list(parent.named_children()):
            if isinstance(child, _INSTANCE_NORMS) and not child.track_running_stats:
                if id(child) not in replaced:
                    replaced[id(child)] = _StagedInstanceNorm(child)
                setattr(parent, name, replaced[id(child)])
    return network


class OnnxNetwork:
    """An ONNX Runtime session (CPU) that maps windows to logits as the torch network does.

    Called with a float32 tensor (batch, channels, Z, Y, X) of the window it
    was exported for, it returns the logits as a CPU tensor; so
    :func:`~napari_pgps.engine.inference.predict_probabilities` takes it in
    place of the network.

    Args:
        data: the bytes of an ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads; torch's thread count when ``None``.
        source: names the file in error messages.

    Raises:
        CheckpointError: the bytes are not an ONNX graph ONNX Runtime runs, it points at external data, or it
            does not take one 5-D window with a dynamic batch axis and give one 5-D output.
    """

    def __init__(self, data: bytes, *, threads: Optional[int] = None, source: str = "the ONNX network") -> None:
        onnx, ort = _modules()
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise CheckpointError(f"{source}: not a readable ONNX file ({type(exc).__name__}: {exc}); "
                                  f"{_EXPORT_HINT}.") from None
        if _uses_external_data(model.graph):
            raise CheckpointError(f"{source}: its graph points at external data files; only self-contained ONNX "
                                  "files (as napari-pgps export writes) are read.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors (InvalidGraph, Fail, ...) share no base class
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise CheckpointError(f"{source}: ONNX Runtime cannot load it ({type(exc).__name__}: {first}); "
                                  f"{_EXPORT_HINT}.") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        out = outputs[0].shape if len(outputs) == 1 else []
        if (len(shape) != 5 or len(out) != 5 or not all(isinstance(s, int) for s in shape[1:])
                or isinstance(shape[0], int) or not isinstance(out[1], int)):
            raise CheckpointError(f"{source}: not a segmentation network of napari-pgps (it takes "
                                  f"{[i.shape for i in inputs]} and gives {[o.shape for o in outputs]}; expected one "
                                  "window (batch, channels, Z, Y, X) with a dynamic batch axis, and its logits).")
        self.input, self.output = inputs[0].name, outputs[0].name
        self.in_channels = int(shape[1])
        self.patch_size: tuple[int, int, int] = tuple(int(s) for s in shape[2:])
        self.out_channels = int(out[1])
        self.source = source

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(windows.detach().to("cpu", torch.float32).numpy())
        logits = self.session.run([self.output], {self.input: array})[0]
        return torch.from_numpy(logits)


def _uses_external_data(graph) -> bool:
    """Whether a tensor of the graph (initializers, constants, subgraphs) is stored in an external file."""
    from onnx import TensorProto

    tensors = list(graph.initializer) + [t for s in graph.sparse_initializer for t in (s.values, s.indices)]
    graphs = []
    for node in graph.node:
        for attribute in node.attribute:
            tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
            sparse = ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + list(attribute.sparse_tensors)
            tensors += [t for s in sparse for t in (s.values, s.indices)]
            graphs += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
    return (any(t.data_location == TensorProto.EXTERNAL for t in tensors)
            or any(_uses_external_data(g) for g in graphs))


def logit_difference(network: nn.Module, onnx_network: OnnxNetwork, windows: np.ndarray) -> float:
    """The largest absolute difference of the logits of ``windows`` (N, C, Z, Y, X) between torch and ONNX Runtime.

    torch computes them as segmentation does on the CPU (eval mode, inference
    mode, oneDNN convolutions).
    """
    tensor = torch.as_tensor(np.ascontiguousarray(windows, dtype=np.float32))
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode(), cpu_convolutions(torch.device("cpu")):
            expected = network(tensor).float().numpy()
    finally:
        network.train(was_training)
    got = onnx_network(tensor).numpy()
    if got.shape != expected.shape:
        raise OnnxExportError(f"the ONNX network gives logits of shape {got.shape}, torch {expected.shape}.")
    return float(np.max(np.abs(got - expected)))


def export_checked(network: nn.Module, in_channels: int, patch_size: Sequence[int], windows: np.ndarray, *,
                   metadata: Optional[dict[str, str]] = None,
                   tolerance: float = TOLERANCE) -> tuple[bytes, float]:
    """Export ``network`` (:func:`onnx_bytes`) and check it: the ONNX Runtime logits of ``windows`` (N, C, Z, Y, X;
    N >= 2 checks the dynamic batch too) must be within ``tolerance`` of torch's.

    Returns:
        the ``.onnx`` bytes and the largest absolute logit difference found.

    Raises:
        OnnxExportError: the network cannot be exported, or its ONNX graph computes other logits.
    """
    data = onnx_bytes(network, in_channels, patch_size, metadata=metadata)
    try:
        session = OnnxNetwork(data, source="the exported ONNX network")
    except CheckpointError as exc:
        raise OnnxExportError(str(exc)) from None
    difference = logit_difference(network, session, windows)
    if not difference <= tolerance:  # also refuses NaN
        raise OnnxExportError(
            f"the exported ONNX network's logits differ from torch's by up to {difference:.3g} on "
            f"{len(windows)} window(s) of {' x '.join(map(str, patch_size))} (at most {tolerance:g} is accepted); "
            "nothing was written. Export without --onnx and segment with torch (--runtime torch).")
    return data, difference


def manifest_record(patch_size: Sequence[int], difference: float, checked_on: str, baked: bool) -> dict[str, Any]:
    """What a package's manifest keeps (under :data:`MANIFEST_KEY`) of its ONNX network (the member's size and
    SHA-256 are in the manifest's ``members``, as for every member)."""
    return {
        "member": ONNX,
        "opset": OPSET,
        "input": INPUT,
        "output": OUTPUT,
        "patch_size": [int(p) for p in patch_size],
        "batch": "dynamic",
        "baked_from_hypernetwork": bool(baked),
        "max_abs_logit_difference": difference,
        "tolerance": TOLERANCE,
        "checked_on": checked_on,
        "exporter": f"torch {torch.__version__} (TorchScript exporter)",
    }


def read_package_onnx(package: str | os.PathLike, payload: dict[str, Any], *,
                      threads: Optional[int] = None) -> OnnxNetwork:
    """The ONNX network of a model package, as an ONNX Runtime session.

    Args:
        package: the package's path (for messages).
        payload: the package as :func:`~napari_pgps.engine.package.read_model_package` read it: its
            ``onnx_network`` bytes (checked against the manifest's size and SHA-256 there) and its manifest.

    Raises:
        CheckpointError: the package holds no ONNX network, or the member is not a graph ONNX Runtime runs or
            takes another window than its manifest records.
    """
    record = payload["package"].get(MANIFEST_KEY)
    data = payload.get("onnx_network")
    if data is None or not isinstance(record, dict):
        raise CheckpointError(f"{package}: this model package holds no ONNX network ({ONNX}); {_EXPORT_HINT}, or "
                              "segment with --runtime torch.")
    source = f"{package} ({ONNX})"
    network = OnnxNetwork(data, threads=threads, source=source)
    if list(network.patch_size) != list(record.get("patch_size", [])):
        raise CheckpointError(f"{source}: takes windows of {network.patch_size}, but the manifest records "
                              f"{record.get('patch_size')}; {_EXPORT_HINT}.")
    return network


def check_matches(network: OnnxNetwork, in_channels: int, out_channels: int, where: str) -> None:
    """Raise if the ONNX network does not take the model's channels or give its labels."""
    if network.in_channels != in_channels or network.out_channels != out_channels:
        raise CheckpointError(f"{where}: its ONNX network takes {network.in_channels} channel(s) and gives "
                              f"{network.out_channels} labels, the model {in_channels} and {out_channels}; "
                              f"{_EXPORT_HINT}.")


def describe(record: dict[str, Any]) -> str:
    """One line on an ONNX record, for the command line."""
    return (f"ONNX network, opset {record['opset']}, windows of {' x '.join(map(str, record['patch_size']))}, "
            f"dynamic batch; logits within {record['max_abs_logit_difference']:.1e} of torch's on "
            f"{record['checked_on']}")


def metadata_of(config_labels: dict[int, str], channels: Sequence[str], patch_size: Sequence[int],
                version: str) -> dict[str, str]:
    """The model properties written into the ONNX file: what a reader outside napari-pgps needs to know."""
    return {
        "producer": f"napari-pgps {version}",
        "labels": json.dumps({str(k): v for k, v in sorted(config_labels.items())}),
        "channels": json.dumps(list(channels)),
        "patch_size": json.dumps([int(p) for p in patch_size]),
        "input": "preprocessed windows (batch, channels, Z, Y, X): the package's orientation, spacing and "
                 "normalisation (config.yaml); output: logits per label, in label-value order",
    }

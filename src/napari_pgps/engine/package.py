"""Model packages: one zip file that holds a trained model and what is needed to use it safely.

``napari-pgps export`` writes a package; :func:`napari_pgps.engine.load_model`
(and so ``segment``, ``evaluate``, the Segment widget and ``train --init-from``)
reads one wherever it reads a run folder or a checkpoint. Its members:

``napari-pgps-model.json``
    the manifest: ``format`` (``"napari-pgps-model"``), ``version``, the
    napari-pgps version and date that wrote it, the model kind and
    architecture, a few training figures (epochs, steps, last and best mean
    Dice) and ``members``: each other member's size and SHA-256.
``weights.pt``
    the network's state dict: a ``torch.save`` file of a plain dict of tensors,
    read with ``torch.load(weights_only=True)``.
``config.yaml``
    the run's resolved configuration (``yaml.safe_dump``; read with ``yaml.safe_load``): the plan (patch,
    kernels, strides, channels), target spacing, orientation, input channels, labels, normalisation.
``splits.json``
    the training and validation case names.
``postprocessing.json``
    the post-processing chosen on the validation cases, when the run had one.
``model_card.md``
    a short description for people (data, schedule, network, Dice, version, date).
``network.onnx``
    the network that segments as an ONNX graph, when exported with ``--onnx``
    (:mod:`napari_pgps.engine.onnx_runtime`; the manifest's ``onnx`` entry
    says which window it takes and how it was checked against torch). It is
    hash-checked like every member and handed over as bytes: ONNX Runtime
    loads it from memory only when ``--runtime onnx`` asks for it.

Every member is stored as it is, not compressed (deflate makes a real network's
weights only 7-8% smaller, and a compressed member could inflate to far
more than the file's size).

Reading never extracts anything to disk and never runs anything found in the
file: the manifest and the splits are JSON, the configuration YAML
(``yaml.safe_load``), the weights a torch file read with ``weights_only=True``
(tensors and plain containers; any other pickled object is refused), the ONNX
graph kept as bytes. Memory is bounded before anything is read: a member's size
in the manifest must be the zip's (its ``file_size`` and, stored, its
``compress_size``), and at most :data:`MAX_TEXT_BYTES` for the text members, at
most what the network that the configuration plans can hold for the weights and
the ONNX graph (:func:`planned_bytes` x :data:`SIZE_MARGIN` +
:data:`CONTAINER_BYTES`); each member is hashed as a stream of 1 MiB chunks,
and the weights are read by torch straight from the zip once their hash is
right. A compressed member is refused, but for the text members of packages
written by napari-pgps 0.1.0, which deflated them: these are inflated as a
stream that stops at their declared size.

The sizes and SHA-256 hashes in the manifest detect a damaged or incomplete
file (a broken download, a truncated copy); they are no signature: whoever can
change a member can write its new hash into the manifest. What keeps a hostile
file harmless is that nothing in it is run and its sizes are bounded, not the
hashes. A damaged or foreign zip, a missing member or one that differs from
its manifest entry, a compressed or oversized member, a member name with an
absolute or ``..`` path, or a weights file that holds anything but tensors is
refused with a :class:`~napari_pgps.errors.CheckpointError` naming the file and
the problem.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Optional

import torch
import yaml
from torch.overrides import TorchFunctionMode

from ..config import ModelConfig, RunConfig
from ..errors import CheckpointError, InputError
from ..files import atomic_path
from ..models import build_network, segmenting_config
from .file_names import CONFIG_FILE, MANIFEST, MODEL_CARD, ONNX, POSTPROCESSING_FILE, SPLITS_FILE, WEIGHTS

PACKAGE_FORMAT = "napari-pgps-model"
PACKAGE_VERSION = 1
"""1: the models of checkpoint format 2 (trained on preprocessed cases: canonical orientation, target spacing)."""
REQUIRED = (WEIGHTS, CONFIG_FILE, SPLITS_FILE, MODEL_CARD)
OPTIONAL = (POSTPROCESSING_FILE, ONNX)
BINARY = (WEIGHTS, ONNX)
"""The members bounded by the size of the network the configuration plans; the others are text."""
MAX_TEXT_BYTES = 8 * 2**20
"""The most the manifest, the configuration, the split, the post-processing choice or the card may hold (they hold a
few kB; the split of 100,000 cases about 3 MB)."""
SIZE_MARGIN = 1.25
"""The weights and the ONNX graph may hold this many times :func:`planned_bytes` (measured on a 31-million-parameter
DynUNet: its torch file 1.0003 times, its ONNX graph 1.0009 times; a channel-pruned network holds less) ..."""
CONTAINER_BYTES = 4 * 2**20
"""... plus this many bytes for the file's own structure (measured: 35 kB of tensor records, 120 kB of ONNX nodes)."""
CHUNK_BYTES = 2**20
"""Members are read and hashed in chunks of this size."""

_EXPORT_HINT = "export the model again (napari-pgps export --model RUN_DIR --out MODEL.zip)"


def weights_bytes(weights: dict[str, torch.Tensor]) -> bytes:
    """A state dict as the bytes of the package's weights file: a plain ``{name: tensor}`` dict, ``torch.save``'d.

    Raises:
        InputError: a value is not a tensor (nothing else goes into a package).
    """
    plain = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"the model's state holds {name!r} = {type(value).__name__}, not a tensor; only tensors "
                             "can be exported.")
        plain[name] = value.detach().cpu().contiguous()
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()


def write_model_package(path: str | os.PathLike, members: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write a package atomically: the manifest (``manifest`` with the format, version and members added) and ``members``.

    ``members`` maps each member name (one of the names above) to its bytes;
    every member is stored as it is, not compressed.
    """
    path = Path(path)
    unknown = sorted(set(members) - set(REQUIRED) - set(OPTIONAL))
    missing = sorted(set(REQUIRED) - set(members))
    if unknown or missing:
        raise ValueError(f"a model package holds {', '.join(REQUIRED + OPTIONAL)}; got unknown {unknown}, missing {missing}")
    listing = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in members.items()}
    manifest = {"format": PACKAGE_FORMAT, "version": PACKAGE_VERSION, **manifest, "members": listing}
    stamp = datetime.datetime.now().timetuple()[:6]
    with atomic_path(path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, data in [(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode()), *members.items()]:
                archive.writestr(zipfile.ZipInfo(name, date_time=stamp), data)
    return path


def is_model_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip file holding a package manifest (decided by content, not by the name)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return MANIFEST in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def read_model_package(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a package, checked, in memory.

    Returns:
        ``{"config": dict, "model": {name: tensor}, "split": dict, "postprocessing": dict or None,
        "model_card": str, "onnx_network": the bytes of network.onnx or None, "package": the manifest}`` plus
        the manifest's training figures (``kind``, ``epoch``, ``step``, ``training_seconds``, ``last_mean_dice``,
        ``best_mean_dice``), as a checkpoint holds them.

    Raises:
        CheckpointError: the file is not a readable zip, not a napari-pgps package, or a member is missing,
            differs from its manifest entry, is compressed, larger than its bound, unsafe or not what it should be.
    """
    path = Path(path)
    with _open(path) as archive:
        manifest, present = _checked_manifest(archive, path)
        listed = manifest["members"]
        data = {name: _read(archive, path, name, MAX_TEXT_BYTES, listed[name]) for name in present if name not in BINARY}
        config = _config(path, data[CONFIG_FILE])
        _read(archive, path, WEIGHTS, _bound(path, config.model), listed[WEIGHTS], keep=False)
        if ONNX in present:
            data[ONNX] = _read(archive, path, ONNX, _bound(path, segmenting_config(config.model)), listed[ONNX])
        with archive.open(WEIGHTS) as handle:  # stored as it is: torch reads it from the zip, its hash checked above
            weights = _weights(path, handle)

    payload: dict[str, Any] = {
        "config": config.to_dict(),
        "model": weights,
        "split": _split(path, data[SPLITS_FILE]),
        "postprocessing": _postprocessing(path, data[POSTPROCESSING_FILE]) if POSTPROCESSING_FILE in data else None,
        "model_card": data[MODEL_CARD].decode("utf-8", errors="replace"),
        "onnx_network": data.get(ONNX),
        "package": manifest,
    }
    training = manifest.get("training") if isinstance(manifest.get("training"), dict) else {}
    for key in ("epoch", "step", "training_seconds", "last_mean_dice", "best_mean_dice"):
        if key in training:
            payload[key] = training[key]
    if isinstance(manifest.get("kind"), str):
        payload["kind"] = manifest["kind"]
    return payload


def read_package_config(path: str | os.PathLike) -> RunConfig:
    """The configuration a package's model was trained with, checked like :func:`read_model_package` checks it (the
    manifest, then the ``config.yaml`` member's size and SHA-256), without reading the weights or any other member.

    Raises:
        CheckpointError: as :func:`read_model_package`, for the manifest and the configuration.
    """
    path = Path(path)
    with _open(path) as archive:
        manifest, _ = _checked_manifest(archive, path)
        return _config(path, _read(archive, path, CONFIG_FILE, MAX_TEXT_BYTES, manifest["members"][CONFIG_FILE]))


def _open(path: Path) -> zipfile.ZipFile:
    """The package's zip file, opened.

    Raises:
        CheckpointError: missing, or not a readable zip file.
    """
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: model package not found.") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable zip file ({exc}); the model package is damaged or incomplete: "
                              f"{_EXPORT_HINT}.") from None


def _checked_manifest(archive: zipfile.ZipFile, path: Path) -> tuple[dict[str, Any], list[str]]:
    """The package's manifest, checked (member names safe and unique, format and version known, every required member
    listed and present), and the names of the members it holds (required, then optional, in that order).

    Raises:
        CheckpointError: as :func:`read_model_package`.
    """
    names = [info.filename for info in archive.infolist()]
    for name in names:
        if not _safe_name(name):
            raise CheckpointError(f"{path}: holds a member named {name!r}, an absolute or parent ('..') path; a "
                                  "model package holds plain file names only, so this file is refused (nothing was "
                                  "extracted).")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"{path}: holds {', '.join(twice)} more than once; {_EXPORT_HINT}.")
    if MANIFEST not in names:
        raise CheckpointError(f"{path}: not a napari-pgps model package (no {MANIFEST} in this zip file); make one "
                              "with napari-pgps export --model RUN_DIR --out MODEL.zip.")
    manifest = _json(path, MANIFEST, _read(archive, path, MANIFEST, MAX_TEXT_BYTES))
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise CheckpointError(f"{path}: {MANIFEST} is not a napari-pgps model manifest (no '{PACKAGE_FORMAT}' format).")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: {MANIFEST} has no valid format version ({version!r}); {_EXPORT_HINT}.")
    if version > PACKAGE_VERSION:
        raise CheckpointError(f"{path}: written by a newer napari-pgps (package format {version}); upgrade napari-pgps.")
    listed = manifest.get("members")
    if not isinstance(listed, dict):
        raise CheckpointError(f"{path}: {MANIFEST} lists no members; {_EXPORT_HINT}.")
    present = []
    for name in (*REQUIRED, *OPTIONAL):
        if name not in listed:
            if name in REQUIRED:
                raise CheckpointError(f"{path}: its manifest does not list {name}, which every model package holds; "
                                      f"{_EXPORT_HINT}.")
            continue
        if name not in names:
            raise CheckpointError(f"{path}: {name} is missing from the zip file (its manifest lists it); the package "
                                  f"is incomplete: {_EXPORT_HINT}.")
        present.append(name)
    return manifest, present


def planned_bytes(model: ModelConfig) -> int:
    """Bytes of the state dict of the network ``model`` plans (4 per float32 value), counted on a copy built on the
    meta device, which holds no values (on the CPU for a network that cannot be built there: SwinUNETR reads a value
    while it is built). A channel-pruned network holds less than its plan.

    Every entry counts, also one that shares its tensor with another (MONAI's DynUNet lists its encoder twice, as
    ``input_block`` and ``skip_layers.downsample``): a weights file keeps them shared only while the tensors are
    contiguous; weights trained in channels-last memory (fp32 steps on a CPU without native bf16) are made
    contiguous one entry at a time by :func:`weights_bytes`, which stores each alias apart (twice the bytes of a
    DynUNet's parameters)."""
    try:
        with torch.device("meta"), _NoRandomDraws():
            network = build_network(model)
    except (RuntimeError, NotImplementedError):
        network = build_network(model)
    return sum(t.numel() * t.element_size() for t in network.state_dict().values())


class _NoRandomDraws(TorchFunctionMode):
    """Skips drawing random initial values (``torch.nn.init``'s functions, ``normal_``, ``uniform_``), which meta
    tensors do not hold: torch draws some of them there with Python code that first imports its compiler (seconds)."""

    DRAWS = (torch.Tensor.normal_, torch.Tensor.uniform_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.DRAWS or (getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _bound(path: Path, model: ModelConfig) -> int:
    """The most bytes the weights (or the ONNX graph) of the network ``model`` plans may take in a package."""
    try:
        return int(planned_bytes(model) * SIZE_MARGIN) + CONTAINER_BYTES
    except (InputError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} ({CONFIG_FILE}): its network cannot be built ({first}); {_EXPORT_HINT}.") from None


def _safe_name(name: str) -> bool:
    """A relative path of plain parts: no leading '/', no drive or backslash, no '.', '..' or empty part."""
    if not name or name.startswith("/") or "\\" in name or ":" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _read(archive: zipfile.ZipFile, path: Path, name: str, limit: int, listed: Any = None, *,
          keep: bool = True) -> Optional[bytes]:
    """Member ``name`` read as a stream of :data:`CHUNK_BYTES` chunks and checked against its manifest entry
    ``listed`` (``{"bytes", "sha256"}``, hashed as it streams; the manifest itself has none): its bytes, or ``None``
    when not ``keep`` (the weights, which torch then reads from the zip).

    Refused before a byte is read: a compressed member (but for the text members of napari-pgps 0.1.0, which deflated
    them: inflated as a stream, which zipfile stops at the zip's size, so a bomb whose header lies ends in a CRC
    error), sizes that disagree (the manifest's and the zip's ``file_size``; for a stored member its
    ``compress_size`` too), more than ``limit`` bytes.
    """
    info = archive.getinfo(name)
    legacy = info.compress_type == zipfile.ZIP_DEFLATED and name not in BINARY
    if info.compress_type != zipfile.ZIP_STORED and not legacy:
        raise CheckpointError(f"{path}: {name} is compressed (zip method {info.compress_type}); a model package stores "
                              f"its members as they are, so napari-pgps export did not write this one: {_EXPORT_HINT}.")
    sizes_agree = (legacy or info.compress_size == info.file_size) and (
        listed is None or isinstance(listed, dict) and listed.get("bytes") == info.file_size)
    if not sizes_agree:
        declared = listed.get("bytes") if isinstance(listed, dict) else None
        raise CheckpointError(f"{path}: {name} is not the file its manifest describes (the manifest says {declared} "
                              f"bytes, the zip {info.file_size}, {info.compress_size} stored); the package was altered "
                              f"or damaged: {_EXPORT_HINT}.")
    if info.file_size > limit:
        what = ("the network its configuration plans can fill" if name in BINARY
                else f"a model package's {name} may hold")
        raise CheckpointError(f"{path}: {name} holds {info.file_size:,} bytes, more than the {limit:,} that {what}; "
                              "refusing it (nothing of it was read).")
    digest, chunks, size = hashlib.sha256(), [], 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(CHUNK_BYTES):
                size += len(chunk)
                digest.update(chunk)
                if keep:
                    chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {name} cannot be read ({type(exc).__name__}: {exc}); the package is damaged: "
                              f"{_EXPORT_HINT}.") from None
    if size != info.file_size or (listed is not None and listed.get("sha256") != digest.hexdigest()):
        raise CheckpointError(f"{path}: {name} is not the file its manifest describes (size or SHA-256 differ); the "
                              f"package was altered or damaged: {_EXPORT_HINT}.")
    return b"".join(chunks) if keep else None


def _json(path: Path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {name} is not valid JSON ({exc}); {_EXPORT_HINT}.") from None


def _config(path: Path, data: bytes) -> RunConfig:
    where = f"{path} ({CONFIG_FILE})"
    try:
        values = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{where}: not a readable YAML configuration ({exc}); {_EXPORT_HINT}.") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: a configuration must be a YAML mapping of sections; {_EXPORT_HINT}.")
    try:
        config = RunConfig.from_dict(values, source=where)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    if not config.labels or config.model.out_channels is None or config.model.channels is None:
        raise CheckpointError(f"{where}: not a trained model's resolved configuration (labels or network plan missing).")
    return config


def _weights(path: Path, handle: IO[bytes]) -> dict[str, torch.Tensor]:
    """The state dict in the weights member ``handle`` (read by torch's ``weights_only`` loader: tensors only)."""
    try:
        weights = torch.load(handle, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, OSError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"{path}: {WEIGHTS} is not a plain file of tensors ({type(exc).__name__}: {first}); it "
                              f"was refused without running anything in it; {_EXPORT_HINT}.") from None
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: {WEIGHTS} holds {type(weights).__name__}, not a dict of named tensors; "
                              f"{_EXPORT_HINT}.")
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {WEIGHTS} holds {name!r} = {type(value).__name__}, not a tensor; "
                                  f"{_EXPORT_HINT}.")
    return dict(weights)


def _split(path: Path, data: bytes) -> dict[str, Any]:
    split = _json(path, SPLITS_FILE, data)
    if not isinstance(split, dict) or not all(
            isinstance(split.get(key), list) and all(isinstance(n, str) for n in split[key])
            for key in ("training", "validation")):
        raise CheckpointError(f"{path}: {SPLITS_FILE} does not hold the training and validation case names; {_EXPORT_HINT}.")
    return split


def _postprocessing(path: Path, data: bytes) -> dict[str, Any]:
    values = _json(path, POSTPROCESSING_FILE, data)
    labels = values.get("labels", []) if isinstance(values, dict) else None
    if (not isinstance(values, dict) or not isinstance(values.get("foreground", False), bool)
            or not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
        raise CheckpointError(f"{path}: {POSTPROCESSING_FILE} is not a post-processing choice (foreground: true/false, "
                              f"labels: [values]); {_EXPORT_HINT}.")
    return {"foreground": bool(values.get("foreground", False)), "labels": [int(v) for v in labels]}


def manifest_training(payload: dict[str, Any]) -> dict[str, Any]:
    """The training figures of a checkpoint payload the manifest keeps."""
    return {key: payload[key] for key in ("epoch", "step", "training_seconds", "last_mean_dice", "best_mean_dice")
            if key in payload and isinstance(payload[key], (int, float, type(None)))}


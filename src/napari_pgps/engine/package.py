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

Reading never extracts anything to disk and never runs anything found in the
file: the members are read into memory, the manifest and the splits are JSON,
the configuration YAML (``yaml.safe_load``), the weights a torch file read
with ``weights_only=True`` (tensors and plain containers; any other pickled
object is refused), the ONNX graph kept as bytes. A damaged or
foreign zip, a missing or altered member, a member name with an absolute or
``..`` path, or a weights file that holds anything but tensors is refused with
a :class:`~napari_pgps.errors.CheckpointError` naming the file and the problem.
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
from typing import Any

import torch
import yaml

from ..config import RunConfig
from ..errors import CheckpointError, InputError
from ..files import atomic_path

PACKAGE_FORMAT = "napari-pgps-model"
PACKAGE_VERSION = 1
"""1: the models of checkpoint format 2 (trained on preprocessed cases: canonical orientation, target spacing)."""
MANIFEST = "napari-pgps-model.json"
WEIGHTS = "weights.pt"
CONFIG = "config.yaml"
SPLITS = "splits.json"
POSTPROCESSING = "postprocessing.json"
MODEL_CARD = "model_card.md"
ONNX = "network.onnx"
REQUIRED = (WEIGHTS, CONFIG, SPLITS, MODEL_CARD)
OPTIONAL = (POSTPROCESSING, ONNX)
BINARY = (WEIGHTS, ONNX)
"""The members stored as they are (not deflated) and allowed up to :data:`MAX_BINARY_BYTES`."""
MAX_TEXT_BYTES = 64 * 2**20
"""The most a manifest, configuration, split or card may hold (a guard against a zip that inflates without end)."""
MAX_BINARY_BYTES = 16 * 2**30

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
    the weights and the ONNX network are stored as they are, the text members deflated.
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
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, data in [(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode()), *members.items()]:
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.compress_type = zipfile.ZIP_STORED if name in BINARY else zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
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
            altered, unsafe or not what it should be.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: model package not found.") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable zip file ({exc}); the model package is damaged or incomplete: "
                              f"{_EXPORT_HINT}.") from None
    with archive:
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
        data = {}
        for name in (*REQUIRED, *OPTIONAL):
            if name not in listed:
                if name in REQUIRED:
                    raise CheckpointError(f"{path}: its manifest does not list {name}, which every model package holds; "
                                          f"{_EXPORT_HINT}.")
                continue
            if name not in names:
                raise CheckpointError(f"{path}: {name} is missing from the zip file (its manifest lists it); the package "
                                      f"is incomplete: {_EXPORT_HINT}.")
            data[name] = _read(archive, path, name, MAX_BINARY_BYTES if name in BINARY else MAX_TEXT_BYTES)
            entry = listed[name]
            digest = hashlib.sha256(data[name]).hexdigest()
            if not isinstance(entry, dict) or entry.get("sha256") != digest or entry.get("bytes") != len(data[name]):
                raise CheckpointError(f"{path}: {name} is not the file its manifest describes (size or SHA-256 differ); "
                                      f"the package was altered or damaged: {_EXPORT_HINT}.")

    config = _config(path, data[CONFIG])
    payload: dict[str, Any] = {
        "config": config,
        "model": _weights(path, data[WEIGHTS]),
        "split": _split(path, data[SPLITS]),
        "postprocessing": _postprocessing(path, data[POSTPROCESSING]) if POSTPROCESSING in data else None,
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


def _safe_name(name: str) -> bool:
    """A relative path of plain parts: no leading '/', no drive or backslash, no '.', '..' or empty part."""
    if not name or name.startswith("/") or "\\" in name or ":" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _read(archive: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise CheckpointError(f"{path}: {name} claims {info.file_size} bytes, more than a model package's {name} "
                              f"holds (at most {limit}); refusing it.")
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {name} cannot be read ({type(exc).__name__}: {exc}); the package is damaged: "
                              f"{_EXPORT_HINT}.") from None
    if len(data) > limit:
        raise CheckpointError(f"{path}: {name} holds more than {limit} bytes; refusing it.")
    return data


def _json(path: Path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {name} is not valid JSON ({exc}); {_EXPORT_HINT}.") from None


def _config(path: Path, data: bytes) -> dict[str, Any]:
    where = f"{path} ({CONFIG})"
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
    return config.to_dict()


def _weights(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    split = _json(path, SPLITS, data)
    if not isinstance(split, dict) or not all(
            isinstance(split.get(key), list) and all(isinstance(n, str) for n in split[key])
            for key in ("training", "validation")):
        raise CheckpointError(f"{path}: {SPLITS} does not hold the training and validation case names; {_EXPORT_HINT}.")
    return split


def _postprocessing(path: Path, data: bytes) -> dict[str, Any]:
    values = _json(path, POSTPROCESSING, data)
    labels = values.get("labels", []) if isinstance(values, dict) else None
    if (not isinstance(values, dict) or not isinstance(values.get("foreground", False), bool)
            or not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
        raise CheckpointError(f"{path}: {POSTPROCESSING} is not a post-processing choice (foreground: true/false, "
                              f"labels: [values]); {_EXPORT_HINT}.")
    return {"foreground": bool(values.get("foreground", False)), "labels": [int(v) for v in labels]}


def manifest_training(payload: dict[str, Any]) -> dict[str, Any]:
    """The training figures of a checkpoint payload the manifest keeps."""
    return {key: payload[key] for key in ("epoch", "step", "training_seconds", "last_mean_dice", "best_mean_dice")
            if key in payload and isinstance(payload[key], (int, float, type(None)))}


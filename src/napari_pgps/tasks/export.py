"""Exporting a trained model as one file to share: ``napari-pgps export --model RUN_DIR --out MODEL.zip``.

The package (its members: :mod:`napari_pgps.engine.package`) holds the
weights as a plain file of tensors, the resolved configuration, the split,
the post-processing choice when the run has one, a model card and a
manifest listing each member's size and SHA-256 (which detect a damaged file,
not a deliberate change), every member stored uncompressed; ``segment``,
``evaluate``, the Segment widget and ``train --init-from`` read it like a run
folder, running nothing found in it.

With ``onnx=True`` (``--onnx``) the network that segments also goes into the
package, as its member ``network.onnx`` (:mod:`napari_pgps.engine.onnx_runtime`),
after it was checked against torch on a window of one of the model's cases; the
manifest lists it with its size and SHA-256 like every member.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import yaml

from .. import __version__
from ..config import RunConfig
from ..data.dataset import case_files, read_case, read_dataset_info
from ..data.preprocessing import PreprocessingPlan, preprocess_image
from ..engine.checkpoint import find_checkpoint, load_checkpoint, trained_config
from ..engine.inference import SegmentationModel
from ..engine.file_names import CONFIG_FILE, MODEL_CARD, ONNX, POSTPROCESSING_FILE, SPLITS_FILE, WEIGHTS
from ..engine.onnx_runtime import MANIFEST_KEY
from ..engine.package import manifest_training, weights_bytes, write_model_package
from ..engine.progress import duration_text
from ..engine.run_folder import RunFolder
from ..errors import CheckpointError, InputError
from ..events import Validated
from ..models import build_network, check_inference_patch, count_parameters, model_kind


def export_model(model: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False, onnx: bool = False,
                 patch_size: Optional[Sequence[int]] = None) -> Path:
    """Write ``model`` (a run folder, a checkpoint or a package) as a model package ``out`` (a ``.zip`` file).

    The file is written beside ``out`` and renamed over it when complete.

    Args:
        onnx: also put the network that segments into the package as an ONNX graph (member ``network.onnx``), with
            a dynamic batch axis and windows of ``patch_size`` (a hypernetwork is baked at that size first), after
            checking its ONNX Runtime logits against torch's (at most
            :data:`~napari_pgps.engine.onnx_runtime.TOLERANCE` apart).
        patch_size: the ONNX network's window (Z, Y, X); the training patch when ``None``.

    Raises:
        InputError: ``out`` is not a ``.zip`` name, or exists (unless ``overwrite``); the model cannot be read; the
            ONNX network cannot be written or computes other logits than torch (nothing is written then).
    """
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"{out}: a model package is one .zip file; name it e.g. {out.with_suffix('.zip').name}.")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the name of the .zip file to write.")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; choose another name or replace it (--overwrite).")
    if patch_size is not None and not onnx:
        raise InputError("--patch-size chooses the window of the ONNX network; it goes with --onnx.")
    path = find_checkpoint(model)
    payload = load_checkpoint(path)
    config = trained_config(payload, path)
    try:
        network = build_network(config.model, payload["model"])
        parameters = count_parameters(network)
    except (InputError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's network cannot be rebuilt ({exc}).") from None
    split = _split(payload, path)
    postprocessing = _postprocessing(payload, path)
    validation = _last_validation(payload, path)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    kind = str(payload.get("kind") or model_kind(config))
    onnx_member = _onnx_network(network, config, split, patch_size) if onnx else None
    members = {
        WEIGHTS: weights_bytes(payload["model"]),
        CONFIG_FILE: yaml.safe_dump(config.to_dict(), sort_keys=False).encode(),
        SPLITS_FILE: (json.dumps(split, indent=1) + "\n").encode(),
        MODEL_CARD: model_card(config, payload, split, validation, parameters, kind, postprocessing, created,
                               onnx_member[1] if onnx_member else None).encode(),
    }
    if postprocessing is not None:
        members[POSTPROCESSING_FILE] = (json.dumps(postprocessing, indent=1) + "\n").encode()
    manifest = {
        "napari_pgps": __version__,
        "created": created.isoformat(),
        "kind": kind,
        "architecture": config.model.architecture,
        "parameters": parameters,
        "exported_from": path.name,
        "training": manifest_training(payload),
    }
    if onnx_member is not None:
        members[ONNX], manifest[MANIFEST_KEY] = onnx_member
    return write_model_package(out, members, manifest)


def _onnx_network(network, config: RunConfig, split: dict[str, Any],
                  patch_size: Optional[Sequence[int]]) -> tuple[bytes, dict[str, Any]]:
    """The ONNX network that segments for windows of ``patch_size`` (the training patch when ``None``), checked
    against torch on a window of one of the model's cases: its bytes and its manifest record."""
    from ..engine.onnx_runtime import export_checked, manifest_record, metadata_of

    patch = tuple(int(p) for p in (patch_size or config.model.patch_size))
    check_inference_patch(config.model, patch)
    segmenting = SegmentationModel(network=network.eval(), config=config, device=torch.device("cpu"))
    plain = segmenting.network_for(patch)  # a hypernetwork bakes its plain network for this window
    windows, checked_on = _check_windows(config, split, patch)
    channels = config.channels or ["image"] * config.model.in_channels
    data, difference = export_checked(plain, config.model.in_channels, patch, windows,
                                      metadata=metadata_of(config.labels, channels, patch, __version__))
    return data, manifest_record(patch, difference, checked_on, baked=plain is not network)


def _check_windows(config: RunConfig, split: dict[str, Any], patch: Sequence[int]) -> tuple[np.ndarray, str]:
    """Two windows (2, C, Z, Y, X) to compare ONNX Runtime with torch on, and what they are.

    The first is cut from the middle of a validation (else training) case of
    the model's dataset, preprocessed as segmentation preprocesses it, when
    that dataset can be read from here; else, as the second, random normal values.
    """
    rng = np.random.default_rng(0)
    random = rng.standard_normal((1, config.model.in_channels, *patch)).astype(np.float32)
    names = list(split.get("validation") or []) + list(split.get("training") or [])
    window, what = None, None
    if config.data.path and names:
        try:
            info = read_dataset_info(config.data.path)
            files = [f for f in info.files if f.name == names[0]]
            if files:
                image = read_case(info, case_files(info, require_labels=False, names=[files[0].name])[0]).image
                array, _ = preprocess_image(image, PreprocessingPlan.of(config))
                window, what = _middle_window(array, patch), f"a window of case {files[0].name} and a random window"
        except (InputError, OSError, ValueError) as exc:  # the data is not readable here: random values only
            what = f"random windows (the case {names[0]} could not be read: {str(exc).splitlines()[0][:120]})"
    if window is None:
        return np.concatenate([random, rng.standard_normal(random.shape).astype(np.float32)]), what or "random windows"
    return np.concatenate([window[None], random]), what


def _middle_window(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """The window of ``patch`` (Z, Y, X) at the middle of ``array`` (C, Z, Y, X), zero-padded where it is smaller
    (as the sliding window pads)."""
    out = np.zeros((array.shape[0], *patch), dtype=np.float32)
    source, target = [], []
    for size, want in zip(array.shape[1:], patch):
        start = max(0, (size - want) // 2)
        length = min(size, want)
        offset = (want - length) // 2
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[(slice(None), *target)] = array[(slice(None), *source)]
    return out


def _split(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model's training and validation case names: its own, else its run folder's (``recorded`` false when
    neither has them)."""
    split = payload.get("split")
    run = RunFolder.holding(path) if "package" not in payload else None
    if not split and run is not None:
        split = run.split()
    if not split:
        return {"training": [], "validation": [], "recorded": False}
    return split


def _postprocessing(payload: dict[str, Any], path: Path) -> Optional[dict[str, Any]]:
    """The post-processing choice: a package's own, else the run folder's ``postprocessing.json`` (with its evidence)."""
    if "package" in payload:
        return payload.get("postprocessing")
    file = path.parent / POSTPROCESSING_FILE
    if not file.is_file():
        return None
    try:
        values = json.loads(file.read_text())
        chosen = {"foreground": bool(values.get("foreground", False)), "labels": [int(v) for v in values.get("labels", [])]}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{file}: not a readable post-processing choice ({exc}); run napari-pgps postprocess again "
                         "or remove the file.") from None
    if isinstance(values.get("evidence"), dict):
        chosen["evidence"] = values["evidence"]
    return chosen


def _last_validation(payload: dict[str, Any], path: Path) -> Optional[Validated]:
    """The checkpoint's last validation from its run's events (the last one up to its epoch), if logged."""
    run = RunFolder.holding(path) if "package" not in payload else None
    if run is None:
        return None
    try:
        events = run.events()
    except InputError:
        return None
    epoch = payload.get("epoch")
    found = None
    for event in events:
        if isinstance(event, Validated) and (not isinstance(epoch, int) or event.epoch <= epoch):
            found = event
    return found


def model_card(config: RunConfig, payload: dict[str, Any], split: dict[str, Any], validation: Optional[Validated],
               parameters: int, kind: str, postprocessing: Optional[dict[str, Any]],
               created: datetime.datetime, onnx_record: Optional[dict[str, Any]] = None) -> str:
    """A short Markdown description of a model for the people it is shared with (``onnx_record``: the manifest's
    record of the package's ONNX network, when it has one)."""
    model, training, curriculum = config.model, config.training, config.curriculum
    labels = config.labels or {}
    data = config.data.path
    lines = [
        "# napari-pgps model",
        "",
        f"- **Data**: {Path(data).name if data else 'cases given in memory (napari layers)'}"
        + (f" (`{data}`)" if data else "")
        + (f", fold {config.data.fold} of {config.data.folds}" if config.data.fold is not None else ""),
        "- **Labels**: " + ", ".join(f"{v} {labels[v]}" for v in sorted(labels)),
        f"- **Channels**: {', '.join(config.channels or ['image'] * model.in_channels)}",
        f"- **Preprocessing**: orientation {config.preprocessing.orientation}, spacing "
        + " x ".join(f"{s:g}" for s in (model.spacing or ())) + " mm (Z x Y x X)"
        + (", cropped to the nonzero region" if config.preprocessing.crop_to_nonzero else "")
        + ", normalisation " + ", ".join(n.scheme or "?" for n in config.normalization),
        f"- **Network**: {model.architecture}, {parameters:,} parameters, patch "
        + " x ".join(map(str, model.patch_size or ())) + f", kind {kind}",
        f"- **Schedule**: {curriculum.schedule}"
        + (" with PDL" if curriculum.pdl.enabled else "") + (", progressive pruning" if config.pruning.enabled else "")
        + f", {payload.get('epoch', '?')} of {training.epochs} epochs of {training.iterations_per_epoch} steps, batch "
        f"{training.batch_size}, {training.optimizer} at learning rate {training.learning_rate:g}"
        + (f", {duration_text(payload['training_seconds'])} of training"
           if isinstance(payload.get("training_seconds"), (int, float)) else ""),
    ]
    if training.init_from:
        lines.append(f"- **Started from**: the weights of `{training.init_from}`")
    lines.append(f"- **Last validation**: {_dice_text(payload, split, validation)}")
    if isinstance(payload.get("best_mean_dice"), (int, float)) and payload["best_mean_dice"] >= 0:
        lines.append(f"- **Best validation mean Dice**: {payload['best_mean_dice']:.4f}")
    if postprocessing is not None:
        steps = (["largest foreground component"] if postprocessing.get("foreground") else []) + [
            f"largest {labels.get(v, v)} component" for v in postprocessing.get("labels", [])]
        lines.append(f"- **Post-processing**: {', '.join(steps) or 'none'} (chosen on the validation cases)")
    if onnx_record is not None:
        lines.append(f"- **ONNX network**: `{ONNX}`, windows of " + " x ".join(map(str, onnx_record["patch_size"]))
                     + f", any batch, opset {onnx_record['opset']}; its logits within "
                     f"{onnx_record['max_abs_logit_difference']:.1e} of torch's on {onnx_record['checked_on']} "
                     "(`napari-pgps segment --runtime onnx`)")
    lines += [
        f"- **Split**: {len(split.get('training', []))} training, {len(split.get('validation', []))} validation cases"
        + ("" if split.get("recorded", True) else " (not recorded with this model)") + f" ({SPLITS_FILE})",
        f"- **Written by**: napari-pgps {__version__}, {created.strftime('%Y-%m-%d %H:%M')} UTC",
        "",
        "Segment with `napari-pgps segment --model THIS.zip --input IMAGE --output SEG`; the weights load with "
        "`torch.load(weights_only=True)` (tensors only: nothing in this file is run).",
        "",
    ]
    return "\n".join(lines)


def _dice_text(payload: dict[str, Any], split: dict[str, Any], validation: Optional[Validated]) -> str:
    held_out = len(split.get("validation", []))
    if validation is not None:
        where = ("on the training cases (no case was held out)" if validation.on_training_cases
                 else f"on the {_cases(held_out)} held out for validation")
        per_label = ", ".join(f"{name} {dice:.4f}" for name, dice in validation.dice_per_label.items())
        return f"mean Dice {validation.mean_dice:.4f} {where}, after epoch {validation.epoch} ({per_label})"
    last = payload.get("last_mean_dice")
    if isinstance(last, (int, float)):
        where = f"on the {_cases(held_out)} held out for validation" if held_out else "on the training cases (no case was held out)"
        return f"mean Dice {last:.4f} {where}"
    return "not recorded"


def _cases(count: int) -> str:
    return f"{count} case" if count == 1 else f"{count} cases"

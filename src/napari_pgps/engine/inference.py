"""Sliding-window segmentation with Gaussian weighting and optional mirroring.

Follows nnU-Net's inference conventions through MONAI's
``sliding_window_inference``: windows overlap by half a patch, each window's
logits are weighted by a Gaussian (sigma = patch / 8) and the sums divided by
the summed weights. Mirroring test-time augmentation averages the softmax of
every combination of flips of the axes the model was trained to flip (all 8
for the "nnunet" and "mirror" augmentations); a model trained without
mirroring is not mirrored (nnU-Net's rule), and the result's notes say so.

The whole-volume arrays (the weighted sums, the softmax) stay on the GPU
when they fit in half its free memory, else in CPU memory while the windows
still run on the GPU; a GPU that runs out of memory all the same gets the
segmentation again with them in CPU memory (nnU-Net's fallback).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import RUNTIMES, RunConfig
from ..data.augmentation import MIRRORED_AXES
from ..data.dataset import check_image
from ..data.geometry import label_dtype
from ..data.preprocessing import PreprocessingPlan, preprocess_image, restore_probabilities
from ..data.volume import Volume
from ..errors import CheckpointError, InputError
from ..models import architecture, build_network, check_inference_patch
from .checkpoint import find_checkpoint, load_checkpoint, trained_config
from .device import cpu_convolutions, pick_device
from .metrics import label_volumes
from .postprocessing import Postprocessing

OVERLAP = 0.5
GAUSSIAN_SIGMA = 0.125
GPU_ARRAYS_SHARE = 0.5
"""The whole-volume arrays stay on the GPU when they need at most this share of its free memory (the rest is for
the windows going through the network)."""

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised inside a segmentation when its ``cancel`` callback returns true."""


@dataclass
class SegmentationModel:
    """A trained network ready to segment, with the configuration it was trained with."""

    network: nn.Module
    """The trained network; for a hypernetwork (HN, an architecture that ``bakes_to`` a plain one) the
    :class:`~napari_pgps.models.hypernetwork.PatchSizeHypernetwork`, see :meth:`network_for`."""
    config: RunConfig
    device: torch.device
    checkpoint: Optional[str] = None
    split: Optional[dict[str, list[str]]] = None
    """The case names it was trained and validated on, ``{"training": [...], "validation": [...]}`` (a
    cross-validation fold adds ``fold`` and ``folds``), as saved in its checkpoint and in ``splits.json``."""
    postprocessing: Optional[Postprocessing] = None
    """The post-processing chosen on its validation predictions (``postprocessing.json`` beside the checkpoint)."""
    onnx: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    """The ONNX Runtime predictor that segments in place of the network (``load_model(..., runtime="onnx")``; an
    :class:`~napari_pgps.engine.onnx_runtime.OnnxNetwork`, which takes windows of its ``patch_size`` only)."""
    _baked: Optional[tuple[tuple[int, int, int], nn.Module]] = field(default=None, init=False, repr=False)

    @property
    def label_values(self) -> list[int]:
        return sorted(self.config.labels)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.model.patch_size)

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """The axes (0, 1, 2 = Z, Y, X) its training augmentation flipped: the only ones test-time mirroring flips."""
        return MIRRORED_AXES.get(self.config.data.augmentation, ())

    @property
    def segmenting_patch(self) -> tuple[int, int, int]:
        """The window segmentation takes by default: the ONNX network's when there is one, else the training patch."""
        return tuple(self.onnx.patch_size) if self.onnx is not None else self.patch_size

    def network_for(self, patch_size: Sequence[int]) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
        """The network that segments with windows of ``patch_size`` (Z, Y, X).

        For a hypernetwork, the plain DynUNet baked for that size: baked once
        and kept until another size is asked for. Any other model is returned as is.
        With an ONNX Runtime predictor (:attr:`onnx`), that predictor, for its own window only.
        """
        if self.onnx is not None:
            if tuple(int(p) for p in patch_size) != tuple(self.onnx.patch_size):
                raise InputError(f"{self.checkpoint}: its ONNX network takes windows of "
                                 f"{' x '.join(map(str, self.onnx.patch_size))} only; leave out --patch-size, "
                                 "or export it again with --onnx --patch-size Z Y X.")
            return self.onnx
        if not architecture(self.config.model).bakes_to:
            return self.network
        patch = tuple(int(p) for p in patch_size)
        if self._baked is None or self._baked[0] != patch:
            self._baked = (patch, self.network.bake(patch))
        return self._baked[1]


def load_model(model: str | os.PathLike, device: str | torch.device = "auto", runtime: str = "torch") -> SegmentationModel:
    """Load a run folder, checkpoint or model package (``napari-pgps export``) for segmentation (safe loading, no
    pickled code).

    ``runtime="onnx"`` segments with the ONNX network inside the package (``export --onnx``) in ONNX Runtime on the
    CPU (:mod:`.onnx_runtime`) instead of the torch network.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}.")
    if runtime == "onnx":
        if str(device) not in ("auto", "cpu"):
            raise InputError(f"the ONNX runtime runs on the CPU; segment with --device cpu (or auto), not {device}.")
        device = "cpu"
    path = find_checkpoint(model)
    payload = load_checkpoint(path)
    config = trained_config(payload, path)
    try:
        network = build_network(config.model, payload["model"])
    except (InputError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's network cannot be rebuilt ({exc}).") from None
    device = device if isinstance(device, torch.device) else pick_device(device)
    network.to(device).eval()
    if "package" in payload:  # a model package carries its own post-processing choice
        chosen = payload.get("postprocessing")
        postprocessing = Postprocessing(chosen["foreground"], list(chosen["labels"])) if chosen else None
    else:
        postprocessing = Postprocessing.load(path.parent)
    onnx = None
    if runtime == "onnx":
        from .onnx_runtime import check_matches, read_package_onnx

        if "package" not in payload:
            raise InputError(f"{path}: the ONNX runtime segments with a model package that holds its ONNX network; "
                             "export it with napari-pgps export --model RUN_DIR --out MODEL.zip --onnx.")
        onnx = read_package_onnx(path, payload)
        check_matches(onnx, config.model.in_channels, config.model.out_channels, str(path))
    return SegmentationModel(network=network, config=config, device=device, checkpoint=str(path),
                             split=payload.get("split"), postprocessing=postprocessing, onnx=onnx)


def window_count(shape: Sequence[int], patch: Sequence[int], overlap: float = OVERLAP) -> int:
    """Number of windows a sliding window of ``patch`` takes over ``shape`` (both Z, Y, X)."""
    total = 1
    for size, roi in zip(shape, patch):
        step = max(int(roi * (1 - overlap)), 1)
        total *= 1 if size <= roi else math.ceil((size - roi) / step) + 1
    return total


def whole_volume_bytes(channels: int, classes: int, shape: Sequence[int]) -> int:
    """Bytes of the float32 whole-volume arrays of one segmentation of a (padded) ``shape`` (Z, Y, X): the image
    (C channels) and a flipped copy, the weighted logit sums (K) and weight sums (1), the softmax (K), a flipped
    copy of it and the running mean (K)."""
    return 4 * math.prod(int(n) for n in shape) * (2 * channels + 4 * classes + 1)


def free_memory(device: torch.device) -> Optional[int]:
    """Free bytes of a CUDA device; ``None`` for other devices (theirs is not asked)."""
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


def accumulator_device(device: torch.device, needed_bytes: int) -> torch.device:
    """Where the whole-volume arrays live: on ``device`` where they need at most :data:`GPU_ARRAYS_SHARE` of its
    :func:`free_memory` (or it is not asked), else in CPU memory."""
    free = free_memory(device)
    return device if free is None or needed_bytes <= GPU_ARRAYS_SHARE * free else torch.device("cpu")


def on_device_or_cpu(run: Callable[[torch.device], torch.Tensor], store: torch.device,
                     notes: list[str]) -> torch.Tensor:
    """``run(store)``; if the GPU runs out of memory with the whole-volume arrays on it, ``run`` again with them in
    CPU memory, and a note says so."""
    try:
        return run(store)
    except torch.cuda.OutOfMemoryError:
        if store.type == "cpu":
            raise
    torch.cuda.empty_cache()  # out of the except clause: the failed try's tensors are released by now
    notes.append("the GPU ran out of memory; segmented again with the whole-volume sums in CPU memory")
    return run(torch.device("cpu"))


def predict_probabilities(
    network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    patch_size: Sequence[int],
    device: torch.device,
    *,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 2,
    mixed_precision: bool = True,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
    classes: Optional[int] = None,
    notes: Optional[list[str]] = None,
) -> np.ndarray:
    """Softmax probabilities of a preprocessed image.

    Args:
        network: the network, or any predictor of a window batch's logits (an ONNX Runtime session's
            :class:`~napari_pgps.engine.onnx_runtime.OnnxNetwork`).
        image: preprocessed intensities (C, Z, Y, X), or (Z, Y, X) for one channel.
        patch_size: window (Z, Y, X); the image is padded where smaller.
        device: where the windows go through the network.
        mirror_axes: axes (0, 1, 2 = Z, Y, X) to mirror: the softmax of every combination of their flips is
            averaged (2^n passes; none when empty).
        progress: called as ``progress(windows_done, windows_total)``.
        cancel: polled before each window batch; returning true raises :class:`Cancelled`.
        classes: K, the network's outputs; with it the whole-volume arrays go to CPU memory up front when the GPU
            cannot hold them (:func:`accumulator_device`), without it only once the GPU ran out of memory.
        notes: a list that gets a line when the whole-volume arrays were kept in CPU memory.

    Returns:
        float32 array (K, Z, Y, X).
    """
    from monai.inferers import sliding_window_inference

    axes = sorted({2 + int(a) for a in mirror_axes})  # in the (1, C, Z, Y, X) tensor
    flips = [f for r in range(len(axes) + 1) for f in itertools.combinations(axes, r)]
    per_pass = math.ceil(window_count(image.shape[-3:], patch_size) / batch_size)
    total = per_pass * len(flips)
    use_amp = mixed_precision and device.type == "cuda"
    notes = [] if notes is None else notes
    channels = 1 if image.ndim == 3 else image.shape[0]
    padded = [max(int(n), int(p)) for n, p in zip(image.shape[-3:], patch_size)]
    store = accumulator_device(device, whole_volume_bytes(channels, classes, padded) if classes else 0)
    if store != device:
        notes.append(f"the whole-volume sums were kept in CPU memory: the GPU's free memory "
                     f"({free_memory(device) / 2**30:.1f} GiB) cannot hold them")
    done = 0

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if cancel is not None and cancel():
            raise Cancelled()
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp), cpu_convolutions(device):
            logits = network(windows)
        done += 1
        if progress is not None:
            progress(min(done, total), total)
        return logits.float()

    def mean_softmax(store: torch.device) -> torch.Tensor:
        """The softmax (1, K, Z, Y, X) averaged over the flips, summed on ``store`` (windows on ``device``)."""
        nonlocal done
        done = 0
        tensor = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32), device=store)
        tensor = tensor[None, None] if tensor.dim() == 3 else tensor[None]
        probabilities = None
        for flip in flips:
            flipped = torch.flip(tensor, flip) if flip else tensor
            logits = sliding_window_inference(
                flipped,
                roi_size=tuple(int(p) for p in patch_size),
                sw_batch_size=batch_size,
                predictor=predictor,
                overlap=OVERLAP,
                mode="gaussian",
                sigma_scale=GAUSSIAN_SIGMA,
                sw_device=device,
                device=store,
            )
            soft = torch.softmax(logits, dim=1)
            soft = torch.flip(soft, flip) if flip else soft
            probabilities = soft if probabilities is None else probabilities + soft
        return probabilities / len(flips)

    module = network if isinstance(network, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        with torch.inference_mode():
            probabilities = on_device_or_cpu(mean_softmax, store, notes)
    finally:
        if module is not None:
            module.train(was_training)
    return probabilities[0].cpu().numpy().astype(np.float32)


@dataclass
class Segmentation:
    """The result of segmenting one volume.

    Attributes:
        labels: label values (Z, Y, X) on the input's own grid, with its affine and header.
        volumes: per label name, ``{"voxels": int, "ml": float}``, measured on the input's grid.
        probabilities: if asked for (``keep_probabilities``), else ``None``: the class probabilities (K, Z, Y, X)
            float32 on the input's grid (resampled back linearly, background outside the region the model
            segmented; averaged over an ensemble), channel ``k`` for the ``k``-th smallest label value. ``labels``
            is their argmax, to the voxel, until the post-processing changes it.
        notes: what was done to the input to meet the model, e.g. "reoriented from LPS to RAS".
    """

    labels: Volume
    volumes: dict[str, dict[str, float]]
    probabilities: Optional[np.ndarray] = None
    notes: list[str] = field(default_factory=list)


def check_segmentable(models: Sequence[SegmentationModel], image: Volume) -> None:
    """Check, before any work, that ``models`` (one, or an ensemble) can segment ``image`` (C, Z, Y, X) or (Z, Y, X).

    Raises:
        InputError: the models differ in their labels or channels, the image has another number of channels than
            they take, or it is a single slice (:func:`~napari_pgps.data.dataset.check_image`).
    """
    first = models[0]
    for model in models[1:]:
        if model.config.labels != first.config.labels or model.config.channels != first.config.channels:
            raise InputError(f"{model.checkpoint}: its labels or channels differ from {first.checkpoint}'s; an "
                             "ensemble averages models of the same labels and channels.")
    channels = first.config.channels or ["image"] * first.config.model.in_channels
    if image.channels != len(channels):
        raise InputError(f"{image.path or 'the image'}: {image.channels} channel(s), but the model takes "
                         f"{len(channels)} ({', '.join(channels)}), in that order.")
    check_image(image)


def segment_volume(
    models: SegmentationModel | Sequence[SegmentationModel],
    image: Volume,
    *,
    patch_size: Optional[Sequence[int]] = None,
    mirror: bool = False,
    keep_probabilities: bool = False,
    postprocess: bool = True,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Segmentation:
    """Segment one volume with a trained model, or an ensemble of models (their probabilities averaged).

    The image is preprocessed as each model's training cases were (reoriented
    to its orientation, cut to its nonzero region, normalised, resampled to its
    spacing); the probabilities go back to the input's own grid before they
    are averaged and the argmax is taken. The post-processing chosen on the
    model's validation predictions is applied unless ``postprocess`` is false;
    for an ensemble only the steps every model chose (each model's choice was
    made for that model alone; the folds of one cross-validation share theirs).

    Args:
        image: the raw intensities, (Z, Y, X) or (C, Z, Y, X) with the channels the models take, in their order.
        patch_size: sliding-window size (Z, Y, X); each model's training patch when ``None`` (its ONNX network's
            window with the ONNX runtime).
        mirror: mirroring test-time augmentation, along the axes each model was trained to flip
            (:attr:`SegmentationModel.mirror_axes`); a model trained without mirroring is not mirrored (a note says so).
        keep_probabilities: keep the class probabilities in the result (:attr:`Segmentation.probabilities`).

    Raises:
        InputError: the image has another number of channels than the models take, or the models differ in
            their labels or channels.
    """
    models = [models] if isinstance(models, SegmentationModel) else list(models)
    check_segmentable(models, image)
    first = models[0]
    probabilities, notes = None, []
    for index, model in enumerate(models):
        def advanced(done: int, total: int, index: int = index) -> None:
            if progress is not None:
                progress(index * total + done, len(models) * total)

        one, said = _probabilities(model, image, patch_size, mirror, advanced, cancel)
        probabilities = one if probabilities is None else probabilities + one
        notes += [note for note in said if note not in notes]
    probabilities /= len(models)
    values = np.array(first.label_values)
    label_map = values[np.argmax(probabilities, axis=0)]
    chosen = _shared_postprocessing(models)
    if postprocess and chosen is not None:
        label_map = chosen.apply(label_map)
        notes.append(f"post-processed: {chosen.describe(first.config.labels)}"
                     + (" (the steps all models chose)" if len(models) > 1 else ""))
    if len(models) > 1:
        notes.append(f"ensemble of {len(models)} models")
    labels = image.with_array(label_map.astype(label_dtype(values.max())))
    volumes = label_volumes(labels.array, image.spacing, first.config.labels)
    return Segmentation(labels=labels, volumes=volumes, probabilities=probabilities if keep_probabilities else None,
                        notes=notes)


def _shared_postprocessing(models: Sequence[SegmentationModel]) -> Optional[Postprocessing]:
    """The post-processing to apply: a model's own choice; for an ensemble the steps every model chose (a model
    without a choice chose none). ``None`` when no model has a choice."""
    if all(model.postprocessing is None for model in models):
        return None
    choices = [model.postprocessing or Postprocessing() for model in models]
    return Postprocessing(foreground=all(choice.foreground for choice in choices),
                          labels=[v for v in choices[0].labels if all(v in choice.labels for choice in choices)])


def _probabilities(model: SegmentationModel, image: Volume, patch_size, mirror: bool, progress, cancel):
    """One model's class probabilities (K, Z, Y, X) on the image's own grid, and what was done to meet the model."""
    patch = tuple(int(p) for p in (patch_size or model.segmenting_patch))
    check_inference_patch(model.config.model, patch)
    plan = PreprocessingPlan.of(model.config)
    preprocessed, geometry = preprocess_image(image, plan)
    notes = geometry.describe(plan)
    if mirror and not model.mirror_axes:
        notes.append("test-time mirroring skipped: the model was trained without mirroring")
    probabilities = predict_probabilities(
        model.network_for(patch),
        preprocessed,
        patch,
        model.device,
        mirror_axes=model.mirror_axes if mirror else (),
        batch_size=model.config.training.batch_size,
        mixed_precision=model.config.training.mixed_precision,
        progress=progress,
        cancel=cancel,
        classes=len(model.label_values),
        notes=notes,
    )
    return restore_probabilities(probabilities, geometry, plan), notes

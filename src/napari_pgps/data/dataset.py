"""Datasets of labelled volumes: the Decathlon and nnU-Net v2 raw layouts.

Decathlon: ``dataset.json`` with ``labels``, ``modality`` (one name per
channel) and ``training`` entries, ``imagesTr/CASE.nii.gz`` (4D (x, y, z, c)
when there are several channels) and ``labelsTr/CASE.nii.gz``.
nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value)
and ``file_ending`` (any volume ending read: ``.nii.gz``, ``.nrrd``, ``.mha``, ...);
``imagesTr/CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...
(one file per channel) and ``labelsTr/CASE.nii.gz``.

Cases are validated as they load (see :func:`check_case`) so a problem is
reported with the file it comes from before anything is written.

nnU-Net v2's ``ignore`` label (a label named "ignore", the highest value)
marks unannotated voxels: it is kept apart from the classes (``labels``) as
``ignore_label``, so the network has no output for it, the loss and the
validation Dice leave its voxels out, and it is never predicted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .geometry import AFFINE_TOLERANCE, geometry_difference
from .volume import VOLUME_SUFFIXES, Volume, case_name, is_volume_file, read_image, read_volume


@dataclass
class Case:
    """One labelled (or unlabelled) volume of a dataset.

    Attributes:
        name: the case identifier (file name without suffix and channel tag).
        image: the intensities, array (Z, Y, X), or (C, Z, Y, X) with several channels, float32.
        labels: the label map, array (Z, Y, X) integer, or ``None``.
    """

    name: str
    image: Volume
    labels: Optional[Volume] = None


@dataclass
class CaseFiles:
    """A case's files: its image (one file, or one per channel) and its label map."""

    name: str
    images: list[Path]
    labels: Optional[Path]


@dataclass
class DatasetInfo:
    """What ``dataset.json`` says: label names, channel names, the case files.

    Attributes:
        labels: the classes, value -> name, background (0) included, the ignore label left out.
        ignore_label: the value of nnU-Net v2's ``ignore`` label, or ``None``.
    """

    root: Path
    labels: dict[int, str]
    channels: list[str]
    files: list[CaseFiles]
    ignore_label: Optional[int] = None

    @property
    def declared(self) -> dict[int, str]:
        """Every value ``dataset.json`` declares (value -> name): the classes and the ignore label."""
        return with_ignore(self.labels, self.ignore_label)


def read_dataset_info(root: str | Path) -> DatasetInfo:
    """Read ``dataset.json`` and list the case files of a dataset folder.

    Raises:
        InputError: missing folder or ``dataset.json``, unreadable JSON, or no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found.")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(
            f"{meta_path}: not found. A dataset folder needs dataset.json, imagesTr/ and labelsTr/ "
            "(Medical Segmentation Decathlon or nnU-Net v2 raw layout)."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: not valid JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object.")
    labels, ignore = _split_ignore(_parse_labels(meta.get("labels"), meta_path), meta_path)
    channels = _parse_channels(meta, meta_path)
    if "channel_names" in meta or "file_ending" in meta:
        files = _nnunet_files(root, meta, len(channels))
    else:
        files = _decathlon_files(root, meta)
    if not files:
        raise InputError(f"{root}: the dataset holds no training case (imagesTr/ is empty or missing).")
    return DatasetInfo(root=root, labels=labels, channels=channels, files=files, ignore_label=ignore)


IGNORE_NAME = "ignore"
"""nnU-Net v2's name of the label of unannotated voxels."""


def ignore_label_of(dataset_json: dict) -> Optional[int]:
    """The value of nnU-Net v2's ``ignore`` label in a ``dataset.json`` object, or ``None`` when it has none.

    nnU-Net v2 marks unannotated voxels with a label named ``ignore`` (``"labels": {"background": 0, "x": 1,
    "ignore": 2}``): it is not a class (never trained, predicted nor scored) and must be the highest value.
    A Decathlon ``{"2": "ignore"}`` entry is read the same way.

    Raises:
        InputError: no ``labels``, or the ignore label is 0 or not the highest label value.
    """
    where = Path("dataset.json")
    return _split_ignore(_parse_labels(dataset_json.get("labels"), where), where)[1]


def with_ignore(labels: dict[int, str], ignore_label: Optional[int]) -> dict[int, str]:
    """The classes ``labels`` (value -> name) and the ignore label, if any, in value order."""
    return labels if ignore_label is None else {**labels, ignore_label: IGNORE_NAME}


def _split_ignore(labels: dict[int, str], where: Path) -> tuple[dict[int, str], Optional[int]]:
    """The classes among ``labels`` (value -> name) and the ignore label's value (``None`` without one)."""
    ignore = next((value for value, name in labels.items() if name == IGNORE_NAME), None)
    if ignore is None:
        return labels, None
    if ignore == 0 or ignore != max(labels):
        raise InputError(f"{where}: the 'ignore' label is {ignore}, but nnU-Net v2 needs it to be the highest label "
                         f"value (here {max(labels)}) and not 0; renumber it in dataset.json and the label maps.")
    return {value: name for value, name in labels.items() if value != ignore}, ignore


def _parse_labels(raw: object, where: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: 'labels' is missing; it must map label values to names.")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        # Decathlon: {"0": "background"}; nnU-Net v2: {"background": 0}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number, name = value, key
        else:
            number, name = key, value
        try:
            labels[int(number)] = str(name)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label entry {key!r}: {value!r} is not a value and a name.") from None
    if 0 not in labels:
        labels[0] = "background"
    return dict(sorted(labels.items()))


def _parse_channels(meta: dict, where: Path) -> list[str]:
    """Channel names in channel order (``channel_names`` of nnU-Net v2, ``modality`` of the Decathlon)."""
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "unknown"}
    if not isinstance(channels, dict):
        raise InputError(f"{where}: 'channel_names' / 'modality' must map channel numbers to names.")
    try:
        ordered = sorted(channels.items(), key=lambda item: int(item[0]))
    except ValueError:
        raise InputError(f"{where}: channel numbers {sorted(channels)} are not 0, 1, 2, ...") from None
    if [int(k) for k, _ in ordered] != list(range(len(ordered))):
        raise InputError(f"{where}: channel numbers {[k for k, _ in ordered]} are not 0, 1, 2, ...")
    return [str(name) for _, name in ordered]


def _decathlon_files(root: Path, meta: dict) -> list[CaseFiles]:
    files = []
    entries = meta.get("training")
    if isinstance(entries, list) and entries:
        for entry in entries:
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(f"{root / 'dataset.json'}: training entry {entry!r} has no 'image'.")
            image = _inside(root, str(entry["image"]))
            label = entry.get("label")
            files.append(CaseFiles(case_name(image), [image], _inside(root, str(label)) if label else None))
        return sorted(files, key=lambda f: f.name)
    for image in sorted(p for p in (root / "imagesTr").glob("*") if is_volume_file(p)):
        label = root / "labelsTr" / image.name
        files.append(CaseFiles(case_name(image), [image], label if label.exists() else None))
    return files


def _inside(root: Path, relative: str) -> Path:
    """The file a ``dataset.json`` entry names, relative to the dataset folder ``root``.

    The entry is checked as written, not through symbolic links, so a dataset folder that is a link, or case files
    that link into a shared store, still work, while ``../x`` or ``/etc/x`` is refused.

    Raises:
        InputError: the entry is absolute or leads out of the folder.
    """
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise InputError(f"{root / 'dataset.json'}: entry {relative!r} points outside the dataset folder; name the "
                         "case files relative to it, e.g. ./imagesTr/CASE.nii.gz.")
    return root / normal


def nnunet_image_name(case: str, channel: int, ending: str = ".nii.gz") -> str:
    """nnU-Net's name of a case's image file of one channel: ``nnunet_image_name("case", 0)`` is
    ``"case_0000.nii.gz"`` (the channel in four digits, then the file ending)."""
    return f"{case}_{channel:04d}{ending}"


def _nnunet_files(root: Path, meta: dict, channels: int) -> list[CaseFiles]:
    ending = str(meta.get("file_ending", ".nii.gz"))
    if "/" in ending or "\\" in ending:
        raise InputError(f"{root / 'dataset.json'}: file_ending {ending!r} holds a path; it is the files' suffix, "
                         "e.g. .nii.gz.")
    if not ending.lower().endswith(VOLUME_SUFFIXES):
        raise InputError(f"{root / 'dataset.json'}: file_ending {ending!r} is not a volume format napari-pgps reads; "
                         f"use one of {', '.join(VOLUME_SUFFIXES)}.")
    files = []
    first_channel = nnunet_image_name("", 0, ending)  # "_0000.nii.gz"
    for first in sorted((root / "imagesTr").glob(f"*{first_channel}")):
        name = first.name[: -len(first_channel)]
        images = [root / "imagesTr" / nnunet_image_name(name, c, ending) for c in range(channels)]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: not found; dataset.json declares {channels} channel(s), so case '{name}' "
                             f"needs {', '.join(p.name for p in images)}.")
        label = root / "labelsTr" / f"{name}{ending}"
        files.append(CaseFiles(name, images, label if label.exists() else None))
    return files


def check_image(image: Volume) -> None:
    """Check that an image is a 3D volume: every spatial axis (Z, Y, X) holds at least two voxels.

    A single slice is a 2D image, which the 3D networks cannot learn from or segment.

    Raises:
        InputError: naming the file and its shape.
    """
    flat = [axis for axis, size in zip("ZYX", image.shape) if size < 2]
    if flat:
        raise InputError(f"{image.path or 'the image'}: shape {image.shape} (Z, Y, X) is a single slice along "
                         f"{', '.join(flat)}, a 2D image; napari-pgps needs 3D volumes (stack the slices into one).")


def check_case(image: Volume, labels: Optional[Volume], declared: Optional[dict[int, str]] = None) -> None:
    """Check that an image is 3D (:func:`check_image`) and that its label map, if any, belongs to it.

    Raises:
        InputError: a 2D image, shapes or affines that differ, or labels holding undeclared values.
    """
    check_image(image)
    if labels is None:
        return
    if image.shape != labels.shape:
        raise InputError(
            f"{labels.path}: label shape {labels.shape} (Z, Y, X) differs from the image's {image.shape} "
            f"({image.path}); image and labels must cover the same voxels."
        )
    if not np.allclose(image.affine, labels.affine, atol=AFFINE_TOLERANCE):
        raise InputError(f"{labels.path}: its grid differs from the image's ({image.path}): "
                         f"{geometry_difference(image.affine, labels.affine)}; save the labels on the image's grid "
                         "(same origin, spacing and axes).")
    if declared is not None:
        present = np.unique(labels.array)
        unknown = sorted(int(v) for v in present if int(v) not in declared)
        if unknown:
            raise InputError(
                f"{labels.path}: label value(s) {unknown} are not declared in dataset.json "
                f"(declared: {sorted(declared)}); declare them or fix the label map."
            )


def case_files(
    info: DatasetInfo, *, require_labels: bool = True, max_cases: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
) -> list[CaseFiles]:
    """The files of the labelled cases of a dataset.

    Args:
        require_labels: a case without a label file is an error when true, left out otherwise.
        max_cases: keep the first N cases (sorted by name).
        names: keep only these cases.
    """
    files = [f for f in info.files if names is None or f.name in set(names)]
    if max_cases is not None:
        files = files[:max_cases]
    absent = next((path for f in files for path in f.images if not path.exists()), None)  # a file or DICOM folder
    if absent is not None:
        raise InputError(f"{absent}: file not found.")
    missing = [f for f in files if f.labels is None]
    if missing and require_labels:
        raise InputError(f"{missing[0].images[0]}: no label file for case '{missing[0].name}' in {info.root / 'labelsTr'}.")
    files = [f for f in files if f.labels is not None]
    if not files:
        raise InputError(f"{info.root}: the dataset holds no labelled case.")
    return files


def read_case(info: DatasetInfo, entry: CaseFiles) -> Case:
    """Read and check one case: image (C, Z, Y, X) with the dataset's channels, and its labels."""
    image = read_image(entry.images)
    if image.channels != len(info.channels):
        raise InputError(f"{entry.images[0]}: {image.channels} channel(s), but dataset.json declares "
                         f"{len(info.channels)} ({', '.join(info.channels)}).")
    labels = read_volume(entry.labels, kind="labels") if entry.labels is not None else None
    check_case(image, labels, info.declared)
    return Case(entry.name, image, labels)


def load_cases(
    info: DatasetInfo,
    *,
    require_labels: bool = True,
    max_cases: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
) -> list[Case]:
    """Read and check the labelled cases of a dataset (all in memory; see :mod:`.store` for large datasets)."""
    return [read_case(info, entry) for entry in case_files(info, require_labels=require_labels, max_cases=max_cases,
                                                           names=names)]


@dataclass
class TrainingSet:
    """Labelled cases in memory (e.g. from napari layers) with their classes (value -> name, as
    :attr:`DatasetInfo.labels`), channel names and nnU-Net v2 ignore label (``None``: none)."""

    cases: list[Case]
    labels: dict[int, str]
    channels: list[str]
    ignore_label: Optional[int] = None


def load_training_set(root: str | Path, max_cases: Optional[int] = None) -> TrainingSet:
    """Read and check every labelled case of a dataset folder into memory."""
    info = read_dataset_info(root)
    return TrainingSet(cases=load_cases(info, max_cases=max_cases), labels=info.labels, channels=info.channels,
                       ignore_label=info.ignore_label)


def split_cases(names: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A reproducible train/validation split of case names.

    The names are sorted, shuffled with ``seed`` and the first
    ``round(n * validation_fraction)`` (at least 1 when there are 2 or more
    cases and the fraction is positive) become the validation cases.

    Returns:
        (training names, validation names), each sorted.
    """
    ordered = sorted(names)
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"validation fraction {validation_fraction} must be in [0, 1).")
    n_val = int(round(len(ordered) * validation_fraction))
    if validation_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    validation = sorted(ordered[i] for i in order[:n_val])
    training = sorted(ordered[i] for i in order[n_val:])
    return training, validation


def fold_splits(names: Sequence[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """A ``folds``-fold cross-validation of the cases: disjoint validation sets that cover every case once.

    The names are sorted, shuffled with ``seed`` and cut into ``folds`` parts of
    nearly equal size (as nnU-Net's 5-fold split); fold k validates on part k and
    trains on the others.

    Returns:
        per fold ``{"training": [...], "validation": [...]}``, each sorted.
    """
    ordered = sorted(names)
    if folds < 2 or folds > len(ordered):
        raise InputError(f"a cross-validation of {len(ordered)} case(s) needs between 2 and {len(ordered)} folds, "
                         f"not {folds}.")
    order = np.random.default_rng(seed).permutation(len(ordered))
    parts = np.array_split(order, folds)
    return [{"training": sorted(ordered[i] for i in order if i not in set(part)),
             "validation": sorted(ordered[i] for i in part)} for part in parts]

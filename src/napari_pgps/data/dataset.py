"""Datasets of labelled volumes: the Decathlon and nnU-Net v2 raw layouts.

Decathlon: ``dataset.json`` with ``labels``, ``modality`` (one name per
channel) and ``training`` entries, ``imagesTr/CASE.nii.gz`` (4D (x, y, z, c)
when there are several channels) and ``labelsTr/CASE.nii.gz``.
nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value)
and ``file_ending``; ``imagesTr/CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...
(one file per channel) and ``labelsTr/CASE.nii.gz``.

Cases are validated as they load (see :func:`check_case`) so a problem is
reported with the file it comes from before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .volume import Volume, case_name, is_volume_file, read_image, read_volume

AFFINE_TOLERANCE = 1e-3


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
    """What ``dataset.json`` says: label names, channel names, the case files."""

    root: Path
    labels: dict[int, str]
    channels: list[str]
    files: list[CaseFiles]


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
    labels = _parse_labels(meta.get("labels"), meta_path)
    channels = _parse_channels(meta, meta_path)
    if "channel_names" in meta or "file_ending" in meta:
        files = _nnunet_files(root, meta, len(channels))
    else:
        files = _decathlon_files(root, meta)
    if not files:
        raise InputError(f"{root}: the dataset holds no training case (imagesTr/ is empty or missing).")
    return DatasetInfo(root=root, labels=labels, channels=channels, files=files)


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
            image = _resolve(root, str(entry["image"]))
            label = entry.get("label")
            files.append(CaseFiles(case_name(image), [image], _resolve(root, str(label)) if label else None))
        return sorted(files, key=lambda f: f.name)
    for image in sorted(p for p in (root / "imagesTr").glob("*") if is_volume_file(p)):
        label = root / "labelsTr" / image.name
        files.append(CaseFiles(case_name(image), [image], label if label.exists() else None))
    return files


def _resolve(root: Path, relative: str) -> Path:
    return root / (relative[2:] if relative.startswith("./") else relative)


def _nnunet_files(root: Path, meta: dict, channels: int) -> list[CaseFiles]:
    ending = str(meta.get("file_ending", ".nii.gz"))
    files = []
    for first in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        name = first.name[: -len(f"_0000{ending}")]
        images = [root / "imagesTr" / f"{name}_{c:04d}{ending}" for c in range(channels)]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: not found; dataset.json declares {channels} channel(s), so case '{name}' "
                             f"needs {', '.join(p.name for p in images)}.")
        label = root / "labelsTr" / f"{name}{ending}"
        files.append(CaseFiles(name, images, label if label.exists() else None))
    return files


def check_case(image: Volume, labels: Optional[Volume], declared: Optional[dict[int, str]] = None) -> None:
    """Check that an image and its label map belong together.

    Raises:
        InputError: shapes or affines differ, or labels hold undeclared values.
    """
    if labels is None:
        return
    if image.shape != labels.shape:
        raise InputError(
            f"{labels.path}: label shape {labels.shape} (Z, Y, X) differs from the image's {image.shape} "
            f"({image.path}); image and labels must cover the same voxels."
        )
    if not np.allclose(image.affine, labels.affine, atol=AFFINE_TOLERANCE):
        raise InputError(
            f"{labels.path}: its affine differs from the image's ({image.path}); image and labels must share "
            f"their geometry. Image affine:\n{np.round(image.affine, 4)}\nlabel affine:\n{np.round(labels.affine, 4)}"
        )
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
    absent = next((path for f in files for path in f.images if not path.is_file()), None)
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
    check_case(image, labels, info.labels)
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
    """Labelled cases in memory (e.g. from napari layers) with their label names (value -> name) and channel names."""

    cases: list[Case]
    labels: dict[int, str]
    channels: list[str]


def load_training_set(root: str | Path, max_cases: Optional[int] = None) -> TrainingSet:
    """Read and check every labelled case of a dataset folder into memory."""
    info = read_dataset_info(root)
    return TrainingSet(cases=load_cases(info, max_cases=max_cases), labels=info.labels, channels=info.channels)


def label_index_lookup(labels: dict[int, str]) -> np.ndarray:
    """An array mapping each declared label value to its index 0..K-1 (sorted by value): ``lookup[label_map]``."""
    values = sorted(labels)
    lookup = np.zeros(max(values) + 1, dtype=np.int64)
    lookup[values] = np.arange(len(values))
    return lookup


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

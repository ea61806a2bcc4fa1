"""Preprocessed datasets on disk: built once per dataset and plan, reused by later runs, folds and DDP ranks.

Layout of one preprocessed dataset (a folder named by the plan's digest, in a
folder named by the dataset's files' digest, under the cache folder)::

    fingerprint.json, fingerprint.npz      the dataset's fingerprint (per dataset, shared by its plans)
    <plan>/CASE.npy                        the network's input, float32 (C, Z, Y, X)
    <plan>/CASE_labels.npy                 label indices, uint8 (int16 beyond 256 labels) (Z, Y, X)
    <plan>/CASE_foreground.npy             sampled foreground voxels, int32 (N, 4): label index, z, y, x
    <plan>/CASE.json                       its geometry (to put predictions back), label counts,
                                           where each label's foreground rows are; written last

Every file is written atomically, so an interrupted build leaves whole cases
and resumes where it stopped. Arrays are read through memory maps opened for
each crop and closed after it, so the memory a training process holds does
not grow with the number of cases.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Generator, Optional, Sequence

import numpy as np

from ..files import atomic_path, write_text_atomically
from .dataset import Case
from .fingerprint import Fingerprint
from .preprocessing import CaseGeometry, PreprocessingPlan, preprocess_image, preprocess_labels

CACHE_VARIABLE = "NAPARI_PGPS_CACHE"
FOREGROUND_SAMPLES = 20_000
"""Foreground voxels kept per label and case for foreground-centred crops."""


def cache_folder(configured: Optional[str] = None) -> Path:
    """Where preprocessed datasets live: the configured folder, ``$NAPARI_PGPS_CACHE``, or ``~/.cache/napari-pgps``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-pgps"


class PreprocessedDataset:
    """The preprocessed cases of one dataset and plan (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def image(self, name: str) -> np.ndarray:
        """The case's input (C, Z, Y, X), memory-mapped (read only)."""
        return np.load(self.root / f"{name}.npy", mmap_mode="r")

    def labels(self, name: str) -> np.ndarray:
        """The case's label indices (Z, Y, X), memory-mapped (read only)."""
        return np.load(self.root / f"{name}_labels.npy", mmap_mode="r")

    def foreground(self, name: str) -> np.ndarray:
        """Sampled foreground voxels (N, 4) int32 (label index, z, y, x), memory-mapped, label by label."""
        return np.load(self.root / f"{name}_foreground.npy", mmap_mode="r")

    def info(self, name: str) -> dict[str, Any]:
        """``geometry`` (:class:`CaseGeometry` as a dict), ``label_counts`` (voxels per label index),
        ``foreground`` (label index -> [first row, last row + 1] in :meth:`foreground`)."""
        return json.loads((self.root / f"{name}.json").read_text())

    def geometry(self, name: str) -> CaseGeometry:
        return CaseGeometry.from_dict(self.info(name)["geometry"])

    def write(self, name: str, image: np.ndarray, labels: np.ndarray, geometry: CaseGeometry) -> None:
        """Store one preprocessed case: image (C, Z, Y, X) float32, label indices (Z, Y, X)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        rows, where = [], {}
        counts = np.bincount(labels.ravel().astype(np.int64))
        for index in range(1, len(counts)):
            if not counts[index]:
                continue
            coords = np.argwhere(labels == index)
            if len(coords) > FOREGROUND_SAMPLES:
                coords = coords[np.sort(rng.choice(len(coords), FOREGROUND_SAMPLES, replace=False))]
            start = sum(len(r) for r in rows)
            rows.append(np.column_stack([np.full(len(coords), index), coords]).astype(np.int32))
            where[index] = [start, start + len(coords)]
        foreground = np.concatenate(rows) if rows else np.zeros((0, 4), np.int32)
        for suffix, array in (("", image.astype(np.float32, copy=False)), ("_labels", labels), ("_foreground", foreground)):
            with atomic_path(self.root / f"{name}{suffix}.npy", suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(array))
        write_text_atomically(self.root / f"{name}.json", json.dumps(
            {"geometry": geometry.to_dict(), "label_counts": counts.tolist(), "foreground": where}))


class StoredImages(Sequence[np.ndarray]):
    """The preprocessed images (C, Z, Y, X) of some cases, read one at a time when indexed."""

    def __init__(self, store: PreprocessedDataset, names: Sequence[str]) -> None:
        self.store, self.names = store, list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.store.image(self.names[index]))


def prepare_store(
    root: Path, cases: Sequence[tuple[str, Callable[[], Case]]], plan: PreprocessingPlan,
) -> Generator[tuple[int, int], None, PreprocessedDataset]:
    """Preprocess every case not yet in the store at ``root``.

    Yields (cases done, cases) after each; returns the store (``store = yield from prepare_store(...)``).
    """
    store = PreprocessedDataset(root)
    missing = [(name, read) for name, read in cases if not store.has(name)]
    done = len(cases) - len(missing)
    for name, read in missing:
        case = read()
        image, geometry = preprocess_image(case.image, plan)
        store.write(name, image, preprocess_labels(case.labels, geometry, plan), geometry)
        done += 1
        yield done, len(cases)
    return store


def save_fingerprint(folder: Path, fingerprint: Fingerprint) -> None:
    """Keep a dataset's fingerprint in its cache folder."""
    write_text_atomically(folder / "fingerprint.json", fingerprint.to_json())
    with atomic_path(folder / "fingerprint.npz", suffix=".npz") as tmp:
        np.savez(tmp, *fingerprint.foreground)


def load_fingerprint(folder: Path) -> Optional[Fingerprint]:
    """The fingerprint kept in a dataset's cache folder, or ``None``."""
    if not (folder / "fingerprint.json").is_file() or not (folder / "fingerprint.npz").is_file():
        return None
    with np.load(folder / "fingerprint.npz") as arrays:
        foreground = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return Fingerprint.from_json((folder / "fingerprint.json").read_text(), foreground)

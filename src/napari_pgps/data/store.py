"""Preprocessed datasets on disk: built once per dataset and plan, reused by later runs, folds and DDP ranks.

Layout of one preprocessed dataset (a folder named by the plan's digest, in a
folder named by the dataset's files' digest, under the cache folder)::

    fingerprint.json, fingerprint.npz      the dataset's fingerprint (per dataset, shared by its plans)
    <plan>/CASE.npy                        the network's input, float32 (C, Z, Y, X)
    <plan>/CASE_labels.npy                 label indices, uint8 (int16 beyond 256 labels) (Z, Y, X)
    <plan>/CASE_foreground.npy             sampled foreground voxels, int32 (N, 4): label index, z, y, x
    <plan>/CASE.json                       its geometry (to put predictions back), label counts,
                                           where each label's foreground rows are, each array's
                                           shape and type; written last

Every file is written atomically, so an interrupted build leaves whole cases
and resumes where it stopped. Arrays are read through memory maps opened for
each crop and closed after it, so the memory a training process holds does
not grow with the number of cases.

A store is checked each time a run opens it: a case whose arrays are missing,
cut short or of another shape or type than recorded (a damaged disk, a copy
that stopped halfway) is preprocessed again, saying so in one line (a warning
of the ``napari_pgps`` logger, printed on stderr). The dataset's cache folder
is named by :func:`source_signature`: the package's and its readers' versions
and each source file's size, time and a hash of its first and last MiB, so a
file changed in place, even by ``cp -p`` (which keeps the time), gets a new
folder: a ``.nii.gz`` whatever changed (its last bytes hold the CRC of its
data), an uncompressed file when its size or either end changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Generator, Optional, Sequence

import numpy as np

from ..files import atomic_path, write_text_atomically
from .dataset import Case
from .fingerprint import Fingerprint, signature
from .preprocessing import CaseGeometry, PreprocessingPlan, preprocess_image, preprocess_labels
from .volume import one_line

CACHE_VARIABLE = "NAPARI_PGPS_CACHE"
FOREGROUND_SAMPLES = 20_000
"""Foreground voxels kept per label and case for foreground-centred crops."""
ARRAYS = ("", "_labels", "_foreground")
"""The suffixes of a case's arrays: CASE.npy (image), CASE_labels.npy, CASE_foreground.npy."""
LIBRARIES = ("napari-pgps", "numpy", "scipy", "scikit-image", "nibabel", "tifffile", "SimpleITK", "pydicom")
"""The distributions whose versions name a dataset's cache: another version may read or preprocess differently."""
HASHED_BYTES = 1 << 20
"""A source file's first and last this many bytes are hashed for its cache name (a .nii.gz's last bytes hold the
CRC of all its data). The whole files would cost about twice as long: 0.06-0.10 s against 0.04-0.05 s for the
400 files (16 MB) of Task04_Hippocampus, 0.18-0.23 s against 0.09-0.14 s for the 80 (100 MB) of LA_heart, read
from the page cache; a large dataset read from disk would take minutes at each run's start."""
log = logging.getLogger(__name__)


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

    def damage(self, name: str) -> Optional[str]:
        """Why a stored case cannot be used as it is (one line), or ``None`` when each array's header holds the
        shape and type recorded in its ``CASE.json`` and its file the bytes they take (read from the headers alone:
        about 0.4 s for 260 cases)."""
        try:
            recorded = self.info(name)["arrays"]
            for suffix in ARRAYS:
                path = self.root / f"{name}{suffix}.npy"
                shape, dtype, size = _npy_layout(path)
                wanted = tuple(recorded[suffix]["shape"]), np.dtype(recorded[suffix]["dtype"])
                if (shape, dtype) != wanted:
                    return f"{path.name} holds {dtype} {shape}, not the {wanted[1]} {wanted[0]} recorded"
                if path.stat().st_size != size:
                    return f"{path.name} has {path.stat().st_size} bytes, not the {size} of its {dtype} {shape}"
        except (OSError, ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return one_line(exc)
        return None

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
        arrays = dict(zip(ARRAYS, (image.astype(np.float32, copy=False), labels, foreground)))
        for suffix, array in arrays.items():
            with atomic_path(self.root / f"{name}{suffix}.npy", suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(array))
        write_text_atomically(self.root / f"{name}.json", json.dumps(
            {"geometry": geometry.to_dict(), "label_counts": counts.tolist(), "foreground": where,
             "arrays": {suffix: {"shape": list(a.shape), "dtype": str(a.dtype)} for suffix, a in arrays.items()}}))


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
    """Preprocess every case not yet in the store at ``root``, or damaged there (saying so, one line per case).

    Yields (cases done, cases) after each; returns the store (``store = yield from prepare_store(...)``).
    """
    store = PreprocessedDataset(root)
    missing = []
    for name, read in cases:
        if not store.has(name):
            missing.append((name, read))
        elif (damage := store.damage(name)) is not None:
            log.warning("napari-pgps: the preprocessed case %s in %s is damaged (%s); preprocessing it again.",
                        name, root, damage)
            missing.append((name, read))
    done = len(cases) - len(missing)
    for name, read in missing:
        case = read()
        image, geometry = preprocess_image(case.image, plan)
        store.write(name, image, preprocess_labels(case.labels, geometry, plan), geometry)
        done += 1
        yield done, len(cases)
    return store


def source_signature(root: Path, files: Sequence[tuple[str, Path]]) -> str:
    """A short digest naming a dataset's cache folder: the dataset folder, the versions of :data:`LIBRARIES`, and
    each (case name, file)'s name, size, modification time and a hash of its first and last :data:`HASHED_BYTES`."""
    parts: list[object] = [str(root), library_versions()]
    for case, path in files:
        stat = path.stat()
        parts.append((case, path.name, stat.st_size, stat.st_mtime_ns, _hash_of_ends(path, stat.st_size)))
    return signature(parts)


def library_versions() -> dict[str, str]:
    """The installed version of each of :data:`LIBRARIES` ("unknown" where not installed as a distribution)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _hash_of_ends(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        digest.update(file.read(HASHED_BYTES))
        if size > 2 * HASHED_BYTES:
            file.seek(-HASHED_BYTES, os.SEEK_END)
        digest.update(file.read())
    return digest.hexdigest()[:16]


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape and type an ``.npy`` file's header gives, and the file size they make."""
    layout = np.lib.format
    with open(path, "rb") as file:
        version = layout.read_magic(file)
        read_header = layout.read_array_header_1_0 if version == (1, 0) else layout.read_array_header_2_0
        shape, _, dtype = read_header(file)
        return shape, dtype, file.tell() + int(np.prod(shape)) * dtype.itemsize


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

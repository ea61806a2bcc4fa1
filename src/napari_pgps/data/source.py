"""Where a run's cases come from, and where their fingerprint and preprocessed copies are kept.

A dataset folder's cases are read file by file when needed; its fingerprint
and preprocessed datasets are kept in the cache folder under a name made of
the folder's name and a digest of its files (names, sizes, modification
times, a hash of each file's ends; the data file of a detached NRRD or
MetaImage header, every file of a case given as a DICOM series' folder) and of the versions of the package and its
readers, so a later run, another fold or another DDP rank on the same files
reuses them, and a changed file or version makes new ones. Cases given in
memory (napari layers) are preprocessed into a temporary folder that lives as
long as the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Optional, Sequence

from ..errors import InputError
from ..files import write_text_atomically
from .dataset import Case, TrainingSet, case_files, fold_splits, read_case, read_dataset_info, split_cases
from .fingerprint import Fingerprint, fingerprint_cases, signature
from .itk_image import data_files
from .preprocessing import PreprocessingPlan
from .store import (PreprocessedDataset, cache_folder, load_fingerprint, prepare_store, save_fingerprint,
                    source_signature)

COMPLETE = "complete"
"""Written in a preprocessed dataset's folder once every case is in it."""
WAIT_SECONDS = 3600.0
"""How long a DDP rank waits for the rank that preprocesses its node's dataset."""
TEST_SEED = 33
"""The seed drawing a dataset's test cases (``data.test_fraction``): fixed, so that every seed and fold of a
dataset set aside the same cases."""


@dataclass
class DataSource:
    """The labelled cases of a run, each read on demand, and the folder for their derived data."""

    cases: list[tuple[str, Callable[[], Case]]]
    labels: dict[int, str]
    """The classes, value -> name (background included, nnU-Net v2's ignore label left out)."""
    channels: list[str]
    folder: Path
    """Fingerprint and preprocessed datasets (temporary for cases in memory)."""
    temporary: bool = False
    ignore_label: Optional[int] = None
    """The value of nnU-Net v2's ignore label in the label maps, or ``None``."""

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.cases]

    def fingerprint(self, orientation: str, crop_to_nonzero: bool, without: Sequence[str] = (),
                    ) -> Generator[tuple[int, int], None, Fingerprint]:
        """The fingerprint of the cases but those named in ``without`` (a test split's, which nothing of the run may
        see), kept in :attr:`folder`; yields (done, total) while it is made."""
        folder = self.folder / f"fingerprint-{orientation}-{'crop' if crop_to_nonzero else 'whole'}"
        if without:
            folder = folder.with_name(f"{folder.name}-without-{signature(sorted(without))}")
        cases = self._cases_but(without)
        found = load_fingerprint(folder)
        if found is not None and set(found.cases) == {name for name, _ in cases}:
            return found
        made = yield from fingerprint_cases(cases, self.channels, orientation, crop_to_nonzero)
        save_fingerprint(folder, made)
        return made

    def preprocessed(self, plan: PreprocessingPlan, without: Sequence[str] = (),
                     ) -> Generator[tuple[int, int], None, PreprocessedDataset]:
        """The cases but those named in ``without`` (a test split's) preprocessed with ``plan`` (built where missing
        or damaged); yields (done, total) while it is built.

        Under torchrun only each node's local rank 0 builds and checks; the others wait for it (a store found
        damaged is repaired before rank 0 joins the process group, which the others wait at).
        """
        root = self.folder / f"plan-{plan.key()}"
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:
            return _wait_for(root)
        store = yield from prepare_store(root, self._cases_but(without), plan)
        (root / COMPLETE).write_text("")
        return store

    def split(self, fold: Optional[int], folds: int, validation_fraction: float, seed: int,
              test_fraction: float = 0.0) -> dict:
        """The run's split: ``{"training", "validation"}`` names, the ``test`` names when ``test_fraction`` > 0, and
        for a cross-validation fold its ``fold``, ``folds`` and every fold's split (``all_folds``).

        The test cases are drawn first, with :data:`TEST_SEED` whatever ``seed`` and ``fold`` (so every run on
        this dataset with this fraction sets aside the same ones; at least one where the fraction is positive and
        there are two cases or more); the validation cases, or the folds, are drawn from the rest with ``seed``.
        A cross-validation's folds are written once beside the dataset's fingerprint
        (``splits-<folds>-seed<seed>.json``, ``...-test<fraction>.json`` with a test split) and read back by every
        later fold, so the folds of one dataset always share them.
        """
        names, test = self.names, []
        if test_fraction > 0:
            names, test = split_cases(names, test_fraction, TEST_SEED)
        held_out = {"test": test} if test else {}
        if fold is None:
            training, validation = split_cases(names, validation_fraction, seed)
            return {"training": training, "validation": validation, **held_out}
        path = self.folder / f"splits-{folds}-seed{seed}{f'-test{test_fraction:g}' if test else ''}.json"
        splits = json.loads(path.read_text()) if path.is_file() else None
        if splits is None or sorted(n for s in splits for n in s["validation"]) != sorted(names):
            splits = fold_splits(names, folds, seed)
            write_text_atomically(path, json.dumps(splits, indent=1))
        if not 0 <= fold < folds:
            raise InputError(f"fold {fold} does not exist; a {folds}-fold cross-validation has folds 0 to {folds - 1}.")
        return {**splits[fold], **held_out, "fold": fold, "folds": folds, "all_folds": splits}

    def _cases_but(self, names: Sequence[str]) -> list[tuple[str, Callable[[], Case]]]:
        left_out = set(names)
        return [(name, read) for name, read in self.cases if name not in left_out]

    def close(self) -> None:
        """Remove a temporary folder."""
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def folder_source(path: str | os.PathLike, max_cases: Optional[int] = None, cache: Optional[str] = None) -> DataSource:
    """The labelled cases of a dataset folder (the first ``max_cases`` by name)."""
    info = read_dataset_info(path)
    files = case_files(info, max_cases=max_cases)
    signed = [(e.name, file) for e in files for given in (*e.images, e.labels) for file in _files_of(given)]
    digest = source_signature(info.root.resolve(), signed)
    folder = cache_folder(cache) / f"{info.root.resolve().name}-{digest}"
    cases = [(entry.name, lambda entry=entry: read_case(info, entry)) for entry in files]
    return DataSource(cases, info.labels, info.channels, folder, ignore_label=info.ignore_label)


def _files_of(path: Path) -> list[Path]:
    """The files holding a case's volume: its file (and the data file of a detached NRRD or MetaImage header), or
    every file of a DICOM series' folder (its subfolders' too, in name order)."""
    if not path.is_dir():
        return [path, *data_files(path)]
    return sorted(file for file in path.rglob("*") if file.is_file() and not file.name.startswith("."))


def memory_source(dataset: TrainingSet) -> DataSource:
    """Cases given in memory (e.g. napari layers), preprocessed into a temporary folder."""
    names = [case.name for case in dataset.cases]
    if len(set(names)) != len(names):
        raise InputError(f"two training cases share a name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                         "rename the layers.")
    folder = Path(tempfile.mkdtemp(prefix="napari-pgps-"))
    cases = [(case.name, lambda case=case: case) for case in dataset.cases]
    return DataSource(cases, dataset.labels, dataset.channels, folder, temporary=True,
                      ignore_label=dataset.ignore_label)


def _wait_for(root: Path) -> PreprocessedDataset:
    deadline = time.monotonic() + WAIT_SECONDS
    while not (root / COMPLETE).is_file():
        if time.monotonic() > deadline:
            raise InputError(f"{root}: the preprocessed dataset was not finished by local rank 0 within "
                             f"{WAIT_SECONDS:.0f} s.")
        time.sleep(1.0)
    return PreprocessedDataset(root)

"""Run folders: the files a training run writes, and one reader for them.

A run folder (``napari-pgps train --out RUN_DIR``, the Train widget's run)
holds:

``config.yaml`` (:data:`CONFIG_FILE`)
    the run's whole resolved configuration, written when the run starts and
    again when a method changes the network, so it says what the checkpoints hold;
``splits.json`` (:data:`SPLITS_FILE`)
    the training and validation case names, ``{"training": [...], "validation": [...]}``
    (a cross-validation fold adds ``fold`` and ``folds``);
``metrics.jsonl`` (:data:`~.progress.METRICS_FILE`)
    one event per line (:mod:`napari_pgps.events`);
``checkpoint_last.pt``, ``checkpoint_best.pt``, ``checkpoint_final.pt``
    (:mod:`.checkpoint`), written after every epoch; the final one when the run ends;
``postprocessing.json``
    the post-processing chosen on the validation cases (:mod:`.postprocessing`), once ``napari-pgps postprocess``
    chose one.

:class:`RunFolder` reads a run folder; :func:`model_config` reads the
configuration of any model path (a run folder, a checkpoint or a model
package) without loading its weights. Nothing outside the engine names these
files. Claiming a folder for a run (one run at a time): :mod:`.run_lock`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from ..config import RunConfig
from ..errors import InputError
from ..events import Event
from .checkpoint import find_checkpoint, load_checkpoint, trained_config
from .file_names import BEST, CONFIG_FILE, FINAL, LAST, SPLITS_FILE
from .package import is_model_package, read_package_config
from .progress import METRICS_FILE, read_events

CHECKPOINTS = {"last": LAST, "best": BEST, "final": FINAL}
"""The checkpoints of a run by what they are: of its latest epoch, of its best validation, of its end."""
EARLY_FILES = (CONFIG_FILE, SPLITS_FILE, METRICS_FILE)
"""What a run writes before its first checkpoint."""
STOPPED_RUN = f"a run folder with a {LAST} and no {FINAL}"
"""What a run that can be resumed leaves (for the words of the faces)."""


class RunFolder:
    """A training run's folder, read-only: its configuration, split, events and checkpoints.

    Raises:
        InputError: ``path`` is not a folder, or holds none of the files a run writes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a run folder ("
                             + ("a file" if self.path.exists() else "no such folder")
                             + "); give the folder a training run wrote (--out).")
        if not any((self.path / name).exists() for name in (*EARLY_FILES, *CHECKPOINTS.values())):
            raise InputError(f"{self.path}: not a napari-pgps run folder (none of {', '.join(EARLY_FILES)} or a "
                             "checkpoint in it); give the folder a training run wrote (--out).")

    @classmethod
    def holding(cls, checkpoint: str | os.PathLike) -> Optional["RunFolder"]:
        """The run folder ``checkpoint`` lies in; ``None`` for a checkpoint kept outside a run folder."""
        try:
            return cls(Path(checkpoint).parent)
        except InputError:
            return None

    @classmethod
    def to_resume(cls, path: Optional[str | os.PathLike]) -> "RunFolder":
        """The folder of a stopped run, which Resume run continues (:attr:`resumable`).

        Raises:
            InputError: ``path`` is ``None``, not a run folder, or not that of a stopped run.
        """
        folder = None
        if path is not None:
            with contextlib.suppress(InputError):
                folder = cls(path)
        if folder is None or not folder.resumable:
            raise InputError(f"{path or 'no run folder'}: nothing to resume; choose the folder of a stopped run "
                             f"(one with {LAST} and without {FINAL}).")
        return folder

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def config(self) -> RunConfig:
        """The configuration the run was trained with: its ``config.yaml``; where that is missing or unreadable, its
        model checkpoint's (final, else last; read without its weights).

        Raises:
            InputError: neither can be read (the message of ``config.yaml``'s fault).
        """
        try:
            return RunConfig.load(self.path / CONFIG_FILE)
        except InputError as unreadable:
            try:
                checkpoint = find_checkpoint(self.path)
            except InputError:
                raise unreadable from None
        return _checkpoint_config(checkpoint)

    def split(self) -> Optional[dict[str, Any]]:
        """The training and validation case names (``splits.json``); ``None`` when the run has not written them.

        Raises:
            InputError: the file cannot be read or does not hold the two lists of case names.
        """
        path = self.path / SPLITS_FILE
        if not path.is_file():
            return None
        try:
            split = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not readable ({exc}).") from None
        if not isinstance(split, dict) or not all(
                isinstance(split.get(key), list) and all(isinstance(name, str) for name in split[key])
                for key in ("training", "validation")):
            raise InputError(f"{path}: does not hold the training and validation case names "
                             '({"training": [...], "validation": [...]}).')
        return split

    def events(self) -> list[Event]:
        """The events the run logged (``metrics.jsonl``), in order; empty when it has logged none.

        Raises:
            InputError: a line is not an event (the log was damaged), or the log cannot be read.
        """
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        try:
            return list(read_events(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a readable event log ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}).") from None

    def checkpoint(self, name: str = "last") -> Optional[Path]:
        """The run's checkpoint ``name`` ("last", "best" or "final"); ``None`` when the run has not written it."""
        if name not in CHECKPOINTS:
            raise ValueError(f"no checkpoint '{name}'; a run folder holds {', '.join(CHECKPOINTS)}")
        path = self.path / CHECKPOINTS[name]
        return path if path.is_file() else None

    @property
    def resumable(self) -> bool:
        """Whether the run stopped before its end and can be continued: a last checkpoint and no final one."""
        return self.checkpoint("last") is not None and not (self.path / FINAL).exists()


def model_config(model: str | os.PathLike) -> RunConfig:
    """The configuration a model was trained with, without loading its weights.

    Args:
        model: a run folder (its :meth:`RunFolder.config`), a checkpoint file (its ``config``; the tensors are
            mapped from the file, not read) or a model package (its ``config.yaml`` member alone, checked against
            the manifest).

    Raises:
        InputError: ``model`` is none of these (missing, a folder without a run, a file that is neither a
            checkpoint nor a package: :class:`~napari_pgps.errors.CheckpointError`), or its configuration cannot
            be read.
    """
    path = Path(model)
    if path.is_dir():
        return RunFolder(path).config()
    path = find_checkpoint(path)
    if path.suffix.lower() == ".zip" or is_model_package(path):
        return read_package_config(path)
    return _checkpoint_config(path)


def _checkpoint_config(path: Path) -> RunConfig:
    """The configuration in the checkpoint ``path``, its tensors mapped from the file, not read."""
    return trained_config(load_checkpoint(path, mmap=True), path)

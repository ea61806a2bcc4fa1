"""Writing files so that a crash never leaves half of one.

Every file napari-pgps writes for the user (configurations, checkpoints,
segmentations, reports, splits) goes through :func:`atomic_path` (or :func:`atomic_write`): the data
is written to a temporary file beside the target, flushed to disk, then
renamed over the target. A reader sees either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is flushed to disk and replaces ``path``.

    Args:
        suffix: of the temporary file; writers that choose a format by suffix
            (nibabel) need the target's own, e.g. ``".nii.gz"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file (``mode`` "w" for text, "wb" for bytes) that replaces ``path`` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)

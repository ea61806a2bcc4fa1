"""Writing files so that a crash never leaves half of one, and checking outputs before any work.

Every file napari-pgps writes for the user (configurations, checkpoints,
segmentations, reports, splits) goes through :func:`atomic_path` (or :func:`atomic_write`): the data
is written to a temporary file beside the target, flushed to disk, then
renamed over the target. A reader sees either the old file or the new one.
The file gets the mode a plain ``open()`` would give it (0666 less the umask),
or the mode of the file it replaces. A failed write (a full disk, a read-only
folder) is raised as :class:`WriteError` naming the target, and the old file stays.

Before a command starts its work, :func:`check_writable` and :func:`check_outputs`
refuse an output that could not be written, that would replace one of the
command's inputs, or that exists (unless the user asked to overwrite it).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, Sequence

from .errors import InputError


class WriteError(OSError):
    """Writing an output failed (a full disk, no permission, a read-only file system): ``filename`` is the output's
    path, ``errno`` and ``strerror`` the system's reason. The file it was to replace is unchanged."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is flushed to disk and replaces ``path``.

    Args:
        suffix: of the temporary file; writers that choose a format by suffix
            (nibabel) need the target's own, e.g. ``".nii.gz"``.

    Raises:
        WriteError: the folder cannot be made, or the file cannot be written or renamed (any ``OSError`` while
            writing); ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _mode_for(path))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        if tmp is not None:
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


def _mode_for(path: Path) -> int:
    """The permission bits a file written to ``path`` gets: those of the file it replaces, else what ``open()``
    gives a new file (0666 less the process's umask; ``mkstemp`` alone would give 0600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written; returns ``path``.

    The nearest existing folder on the way to ``path`` must be a folder the user may write in (``path``'s missing
    parents are made when writing), and ``path``, if it exists, must be of the kind asked for.

    Args:
        folder: ``path`` is an output folder (a run, a report); else one file.

    Raises:
        InputError: one line naming ``path`` and what is in the way.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise InputError(f"{path}: is a folder; give the name of the file to write.")
    if path.exists() and folder and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder; choose a folder for the output.")
    nearest = path.absolute() if folder else path.absolute().parent
    while not nearest.exists() and not nearest.is_symlink() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise InputError(f"{path}: cannot be written, {nearest} is a file, not a folder; choose another folder.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot be written, no permission to write in {nearest}; choose another folder.")
    return path


def check_outputs(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike], *,
                  overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would replace an input or (without ``overwrite``) an existing file.

    Args:
        outputs: the files a command will write (all of them, planned before the first is written).
        inputs: the files and folders it reads; an output may not be one of these files, nor an existing file
            inside one of these folders, nor the same file under another name (a link), even with ``overwrite``.
        overwrite: replace outputs that exist (the user's ``--overwrite``).

    Raises:
        InputError: one line naming the output and what to do.
    """
    inputs = [Path(p) for p in inputs if Path(p).exists()]
    seen: dict[str, Path] = {}
    for output in map(Path, outputs):
        key = os.path.realpath(output)
        if key in seen:
            raise InputError(f"{output}: two inputs would be written to this one output; rename one of them.")
        seen[key] = output
        if not output.exists():
            continue
        for source in inputs:
            if _same_file(output, source) or (source.is_dir() and _inside(output, source)):
                raise InputError(f"{output}: is one of this command's inputs ({source}); write the output to "
                                 "another file or folder, an input is never overwritten.")
        if not overwrite:
            raise InputError(f"{output}: exists; choose another name, or add --overwrite to replace it.")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """``path`` lies in ``folder`` (at any depth), links followed."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))

"""Claiming a run folder: one run at a time in each, claimed before the run reads its data.

:func:`claim` makes the run folder (so an unwritable one is found before any
work) and locks its file ``.run.lock`` for the run's whole life; a second run
started into the same folder, from this process or another, is refused with
one line. The lock is ``flock`` (on Windows ``msvcrt.locking``), held by the
open file: the system releases it when the process ends however it ends
(``kill -9``, a crash), so a lock is never stale and no process id has to be
checked; two runs in one process (two widgets) exclude each other as well. The
file holds the process id and host of the run that holds it, for the message.
On NFS, Linux maps ``flock`` to the server's POSIX locks; a file system that
cannot lock at all leaves the folder unguarded.

It also decides what the folder's files allow: a folder holding a checkpoint
holds a run, which only ``resume`` continues; one holding only the files a run
writes before its first checkpoint (:data:`~.run_folder.EARLY_FILES`: the run
ended during its first epoch) may take a new run, which replaces them, and has
nothing to resume. Reading a run folder: :mod:`.run_folder`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from .file_names import LAST
from .run_folder import CHECKPOINTS, EARLY_FILES

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".run.lock"
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
"""What locking fails with where the file system has no locks (any other failure: another run holds the lock)."""
_LOCKED_BYTE = 2**20
"""Windows locks a byte range, which then cannot be read: the byte locked lies past the holder's pid and host."""


@contextlib.contextmanager
def claim(run_dir: Optional[Path], *, resume: bool, lock: bool = True) -> Iterator[tuple[str, ...]]:
    """Hold ``run_dir`` for one run for the time of the ``with`` block; yields what the user should know of the
    folder: a sentence naming the files of an earlier run that ended before its first checkpoint, which this (new)
    run replaces (none otherwise).

    Args:
        run_dir: the run folder; ``None`` for a run that writes nothing.
        resume: the run continues the one in ``run_dir`` from its last checkpoint.
        lock: make and lock the folder (rank 0 of a distributed run; the other ranks only check it).

    A folder made here that is still empty when the block ends (the run was refused before it wrote anything) is
    removed.

    Raises:
        InputError: ``run_dir`` is a file, cannot be made or written, is in use by another run, holds a run (unless
            resuming), or has no checkpoint to resume from.
    """
    if run_dir is None:
        if resume:
            raise InputError("resuming needs the run folder of the run to continue.")
        yield ()
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: is a file, not a folder; choose a folder for the run (--out).")
    if resume and not run_dir.is_dir():
        raise InputError(f"{run_dir}: no {LAST} to resume from; start a new run without resuming.")
    made = _outermost_missing(run_dir) if lock else None
    try:
        fd = _lock(run_dir) if lock else None
        if fd is not None:
            _remove_partial_writes(run_dir)
        try:
            yield _check(run_dir, resume)
        finally:
            if fd is not None:
                _unlock(run_dir / LOCK_FILE, fd)
    finally:
        folder = run_dir
        while made is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            if folder == made:
                break
            folder = folder.parent


def _remove_partial_writes(run_dir: Path) -> None:
    """Remove the temporary files that a run killed while writing one of its files left beside it
    (``.checkpoint_last.pt.XXXX.tmp``: see :func:`napari_pgps.files.atomic_path`); the folder is locked, so no other
    run is writing them."""
    for name in (*CHECKPOINTS.values(), *EARLY_FILES):
        for leftover in run_dir.glob(f".{name}.*"):
            leftover.unlink(missing_ok=True)


def _outermost_missing(folder: Path) -> Optional[Path]:
    """The outermost of ``folder`` and its parents that does not exist yet (what making it makes), if any."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def _check(run_dir: Path, resume: bool) -> tuple[str, ...]:
    """What the folder's files allow (see the module's text); the note on the early files a new run replaces."""
    checkpoints = [name for name in CHECKPOINTS.values() if (run_dir / name).exists()]
    early = tuple(name for name in EARLY_FILES if (run_dir / name).exists())
    if resume:
        if (run_dir / LAST).is_file():
            return ()
        if early and not checkpoints:
            raise InputError(f"{run_dir}: no checkpoint yet (its run ended before its first epoch did); start the run "
                             "again without --resume.")
        raise InputError(f"{run_dir}: no {LAST} to resume from; start a new run without resuming.")
    if checkpoints:
        raise InputError(f"{run_dir} already holds a run; resume it (--resume) or choose a new run folder.")
    if early:
        return (f"{run_dir} held {', '.join(early)} of a run that ended before its first checkpoint; this run replaces "
                "them.",)
    return ()


def _lock(run_dir: Path) -> int:
    """Make ``run_dir`` and lock its lock file; returns the file's descriptor, which holds the lock."""
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                holder = _holder(fd)
                os.close(fd)
                raise InputError(f"{run_dir} is in use by another run ({holder}); wait for it or choose another run "
                                 "folder (--out).")
            try:  # the run that held it may have removed the file just before it let go: lock the one at the path
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{run_dir}: cannot be made or written as a run folder ({exc.strerror or exc}); choose "
                         "another folder (--out).") from None
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: "pid N", with " on HOST" when that is another host."""
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 200).decode(errors="replace").split()
    if not words:
        return "starting"
    host = words[1] if len(words) > 1 and words[1] != socket.gethostname() else None
    return f"pid {words[0]}" + (f" on {host}" if host else "")


def _try_lock(fd: int) -> bool:
    """Lock the file ``fd``; False when another run holds it. A file system that cannot lock at all (a network mount
    without a lock service) leaves the folder unguarded rather than refuse every run."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        return exc.errno in _CANNOT_LOCK
    return True


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file and let go of the lock (on POSIX in this order: a run that opened the file meanwhile sees
    it is gone and makes a new one; Windows removes no open file)."""
    if fcntl is not None:
        path.unlink(missing_ok=True)
        os.close(fd)
    else:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

"""The ``napari-pgps`` command line: a thin face over the engine.

Every problem with the user's input ends in one line on stderr that names
the file or option and what to do, and exit status 2. Under torchrun only
rank 0 prints.

This module holds :func:`main` and the parser it assembles; each command's
flags, help and run live in the module of its family:

================  ==========================================================
``train``         ``train``, ``prune``: training runs and their progress lines
``segment``       ``segment``
``export``        ``export``: a model package
``evaluate``      ``evaluate``, ``postprocess``: scoring a model's segmentations
``schedule``      ``schedule``, ``bench``: patch-size schedules, printed or compared
``info``          ``info``: what is read from a volume file
``demo``          ``demo``
================  ==========================================================
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Iterator, Optional, Sequence

from .. import __version__
from ..errors import InputError
from ..files import WriteError
from . import demo, evaluate, export, info, schedule, segment, train

EXIT_INPUT = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    with _only_rank_zero_prints(), _sigterm_ends_as_an_exception():
        parser = _parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_INPUT
        try:
            return args.run(args)
        except InputError as exc:
            print(f"napari-pgps {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        except OSError as exc:
            line = file_fault(exc)
            if line is None:  # not about a file: a fault of the program, shown with its traceback
                raise
            print(f"napari-pgps {args.command}: error: {line}", file=sys.stderr)
            return EXIT_INPUT


def _parser() -> argparse.ArgumentParser:
    """The ``napari-pgps`` parser: each command's subparser (its ``run`` function as the ``run`` default), in the
    order ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="napari-pgps",
        description="Train 3D segmentation networks with patch-size curricula, and segment volumes.",
    )
    parser.add_argument("--version", action="version", version=f"napari-pgps {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_train(commands)
    segment.add_segment(commands)
    export.add_export(commands)
    evaluate.add_evaluate(commands)
    evaluate.add_postprocess(commands)
    schedule.add_schedule(commands)
    train.add_prune(commands)
    schedule.add_bench(commands)
    info.add_info(commands)
    demo.add_demo(commands)
    return parser


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
"""System errors that only writing meets: a full disk or quota, a read-only file system, a file too large."""


def file_fault(exc: OSError) -> Optional[str]:
    """One line for a file the command could not write or use, or ``None`` for a system error about no file.

    A write (:class:`napari_pgps.files.WriteError` names the output; the old file is kept) or a full disk:
    ``cannot write PATH: No space left on device; free space or choose another folder``.
    """
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if isinstance(exc, WriteError) or exc.errno in _WRITE_ERRNOS:
        return f"cannot write{where}: {reason}; free space or choose another folder."
    if exc.filename:
        return f"cannot use{where}: {reason}; check the path and its permissions."
    return None


@contextlib.contextmanager
def _only_rank_zero_prints() -> Iterator[None]:
    """Under torchrun the ranks other than 0 print nothing: rank 0 reports progress and the (shared) input errors.

    A crash still shows its traceback: the interpreter prints it after ``main`` has returned.
    """
    if os.environ.get("RANK", "0") == "0":
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


@contextlib.contextmanager
def _sigterm_ends_as_an_exception() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop, a CI time limit) ends the command as an exception would: its
    ``finally`` and ``with`` blocks run, so the bench's training process and the data loader's worker processes end
    with it instead of running on, orphaned; the run's last checkpoint (written atomically) is kept. Exit status
    143 (128 + SIGTERM), as if killed by it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Errors that speak to the user.

Every problem with what the user gave us (a file, a dataset folder, a flag, a
checkpoint) is raised as an :class:`InputError` whose message names the thing
and says what to do. The command line turns it into one line on stderr and
exit status 2; the widgets turn it into a notification.
"""

from __future__ import annotations


class InputError(ValueError):
    """The user's input (file, folder, option or checkpoint) cannot be used."""


class CheckpointError(InputError):
    """A file is not a napari-pgps checkpoint, or it is damaged."""

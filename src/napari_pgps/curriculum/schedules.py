"""Patch-size schedules as pure functions.

A schedule turns (final patch, poolings per axis, total epochs, final batch
size) into a list of :class:`Stage`\\ s that the trainer follows in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError

SCHEDULES = ("constant",)


@dataclass(frozen=True)
class Stage:
    """Train ``epochs`` epochs on crops of ``patch`` (Z, Y, X) in batches of ``batch``."""

    patch: tuple[int, int, int]
    batch: int
    epochs: int


def constant(final_patch: Sequence[int], epochs: int, batch: int) -> list[Stage]:
    """The baseline: the final patch and batch size for the whole run."""
    return [Stage(tuple(int(p) for p in final_patch), int(batch), int(epochs))]


def build_stages(
    schedule: str, final_patch: Sequence[int], poolings: Sequence[int], epochs: int, batch: int
) -> list[Stage]:
    """The stages of a named schedule.

    Raises:
        InputError: unknown schedule name.
    """
    if schedule == "constant":
        return constant(final_patch, epochs, batch)
    raise InputError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}.")


def stage_at(stages: Sequence[Stage], epoch: int) -> int:
    """Index of the stage that epoch ``epoch`` (0-based) belongs to."""
    end = 0
    for index, stage in enumerate(stages):
        end += stage.epochs
        if epoch < end:
            return index
    return len(stages) - 1

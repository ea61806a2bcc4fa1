"""A dataset's fingerprint: what planning needs to know of its cases, gathered in one pass.

For each case, in the canonical orientation: its spacing, its shape after
cutting it to its nonzero region and the share of voxels that region keeps;
and per channel a sample of foreground intensities (for CT normalisation).
Target spacing, patch size and normalisation are planned from it
(:func:`napari_pgps.engine.resolve.resolve_config`), as nnU-Net plans from its
``dataset_fingerprint.json``.

Every training case passes here once, so a training image that shows
nothing (a channel holding one value, e.g. all zeros) is refused here, naming
the case; a label map without foreground is a legitimate case (as in nnU-Net)
and is kept.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

import numpy as np

from ..errors import InputError
from .dataset import Case
from .geometry import box_volume_fraction, nonzero_box, reorient, spacing_of
from .normalization import foreground_sample


@dataclass
class CaseFingerprint:
    spacing: tuple[float, float, float]
    """(sz, sy, sx) mm in the canonical orientation."""
    shape: tuple[int, int, int]
    """(Z, Y, X) in the canonical orientation, after cutting to the nonzero region (when that is done)."""
    crop_fraction: float
    """Share of the case's voxels inside its nonzero region."""


@dataclass
class Fingerprint:
    """Per case (by name) :class:`CaseFingerprint`; per channel, sampled foreground intensities."""

    channels: list[str]
    cases: dict[str, CaseFingerprint] = field(default_factory=dict)
    foreground: list[np.ndarray] = field(default_factory=list)

    def of(self, names: Sequence[str]) -> "Fingerprint":
        """The fingerprint of these cases only (foreground samples are kept whole)."""
        return Fingerprint(self.channels, {n: self.cases[n] for n in names}, self.foreground)

    def to_json(self) -> str:
        return json.dumps({"channels": self.channels,
                           "cases": {n: vars(c) for n, c in self.cases.items()}})

    @classmethod
    def from_json(cls, text: str, foreground: list[np.ndarray]) -> "Fingerprint":
        values = json.loads(text)
        cases = {n: CaseFingerprint(tuple(c["spacing"]), tuple(c["shape"]), float(c["crop_fraction"]))
                 for n, c in values["cases"].items()}
        return cls(values["channels"], cases, foreground)


def fingerprint_cases(
    cases: Sequence[tuple[str, Callable[[], Case]]], channels: Sequence[str], orientation: str, crop_to_nonzero: bool,
) -> Generator[tuple[int, int], None, Fingerprint]:
    """Fingerprint the cases one at a time (``cases``: name and a function reading the case).

    Yields (cases done, cases) after each; returns the fingerprint (``fingerprint = yield from ...``).
    """
    fingerprint = Fingerprint(list(channels))
    samples: list[list[np.ndarray]] = [[] for _ in channels]
    for done, (name, read) in enumerate(cases, start=1):
        case = read()
        _check_varies(name, case, channels)
        image, affine = reorient(case.image.channel_first(), case.image.affine, orientation)
        shape, fraction = tuple(int(n) for n in image.shape[1:]), 1.0
        if crop_to_nonzero:
            box, _ = nonzero_box(image)
            shape, fraction = tuple(b - a for a, b in box), box_volume_fraction(box, image.shape[1:])
        fingerprint.cases[name] = CaseFingerprint(spacing_of(affine), shape, fraction)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        for channel, values in zip(samples, foreground_sample(case.image.channel_first(), case.labels.array, rng)):
            channel.append(values)
        yield done, len(cases)
    fingerprint.foreground = [np.concatenate(s) if s else np.zeros(0, np.float32) for s in samples]
    return fingerprint


def _check_varies(name: str, case: Case, channels: Sequence[str]) -> None:
    """Refuse a training case whose image has a channel holding one value in every voxel (nothing to learn from)."""
    for channel, values in zip(channels, case.image.channel_first()):
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise InputError(f"{case.image.path or name}: channel '{channel}' of training case '{name}' is {low:g} "
                             "in every voxel, an image that shows nothing; remove the case or fix its file.")


def signature(parts: Sequence[object]) -> str:
    """A short digest naming cached results of these inputs."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]

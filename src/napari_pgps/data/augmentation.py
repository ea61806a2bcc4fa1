"""Data augmentation of training crops, at nnU-Net's defaults, with MONAI's transforms.

* ``"nnunet"``: nnU-Net v2's default training augmentation, in its order:
  rotation (p 0.2, each axis within +-30 degrees) and scaling (p 0.2, one
  factor in 0.7-1.4 for all axes; above 1 shows more of the case), applied to
  an enlarged crop so the corners are not empty and resampled straight onto
  the patch (image linear, labels nearest); Gaussian noise (p 0.1), Gaussian
  blur (p 0.1), brightness (p 0.15), contrast (p 0.15), simulated low
  resolution (p 0.125), gamma on the inverted image (p 0.1) and on the image
  (p 0.3), mirroring of each axis (p 0.5).
* ``"mirror"``: each axis flipped with probability 0.5.
* ``"none"``: the crop as it is.

Why MONAI: on our crops (``benchmarks/augmentation_speed.py``, 2-core CPU,
one thread) it did nnU-Net's pipeline in 8 ms per hippocampus batch (2 x
40 x 56 x 40) against 15 ms for batchgeneratorsv2 (nnU-Net's own library) and
18 ms for TorchIO, and in 62 ms per left-atrium batch (2 x 96^3) against 168
and 165 ms; it is already a dependency. Where it differs from nnU-Net
(labels resampled nearest instead of one-hot linear, gamma drawn uniformly in
0.7-1.5, one blur and low-resolution decision for all channels) is listed in
``docs/benchmarks.md``.

Strength (an augmentation curriculum): ``Augmentation(name, strength)`` with
a strength s in [0, 1] applies every random step with s times its probability
and draws its magnitude from its range shrunk towards the identity by s:
rotation within +-30 s degrees, scaling in 1 - 0.3 s .. 1 + 0.4 s, noise std
up to 0.1 s, blur sigma 0.5 s .. 1 s, brightness and contrast 1 +- 0.25 s, low
resolution zoom 1 - 0.5 s .. 1, gamma 1 - 0.3 s .. 1 + 0.5 s, mirroring of each
axis with probability 0.5 s. At s = 1 this is exactly the pipeline above (the
same draws, bit for bit); at s = 0 it is ``"none"``: nothing is drawn and the
crop is the plain patch (``crop_size``), so a sampler gives the same batches
as one without augmentation. Between, each step's draws from the generator
are the ones it makes at s = 1, only compared with a smaller probability and
mapped onto a smaller range, so a crop augmented at a lower strength is
augmented by a subset of the same steps, each milder. The rule is ours:
nnU-Net has no strength setting (it changes its augmentation by trainer
variants, e.g. ``nnUNetTrainerNoDA``, ``nnUNetTrainerNoMirroring`` and the
stronger ``nnUNetTrainerDA5``); batchgeneratorsv2 gives each transform an
``apply_probability`` (``RandomTransform``) and its magnitudes as a
``RandomScalar`` (a value, a (low, high) range or a callable), which is what
the strength scales here. :func:`augmentation_strength` is the strength at an
epoch of a run with ``data.augmentation_ramp``.

Every augmentation draws from the generator it is given, so a batch depends on
its seed alone, in whichever process it is cut. Arrays are (C, Z, Y, X).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

AUGMENTATIONS = ("nnunet", "mirror", "none")
MIRRORED_AXES = {"nnunet": (0, 1, 2), "mirror": (0, 1, 2), "none": ()}
"""The axes (0, 1, 2 = Z, Y, X) each augmentation flips: the only axes test-time mirroring may flip for a model."""
MAX_ROTATION = math.radians(30)
P_ROTATION = P_SCALING = 0.2
SCALING = (0.7, 1.4)
P_MIRROR = 0.5
"""Each axis's probability of being flipped."""
CROP_SCALE = 0.85
"""nnU-Net enlarges its crop for scaling down to this factor (not to 0.7)."""


def augmentation_strength(ramp: Optional[tuple[float, float]], epoch: int, epochs: int) -> float:
    """The augmentation strength of a run's epoch ``epoch`` (0-based) of ``epochs`` under an augmentation ramp.

    ``ramp = (start, end)`` are shares of the run's epochs: the strength is 0 while the share of epochs done,
    ``epoch / epochs``, is at most ``start``, rises linearly to 1 at ``end`` and stays 1 after; ``None``: 1 always.
    """
    if ramp is None:
        return 1.0
    if epochs < 1:
        raise ValueError(f"a run has at least one epoch, not {epochs}")
    start, end = ramp
    done = epoch / epochs
    if done >= end:
        return 1.0
    if done <= start:
        return 0.0
    return (done - start) / (end - start)


def enlarged_crop(patch: Sequence[int]) -> tuple[int, int, int]:
    """The crop (Z, Y, X) that still covers ``patch`` rotated by up to 30 degrees about each axis and scaled
    (nnU-Net's rule: the largest extent of the rotated patch per axis, divided by 0.85)."""
    extent = np.asarray(patch, dtype=float)
    c, s = math.cos(MAX_ROTATION), math.sin(MAX_ROTATION)
    largest = extent.copy()
    for rotation in (np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
                     np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])):
        largest = np.maximum(largest, np.abs(extent @ rotation))
    return tuple(int(v) for v in largest / CROP_SCALE)


def _toward(identity: float, values: Sequence[float], strength: float) -> tuple[float, ...]:
    """``values`` (a magnitude range) moved towards ``identity`` by ``strength``: ``identity`` at 0, exactly
    ``values`` at 1."""
    return tuple((1 - strength) * identity + strength * v for v in values)


class Augmentation:
    """One of :data:`AUGMENTATIONS` at a strength in [0, 1] (see the module's docstring), applied to a crop and its
    labels."""

    def __init__(self, name: str, strength: float = 1.0) -> None:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
        if not 0 <= strength <= 1:
            raise ValueError(f"an augmentation strength lies in [0, 1] (0: none, 1: full), not {strength}")
        self.name = name
        self.strength = float(strength)
        self._intensity = None
        self._other: Optional[Augmentation] = None
        """The last one :meth:`at_strength` made (a run's ramp asks for the same strength a whole epoch)."""

    def __getstate__(self) -> dict:
        # MONAI's transforms are rebuilt where they are used
        return {"name": self.name, "strength": self.strength, "_intensity": None, "_other": None}

    def at_strength(self, strength: float) -> "Augmentation":
        """This augmentation at ``strength`` (this one itself at its own)."""
        if strength == self.strength:
            return self
        if self._other is None or self._other.strength != strength:
            self._other = Augmentation(self.name, strength)
        return self._other

    @property
    def changes_crops(self) -> bool:
        """Whether it does anything: not "none", and a strength above 0."""
        return self.name != "none" and self.strength > 0

    def crop_size(self, patch: Sequence[int]) -> tuple[int, int, int]:
        """The size (Z, Y, X) to cut for a final ``patch``."""
        return enlarged_crop(patch) if self.name == "nnunet" and self.changes_crops else tuple(int(p) for p in patch)

    def __call__(self, image: np.ndarray, labels: np.ndarray, patch: Sequence[int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The augmented crop: image (C, Z, Y, X) and labels (1, Z, Y, X) of :meth:`crop_size`, to ``patch``."""
        if not self.changes_crops:
            return np.ascontiguousarray(image), np.ascontiguousarray(labels)
        if self.name == "nnunet":
            return self._nnunet(image, labels, tuple(int(p) for p in patch), rng)
        axes = tuple(1 + a for a in MIRRORED_AXES["mirror"] if rng.random() < P_MIRROR * self.strength)
        if axes:
            image, labels = np.flip(image, axes), np.flip(labels, axes)
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)

    def _nnunet(self, image: np.ndarray, labels: np.ndarray, patch: tuple[int, int, int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from monai.transforms import AffineGrid

        if self._intensity is None:
            self._intensity = _intensity_transforms(self.strength)
        s = self.strength
        rotation = MAX_ROTATION * s
        angles = rng.uniform(-rotation, rotation, 3).tolist() if rng.random() < P_ROTATION * s else None
        scale = float(rng.uniform(*_toward(1.0, SCALING, s))) if rng.random() < P_SCALING * s else None
        image_t, labels_t = torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(labels.astype(np.float32))
        if angles is None and scale is None:
            image_t, labels_t = _centre(image_t, patch), _centre(labels_t, patch)
        else:  # one sampling grid about the crop's centre, straight onto the patch
            grid, _ = AffineGrid(rotate_params=angles, scale_params=None if scale is None else (scale,) * 3)(
                spatial_size=patch)
            resample_image, resample_labels = self._intensity["resample"]
            image_t, labels_t = resample_image(image_t, grid), resample_labels(labels_t, grid)
        transforms = self._intensity["rest"]
        transforms.set_random_state(seed=int(rng.integers(2**31)))
        out = transforms({"image": image_t, "label": labels_t})
        return (np.ascontiguousarray(out["image"].numpy(), dtype=np.float32),
                np.ascontiguousarray(out["label"].numpy()).astype(labels.dtype))


def _centre(volume, patch: Sequence[int]):
    starts = [(full - part) // 2 for full, part in zip(volume.shape[-3:], patch)]
    return volume[(...,) + tuple(slice(a, a + p) for a, p in zip(starts, patch))].contiguous()


def _intensity_transforms(strength: float) -> dict:
    """MONAI's resamplers and the intensity and mirroring transforms of nnU-Net's pipeline at ``strength``, built
    once per process and strength."""
    import monai
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
        Resample,
    )

    monai.data.set_track_meta(False)  # MONAI's metadata tracking tripled the cost of small crops
    s = strength
    sigma = _toward(0.0, (0.5, 1.0), s)
    gamma = _toward(1.0, (0.7, 1.5), s)
    rest = Compose([
        RandGaussianNoised("image", prob=0.1 * s, mean=0.0, std=0.1 * s, sample_std=True),
        RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.1 * s),
        RandScaleIntensityd("image", factors=0.25 * s, prob=0.15 * s),
        RandScaleIntensityFixedMeand("image", factors=0.25 * s, fixed_mean=True, preserve_range=True, prob=0.15 * s),
        RandSimulateLowResolutiond("image", prob=0.125 * s, downsample_mode="nearest-exact", upsample_mode="trilinear",
                                   zoom_range=_toward(1.0, (0.5, 1.0), s)),
        RandAdjustContrastd("image", prob=0.1 * s, gamma=gamma, invert_image=True, retain_stats=True),
        RandAdjustContrastd("image", prob=0.3 * s, gamma=gamma, invert_image=False, retain_stats=True),
        *(RandFlipd(("image", "label"), prob=P_MIRROR * s, spatial_axis=axis) for axis in MIRRORED_AXES["nnunet"]),
    ])
    return {"resample": (Resample(mode="bilinear", padding_mode="zeros"), Resample(mode="nearest", padding_mode="zeros")),
            "rest": rest}

"""CPU time per batch of nnU-Net v2's default training augmentation in batchgeneratorsv2, MONAI and TorchIO.

    python benchmarks/augmentation_speed.py --threads 1 --repeats 200
    python benchmarks/augmentation_speed.py --threads 2 --repeats 200

The three libraries are not all project dependencies; install them into a separate environment first, e.g.

    python3 -m venv /tmp/augvenv
    /tmp/augvenv/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/aug-constraints.txt
    /tmp/augvenv/bin/pip install -c /tmp/aug-constraints.txt monai==1.6.1 batchgeneratorsv2 torchio
    cd /work/main && /tmp/augvenv/bin/python benchmarks/augmentation_speed.py --threads 1 --repeats 200

What is timed: one training batch, built the way nnU-Net's data loader builds it. Each sample arrives as
nnU-Net's enlarged crop ("initial patch size", large enough that rotated or zoomed-out corners are not empty),
an image of shape (C, Z', Y', X') float32 and a label map of shape (1, Z', Y', X') int16; the pipeline turns it
into the final patch, (C, Z, Y, X) and (1, Z, Y, X), and the samples are stacked to (B, C, Z, Y, X) and
(B, 1, Z, Y, X). Making the input copies is not timed. The pipeline is nnU-Net v2's
``nnUNetTrainer.get_training_transforms`` for a 3D, non-cascaded, single-label-map configuration without
deep supervision, in nnU-Net's order:

1. spatial: rotation (p=0.2, each axis uniform in +-30 degrees) and scaling (p=0.2, one factor in 0.7-1.4
   for all axes; > 1 makes objects smaller), no elastic deformation, about the crop centre, resampled
   straight onto the final patch (image linear, zero padding; labels nearest or one-hot linear, padding 0);
   a sample with neither is centre-cropped without interpolation;
2. Gaussian noise (p=0.1, std uniform in 0-0.1), Gaussian blur (p=0.2, per channel 0.5, sigma 0.5-1 per
   axis), multiplicative brightness (p=0.15, 0.75-1.25), contrast (p=0.15, 0.75-1.25, range preserved),
   simulated low resolution (p=0.25, per channel 0.5, zoom 0.5-1 on all axes, nearest down, linear up),
   gamma (p=0.1 on the inverted image, then p=0.3, 0.7-1.5, mean and std retained), mirroring (each axis
   p=0.5).

Where a library cannot express a step exactly, the closest form is used and the difference is listed in
``FIDELITY`` (printed with ``--fidelity``). Spatial parameters that a library cannot draw with nnU-Net's
probabilities are drawn here and handed to that library's deterministic affine transform, so the
resampling timed is always the library's own.

Columns: "plain crop" is the centre crop alone, for scale; "batchgeneratorsv2-nearest" is nnU-Net's pipeline
with nearest-neighbour label resampling, the label handling that MONAI and TorchIO use here, which separates
the library's speed from the cost of nnU-Net's one-hot label interpolation.

Libraries run interleaved (plain crop, batchgeneratorsv2, ..., TorchIO, plain crop, ...), one batch each in
turn, so that load from another process on the machine falls on all of them alike. The tables give the median
and the mean milliseconds per batch after ``--warmup`` batches; the mean is what sets throughput, since most
batches of 2 skip the rare, expensive steps.
``--threads`` sets torch's intra-op threads and SimpleITK's threads (TorchIO resamples with SimpleITK);
scipy's filters, which TorchIO's blur uses, are single-threaded either way.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch

Shape3 = tuple[int, int, int]
#: One sample's pipeline: (image (C, Z', Y', X') float32, label (1, Z', Y', X') int16) in the enlarged crop
#: -> (image (C, Z, Y, X), label (1, Z, Y, X)) in the final patch.
SamplePipeline = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

MAX_ROTATION = math.radians(30.0)
SCALING = (0.7, 1.4)
P_ROTATION = 0.2
P_SCALING = 0.2
LIBRARIES = ("batchgeneratorsv2", "batchgeneratorsv2-nearest", "monai", "torchio")
#: the installed distribution behind each column
PACKAGES = {"batchgeneratorsv2": "batchgeneratorsv2", "batchgeneratorsv2-nearest": "batchgeneratorsv2",
            "monai": "monai", "torchio": "torchio"}
STEP_CONTEXT = "A 16-channel MONAI DynUNet forward+backward step at 40x56x40, batch 2, takes about 430 ms here."

#: Where each column's pipeline differs from nnU-Net's (printed with --fidelity).
FIDELITY = {
    "batchgeneratorsv2": [
        (
            "nnU-Net's own transforms with nnU-Net's arguments (labels: one-hot linear + argmax, padded with -1"
            " then set to 0). Only deep-supervision target downsampling is left out, as in the other columns."
        ),
    ],
    "batchgeneratorsv2-nearest": [
        "As batchgeneratorsv2, but labels resampled nearest-neighbour (SpatialTransform mode_seg='nearest').",
    ],
    "monai": [
        (
            "Spatial: rotation and scaling are drawn here (RandAffine has one probability for both and scales"
            " each axis independently) and applied with MONAI's AffineGrid + Resample onto the final patch in one"
            " resampling; MONAI composes the three rotations in the inverse order, which gives the same"
            " distribution for symmetric angle ranges."
        ),
        "Labels are resampled nearest-neighbour, not one-hot linear + argmax.",
        (
            "Blur and low resolution: one decision for all channels (no per-channel probability); with C=1 the"
            " per-channel 0.5 is folded into the probability (0.2*0.5, 0.25*0.5)."
        ),
        "Gamma is drawn uniformly from 0.7-1.5; nnU-Net draws half below 1 (0.7-1) and half above (1-1.5).",
        "Contrast and gamma use statistics of the whole image, not of each channel (the same for C=1).",
        "Run with monai.data.set_track_meta(False): plain tensors, no metadata or inverse bookkeeping.",
    ],
    "torchio": [
        (
            "Spatial: rotation and scaling are drawn here and applied with tio.Affine (SimpleITK resampling, scale"
            " inverted because TorchIO's > 1 enlarges objects); TorchIO resamples onto the input grid, so the"
            " whole enlarged crop is resampled and then centre-cropped with CropOrPad."
        ),
        "No brightness or contrast transform: both are tio.Lambda with nnU-Net's formulas.",
        (
            "Gamma: RandomGamma raises values to gamma directly (sign-preserving), without nnU-Net's rescaling"
            " to [0, 1], retained mean/std or inversion; log_gamma = (ln 0.7, ln 1.5) is log-uniform."
        ),
        (
            "Low resolution: RandomAnisotropy downsamples one random axis (factor 1-2, SimpleITK nearest down,"
            " linear up) instead of all three axes."
        ),
        (
            "Blur: scipy.ndimage.gaussian_filter in float32 on every channel (no per-channel probability; folded"
            " into p for C=1), truncated at 4 sigma instead of 6."
        ),
        (
            "All transforms run with copy=False (the subject is built fresh per sample), which skips a deepcopy"
            " per transform."
        ),
    ],
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``batch_size`` samples with ``channels`` channels and a final patch (Z, Y, X)."""

    name: str
    batch_size: int
    patch_size: Shape3
    channels: int = 1

    @property
    def label(self) -> str:
        return f"{self.name}: {self.batch_size} x {'x'.join(map(str, self.patch_size))}"


CASES = (
    Case("hippocampus", 2, (40, 56, 40)),
    Case("PGPS small stage", 24, (16, 16, 8)),
    Case("left atrium", 2, (96, 96, 96)),
)


def initial_patch_size(patch_size: Shape3, max_rotation: float = MAX_ROTATION, min_scale: float = 0.85) -> Shape3:
    """nnU-Net's enlarged crop (Z', Y', X') for a final patch (Z, Y, X), as ``get_patch_size`` computes it.

    The patch extent vector is rotated by ``max_rotation`` about each axis in turn, the largest absolute
    extent per axis is kept and divided by ``min_scale`` (nnU-Net keeps 0.85 here although it scales to 0.7).
    """
    extent = np.array(patch_size, dtype=float)
    c, s = math.cos(max_rotation), math.sin(max_rotation)
    rotations = (
        np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    )
    largest = extent.copy()
    for rotation in rotations:
        largest = np.maximum(largest, np.abs(extent @ rotation))
    return tuple(int(v) for v in largest / min_scale)  # type: ignore[return-value]


def centre_crop(volume: torch.Tensor, patch_size: Shape3) -> torch.Tensor:
    """The centre (.., Z, Y, X) of a (.., Z', Y', X') volume, Z' >= Z etc.; a view, no copy."""
    starts = [(full - part) // 2 for full, part in zip(volume.shape[-3:], patch_size, strict=True)]
    return volume[(..., *(slice(start, start + part) for start, part in zip(starts, patch_size, strict=True)))]


def draw_rotation_and_scale(rng: np.random.Generator) -> tuple[list[float] | None, float | None]:
    """nnU-Net's spatial draw: three angles in radians (or None) with p=0.2, one scale factor (or None) with p=0.2."""
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, 3).tolist() if rng.uniform() < P_ROTATION else None
    scale = float(rng.uniform(*SCALING)) if rng.uniform() < P_SCALING else None
    return angles, scale


def build_plain_crop(patch_size: Shape3) -> SamplePipeline:
    """No augmentation: the centre of the enlarged crop, copied to a contiguous tensor (for scale)."""

    def pipeline(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return centre_crop(image, patch_size).contiguous(), centre_crop(label, patch_size).contiguous()

    return pipeline


def build_batchgeneratorsv2(patch_size: Shape3, mode_seg: str = "bilinear") -> SamplePipeline:
    """nnU-Net v2's ``get_training_transforms`` (3D, no cascade, no regions, no deep supervision).

    ``mode_seg="bilinear"`` is nnU-Net's label resampling (one-hot linear + argmax, one resampling per label);
    ``"nearest"`` resamples the label map once, as MONAI and TorchIO do here.
    """
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform

    blur = GaussianBlurTransform(
        blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False, p_per_channel=0.5, benchmark=True
    )
    transforms = ComposeTransforms([
        SpatialTransform(
            patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
            p_rotation=P_ROTATION, rotation=(-MAX_ROTATION, MAX_ROTATION), p_scaling=P_SCALING, scaling=SCALING,
            p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, mode_seg=mode_seg,
            border_mode_seg="constant", padding_value_seg=-1,
        ),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(blur, apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=None,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1),
                        apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1),
                        apply_probability=0.3),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        RemoveLabelTransform(-1, 0),
    ])
    # With benchmark=True the blur times its convolution against an FFT the first time it meets an axis length
    # and kernel size (18 extra blurs); run that once here so it falls outside the timed batches, as it does
    # over a training run.
    for _ in range(60):
        blur(image=torch.zeros((1, *patch_size)))

    def pipeline(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = transforms(image=image, segmentation=label)
        return out["image"], out["segmentation"]

    return pipeline


def build_monai(patch_size: Shape3, seed: int = 0) -> SamplePipeline:
    """The same pipeline in MONAI's transforms (differences in ``FIDELITY['monai']``)."""
    import monai
    from monai.transforms import (
        AffineGrid,
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

    monai.data.set_track_meta(False)
    rng = np.random.default_rng(seed)
    resample_image = Resample(mode="bilinear", padding_mode="zeros")
    resample_label = Resample(mode="nearest", padding_mode="zeros")
    rest = Compose([
        RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1, sample_std=True),
        RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2 * 0.5),
        RandScaleIntensityd("image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand("image", factors=0.25, fixed_mean=True, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond("image", prob=0.25 * 0.5, downsample_mode="nearest-exact",
                                   upsample_mode="trilinear", zoom_range=(0.5, 1.0)),
        RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), invert_image=False, retain_stats=True),
        *(RandFlipd(("image", "label"), prob=0.5, spatial_axis=axis) for axis in range(3)),
    ])
    rest.set_random_state(seed=seed)

    def pipeline(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles, scale = draw_rotation_and_scale(rng)
        if angles is None and scale is None:
            image, label = centre_crop(image, patch_size).contiguous(), centre_crop(label, patch_size).contiguous()
        else:
            # (4, Z, Y, X) homogeneous sampling grid about the crop centre, shared by image and label
            grid, _ = AffineGrid(rotate_params=angles, scale_params=None if scale is None else (scale,) * 3)(
                spatial_size=patch_size
            )
            image, label = resample_image(image, grid), resample_label(label, grid)
        out = rest({"image": image, "label": label})
        return out["image"], out["label"].to(torch.int16)

    return pipeline


def build_torchio(patch_size: Shape3, seed: int = 0) -> SamplePipeline:
    """The same pipeline in TorchIO (differences in ``FIDELITY['torchio']``)."""
    import torchio as tio

    rng = np.random.default_rng(seed)
    crop = tio.CropOrPad(patch_size, copy=False)

    def brightness(image: torch.Tensor) -> torch.Tensor:
        """(C, Z, Y, X) times one factor per channel, uniform in 0.75-1.25."""
        return image * torch.empty((image.shape[0], 1, 1, 1)).uniform_(0.75, 1.25)

    def contrast(image: torch.Tensor) -> torch.Tensor:
        """(C, Z, Y, X): per channel, spread about the mean by 0.75-1.25 and clipped to the old range."""
        flat = image.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
        factor = torch.empty((image.shape[0], 1, 1, 1)).uniform_(0.75, 1.25)
        return torch.clamp((image - mean) * factor + mean, low, high)

    rest = tio.Compose([
        tio.RandomNoise(mean=0, std=(0, 0.1), p=0.1, copy=False),
        tio.RandomBlur(std=(0.5, 1.0), p=0.2 * 0.5, copy=False),
        tio.Lambda(brightness, types_to_apply=[tio.INTENSITY], p=0.15, copy=False),
        tio.Lambda(contrast, types_to_apply=[tio.INTENSITY], p=0.15, copy=False),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1, 2), p=0.25 * 0.5, copy=False),
        tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=0.1, copy=False),
        tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=0.3, copy=False),
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, copy=False),
    ], copy=False)

    def pipeline(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label))
        angles, scale = draw_rotation_and_scale(rng)
        if angles is not None or scale is not None:
            degrees = (0.0, 0.0, 0.0) if angles is None else tuple(math.degrees(a) for a in angles)
            scales = (1.0, 1.0, 1.0) if scale is None else (1.0 / scale,) * 3
            affine = tio.Affine(scales=scales, degrees=degrees, translation=(0, 0, 0), default_pad_value=0,
                                default_pad_label=0, image_interpolation="linear", label_interpolation="nearest",
                                copy=False)
            subject = affine(subject)
        subject = rest(crop(subject))
        return subject["image"].data, subject["label"].data.to(torch.int16)

    return pipeline


BUILDERS: dict[str, Callable[[Shape3], SamplePipeline]] = {
    "plain crop": build_plain_crop,
    "batchgeneratorsv2": build_batchgeneratorsv2,
    "batchgeneratorsv2-nearest": lambda patch_size: build_batchgeneratorsv2(patch_size, mode_seg="nearest"),
    "monai": build_monai,
    "torchio": build_torchio,
}


def make_samples(case: Case, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``case.batch_size`` enlarged crops: image (C, Z', Y', X') float32 N(0, 1), label (1, Z', Y', X') int16 0-2."""
    shape = initial_patch_size(case.patch_size)
    return [
        (torch.randn((case.channels, *shape), generator=generator),
         torch.randint(0, 3, (1, *shape), generator=generator, dtype=torch.int16))
        for _ in range(case.batch_size)
    ]


def augment_batch(pipeline: SamplePipeline, samples: Sequence[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``pipeline`` on each sample and stack: image (B, C, Z, Y, X), label (B, 1, Z, Y, X)."""
    outputs = [pipeline(image, label) for image, label in samples]
    return torch.stack([image for image, _ in outputs]), torch.stack([label for _, label in outputs])


def time_batches(cases: Sequence[Case], libraries: Sequence[str], repeats: int, warmup: int, seed: int
                 ) -> dict[tuple[str, str], list[float]]:
    """Seconds per batch for every (case label, library), libraries interleaved batch by batch."""
    generator = torch.Generator().manual_seed(seed)
    times: dict[tuple[str, str], list[float]] = {}
    for case in cases:
        pipelines = {name: BUILDERS[name](case.patch_size) for name in libraries}
        base = make_samples(case, generator)
        for repeat in range(warmup + repeats):
            for name, pipeline in pipelines.items():
                samples = [(image.clone(), label.clone()) for image, label in base]
                start = time.perf_counter()
                images, labels = augment_batch(pipeline, samples)
                elapsed = time.perf_counter() - start
                assert images.shape == (case.batch_size, case.channels, *case.patch_size), (name, images.shape)
                assert labels.shape == (case.batch_size, 1, *case.patch_size), (name, labels.shape)
                if repeat >= warmup:
                    times.setdefault((case.label, name), []).append(elapsed)
    return times


def markdown_table(times: dict[tuple[str, str], list[float]], cases: Sequence[Case], libraries: Sequence[str],
                   statistic: Callable[[list[float]], float]) -> str:
    """Rows: cases; columns: libraries; cells: ``statistic`` of the batch times in milliseconds."""
    lines = ["| case (batch x Z x Y x X) | enlarged crop | " + " | ".join(libraries) + " |",
             "|---|---|" + "---:|" * len(libraries)]
    for case in cases:
        crop = "x".join(map(str, initial_patch_size(case.patch_size)))
        cells = [f"{1000 * statistic(times[(case.label, name)]):.1f}" for name in libraries]
        lines.append(f"| {case.label} | {crop} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in torch and, where installed, in SimpleITK."""
    torch.set_num_threads(threads)
    try:
        import SimpleITK

        SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch (and SimpleITK) threads")
    parser.add_argument("--repeats", type=int, default=200, help="timed batches per library and case")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per library and case first")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fidelity", action="store_true", help="also print where each library differs from nnU-Net")
    args = parser.parse_args()

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    libraries = ["plain crop", *args.libraries]
    packages = dict.fromkeys(["torch", *(PACKAGES[name] for name in args.libraries)])
    versions = ", ".join(f"{package} {version(package)}" for package in packages)
    times = time_batches(CASES, libraries, args.repeats, args.warmup, args.seed)

    print(f"{versions}; {args.threads} thread(s), {args.repeats} batches each after {args.warmup} warm-up, interleaved")
    print("\nMedian ms per batch\n")
    print(markdown_table(times, CASES, libraries, statistics.median))
    print("\nMean ms per batch\n")
    print(markdown_table(times, CASES, libraries, statistics.fmean))
    print(f"\n{STEP_CONTEXT}")
    if args.fidelity:
        for name in args.libraries:
            if name not in FIDELITY:
                continue
            print(f"\n{name}:")
            for note in FIDELITY[name]:
                print(f"- {note}")


if __name__ == "__main__":
    main()

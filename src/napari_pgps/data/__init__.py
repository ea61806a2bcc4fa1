"""Reading volumes and datasets, normalisation and patch sampling (no Qt)."""

from .dataset import Case, DatasetInfo, TrainingSet, load_cases, load_training_set, read_dataset_info, split_cases
from .normalization import fit_normalization, normalize
from .sampler import PatchBatch, PatchSampler, class_fractions
from .volume import Volume, read_image, read_volume, write_volume

__all__ = [
    "Case",
    "DatasetInfo",
    "PatchBatch",
    "PatchSampler",
    "TrainingSet",
    "Volume",
    "class_fractions",
    "fit_normalization",
    "load_cases",
    "load_training_set",
    "normalize",
    "read_dataset_info",
    "read_image",
    "read_volume",
    "split_cases",
    "write_volume",
]

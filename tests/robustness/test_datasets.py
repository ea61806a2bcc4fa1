"""Datasets as issue 31's probe fed them: nnU-Net v2's ignore label, dataset.json entries leading out of the folder,
2D and blank volumes, image and labels on different grids (generated here, tiny)."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import SMALL_SPACING, quick_config, write_dataset

from napari_pgps import train
from napari_pgps.config import NormalizationConfig
from napari_pgps.data import PatchSampler
from napari_pgps.data.dataset import check_case, ignore_label_of, load_training_set, read_dataset_info
from napari_pgps.data.preprocessing import CaseGeometry, PreprocessingPlan, preprocess_image
from napari_pgps.data.source import folder_source
from napari_pgps.data.store import PreprocessedDataset
from napari_pgps.data.volume import Volume, affine_from_spacing, write_volume
from napari_pgps.engine.losses import BatchDiceCELoss
from napari_pgps.engine.losses import training_loss
from napari_pgps.errors import InputError
from napari_pgps.events import RunStarted, StepDone, Validated

IGNORE_LABELS = {"background": 0, "lesion": 1, "ignore": 2}


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _ignore_dataset(root, cases=3):
    """An nnU-Net v2 dataset of phantoms (lesion 1) whose first 12 X columns are unannotated (ignore, 2)."""
    from napari_pgps._sample_data import make_phantom

    affine = affine_from_spacing(SMALL_SPACING)
    for i in range(cases):
        image, labels = make_phantom(i, shape=(16, 40, 40), spacing=SMALL_SPACING)
        labels = (labels > 0).astype(np.uint8)
        labels[:, :, :12] = 2
        write_volume(Volume(image, affine), root / "imagesTr" / f"ph_{i:03d}_0000.nii.gz")
        write_volume(Volume(labels, affine), root / "labelsTr" / f"ph_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "MRI"}, "labels": IGNORE_LABELS, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# -- the ignore label -------------------------------------------------------------------------------------
def test_the_ignore_label_is_kept_apart_from_the_classes(tmp_path):
    root = _ignore_dataset(tmp_path / "Dataset001_Ignore", cases=1)
    assert ignore_label_of({"labels": IGNORE_LABELS}) == 2
    assert ignore_label_of({"labels": {"0": "background", "1": "lesion"}}) is None
    info = read_dataset_info(root)
    assert info.labels == {0: "background", 1: "lesion"} and info.ignore_label == 2
    data = load_training_set(root)  # the label maps hold 2: declared, so accepted
    assert data.labels == info.labels and data.ignore_label == 2
    assert 2 in np.unique(data.cases[0].labels.array)


@pytest.mark.parametrize("labels", [{"background": 0, "ignore": 1, "lesion": 2}, {"ignore": 0, "lesion": 1}],
                         ids=["not-highest", "zero"])
def test_an_ignore_label_that_is_not_the_highest_value_is_refused(tmp_path, labels):
    root = _ignore_dataset(tmp_path / "Dataset002_Ignore", cases=1)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels}))
    with pytest.raises(InputError, match="the 'ignore' label is .* needs it to be the highest label value") as error:
        read_dataset_info(root)
    assert "dataset.json" in _one_line(error)
    with pytest.raises(InputError, match="highest label value"):
        ignore_label_of({"labels": labels})


def test_a_network_trained_with_an_ignore_label_has_no_output_for_it(tmp_path):
    root = _ignore_dataset(tmp_path / "Dataset003_Ignore")
    config = quick_config(root, epochs=1, iterations=1)
    config.data.foreground_oversampling = 1.0
    events = list(train(config, tmp_path / "run"))
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.label_names == ("background", "lesion")
    assert all(len(e.class_fractions) == 2 for e in events if isinstance(e, StepDone))
    validated = [e for e in events if isinstance(e, Validated)]  # scored without the ignored voxels
    assert validated and set(validated[-1].dice_per_label) == {"lesion"}
    saved = torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)["config"]
    assert saved["model"]["out_channels"] == 2 and saved["labels"] == {0: "background", 1: "lesion"}
    assert saved["ignore_label"] == 2


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_the_loss_does_not_change_with_the_predictions_at_ignored_voxels(deep_supervision):
    generator = torch.Generator().manual_seed(0)
    heads = [torch.randn((2, 2, 8, 12, 12), generator=generator) for _ in range(3 if deep_supervision else 1)]
    target = torch.randint(0, 2, (2, 1, 8, 12, 12), generator=generator)
    target[:, :, :, :, :5] = 2  # the ignore label's index: one past the two classes
    loss = training_loss(deep_supervision, ignore_index=2)
    changed = [torch.where(target == 2, torch.randn(head.shape, generator=generator) * 10, head) for head in heads]
    assert not torch.equal(changed[0], heads[0])
    assert torch.allclose(loss(changed, target), loss(heads, target), rtol=0, atol=1e-6)
    leaf = heads[0].clone().requires_grad_(True)
    loss([leaf, *heads[1:]], target).backward()
    assert (leaf.grad[:, :, :, :, :5] == 0).all() and (leaf.grad[:, :, :, :, 5:] != 0).any()


def test_without_an_ignore_label_the_loss_still_counts_every_voxel():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 3, 4, 6, 6), generator=generator)
    target = torch.randint(0, 3, (2, 1, 4, 6, 6), generator=generator)
    counted = BatchDiceCELoss()(logits, target)
    assert not torch.equal(counted, BatchDiceCELoss(ignore_index=2)(logits, target))
    assert torch.isfinite(BatchDiceCELoss(ignore_index=2)(logits, torch.full_like(target, 2)))  # all ignored: no NaN


def test_forced_foreground_crops_are_not_centred_on_the_ignore_label(tmp_path):
    shape, patch = (16, 16, 16), (4, 4, 4)
    labels = np.full(shape, 2, np.uint8)  # the ignore label's index almost everywhere ...
    labels[:4, :4, :4] = 0
    labels[0, 0, 0] = 1  # ... and one foreground voxel in a corner
    store = PreprocessedDataset(tmp_path / "store")
    box = tuple((0, n) for n in shape)
    store.write("case", np.zeros((1,) + shape, np.float32), labels,
                CaseGeometry(shape, "RAS", shape, box, (1.0, 1.0, 1.0), shape))
    sampler = PatchSampler(store, ["case"], 2, np.random.default_rng(0), foreground_probability=1.0)
    batches = [sampler.sample(patch, 2) for _ in range(10)]
    assert all((crop == 1).any() for batch in batches for crop in batch.labels)


# -- dataset.json entries ---------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["../../etc/x.nii.gz", "/etc/x.nii.gz", "./imagesTr/../../x.nii.gz"])
@pytest.mark.parametrize("key", ["image", "label"])
def test_entries_leading_out_of_the_dataset_folder_are_refused(fresh_dataset, entry, key):
    meta = json.loads((fresh_dataset / "dataset.json").read_text())
    meta["training"][1][key] = entry
    (fresh_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="points outside the dataset folder") as error:
        read_dataset_info(fresh_dataset)
    assert repr(entry) in _one_line(error)


def test_an_nnunet_file_ending_holding_a_path_is_refused(tmp_path):
    root = _ignore_dataset(tmp_path / "Dataset004_Ending", cases=1)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": IGNORE_LABELS,
                                                   "file_ending": "/../../../etc/x.nii.gz"}))
    with pytest.raises(InputError, match="file_ending '/../../../etc/x.nii.gz' holds a path") as error:
        read_dataset_info(root)
    _one_line(error)


def test_a_linked_dataset_folder_and_linked_case_files_still_read(tmp_path):
    real = write_dataset(tmp_path / "real", cases=2)
    store = tmp_path / "store"
    store.mkdir()
    (real / "imagesTr" / "case_000.nii.gz").rename(store / "case_000.nii.gz")
    os.symlink(store / "case_000.nii.gz", real / "imagesTr" / "case_000.nii.gz")  # a case file kept elsewhere
    os.symlink(real, tmp_path / "linked")
    data = load_training_set(tmp_path / "linked")
    assert [c.name for c in data.cases] == ["case_000", "case_001"]


# -- 2D and blank volumes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, axis", [((1, 40, 40), "Z"), ((16, 40, 1), "X")])
def test_a_single_slice_is_refused_as_2d_in_training_and_segmentation(tmp_path, shape, axis):
    image = Volume(np.random.default_rng(0).normal(size=shape).astype(np.float32), path=tmp_path / "slice.nii.gz")
    labels = Volume(np.zeros(shape, np.uint8), path=tmp_path / "slice_labels.nii.gz")
    with pytest.raises(InputError, match=f"single slice along {axis}, a 2D image") as error:
        check_case(image, labels)
    assert "slice.nii.gz" in _one_line(error)
    plan = PreprocessingPlan("RAS", None, True, (NormalizationConfig("zscore"),), (0, 1))
    with pytest.raises(InputError, match="a 2D image"):
        preprocess_image(image, plan)


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_a_training_image_holding_one_value_is_refused_naming_the_case(fresh_dataset, value):
    path = fresh_dataset / "imagesTr" / "case_001.nii.gz"
    write_volume(Volume(np.full((16, 40, 40), value, np.float32), affine_from_spacing(SMALL_SPACING)), path)
    source = folder_source(fresh_dataset)
    with pytest.raises(InputError, match=f"case_001.nii.gz: channel 'MRI' of training case 'case_001' is {value:g} "
                                         "in every voxel") as error:
        list(source.fingerprint("RAS", True))
    _one_line(error)


def test_a_case_without_foreground_is_a_legitimate_training_case(fresh_dataset):
    path = fresh_dataset / "labelsTr" / "case_001.nii.gz"
    write_volume(Volume(np.zeros((16, 40, 40), np.uint8), affine_from_spacing(SMALL_SPACING)), path)
    source = folder_source(fresh_dataset)
    generator = source.fingerprint("RAS", True)
    with pytest.raises(StopIteration) as done:
        while True:
            next(generator)
    assert set(done.value.value.cases) == {"case_000", "case_001", "case_002"}


# -- image and labels on different grids ------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (lambda a: a @ np.diag([1.5, 1, 1, 1]), "spacing along X 0.8 vs 1.2 mm"),
    (lambda a: a + np.array([[0, 0, 0, 3.2]] + [[0] * 4] * 3), "origin differs by 3.2 mm"),
    (lambda a: a @ np.diag([-1, 1, 1, 1]), "axes turned by up to 180 degrees"),
], ids=["spacing", "origin", "flipped"])
def test_labels_on_another_grid_are_refused_in_one_line_naming_the_difference(fresh_dataset, change, words):
    path = fresh_dataset / "labelsTr" / "case_002.nii.gz"
    write_volume(Volume(np.zeros((16, 40, 40), np.uint8), change(affine_from_spacing(SMALL_SPACING))), path)
    with pytest.raises(InputError, match="grid differs from the image's") as error:
        load_training_set(fresh_dataset)
    text = _one_line(error)
    assert "case_002" in text and words in text and "save the labels on the image's grid" in text

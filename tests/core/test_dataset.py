import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_pgps.data import load_cases, load_training_set, read_dataset_info, split_cases
from napari_pgps.data.dataset import nnunet_image_name
from napari_pgps.errors import InputError


def test_decathlon_layout(phantom_dataset):
    info = read_dataset_info(phantom_dataset)
    assert info.labels == {0: "background", 1: "lesion", 2: "vessel"}
    assert info.channels == ["MRI"]
    assert [f.name for f in info.files] == [f"case_{i:03d}" for i in range(6)]
    cases = load_cases(info, max_cases=2)
    assert len(cases) == 2
    assert cases[0].image.shape == cases[0].labels.shape == (16, 40, 40)
    assert cases[0].image.spacing == pytest.approx((2.5, 0.8, 0.8))


def test_nnunet_v2_layout(tmp_path, phantom_dataset):
    root = tmp_path / "Dataset001_Phantom"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        shutil.copy(phantom_dataset / "imagesTr" / f"case_{i:03d}.nii.gz", root / "imagesTr" / f"ph_{i}_0000.nii.gz")
        shutil.copy(phantom_dataset / "labelsTr" / f"case_{i:03d}.nii.gz", root / "labelsTr" / f"ph_{i}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1, "vessel": 2}, "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    data = load_training_set(root)
    assert [c.name for c in data.cases] == ["ph_0", "ph_1"]
    assert data.labels == {0: "background", 1: "lesion", 2: "vessel"}
    assert data.channels == ["CT"]


def test_nnunet_v2_layout_with_two_channels(tmp_path, phantom_dataset):
    root = tmp_path / "Dataset002_TwoChannels"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    source = nib.load(str(phantom_dataset / "imagesTr" / "case_000.nii.gz"))
    data = np.asanyarray(source.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(data, source.affine), str(root / "imagesTr" / "ph_0000.nii.gz"))
    nib.save(nib.Nifti1Image(-data, source.affine), str(root / "imagesTr" / "ph_0001.nii.gz"))
    shutil.copy(phantom_dataset / "labelsTr" / "case_000.nii.gz", root / "labelsTr" / "ph.nii.gz")
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "lesion": 1, "vessel": 2},
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    case = load_training_set(root).cases[0]
    assert case.image.array.shape == (2, 16, 40, 40) and case.labels.shape == (16, 40, 40)
    np.testing.assert_array_equal(case.image.array[1], -case.image.array[0])
    (root / "imagesTr" / "ph_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="ph_0001.nii.gz: not found; dataset.json declares 2 channel"):
        read_dataset_info(root)


def _rewrite(path, change):
    image = nib.load(str(path))
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, a: (d[:-1], a), "label shape .* differs"),
        (lambda d, a: (d, a @ np.diag([1, 1, 2, 1])), "grid differs from the image's .*: spacing along Z 2.5 vs 5 mm;"),
        (lambda d, a: (np.where(d == 2, 7, d).astype(np.uint8), a), r"label value\(s\) \[7\] are not declared"),
        (lambda d, a: (d.astype(np.float32) + 0.25, a), "non-integer"),
    ],
    ids=["shape", "affine", "undeclared", "non-integer"],
)
def test_bad_label_files_are_named(fresh_dataset, change, message):
    label = fresh_dataset / "labelsTr" / "case_001.nii.gz"
    _rewrite(label, change)
    with pytest.raises(InputError, match=message) as info:
        load_training_set(fresh_dataset)
    assert "case_001" in str(info.value)


def test_empty_and_missing_datasets(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        read_dataset_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="dataset.json"):
        read_dataset_info(tmp_path / "empty")
    (tmp_path / "empty" / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": []}))
    with pytest.raises(InputError, match="no training case"):
        read_dataset_info(tmp_path / "empty")
    (tmp_path / "empty" / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_dataset_info(tmp_path / "empty")


def test_missing_label_file_is_named(fresh_dataset):
    (fresh_dataset / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(InputError, match="case_002"):
        load_training_set(fresh_dataset)


def test_split_is_reproducible_disjoint_and_80_20():
    names = [f"c{i:03d}" for i in range(50)]
    train, val = split_cases(names, 0.2, seed=3)
    assert (train, val) == split_cases(list(reversed(names)), 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == set(names)
    assert split_cases(names, 0.2, seed=4)[1] != val


def test_split_keeps_one_validation_case_for_tiny_sets():
    train, val = split_cases(["a", "b", "c"], 0.2, seed=0)
    assert len(val) == 1 and len(train) == 2


def test_nnunet_image_names_carry_the_channel_in_four_digits():
    assert nnunet_image_name("case_7", 0) == "case_7_0000.nii.gz"
    assert nnunet_image_name("BRATS_001", 3, ".tif") == "BRATS_001_0003.tif"
    assert nnunet_image_name("", 0, ".nii") == "_0000.nii"

"""Files as issue 31's probe fed them: TIFF units and hyperstacks, NIfTI headers claiming more than the file holds,
a damaged or stale cache, and ``napari-pgps info`` (every file generated here, tiny)."""

import gzip
import json
import logging
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import tifffile

import napari_pgps
from napari_pgps.cli import main
from napari_pgps.config import NormalizationConfig
from napari_pgps.data import store as store_module
from napari_pgps.data.info import describe_file
from napari_pgps.data.preprocessing import PreprocessingPlan
from napari_pgps.data.source import folder_source
from napari_pgps.data.store import library_versions
from napari_pgps.data.volume import read_volume
from napari_pgps.errors import InputError

UNKNOWN_SPACING_NOTE = "spacing unknown, 1 mm assumed"


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


# -- TIFF: units, hyperstacks --------------------------------------------------------------------------------------
def _hyperstack(path, unit="um"):
    """An ImageJ hyperstack stored (Z, C, Y, X) = (5, 2, 8, 9): 2 µm between slices, 0.25 x 0.5 µm pixels."""
    data = np.random.default_rng(0).integers(0, 1000, (5, 2, 8, 9)).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": unit})
    return data


def test_an_imagej_zcyx_hyperstack_in_micrometres_reads_as_two_channels_at_its_spacing_in_mm(tmp_path, capsys):
    data = _hyperstack(tmp_path / "cells.tif")
    volume = read_volume(tmp_path / "cells.tif")
    assert volume.array.shape == (2, 5, 8, 9) and volume.channels == 2
    np.testing.assert_array_equal(volume.array[1, 3], data[3, 1])  # channel 1 of slice 3
    assert volume.spacing == pytest.approx((0.002, 0.00025, 0.0005))
    assert main(["info", "--json", str(tmp_path / "cells.tif")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [5, 8, 9] and info["channels"] == 2
    assert info["spacing_mm"] == pytest.approx([0.002, 0.00025, 0.0005])
    assert info["orientation"] == "RAS" and info["dtype"] == "uint16"


@pytest.mark.parametrize("unit, mm", [("micron", 1e-3), ("\\u00B5m", 1e-3), ("um", 1e-3), ("nm", 1e-6),
                                      ("mm", 1.0), ("cm", 10.0), ("inch", 25.4)])
def test_the_imagej_unit_is_honoured_for_pixels_and_slices(tmp_path, unit, mm):
    data = np.zeros((3, 8, 9), np.uint8)  # "\\u00B5m": µm as ImageJ writes it in its ASCII description
    tifffile.imwrite(tmp_path / "v.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": unit})
    volume = read_volume(tmp_path / "v.tif")
    assert volume.spacing == pytest.approx((2.0 * mm, 0.25 * mm, 0.5 * mm))
    assert UNKNOWN_SPACING_NOTE not in " ".join(volume.notes)


@pytest.mark.parametrize("resolution, unit, pixel_mm", [((72, 72), "INCH", 25.4 / 72), ((100, 50), "CENTIMETER", 0.1)])
def test_the_tiff_resolution_unit_is_honoured_and_an_unknown_slice_spacing_said(tmp_path, resolution, unit, pixel_mm):
    tifffile.imwrite(tmp_path / "scan.tif", np.zeros((4, 8, 9), np.uint8), resolution=resolution, resolutionunit=unit,
                     photometric="minisblack")
    volume = read_volume(tmp_path / "scan.tif")
    assert volume.spacing[1] == pytest.approx(10.0 / resolution[1] if unit == "CENTIMETER" else pixel_mm)
    assert volume.spacing[2] == pytest.approx(pixel_mm)
    assert volume.spacing[0] == 1.0 and "Z spacing unknown, 1 mm assumed" in volume.notes


@pytest.mark.filterwarnings("ignore:.*stored as RGB with separate component planes")
def test_a_tiff_without_any_spacing_keeps_1_mm_and_info_says_so(tmp_path, capsys):
    data = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)  # 3 pages: tifffile guesses samples (axes SYX)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    volume = read_volume(tmp_path / "plain.tif")
    np.testing.assert_array_equal(volume.array, data)
    assert volume.spacing == (1.0, 1.0, 1.0) and UNKNOWN_SPACING_NOTE in volume.notes
    assert main(["info", str(tmp_path / "plain.tif")]) == 0
    assert f"note         {UNKNOWN_SPACING_NOTE}" in capsys.readouterr().out


def test_an_rgb_tiff_stack_reads_its_samples_as_channels(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (4, 8, 9, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    volume = read_volume(tmp_path / "rgb.tif")
    assert volume.array.shape == (3, 4, 8, 9)
    np.testing.assert_array_equal(volume.array[2], data[..., 2])


# -- NIfTI headers claiming more than the file holds ---------------------------------------------------------------
def _claiming(path, shape, dtype=np.float32):
    """A NIfTI file whose header claims ``shape`` voxels but which holds one slice's worth of 8 x 8 voxels."""
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), str(path))
    image = nib.load(str(path))
    header = image.header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(64, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_a_tiny_nifti_claiming_512_mib_is_refused_in_one_line_before_its_data_is_read(tmp_path, name):
    path = _claiming(tmp_path / name, (512, 512, 512))
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="512 x 512 x 512 voxels of float32 .512 MiB.* truncated") as error:
            read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert _one_line(error).startswith(str(path))


def test_a_header_claiming_an_absurd_size_is_refused(tmp_path):
    path = _claiming(tmp_path / "absurd.nii", (32767, 32767, 32767), np.float64)
    with pytest.raises(InputError, match="32767 x 32767 x 32767 voxels of float64 .[0-9,]+ MiB") as error:
        read_volume(path)
    _one_line(error)


def test_a_nifti_gzipped_in_several_members_still_reads(tmp_path):
    """The gzip trailer gives only the last member's size: the size is then counted, not guessed."""
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "a.nii"))
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    np.testing.assert_array_equal(read_volume(tmp_path / "a.nii.gz").array, read_volume(tmp_path / "a.nii").array)


# -- the cache -----------------------------------------------------------------------------------------------------
def _plan():
    return PreprocessingPlan("RAS", None, True, (NormalizationConfig("zscore"),), (0, 1, 2))


def _build(dataset, cache):
    return list(folder_source(dataset, cache=str(cache)).preprocessed(_plan()))


def _arrays(root):
    return {path.name: np.load(path) for path in sorted(root.glob("*.npy"))}


@pytest.mark.parametrize("damage", ["truncated", "another shape"])
def test_a_damaged_cached_array_is_rebuilt_with_a_message(fresh_dataset, tmp_path, caplog, damage):
    _build(fresh_dataset, tmp_path / "cache")
    (root,) = (tmp_path / "cache").glob("*/plan-*")
    before = _arrays(root)
    path = root / "case_001.npy"
    if damage == "truncated":
        with open(path, "r+b") as file:
            file.truncate(path.stat().st_size // 2)
    else:
        np.save(path, np.zeros((1, 2, 3, 4), np.float32))
    with caplog.at_level(logging.WARNING, logger="napari_pgps"):
        progress = _build(fresh_dataset, tmp_path / "cache")
    assert progress == [(3, 3)]  # the one damaged case, preprocessed again
    (message,) = [r.getMessage() for r in caplog.records]
    assert "case_001" in message and "damaged" in message and "\n" not in message
    after = _arrays(root)
    assert after.keys() == before.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    caplog.clear()
    assert _build(fresh_dataset, tmp_path / "cache") == [] and not caplog.records  # whole again: nothing to do


def test_a_file_changed_in_place_keeping_its_size_and_time_gets_a_new_cache(fresh_dataset):
    """As ``cp -p`` of another file of the same size would: only the content differs."""
    before = folder_source(fresh_dataset).folder
    path = fresh_dataset / "imagesTr" / "case_002.nii.gz"
    stat = path.stat()
    other = fresh_dataset / "imagesTr" / "case_001.nii.gz"
    content = bytearray(path.read_bytes())
    content[-8:] = other.read_bytes()[-8:]  # another CRC and size in the gzip trailer
    path.write_bytes(bytes(content))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert folder_source(fresh_dataset).folder != before


def test_the_cache_is_named_by_the_package_and_library_versions(fresh_dataset, monkeypatch):
    versions = library_versions()
    assert versions["napari-pgps"] == napari_pgps.__version__
    assert {"numpy", "nibabel"} <= versions.keys()
    before = folder_source(fresh_dataset).folder
    monkeypatch.setattr(store_module, "library_versions", lambda: {**versions, "numpy": "0.0"})
    assert folder_source(fresh_dataset).folder != before


# -- napari-pgps info ----------------------------------------------------------------------------------------------
def test_info_prints_the_stable_keys_of_a_permuted_nifti_and_the_label_values_of_a_label_map(tmp_path, capsys):
    affine = np.array([[0, 0, 1.5, -10], [-0.8, 0, 0, 20], [0, 2.0, 0, 5], [0, 0, 0, 1]])  # i: P, j: S, k: R
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[2:4, 1:3, 1:3] = 3
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "seg.nii.gz"))
    assert main(["info", "--json", str(tmp_path / "seg.nii.gz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"shape", "channels", "spacing_mm", "orientation"} <= info.keys()
    assert info["shape"] == [4, 5, 6] and info["channels"] == 1
    assert info["spacing_mm"] == pytest.approx([1.5, 2.0, 0.8]) and info["orientation"] == "PSR"
    assert info["label_values"] == [0, 3] and info["dtype"] == "uint8"
    np.testing.assert_allclose(info["affine"], affine)
    assert main(["info", str(tmp_path / "seg.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "shape        4 x 5 x 6 (Z, Y, X)" in text and "orientation  PSR" in text and "label values 0, 3" in text


def test_info_of_an_image_gives_its_value_range_and_of_a_single_slice_a_note(tmp_path):
    image = np.linspace(-1.5, 2.5, 40 * 40, dtype=np.float32).reshape(40, 40, 1)  # (x, y, z): one slice
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "slice.nii.gz"))
    info = describe_file(tmp_path / "slice.nii.gz")
    assert info["value_range"] == pytest.approx([-1.5, 2.5]) and info["label_values"] is None
    assert any("single slice along Z" in note for note in info["notes"])


@pytest.mark.parametrize("content, words", [(b"not a volume", "cannot read"), (None, "file not found")])
def test_info_of_a_bad_file_exits_2_with_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "bad.nii.gz"
    if content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and words in captured.err and str(path) in captured.err


def test_info_of_a_truncated_nifti_exits_2_in_one_line(tmp_path, capsys):
    path = _claiming(tmp_path / "big.nii.gz", (512, 512, 512))
    assert main(["info", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1

"""Bad DICOM input is refused in one line that names the series or file and says what to do; nothing is written.

Every series is generated here (tests/dicom_series.py) and then broken the way exports break: two series in one
folder, a missing slice, uneven spacing, a second orientation, two echoes in one series, a non-image object, a file cut
short in its pixel data or in its header.
"""

from __future__ import annotations

import numpy as np
import pytest
from dicom_series import write_report, write_series

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("SimpleITK")

from napari_pgps.cli import main  # noqa: E402
from napari_pgps.data.volume import read_volume  # noqa: E402
from napari_pgps.errors import InputError  # noqa: E402


def _voxels(shape=(8, 5, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 300, shape).astype(np.float32)


def _refusal(path, **options) -> str:
    """The one-line message ``read_volume`` refuses ``path`` with."""
    with pytest.raises(InputError) as error:
        read_volume(path, **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def _uid(file) -> str:
    return str(pydicom.dcmread(file, stop_before_pixels=True).SeriesInstanceUID)


def test_a_folder_of_two_series_lists_them_and_one_is_chosen_by_uid(tmp_path):
    first = write_series(tmp_path, _voxels(), description="AX T1")
    second = write_series(tmp_path, _voxels((3, 5, 6), seed=1), description="SAG T2", name="S2_{:03d}")
    message = _refusal(tmp_path)
    assert "holds 2 DICOM series" in message and "--series UID" in message
    assert f"{_uid(first[0])} 'AX T1' 8 slices" in message and f"{_uid(second[0])} 'SAG T2' 3 slices" in message
    chosen = read_volume(tmp_path, series=_uid(second[0]))
    assert chosen.shape == (3, 5, 6) and chosen.dicom.files == tuple(second)
    assert read_volume(first[2]).dicom.files == tuple(first)  # a file chooses its own series
    assert "holds no series 1.2.3" in _refusal(tmp_path, series="1.2.3")


def test_the_command_line_refuses_a_folder_of_two_series_in_one_line(tmp_path, capsys):
    write_series(tmp_path, _voxels(), description="AX T1")
    write_series(tmp_path, _voxels((3, 5, 6)), description="SAG T2", name="S2_{:03d}")
    assert main(["info", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "holds 2 DICOM series" in captured.err


def test_a_missing_slice_is_named_by_its_neighbours(tmp_path):
    files = write_series(tmp_path, _voxels(), description="AX T1")
    files[3].unlink()
    message = _refusal(tmp_path)
    assert "'AX T1'" in message and "1 slice(s) missing" in message
    assert f"between {files[2].name} and {files[4].name}" in message and "export the complete series" in message


def test_uneven_spacing_is_refused(tmp_path):
    files = write_series(tmp_path, _voxels(), spacing=(2.0, 0.8, 0.6))
    header = pydicom.dcmread(files[5])
    header.ImagePositionPatient = [*header.ImagePositionPatient[:2], float(header.ImagePositionPatient[2]) + 0.7]
    header.save_as(files[5])
    message = _refusal(tmp_path)
    assert "not evenly spaced" in message and files[5].name in message and "resample" in message


def test_a_slice_of_another_orientation_is_refused(tmp_path):
    files = write_series(tmp_path, _voxels())
    write_series(tmp_path, _voxels((1, 5, 6)), row=(0, 1, 0), column=(0, 0, -1), series_uid=_uid(files[0]), order=[0],
                 name="ODD{:03d}")
    message = _refusal(tmp_path)
    assert "mixes orientations (8 slice(s)" in message and "ODD000" in message and "own series" in message


def test_two_echoes_in_one_series_are_refused(tmp_path):
    files = write_series(tmp_path, _voxels())
    write_series(tmp_path, _voxels(seed=2), series_uid=_uid(files[0]), name="E2_{:03d}")
    assert "two slices lie at one position" in _refusal(tmp_path)


def test_non_image_dicom_is_refused_given_alone_and_left_aside_beside_a_series(tmp_path):
    report = write_report(tmp_path / "only" / "report.dcm")
    assert "a DICOM Basic Text SR Storage object, not an image" in _refusal(report)
    message = _refusal(tmp_path / "only")
    assert "holds no DICOM image series" in message and "report.dcm" in message
    write_series(tmp_path / "only", _voxels())
    volume = read_volume(tmp_path / "only")
    assert volume.shape == (8, 5, 6) and any("1 non-image DICOM object(s) left aside" in n for n in volume.notes)


@pytest.mark.parametrize("keep, words", [
    (-100, "a truncated DICOM file (its pixel data needs"),
    (-(40 * 40 * 2 + 12), "its header ends before its pixel data"),  # just before the pixel data element
    (-(40 * 40 * 2 + 4), "truncated or damaged DICOM file"),  # inside the pixel data element's 12-byte header
    (400, "truncated or damaged DICOM file"),
    (134, "truncated or damaged DICOM file"),
])
def test_a_truncated_file_is_named(tmp_path, keep, words):
    files = write_series(tmp_path, _voxels((8, 40, 40)))  # slices larger than the header pass reads
    data = files[6].read_bytes()
    files[6].write_bytes(data[:keep])
    message = _refusal(tmp_path)
    assert message.startswith(str(files[6])) and words in message


def test_a_file_cut_inside_its_header_before_the_image_size_is_named(tmp_path):
    files = write_series(tmp_path, _voxels((8, 40, 40)))
    data = files[5].read_bytes()
    files[5].write_bytes(data[:data.index(b"\x28\x00\x10\x00")])  # just before Rows (0028,0010)
    message = _refusal(tmp_path)
    assert message.startswith(str(files[5])) and "header stops before its size" in message


def test_pixel_data_the_decoder_cannot_decode_names_its_file(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    files = write_series(tmp_path, _voxels((4, 40, 40)))
    header = pydicom.dcmread(files[2])
    header.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    header.PixelData = encapsulate([b"\xff\xd8 not a JPEG" * 10])
    header["PixelData"].VR = "OB"
    header.save_as(files[2], enforce_file_format=True)
    message = _refusal(tmp_path)
    assert message.startswith(f"{files[2]} (series ") and "cannot decode its pixel data" in message


def test_a_folder_without_dicom_and_a_series_for_another_format_are_refused(tmp_path):
    import nibabel as nib

    (tmp_path / "notes.txt").write_text("not an image")
    assert "no DICOM file in this folder" in _refusal(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    assert "not a DICOM series" in _refusal(tmp_path / "a.nii.gz", series="1.2.3")

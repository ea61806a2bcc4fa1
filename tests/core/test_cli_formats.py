"""The clinic's formats on the command line: ``segment``, ``evaluate``, ``train`` and ``info`` on DICOM series, NRRD
and MetaImage, the DICOM SEG, probabilities and the volume report (issue 34).

Every file is generated here: the phantoms of the shared fixtures written as an oblique DICOM series in scrambled
file order (:mod:`dicom_series`), as NRRD and as MetaImage with turned directions.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from dicom_series import oblique_cosines, write_report, write_series
from helpers import SMALL_SPACING, write_dataset

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")

from napari_pgps.cli import main  # noqa: E402
from napari_pgps.data.volume import Volume, read_volume, write_volume  # noqa: E402

PATIENT = ("Doe^Jane", "PID-SECRET-42")
"""The patient name and ID :func:`write_series` writes: never printed."""
TURNED = np.array([[0.0, 0.0, -1.0, 40.0], [-1.0, 0.0, 0.0, 12.0], [0.0, 1.0, 0.0, -7.0], [0, 0, 0, 1]])
"""An affine that permutes and flips the voxel axes (before the spacing)."""


def _phantom(phantom_dataset) -> np.ndarray:
    return read_volume(phantom_dataset / "imagesTr" / "case_000.nii.gz").array


def _series(folder, phantom_dataset, **options):
    """The first phantom as an oblique DICOM series (LPS, files named out of slice order)."""
    row, column = oblique_cosines()
    return write_series(folder, _phantom(phantom_dataset), row=row, column=column, spacing=SMALL_SPACING, **options)


def _segment(run, source, output, *extra):
    return main(["segment", "--model", str(run), "--input", str(source), "--output", str(output), "--device", "cpu",
                 *extra])


def _folder(path) -> str:
    """An output folder as the command line names one that does not exist yet: ending in ``/``."""
    return f"{path}/"


def _refused(capsys) -> str:
    """The one line a refused command printed on stderr, checked to hold no patient data."""
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, err
    assert not any(secret in out + err for secret in PATIENT)
    return err


def _grid(path):
    """Size, origin and direction as ITK reads them (a DICOM series through its file names in slice order)."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return image.GetSize(), np.array(image.GetOrigin()), np.array(image.GetDirection()), np.array(image.GetSpacing())


def _assert_same_grid(a, b):
    (size_a, origin_a, direction_a, spacing_a), (size_b, origin_b, direction_b, spacing_b) = _grid(a), _grid(b)
    assert size_a == size_b
    np.testing.assert_allclose(origin_a, origin_b, atol=1e-4)
    np.testing.assert_allclose(direction_a, direction_b, atol=1e-6)
    np.testing.assert_allclose(spacing_a, spacing_b, atol=1e-5)


# -- DICOM series in, on its grid out ----------------------------------------------------------------------------
def test_a_dicom_series_segments_as_the_nifti_of_its_voxels_and_lands_on_its_grid(trained_phantom_run,
                                                                                   phantom_dataset, tmp_path, capsys):
    _series(tmp_path / "series", phantom_dataset)
    series = read_volume(tmp_path / "series")
    write_volume(series, tmp_path / "same.nii.gz")  # the same voxels and world placement, as NIfTI
    assert _segment(trained_phantom_run, tmp_path / "series", tmp_path / "seg.nii.gz") == 0
    out = capsys.readouterr().out
    assert f"series {series.dicom.uid} ('AX T1')" in out and not any(secret in out for secret in PATIENT)
    assert _segment(trained_phantom_run, tmp_path / "same.nii.gz", tmp_path / "nifti_seg.nii.gz") == 0
    by_dicom, by_nifti = read_volume(tmp_path / "seg.nii.gz", kind="labels"), read_volume(tmp_path / "nifti_seg.nii.gz",
                                                                                          kind="labels")
    np.testing.assert_array_equal(by_dicom.array, by_nifti.array)
    np.testing.assert_allclose(by_dicom.affine, series.affine, atol=1e-6)
    _assert_same_grid(tmp_path / "seg.nii.gz", tmp_path / "series")


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_a_dicom_file_gives_its_series_and_itk_outputs_keep_the_series_grid(trained_phantom_run, phantom_dataset,
                                                                            tmp_path, ending):
    files = _series(tmp_path / "series", phantom_dataset)
    assert _segment(trained_phantom_run, files[3], tmp_path / f"seg{ending}") == 0
    _assert_same_grid(tmp_path / f"seg{ending}", tmp_path / "series")


def test_a_dicom_seg_references_the_series_and_names_the_labels(trained_phantom_run, phantom_dataset, tmp_path,
                                                                capsys):
    files = _series(tmp_path / "series", phantom_dataset)
    assert _segment(trained_phantom_run, tmp_path / "series", tmp_path / "out" / "seg.dcm", "--uncertainty",
                    "--save-probabilities") == 0
    assert not any(secret in capsys.readouterr().out for secret in PATIENT)
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "vessel"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "seg.dcm", "seg_probabilities.nii.gz", "seg_probabilities.npz", "seg_uncertainty.nii.gz"]


def test_a_series_folder_into_an_output_folder_is_named_after_its_folder(trained_phantom_run, phantom_dataset,
                                                                         tmp_path):
    _series(tmp_path / "AX_T1", phantom_dataset)
    assert _segment(trained_phantom_run, tmp_path / "AX_T1", _folder(tmp_path / "out"), "--output-format", "dcm") == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["AX_T1.dcm"]
    assert _segment(trained_phantom_run, tmp_path / "AX_T1", _folder(tmp_path / "out2")) == 0
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["AX_T1.nii.gz"]


def test_series_chooses_one_of_a_folder_of_two(trained_phantom_run, phantom_dataset, tmp_path, capsys):
    _series(tmp_path / "export" / "a", phantom_dataset, series_uid="2.25.1001", description="AX T1")
    _series(tmp_path / "export" / "b", phantom_dataset, series_uid="2.25.1002", description="COR T2")
    assert _segment(trained_phantom_run, tmp_path / "export", tmp_path / "seg.nii.gz") == 2
    err = _refused(capsys)
    assert "2.25.1001 'AX T1' 16 slices" in err and "2.25.1002 'COR T2' 16 slices" in err
    assert "--series UID" in err and not (tmp_path / "seg.nii.gz").exists()
    assert _segment(trained_phantom_run, tmp_path / "export", tmp_path / "seg.nii.gz", "--series", "2.25.1002") == 0
    assert "'COR T2'" in capsys.readouterr().out


# -- bad DICOM input: one line, exit 2, nothing written ---------------------------------------------------------
def _two_series(folder, phantom_dataset):
    _series(folder / "a", phantom_dataset, series_uid="2.25.1001")
    _series(folder / "b", phantom_dataset, series_uid="2.25.1002")
    return folder, ["2 DICOM series", "2.25.1001", "choose one with --series UID"]


def _missing_slice(folder, phantom_dataset):
    files = _series(folder, phantom_dataset, series_uid="2.25.1003")
    files[7].unlink()
    return folder, ["series 2.25.1003", "1 slice(s) missing", "export the complete series"]


def _non_image(folder, phantom_dataset):
    return write_report(folder / "report.dcm"), ["report.dcm", "not an image", "image series"]


def _truncated(folder, phantom_dataset):
    files = _series(folder, phantom_dataset)
    files[4].write_bytes(files[4].read_bytes()[:-1000])  # cut inside its pixel data
    return folder, [files[4].name, "truncated", "export the series again"]


@pytest.mark.parametrize("make", [_two_series, _missing_slice, _non_image, _truncated],
                         ids=["two-series", "missing-slice", "non-image", "truncated"])
def test_bad_dicom_input_is_refused_in_one_line_and_nothing_is_written(trained_phantom_run, phantom_dataset,
                                                                       tmp_path, capsys, make):
    source, words = make(tmp_path / "dicom", phantom_dataset)
    out = tmp_path / "out"
    assert _segment(trained_phantom_run, source, out / "seg.dcm", "--save-probabilities", "--uncertainty",
                    "--report", str(out / "report.csv")) == 2
    err = _refused(capsys)
    assert all(word in err for word in words), err
    assert not out.exists()


def test_a_dicom_seg_for_an_input_that_is_no_dicom_series_is_refused_before_any_work(trained_phantom_run,
                                                                                     phantom_dataset, tmp_path,
                                                                                     capsys):
    image = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    assert _segment(trained_phantom_run, image, tmp_path / "seg.dcm") == 2
    assert "a DICOM SEG references the DICOM series it segments" in _refused(capsys)
    assert _segment(trained_phantom_run, phantom_dataset / "imagesTr", _folder(tmp_path / "out"), "--output-format",
                    "dcm") == 2
    assert "--output-format dcm: a DICOM SEG" in _refused(capsys)
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nrrd", "--output-format", "mha") == 2
    assert "--output-format mha: the output" in _refused(capsys)
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nii.gz", "--series", "1.2.3") == 2
    assert "not a DICOM series; --series chooses" in _refused(capsys)
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nhdr") == 2
    assert "choose an output ending in .nii, .nii.gz" in _refused(capsys)
    assert not list(tmp_path.iterdir())


# -- NRRD and MetaImage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_inputs_segment_onto_their_own_grid(trained_phantom_run, phantom_dataset, tmp_path,
                                                               ending):
    source = read_volume(phantom_dataset / "imagesTr" / "case_000.nii.gz")
    turned = TURNED.copy()
    turned[:3, :3] = turned[:3, :3] @ np.diag(SMALL_SPACING[::-1])
    write_volume(Volume(source.array, turned), tmp_path / f"in{ending}")
    assert _segment(trained_phantom_run, tmp_path / f"in{ending}", tmp_path / f"seg{ending}") == 0
    _assert_same_grid(tmp_path / f"seg{ending}", tmp_path / f"in{ending}")
    assert _segment(trained_phantom_run, tmp_path / f"in{ending}", tmp_path / "seg.nii.gz") == 0
    np.testing.assert_allclose(read_volume(tmp_path / "seg.nii.gz").affine, turned, atol=1e-5)


def test_a_folder_writes_the_output_format_asked_or_each_inputs_own(trained_phantom_run, phantom_dataset, tmp_path):
    source = read_volume(phantom_dataset / "imagesTr" / "case_000.nii.gz")
    (tmp_path / "in").mkdir()
    write_volume(source, tmp_path / "in" / "a.nii.gz")
    write_volume(source, tmp_path / "in" / "b.mha")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "in" / "b.mha")), str(tmp_path / "in" / "c.nhdr"))
    assert _segment(trained_phantom_run, tmp_path / "in", _folder(tmp_path / "own")) == 0
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["a.nii.gz", "b.mha", "c.nrrd"]
    assert _segment(trained_phantom_run, tmp_path / "in", _folder(tmp_path / "asked"), "--output-format", ".NRRD") == 0
    assert sorted(p.name for p in (tmp_path / "asked").iterdir()) == ["a.nrrd", "b.nrrd", "c.nrrd"]
    _assert_same_grid(tmp_path / "asked" / "c.nrrd", tmp_path / "in" / "c.nhdr")


# -- probabilities and the report -------------------------------------------------------------------------------
def test_probabilities_and_a_report_scored_against_a_reference(trained_phantom_run, phantom_dataset, tmp_path,
                                                               capsys):
    image, labels = (phantom_dataset / folder / "case_000.nii.gz" for folder in ("imagesTr", "labelsTr"))
    assert _segment(trained_phantom_run, image, tmp_path / "seg.nrrd", "--save-probabilities", "--report",
                    str(tmp_path / "report.csv"), "--reference", str(labels), "--no-postprocessing") == 0
    assert "volume report of 1 case(s)" in capsys.readouterr().out
    archive = np.load(tmp_path / "seg_probabilities.npz")
    segmentation = read_volume(tmp_path / "seg.nrrd", kind="labels")
    np.testing.assert_array_equal(archive["label_values"][np.argmax(archive["probabilities"], axis=0)],
                                  segmentation.array)
    assert nib.load(str(tmp_path / "seg_probabilities.nii.gz")).shape == (40, 40, 16, 3)
    rows = list(csv.DictReader((tmp_path / "report.csv").read_text().splitlines()))
    assert [(r["case"], r["label"]) for r in rows] == [("seg", "lesion"), ("seg", "vessel")]
    expected = np.count_nonzero(segmentation.array == 1)
    assert int(rows[0]["voxels"]) == expected
    assert float(rows[0]["volume_ml"]) == pytest.approx(expected * np.prod(SMALL_SPACING) / 1000, rel=1e-5)
    assert 0 <= float(rows[0]["dice"]) <= 1 and float(rows[0]["hd95"]) >= 0


def test_a_folder_report_finds_each_reference_by_its_output_name(trained_phantom_run, phantom_dataset, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "refs").mkdir()
    for case in ("case_000", "case_001"):
        write_volume(read_volume(phantom_dataset / "imagesTr" / f"{case}.nii.gz"), tmp_path / "in" / f"{case}_0000.mha")
        write_volume(read_volume(phantom_dataset / "labelsTr" / f"{case}.nii.gz", kind="labels"),
                     tmp_path / "refs" / f"{case}.nrrd")
    assert _segment(trained_phantom_run, tmp_path / "in", _folder(tmp_path / "out"), "--report",
                    str(tmp_path / "r.csv"), "--reference", str(tmp_path / "refs")) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert [r["case"] for r in rows] == ["case_000", "case_000", "case_001", "case_001"]
    assert all(r["dice"] for r in rows)


def test_references_that_cannot_score_are_refused_before_any_output(trained_phantom_run, phantom_dataset, tmp_path,
                                                                    capsys):
    image, labels = (phantom_dataset / folder / "case_000.nii.gz" for folder in ("imagesTr", "labelsTr"))
    seg, report = tmp_path / "out" / "seg.nii.gz", str(tmp_path / "out" / "report.csv")
    assert _segment(trained_phantom_run, image, seg, "--reference", str(labels)) == 2
    assert "add --report FILE.csv" in _refused(capsys)
    moved = read_volume(labels, kind="labels")
    moved.affine[:3, 3] += (0, 0, 5)
    write_volume(moved, tmp_path / "moved.nii.gz")
    assert _segment(trained_phantom_run, image, seg, "--report", report, "--reference",
                    str(tmp_path / "moved.nii.gz")) == 2
    assert "origin differs by 5 mm" in _refused(capsys)
    seven = read_volume(labels, kind="labels")
    write_volume(seven.with_array(np.full(seven.shape, 7, np.uint8)), tmp_path / "seven.nii.gz")
    assert _segment(trained_phantom_run, image, seg, "--report", report, "--reference",
                    str(tmp_path / "seven.nii.gz")) == 2
    assert "holds label value(s) 7" in _refused(capsys)
    (tmp_path / "refs").mkdir()
    assert _segment(trained_phantom_run, phantom_dataset / "imagesTr", _folder(tmp_path / "out"), "--report", report,
                    "--reference", str(tmp_path / "refs")) == 2
    assert "one reference of case 'case_000' is needed" in _refused(capsys)
    assert not (tmp_path / "out").exists()


# -- evaluate, train and info on the new formats ------------------------------------------------------------------
def test_evaluate_scores_predictions_in_another_format_than_the_references(phantom_dataset, tmp_path, capsys):
    (tmp_path / "predictions").mkdir()
    for i in range(6):
        labels = read_volume(phantom_dataset / "labelsTr" / f"case_{i:03d}.nii.gz", kind="labels")
        write_volume(labels, tmp_path / "predictions" / f"case_{i:03d}{('.nrrd', '.mha', '.nii')[i % 3]}")
    assert main(["evaluate", "--predictions", str(tmp_path / "predictions"), "--data", str(phantom_dataset)]) == 0
    assert "6 cases: mean Dice 1.0000" in capsys.readouterr().out
    write_volume(labels, tmp_path / "predictions" / "case_005.mha")  # case_005 now twice, neither as .nii.gz
    assert main(["evaluate", "--predictions", str(tmp_path / "predictions"), "--data", str(phantom_dataset)]) == 2
    assert "2 in others (case_005.nii, case_005.mha); keep one of them." in _refused(capsys)


def test_train_and_evaluate_an_nnunet_dataset_of_nrrd_files(tmp_path, capsys):
    ending = ".nrrd"  # data/dataset.py reads .mha alike (test_formats.py)
    nifti = write_dataset(tmp_path / "nifti", cases=3)
    data = tmp_path / "data"
    for entry in json.loads((nifti / "dataset.json").read_text())["training"]:
        case = entry["image"].split("/")[-1][: -len(".nii.gz")]
        write_volume(read_volume(nifti / entry["image"]), data / "imagesTr" / f"{case}_0000{ending}")
        write_volume(read_volume(nifti / entry["label"], kind="labels"), data / "labelsTr" / f"{case}{ending}")
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": 3,
                                                   "labels": {"background": 0, "lesion": 1, "vessel": 2},
                                                   "file_ending": ending}))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--patch-size", "8", "32", "32", "--device", "cpu", "--quiet"]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(data), "--device", "cpu"]) == 0
    assert "3 cases: mean Dice" in capsys.readouterr().out


def test_info_on_a_dicom_folder_prints_its_series_and_no_patient_data(phantom_dataset, tmp_path, capsys):
    _series(tmp_path / "export" / "a", phantom_dataset, series_uid="2.25.1001", description="AX T1")
    _series(tmp_path / "export" / "b", phantom_dataset, series_uid="2.25.1002", description="COR T2")
    assert main(["info", str(tmp_path / "export")]) == 2
    assert "2.25.1002 'COR T2' 16 slices" in _refused(capsys)
    assert main(["info", str(tmp_path / "export"), "--series", "2.25.1002"]) == 0
    out = capsys.readouterr().out
    assert "series       2.25.1002 'COR T2', 16 slices (DICOM)" in out
    assert "shape        16 x 40 x 40 (Z, Y, X)" in out and not any(secret in out for secret in PATIENT)
    assert main(["info", str(tmp_path / "export" / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dicom_series"] == {"uid": "2.25.1001", "description": "AX T1",
                                                                   "slices": 16}

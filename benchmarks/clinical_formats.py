"""The clinic's formats end to end: hippocampus cases stored as NIfTI, DICOM series, NRRD and MetaImage with
permuted and flipped axes, segmented by ``napari-pgps segment`` and scored by ``napari-pgps evaluate``.

    python benchmarks/clinical_formats.py --model /tmp/base_run --cases 10
    python benchmarks/clinical_formats.py --model RUN --data DIR --cases 10 --device cuda --keep /tmp/formats

What is measured (issue 34's "judged by"): the first ``--cases`` validation cases of a trained hippocampus run
(its ``splits.json``; Task04_Hippocampus, 1 mm RAS NIfTI) are written, into a temporary folder (never into the
project), in five ways; each format is segmented with the command line (``segment``, a subprocess, the way a user
runs it) and its segmentations scored against the expert labels with ``evaluate --predictions``:

* ``nifti (as stored)``: the dataset's files, copied;
* ``nifti (turned)``: the voxels with their axes permuted and flipped (a different permutation and flips per case,
  seeded), the affine turned with them, so every voxel keeps its place in the world (a truthful affine);
* ``dicom``: the turned voxels as an MR DICOM series, one file per slice, axis-aligned (oblique-free) LPS
  geometry, the files named and numbered in a scrambled order; int16 pixels with a rescale slope (the intensity
  range over 32000: a rounding error of at most 0.06 of the 0..3800 MRI values) and an anonymous patient;
  segmented one series at a time (a folder of several series is refused), to NIfTI for scoring and once more to a
  DICOM SEG (``--output CASE.dcm``), checked to open with pydicom and to reference its series;
* ``nrrd`` and ``mha``: the turned voxels written by SimpleITK directly (float32, LPS origin and direction).

The expert labels of each format are put on that format's grid through world coordinates (each grid voxel's centre
mapped back to a voxel of the dataset's label map: the grids are permutations and flips of one another, so every
centre lands on a voxel exactly), written as NIfTI for the DICOM series and in their own format otherwise.

"On input grid" counts the segmentations whose size, origin and direction, as SimpleITK reads them (the DICOM
series through GDCM's own slice sorting), equal their input's. The patient name written into the series is looked
for in everything ``segment`` printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""World LPS (DICOM, ITK) to world RAS (NIfTI), and back."""
PATIENT_NAME = "Benchmark^Anonymous"
"""The patient name written into the benchmark's DICOM series: it must appear in no output of ``segment``."""
INT16_RANGE = 32000
"""The rescaled intensities' largest stored magnitude."""
FOLDERS = {"nifti (as stored)": "nifti", "nifti (turned)": "nifti_turned", "dicom": "dicom", "nrrd": "nrrd",
           "mha": "mha"}
"""Each format, and its folder in the working folder."""
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-6


def validation_cases(run: Path, count: int) -> list[str]:
    """The first ``count`` validation case names of a run folder."""
    split = json.loads((run / "splits.json").read_text())
    return list(split["validation"])[:count]


def turn(array_xyz: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (file order i, j, k) with their axes permuted and flipped at random, and the affine that keeps
    each voxel where it was in the world."""
    permutation = rng.permutation(3)
    flips = rng.integers(0, 2, 3).astype(bool)
    turned = np.transpose(array_xyz, permutation)
    turned = np.flip(turned, axis=tuple(np.flatnonzero(flips))) if flips.any() else turned
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1.0
    for new_axis, old_axis in enumerate(permutation):
        if flips[new_axis]:
            new_to_old[old_axis, new_axis] = -1.0
            new_to_old[old_axis, 3] = turned.shape[new_axis] - 1
        else:
            new_to_old[old_axis, new_axis] = 1.0
    return np.ascontiguousarray(turned), affine @ new_to_old


def labels_on_grid(labels_xyz: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray,
                   grid_shape_xyz: tuple[int, ...]) -> np.ndarray:
    """The label map (i, j, k) on another grid of the same voxel centres: each grid voxel's centre mapped through
    world space to the label map's voxel it lies on (which must be exact)."""
    grid_to_labels = np.linalg.inv(affine) @ grid_affine
    rounded = np.round(grid_to_labels)
    if np.abs(grid_to_labels - rounded).max() > 1e-3:
        raise ValueError("the grids do not share their voxel centres")
    index = np.indices(grid_shape_xyz).reshape(3, -1)
    source = (rounded[:3, :3] @ index + rounded[:3, 3:4]).astype(int)
    return labels_xyz[tuple(source)].reshape(grid_shape_xyz)


def itk_image(array_xyz: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of voxels (i, j, k) placed by a RAS affine (ITK's LPS origin, spacing and direction)."""
    import SimpleITK as sitk

    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection((lps[:3, :3] / spacing).reshape(-1).tolist())
    return image


def write_dicom_series(folder: Path, array_xyz: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> None:
    """The voxels (i, j, k) as an MR DICOM series: column ``i``, row ``j``, slice ``k``; LPS geometry from the RAS
    affine; files named and numbered in a scrambled order; int16 with a rescale slope (see the module docstring)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    slope = max(float(np.abs(array_xyz).max()) / INT16_RANGE, 1e-6)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    slices = array_xyz.shape[2]
    names = rng.permutation(slices)
    for k in range(slices):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, "BENCH-0001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", "hippocampus T1", 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.InstanceNumber = int(names[k]) + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (between rows), column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array_xyz.shape[1], array_xyz.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        pixels = np.round(array_xyz[:, :, k].T / float(f"{slope:.10g}")).astype(np.int16)  # (rows, columns)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"IMG{int(names[k]):05d}", enforce_file_format=True)


def write_formats(data: Path, cases: list[str], root: Path, seed: int) -> None:
    """Every case in every format: ``root/FORMAT/imagesTr``, ``labelsTr`` and a Decathlon ``dataset.json``."""
    import SimpleITK as sitk

    meta = json.loads((data / "dataset.json").read_text())
    folders = {name: root / folder for name, folder in FOLDERS.items()}
    entries = {name: [] for name in FOLDERS}
    for index, case in enumerate(cases):
        rng = np.random.default_rng(seed + index)
        image, labels = nib.load(str(data / "imagesTr" / f"{case}.nii.gz")), nib.load(str(data / "labelsTr" /
                                                                                       f"{case}.nii.gz"))
        voxels, label_voxels = np.asarray(image.dataobj, dtype=np.float32), np.asarray(labels.dataobj).astype(np.uint8)
        turned, turned_affine = turn(voxels, image.affine, rng)
        stored = folders["nifti (as stored)"]
        for part, source in (("imagesTr", image), ("labelsTr", labels)):
            (stored / part).mkdir(parents=True, exist_ok=True)
            shutil.copy(source.get_filename(), stored / part / f"{case}.nii.gz")
        entries["nifti (as stored)"].append((f"{case}.nii.gz", f"{case}.nii.gz"))

        nifti = folders["nifti (turned)"]
        for part, array in (("imagesTr", turned), ("labelsTr", labels_on_grid(label_voxels, labels.affine,
                                                                             turned_affine, turned.shape))):
            (nifti / part).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, turned_affine), str(nifti / part / f"{case}.nii.gz"))
        entries["nifti (turned)"].append((f"{case}.nii.gz", f"{case}.nii.gz"))

        dicom = folders["dicom"]
        write_dicom_series(dicom / "imagesTr" / case, turned, turned_affine, rng)
        size, grid_affine = dicom_grid(dicom / "imagesTr" / case)
        (dicom / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(labels_on_grid(label_voxels, labels.affine, grid_affine, size), grid_affine),
                 str(dicom / "labelsTr" / f"{case}.nii.gz"))
        entries["dicom"].append((case, f"{case}.nii.gz"))

        for name in ("nrrd", "mha"):
            folder = folders[name]
            for part in ("imagesTr", "labelsTr"):
                (folder / part).mkdir(parents=True, exist_ok=True)
            on_grid = labels_on_grid(label_voxels, labels.affine, turned_affine, turned.shape)
            sitk.WriteImage(itk_image(turned, turned_affine), str(folder / "imagesTr" / f"{case}.{name}"), True)
            sitk.WriteImage(itk_image(on_grid, turned_affine), str(folder / "labelsTr" / f"{case}.{name}"), True)
            entries[name].append((f"{case}.{name}", f"{case}.{name}"))
    for name, folder in folders.items():
        training = [{"image": f"./imagesTr/{image}", "label": f"./labelsTr/{label}"} for image, label in entries[name]]
        (folder / "dataset.json").write_text(json.dumps({"labels": meta["labels"], "modality": meta["modality"],
                                                         "training": training}, indent=1))


def dicom_grid(folder: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """The size (i, j, k) and RAS affine of a DICOM series as GDCM sorts and SimpleITK places it."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return image.GetSize(), itk_affine(image)


def itk_affine(image) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def itk_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Size, origin and direction of a file or DICOM series folder, as SimpleITK reads it."""
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        reader.SetMetaDataDictionaryArrayUpdate(False)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return image.GetSize(), np.array(image.GetOrigin()), np.array(image.GetDirection())


def same_grid(a: Path, b: Path) -> bool:
    (size_a, origin_a, direction_a), (size_b, origin_b, direction_b) = itk_grid(a), itk_grid(b)
    return (size_a == size_b and np.abs(origin_a - origin_b).max() <= ORIGIN_TOLERANCE_MM
            and np.abs(direction_a - direction_b).max() <= DIRECTION_TOLERANCE)


def napari_pgps(*args: str) -> str:
    """Run the command line in a subprocess; its output (stdout and stderr), or an error with it."""
    done = subprocess.run([sys.executable, "-m", "napari_pgps", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"napari-pgps {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def check_seg(path: Path, series_folder: Path) -> bool:
    """The DICOM SEG opens with pydicom, is a SEG, and references the series of ``series_folder``."""
    import pydicom

    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(next(series_folder.iterdir()), stop_before_pixels=True)
    return seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def run_format(name: str, folder: Path, model: Path, device: str, printed: list[str]) -> dict:
    """Segment every image of one format's folder, score the segmentations, and check their grids."""
    predictions = folder / "predictions"
    started = time.perf_counter()
    seg_ok = []
    if name == "dicom":
        for series in sorted((folder / "imagesTr").iterdir()):
            printed.append(napari_pgps("segment", "--model", str(model), "--input", str(series), "--output",
                                       str(predictions / f"{series.name}.nii.gz"), "--device", device))
            seg = folder / "seg" / f"{series.name}.dcm"
            printed.append(napari_pgps("segment", "--model", str(model), "--input", str(series), "--output", str(seg),
                                       "--device", device))
            seg_ok.append(check_seg(seg, series))
    else:
        printed.append(napari_pgps("segment", "--model", str(model), "--input", str(folder / "imagesTr"), "--output",
                                   f"{predictions}/", "--device", device))
    seconds = time.perf_counter() - started
    printed.append(napari_pgps("evaluate", "--predictions", str(predictions), "--data", str(folder), "--json",
                               str(folder / "scores.json")))
    scores = json.loads((folder / "scores.json").read_text())
    inputs = sorted((folder / "imagesTr").iterdir())
    on_grid = [same_grid(predictions / (p.name if name != "dicom" else f"{p.name}.nii.gz"), p) for p in inputs]
    return {"format": name, "cases": len(scores["cases"]), "dice": scores["means"]["dice"],
            "hd95": scores["means"]["hd95"], "dice_per_label": scores["dice_per_label"], "on_grid": sum(on_grid),
            "seconds": seconds, "seg_ok": seg_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/base_run"), help="a trained hippocampus run folder")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "Task04_Hippocampus")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=34)
    parser.add_argument("--keep", type=Path, help="write the formats here (a new folder outside the project) and keep "
                        "them; default: a temporary folder, removed")
    args = parser.parse_args()
    cases = validation_cases(args.model, args.cases)
    with tempfile.TemporaryDirectory(prefix="clinical-formats-") as temporary:
        root = args.keep or Path(temporary)
        if args.keep and args.keep.exists():
            parser.error(f"{args.keep} exists; give a new folder")
        write_formats(args.data, cases, root, args.seed)
        printed: list[str] = []
        rows = [run_format(name, root / folder, args.model, args.device, printed) for name, folder in FOLDERS.items()]
    leaked = any(PATIENT_NAME.split("^")[0] in text or "BENCH-0001" in text for text in printed)
    baseline = next(row["dice"] for row in rows if row["format"] == "nifti (turned)")
    print(f"{len(cases)} validation cases of {args.model} ({', '.join(cases)}); data {args.data}")
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, device {args.device}")
    print()
    print("| format | cases | mean Dice | vs NIfTI (turned), points | mean HD95 (mm) | on input grid | segment wall s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['format']} | {row['cases']} | {row['dice']:.4f} | {100 * (row['dice'] - baseline):+.2f} | "
              f"{row['hd95']:.3f} | {row['on_grid']}/{row['cases']} | {row['seconds']:.1f} |")
    seg = next(row["seg_ok"] for row in rows if row["format"] == "dicom")
    print()
    print(f"DICOM SEG: {sum(seg)}/{len(seg)} open with pydicom and reference their series; patient data in "
          f"segment's output: {'FOUND' if leaked else 'none'}")
    print("segment wall s: all of a format's `napari-pgps segment` calls, each a new process (model loading "
          "included): one call per format, two per DICOM series (to NIfTI, and to a DICOM SEG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``napari-pgps segment``: segment a volume, a DICOM series or a folder of volumes with a trained model (or an
ensemble).

An input is a volume file (NIfTI, TIFF, NRRD/NHDR, MetaImage MHA/MHD), a DICOM series (its folder, or any one of
its files; ``--series UID`` picks one from a folder of several), or a folder of volume files (nnU-Net's
``CASE_0000``, ``CASE_0001``, ... channel files grouped by case). Each segmentation is written on its input's own
grid in the format its ending names (``--output`` for one input, ``--output-format`` for a folder): NIfTI, NRRD,
MetaImage, TIFF, or for a DICOM series a DICOM SEG (``.dcm``) that references it. Beside it, when asked: its
uncertainty, its class probabilities; and for all cases one report table (volumes, and Dice and HD95 against
``--reference``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import DEVICES, RUNTIMES
from ..data.dataset import nnunet_image_name
from ..data.dicom import is_dicom_file, is_dicom_folder
from ..data.probabilities import probabilities_paths, segmentation_name
from ..data.volume import WRITE_SUFFIXES, case_name, is_volume_file
from ..errors import InputError
from ..files import check_outputs, check_writable

OVERWRITE_HELP = ("replace outputs that exist (without it they are refused before any work); an input is never "
                  "overwritten")

RUNTIME_HELP = ("what runs the network in the sliding window: torch (default) or onnx, ONNX Runtime on the CPU with "
                "the ONNX network inside a package written by export --onnx")

_FIRST_CHANNEL = nnunet_image_name("", 0, ending="")
"""How nnU-Net ends the name of a case's first channel file (``CASE_0000``), before the file ending."""
DICOM_SEG = ".dcm"
"""The output ending of a DICOM SEG, written for a DICOM series input only."""
OUTPUT_ENDINGS = WRITE_SUFFIXES + (DICOM_SEG,)
OUTPUT_FORMATS = tuple(ending[1:] for ending in OUTPUT_ENDINGS)
"""The ``--output-format`` choices: the output endings without their dot."""
WRITTEN_AS = {".nhdr": ".nrrd", ".mhd": ".mha"}
"""The ending a folder's output takes for an input read but not written in its format (a header and data pair)."""
DICOM_OUTPUT = ".nii.gz"
"""The ending of a DICOM series' segmentation in an output folder, unless ``--output-format`` names another."""


def add_segment(commands) -> None:
    p = commands.add_parser("segment", help="segment a volume, a DICOM series or a folder of volumes",
                            description="Segment volumes (NIfTI, TIFF, NRRD, MetaImage) or a DICOM series with a "
                            "trained model (several: an ensemble, their probabilities averaged); writes each "
                            "segmentation on its input's grid and prints each label's volume.")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--input", required=True, metavar="FILE_OR_DIR",
                   help="a volume file (.nii.gz, .nii, .tif, .tiff, .nrrd, .nhdr, .mha, .mhd), a DICOM series (its "
                        "folder or one of its files) or a folder of volume files")
    p.add_argument("--series", metavar="UID",
                   help="the SeriesInstanceUID of the DICOM series to segment, for an input folder of several series "
                        "(segment lists them when it is left out)")
    p.add_argument("--output", required=True, metavar="FILE_OR_DIR",
                   help="the segmentation file, in the format of its ending: .nii.gz, .nii, .nrrd, .mha, .tif, .tiff, "
                        "or for a DICOM series .dcm, a DICOM SEG that references it; for a folder of inputs a folder "
                        "(one that exists, or a name ending in /)")
    p.add_argument("--output-format", type=lambda text: text.lower().lstrip("."), choices=OUTPUT_FORMATS,
                   metavar="ENDING", help=f"the ending of the segmentations written into an output folder: "
                   f"{', '.join(OUTPUT_FORMATS)} (dcm: a DICOM SEG, for a DICOM series); default: each input's own "
                   f"(.nhdr as .nrrd, .mhd as .mha, a DICOM series as {DICOM_OUTPUT})")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="sliding-window size (default: the training patch)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation: every flip of the axes the model was trained "
                   "to flip (8 for nnunet/mirror augmentation; slower); skipped, with a note, for a model "
                   "trained without mirroring")
    p.add_argument("--no-postprocessing", action="store_true", help="leave out the post-processing chosen for the model")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write each segmentation's uncertainty beside it, NAME_uncertainty.nii.gz: the entropy of "
                        "the label probabilities per voxel (float32, 0 certain .. 1 uniform over the labels), same affine "
                        "(the segmentation's own ending; .nii.gz beside a DICOM SEG)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write each segmentation's class probabilities beside it, on the input's grid: "
                        "NAME_probabilities.npz (compressed, as nnU-Net's --save_probabilities: the softmax (K, Z, Y, X) "
                        "float32 with the label values and names, spacing and affine) and NAME_probabilities.nii.gz "
                        "(one volume per class)")
    p.add_argument("--report", metavar="FILE.csv",
                   help="write one table for all cases, a row per case and label: voxels, volume in mL and, with "
                        "--reference, Dice and HD95 (mm)")
    p.add_argument("--reference", metavar="FILE_OR_DIR",
                   help="the expert label map of the input, on its grid, scored in the --report table; for a folder "
                        "of inputs a folder of them named as the outputs (CASE.nii.gz, or CASE with another volume "
                        "ending)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=RUNTIME_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(run=_segment)


@dataclass(frozen=True)
class SegmentJob:
    """One image to segment, and where its segmentation goes."""

    inputs: tuple[Path, ...]
    """Its channel files (one file, or nnU-Net's ``CASE_0000``, ``CASE_0001``, ...); a DICOM series: its folder or
    one of its files."""
    output: Path
    reference: Optional[Path] = None
    """Its expert label map (``--reference``), or ``None``."""

    @property
    def case(self) -> str:
        """The case's name in the report: the output's name without its ending."""
        return segmentation_name(self.output)


def _segment(args: argparse.Namespace) -> int:
    """Segment every input, one image in memory at a time, after checking all of them and all outputs.

    Nothing is written before every input is known to be good: the outputs are planned and checked first
    (:func:`segment_plan`), then every input (and its reference) is read once and dropped (the reader refuses a
    damaged file, NaN or infinite values, channels of differing geometry, a DICOM folder of several series or a
    series with missing slices; :func:`check_segmentable` a single slice or another number of channels than the
    model takes; :func:`check_reference` a reference on another grid), and only then is each read again, segmented
    and written. A header-only check would be cheaper but would miss bad values and damaged data; reading twice
    costs little beside segmenting, and memory no longer grows with the folder.
    """
    from ..data.volume import read_image, read_volume
    from ..engine import load_model, segment_volume
    from ..engine.inference import check_segmentable
    from ..models import check_inference_patch
    from ..tasks.report import check_reference, volume_report, write_volume_report

    models = [load_model(path, args.device, runtime=args.runtime) for path in args.model]
    model = models[0]
    if args.patch_size:
        for each in models:
            check_inference_patch(each.config.model, args.patch_size)
    labels, ignore_label = model.config.labels, model.config.ignore_label
    plan = segment_plan(args, model.config.model.in_channels)
    for job in plan:  # read and check every input before writing anything
        image = read_image(job.inputs, series=args.series)
        check_segmentable(models, image)
        if job.reference is not None:
            check_reference(job.case, image, read_volume(job.reference, kind="labels"), labels, ignore_label)
    rows = []
    for job in plan:
        image = read_image(job.inputs, series=args.series)
        result = segment_volume(models, image, patch_size=args.patch_size, mirror=args.tta,
                                keep_probabilities=args.uncertainty or args.save_probabilities,
                                postprocess=not args.no_postprocessing)
        notes = ([str(image.dicom), *image.notes] if image.dicom is not None else []) + result.notes
        notes += _write_results(args, job, image, result, labels)
        if args.report:
            reference = read_volume(job.reference, kind="labels") if job.reference is not None else None
            rows += volume_report([(job.case, result.labels, reference)], labels, ignore_label=ignore_label)
        volumes = ", ".join(f"{name} {v['ml']:.3f} mL ({v['voxels']} voxels)" for name, v in result.volumes.items())
        print(f"{job.output}: {volumes}{''.join(f'; {note}' for note in notes)}", flush=True)
    if args.report:
        written = write_volume_report(rows, args.report)
        print(f"{written}: volume report of {len(plan)} case(s)", flush=True)
    return 0


def _write_results(args: argparse.Namespace, job: SegmentJob, image, result, labels: dict[int, str]) -> list[str]:
    """Write a segmentation (a DICOM SEG for a ``.dcm`` output, else a volume file) and, as asked, its uncertainty
    and probabilities; returns a note on each file written beside it."""
    from ..data.dicom_seg import write_dicom_seg
    from ..data.probabilities import write_probabilities
    from ..data.volume import write_volume
    from ..engine.metrics import entropy_map

    if job.output.name.lower().endswith(DICOM_SEG):
        write_dicom_seg(result.labels.array, image.dicom.files, labels, job.output)
    else:
        write_volume(result.labels, job.output)
    notes = []
    if args.uncertainty:
        uncertainty = result.labels.with_array(entropy_map(result.probabilities))
        written = write_volume(uncertainty, uncertainty_path(job.output))
        notes.append(f"uncertainty in {written.name}")
    if args.save_probabilities:
        archive, picture = write_probabilities(result.probabilities, result.labels, labels, job.output)
        notes.append(f"probabilities in {archive.name} and {picture.name}")
    return notes


def segment_plan(args: argparse.Namespace, channels: int) -> list[SegmentJob]:
    """Each image to segment (its channel files, or a DICOM series), the file its segmentation goes to and its
    reference, checked before any work.

    ``--output`` is one file for one input (a DICOM series is one input), else a folder (one that exists, or a name
    ending in ``/``). A file output's ending names its format (:data:`OUTPUT_ENDINGS`; ``.dcm``, a DICOM SEG, for a
    DICOM series only); a folder's outputs take ``--output-format``'s ending, or each input's own. The outputs (with
    ``--uncertainty`` and ``--save-probabilities`` the files beside them, and the ``--report``) are refused when their
    folder cannot be written, when one would replace an input (the output folder being the input folder included),
    when two would be one file, or when one exists and ``--overwrite`` is not given.

    Raises:
        InputError: one line naming the input, output or option and what to do.
    """
    source, target = Path(args.input), Path(args.output)
    inputs = segment_inputs(source, channels)
    dicom = len(inputs) == 1 and is_dicom_input(inputs[0][0])
    if args.series is not None and not dicom:
        raise InputError(f"{source}: not a DICOM series; --series chooses one series of a DICOM folder.")
    many = len(inputs) > 1 or (source.is_dir() and not dicom) or target.is_dir() or args.output.endswith(("/", "\\"))
    check_writable(target, folder=many)
    if many and target.is_dir() and source.is_dir() and os.path.samefile(source, target):
        raise InputError(f"{target}: is the input folder; write the segmentations to another folder, an input is "
                         "never overwritten.")
    ending = _chosen_ending(args, target, many, dicom)
    jobs = [SegmentJob(tuple(paths), target / _output_name(paths[0], ending, dicom) if many else target)
            for paths in inputs]
    jobs = _with_references(args, jobs, many)
    if args.report:
        check_writable(args.report)
    outputs = [job.output for job in jobs] + ([args.report] if args.report else [])
    if args.uncertainty:
        outputs += [uncertainty_path(job.output) for job in jobs]
    if args.save_probabilities:
        outputs += [path for job in jobs for path in probabilities_paths(job.output)]
    series_folders = [source if source.is_dir() else source.parent] if dicom else []  # a file reads its siblings
    read = [source, *series_folders, *(path for job in jobs for path in job.inputs), *args.model,
            *(job.reference for job in jobs if job.reference is not None)]
    check_outputs(outputs, read, overwrite=args.overwrite)
    return jobs


def is_dicom_input(path: Path) -> bool:
    """Whether an input (one of :func:`segment_inputs`) is read as a DICOM series: a folder, or a file not named as
    a volume file that starts as a DICOM file does."""
    return path.is_dir() or (not is_volume_file(path) and is_dicom_file(path))


def _chosen_ending(args: argparse.Namespace, target: Path, many: bool, dicom: bool) -> Optional[str]:
    """The outputs' ending: a file output's own, or ``--output-format``'s; ``None`` for each input's own.

    Raises:
        InputError: a file output of no ending written, an ``--output-format`` that contradicts it, or a DICOM SEG
            asked for an input that is not a DICOM series.
    """
    output_format = args.output_format
    chosen = f".{output_format}" if output_format else None
    what = "--output-format dcm"
    if not many:
        own = next((ending for ending in OUTPUT_ENDINGS if target.name.lower().endswith(ending)), None)
        if own is None:
            raise InputError(f"{target}: choose an output ending in {', '.join(WRITE_SUFFIXES)}"
                             f"{', or .dcm for a DICOM SEG' if dicom else ''}.")
        if chosen is not None and chosen != own:
            raise InputError(f"--output-format {output_format}: the output {target} ends in {own}; a file is written "
                             "in the format of its ending (--output-format names the ending of a folder's outputs).")
        chosen, what = own, str(target)
    if chosen == DICOM_SEG and not dicom:
        raise InputError(f"{what}: a DICOM SEG references the DICOM series it segments, and {args.input} is not a "
                         f"DICOM series; choose {', '.join(WRITE_SUFFIXES)}.")
    return chosen


def _with_references(args: argparse.Namespace, jobs: list[SegmentJob], many: bool) -> list[SegmentJob]:
    """The jobs with their ``--reference``: the one file for one input, else the file of the reference folder named
    as each output (any volume ending).

    Raises:
        InputError: ``--reference`` without ``--report``, a missing reference, or a folder of inputs with a reference
            that is not a folder holding one file per case.
    """
    from ..tasks.evaluation import volume_files_of

    if args.reference is None:
        return jobs
    if not args.report:
        raise InputError("--reference: the reference is scored in the --report table; add --report FILE.csv.")
    reference = Path(args.reference)
    if not reference.exists():
        raise InputError(f"{reference}: reference not found.")
    if not many:
        return [SegmentJob(job.inputs, job.output, reference) for job in jobs]
    if not reference.is_dir():
        raise InputError(f"{reference}: a folder of inputs is scored against a folder of references (CASE.nii.gz, "
                         "... named as the outputs); give a folder.")
    scored = []
    for job in jobs:
        found = volume_files_of(reference, job.case)
        if len(found) != 1:
            held = f"holds {', '.join(p.name for p in found)}" if found else "holds none"
            raise InputError(f"{reference}: one reference of case '{job.case}' is needed (CASE.nii.gz, or CASE with "
                             f"another volume ending), it {held}; give one per input, named as its output.")
        scored.append(SegmentJob(job.inputs, job.output, found[0]))
    return scored


def uncertainty_path(output: Path) -> Path:
    """``CASE.nii.gz`` -> ``CASE_uncertainty.nii.gz`` beside it (the output's own ending is kept; beside a DICOM SEG
    ``CASE.dcm``, ``CASE_uncertainty.nii.gz``)."""
    name = segmentation_name(output)
    ending = output.name[len(name):] if output.name.lower().endswith(WRITE_SUFFIXES) else DICOM_OUTPUT
    return output.with_name(f"{name}_uncertainty{ending}")


def segment_inputs(source: Path, channels: int) -> list[list[Path]]:
    """The images to segment, each as its channel files: a file (4D for several channels; or a DICOM file, its
    series), a folder of such files, a folder of nnU-Net style ``CASE_0000``, ``CASE_0001``, ... files (one per
    channel), or a folder of no volume file that holds DICOM files: one DICOM series (the folder itself)."""
    if not source.exists():
        raise InputError(f"{source}: input not found.")
    if not source.is_dir():
        return [[source]]
    files = sorted(p for p in source.iterdir() if is_volume_file(p))
    if not files:
        if is_dicom_folder(source):
            return [[source]]
        raise InputError(f"{source}: no volume file (NIfTI, TIFF, NRRD, MetaImage) or DICOM series in this folder.")
    firsts = [p for p in files if case_name(p).endswith(_FIRST_CHANNEL)]
    if channels == 1 or not firsts:
        return [[p] for p in files]
    groups = []
    for first in firsts:
        stem, suffix = case_name(first)[:-len(_FIRST_CHANNEL)], first.name[len(case_name(first)):]
        paths = [first.with_name(nnunet_image_name(stem, c, suffix)) for c in range(channels)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{source}: the model takes {channels} channels; case '{stem}' lacks {', '.join(missing)}.")
        groups.append(paths)
    return groups


def _output_name(path: Path, ending: Optional[str], dicom: bool) -> str:
    """The name of an input's segmentation in the output folder: nnU-Net names inputs CASE_0000.nii.gz and outputs
    CASE.nii.gz; other names are kept; a DICOM series is named after its folder. The ending is ``ending``, else the
    input's own (:data:`WRITTEN_AS` for one not written, :data:`DICOM_OUTPUT` for a DICOM series)."""
    if dicom:
        folder = path if path.is_dir() else path.parent
        return folder.resolve().name + (ending or DICOM_OUTPUT)
    name = case_name(path)
    suffix = path.name[len(name):]
    if name.endswith(_FIRST_CHANNEL):
        name = name[:-len(_FIRST_CHANNEL)]
    return name + (ending or WRITTEN_AS.get(suffix.lower(), suffix))

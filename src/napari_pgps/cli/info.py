"""``napari-pgps info``: what napari-pgps reads from a volume file or a DICOM series."""

from __future__ import annotations

import argparse
import json

INFO_HELP = """Print what napari-pgps reads from a volume file or a DICOM series: what
training, segment and the napari reader will see.

  shape        the voxels (Z, Y, X)
  channels     1, or C of a 4D NIfTI or a TIFF hyperstack
  spacing_mm   the voxel size (Z, Y, X) in mm (TIFF: from its resolution unit or ImageJ unit)
  orientation  where the file's voxel axes point, in the file's order (i, j, k) = (X, Y, Z):
               RAS is i to the right, j anterior, k superior (nibabel's aff2axcodes)
  affine       voxel (i, j, k, 1) to world (x, y, z, 1) in mm, RAS+
  dtype        the voxel type stored in the file
  values       the value range; and the label values of a map of a few whole numbers
  notes        what reading assumed (e.g. spacing unknown, 1 mm assumed), or what will be refused
  series       for a DICOM series: its UID, description and slice count (no patient or
               study data is printed)

The --json keys shape, channels, spacing_mm and orientation are stable. A file that cannot
be read ends with one line saying why, exit status 2.
"""


def add_info(commands) -> None:
    p = commands.add_parser("info", help="print what napari-pgps reads from a volume file (shape, spacing, orientation)",
                            description=INFO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a volume: NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff), NRRD (.nrrd, "
                   ".nhdr), MetaImage (.mha, .mhd), or a DICOM series (its folder or one of its files)")
    p.add_argument("--series", metavar="UID", help="the SeriesInstanceUID of the series to describe, for a folder "
                   "holding several DICOM series (info lists them when it is left out)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(run=_info)


def _info(args: argparse.Namespace) -> int:
    from ..data.info import describe_file, info_text

    description = describe_file(args.file, series=args.series)
    print(json.dumps(description) if args.json else info_text(description))
    return 0

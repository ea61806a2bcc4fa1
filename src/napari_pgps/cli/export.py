"""``napari-pgps export``: write a trained model as one .zip file to share (a model package)."""

from __future__ import annotations

import argparse

from ..engine.file_names import CONFIG_FILE, MANIFEST, MODEL_CARD, ONNX, SPLITS_FILE
from ..files import check_outputs, check_writable

EXPORT_HELP = f"""Write a trained model as one .zip file (a model package) to share or archive.

It holds the weights (a plain file of tensors, read with torch.load(weights_only=True),
which refuses any pickled object but tensors: nothing in the file is run), the run's resolved configuration
({CONFIG_FILE}: network plan, patch, spacing, orientation, channels, labels,
normalisation), the split ({SPLITS_FILE}), the post-processing choice when the run
has one, a model card ({MODEL_CARD}) and a manifest ({MANIFEST}).
segment, evaluate, the Segment widget and train --init-from take the .zip
wherever they take a run folder.

  napari-pgps export --model runs/hippocampus --out hippocampus.zip

--onnx also puts the network into the package as {ONNX} (opset 17, input "image" of
preprocessed windows of --patch-size, default the training patch, with a dynamic batch axis;
output "logits"; a hypernetwork is baked at that window), after checking that ONNX Runtime's
logits are within 1e-4 of torch's on a window of one of the model's cases; the manifest lists
its size and SHA-256 like every member's. segment and evaluate --runtime onnx run it on the
CPU from the .zip; other tools can take it out with unzip MODEL.zip {ONNX}.

  napari-pgps export --model runs/hippocampus --out hippocampus.zip --onnx
"""


def add_export(commands) -> None:
    p = commands.add_parser("export", help="write a trained model as one .zip file to share (a model package)",
                            description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run folder (its final, else last checkpoint), checkpoint or model package")
    p.add_argument("--out", required=True, metavar="MODEL.zip", help="the package to write")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace MODEL.zip if it exists (--force is the same)")
    p.add_argument("--onnx", action="store_true",
                   help=f"also put the network into MODEL.zip as an ONNX graph, {ONNX} (dynamic batch, windows "
                        "of the patch size; checked against torch), for segment and evaluate --runtime onnx")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="with --onnx: the ONNX network's window; a hypernetwork is baked at it (default: the "
                        "training patch)")
    p.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from ..engine.package import read_model_package
    from ..tasks.export import export_model

    check_writable(args.out)
    check_outputs([args.out], [args.model], overwrite=args.overwrite)
    path = export_model(args.model, args.out, overwrite=args.overwrite, onnx=args.onnx, patch_size=args.patch_size)
    manifest = read_model_package(path)["package"]
    members = ", ".join(manifest["members"])
    print(f"{path}: {manifest['architecture']} ({manifest['parameters']:,} parameters, kind {manifest['kind']}), "
          f"{path.stat().st_size / 1e6:.1f} MB: {members}", flush=True)
    if "onnx" in manifest:
        from ..engine.onnx_runtime import describe

        print(f"{path} ({manifest['onnx']['member']}): {describe(manifest['onnx'])}", flush=True)
    return 0

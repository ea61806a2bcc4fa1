"""``napari-pgps demo``: napari with sample data, the widgets and a quick schedule; or the same without a window."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import DEVICES
from ..files import check_writable


def add_demo(commands) -> None:
    p = commands.add_parser("demo", help="open napari with sample data, the widgets and a quick schedule",
                            description="The demo: napari with a generated phantom, the Curriculum, Train and Segment widgets "
                            "docked and a quick PGPS schedule ready (press Start in the Train widget). With --headless: the "
                            "same training without a window, writing figures, and a segmentation of an unseen phantom, "
                            "saying plainly whether the model segments it (and, when not, why and what to do).")
    p.add_argument("--headless", action="store_true", help="run without a window and write the figures to --out")
    p.add_argument("--out", metavar="DIR", default="demo-output", help="folder for the demo's data, run and results")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    if not args.headless and not has_display():
        print(f"no display found: running the headless demo instead (results in {args.out}/)", flush=True)
        args.headless = True
    if args.headless:
        from ..demo import run_headless_demo

        run_headless_demo(check_writable(args.out, folder=True), device=args.device)
        return 0
    import napari

    from ..demo import open_demo_viewer

    open_demo_viewer(device=args.device)
    napari.run()
    return 0


def has_display() -> bool:
    """False on Linux without an X or Wayland display (a server, CI); napari cannot open a window there."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True

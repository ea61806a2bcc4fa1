"""``python -m napari_pgps.cli``: the ``napari-pgps`` command."""

import sys

from . import main

sys.exit(main())

"""GUI tests drive a real napari viewer; they need an X server (pytest-xvfb starts Xvfb when it is installed)."""

import os

import pytest


@pytest.fixture(autouse=True)
def _needs_a_display():
    # Checked at test time: pytest-xvfb sets DISPLAY after this conftest is imported.
    if not os.environ.get("DISPLAY"):
        pytest.skip("no display: install xvfb (scripts/test.sh does) to run the napari GUI tests")

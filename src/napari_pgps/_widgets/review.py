"""The napari side of reviewing a segmentation: whether two labels layers can be compared voxel by voxel, and the
colours of the disagreement layer. The review itself is the engine's (:mod:`napari_pgps.engine.review`)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.geometry import AFFINE_TOLERANCE, reverse_axes, spacing_of
from ..engine.review import FALSE_NEGATIVE, FALSE_POSITIVE
from .layers import world_matrix

DISAGREEMENT_COLORS = {None: "transparent", 0: "transparent", FALSE_POSITIVE: "red", FALSE_NEGATIVE: "dodgerblue"}


def placement_difference(result_layer, reference_layer) -> Optional[str]:
    """Why ``reference_layer`` cannot be compared with ``result_layer`` voxel by voxel, or ``None`` when it can
    (same 3D shape, same placement in the world)."""
    shape, other = tuple(np.shape(result_layer.data)), tuple(np.shape(reference_layer.data))
    if other != shape:
        return (f"reference '{reference_layer.name}' has shape {other}, result '{result_layer.name}' {shape}; "
                "compare layers of the same voxels. Nothing was compared.")
    if len(shape) != 3:
        return f"'{result_layer.name}' is {len(shape)}D; a 3D labels layer is compared. Nothing was compared."
    mine, theirs = world_matrix(result_layer), world_matrix(reference_layer)  # (Z, Y, X) -> world (z, y, x)
    if np.allclose(mine, theirs, atol=AFFINE_TOLERANCE):
        return None
    found = []
    my_spacing, their_spacing = spacing_of(reverse_axes(mine)), spacing_of(reverse_axes(theirs))
    if not np.allclose(my_spacing, their_spacing, atol=AFFINE_TOLERANCE):
        found.append("spacing " + " x ".join(f"{s:g}" for s in their_spacing) + " mm against "
                     + " x ".join(f"{s:g}" for s in my_spacing) + " mm (Z, Y, X)")
    if not np.allclose(mine[:3, 3], theirs[:3, 3], atol=AFFINE_TOLERANCE):
        found.append("origin (" + ", ".join(f"{v:g}" for v in theirs[:3, 3]) + ") against ("
                     + ", ".join(f"{v:g}" for v in mine[:3, 3]) + ")")
    directions = [m[:3, :3] / np.maximum(np.linalg.norm(m[:3, :3], axis=0), 1e-12) for m in (mine, theirs)]
    if not np.allclose(*directions, atol=AFFINE_TOLERANCE):
        found.append("orientation")
    return (f"reference '{reference_layer.name}' is placed differently from result '{result_layer.name}' "
            f"({'; '.join(found) or 'placement'}); compare layers on the same grid. Nothing was compared.")

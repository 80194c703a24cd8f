"""Mask surfaces and the distances between them (numpy / scipy): the one implementation
behind HD95 and Hausdorff (`missu_keras.metrics`), lesion-wise HD95
(`missu_keras.lesionwise`) and the normalised surface Dice (`normalized_surface_dice`).

The surface of a mask is its voxels with a face neighbour (6-connectivity) outside it,
voxels on the volume border counting as surface; distances are in mm, from the voxel
spacing. Surfaces are counted in voxels, not in the surface elements ("surfels", areas)
of DeepMind's ``surface-distance`` package that Nikolov et al. 2021 define the surface
Dice with; ``missu_keras.metrics.CONVENTION`` states this approximation.

Example, a 4-voxel cube against the same cube shifted by one voxel (1 mm):

>>> import numpy as np
>>> gt = np.zeros((8, 8, 8), bool); gt[2:6, 2:6, 2:6] = True
>>> pred = np.roll(gt, 1, axis=0)
>>> hausdorff_percentile(pred, gt, (1.0, 1.0, 1.0), 95.0)
1.0
>>> normalized_surface_dice(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=1.0)
1.0
>>> round(normalized_surface_dice(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=0.5), 4)  # 72 of 112
0.6429
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

# Surfaces are mask voxels with a face neighbour (6-connectivity, scipy's
# generate_binary_structure(3, 1)) outside the mask.
SURFACE_CONNECTIVITY = 1


def check_spacing(spacing, ndim: int) -> Tuple[float, ...]:
    """``spacing`` as ``ndim`` positive finite floats, else ``ValueError`` naming it.

    >>> check_spacing([1, 2, 3], 3)
    (1.0, 2.0, 3.0)
    """
    spacing = tuple(float(s) for s in np.ravel(spacing))
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must be {ndim} positive voxel sizes in mm; received: {spacing}"
        )
    return spacing


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: the mask XOR its erosion with the
    6-connected structuring element, the volume border counting as outside."""
    structure = ndimage.generate_binary_structure(mask.ndim, SURFACE_CONNECTIVITY)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty boolean masks.

    Returns ``(pred_to_gt, gt_to_pred)``: for every surface voxel of ``pred`` the
    distance to the nearest surface voxel of ``gt``, and the other way round.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if not pred.any() or not gt.any():
        raise ValueError("surface_distances needs two non-empty masks")
    spacing = check_spacing(spacing, pred.ndim)
    # Crop to the bounding box of both masks plus one voxel: every surface voxel and its
    # nearest partner lie inside it, so the Euclidean distances are unchanged, and the
    # extra voxel keeps the erosion's border treatment the same as on the full volume.
    coords = np.argwhere(pred | gt)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pred_surface = surface(pred[box])
    gt_surface = surface(gt[box])
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_gt[pred_surface], to_pred[gt_surface]


def hausdorff_percentile(pred, gt, spacing: Sequence[float], percentile: float) -> float:
    """The larger of the two directed ``percentile``-th surface distances (mm) of two
    non-empty masks (numpy's linear-interpolated percentile; 100 is the Hausdorff
    distance). See `missu_keras.metrics.CONVENTION`."""
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
    return float(max(np.percentile(pred_to_gt, percentile), np.percentile(gt_to_pred, percentile)))


def check_tolerance(tolerance_mm) -> float:
    """``tolerance_mm`` as a finite float >= 0, else ``ValueError`` naming it."""
    tolerance = float(tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"NSD tolerance must be a finite distance >= 0 in mm; received: "
                         f"{tolerance_mm}")
    return tolerance


def surface_dice_from_distances(pred_to_gt, gt_to_pred, tolerance_mm: float) -> float:
    """Normalised surface Dice from the directed distances of `surface_distances` (two
    non-empty masks): the surface voxels of both masks within ``tolerance_mm`` of the
    other's surface, over all surface voxels of both."""
    tolerance_mm = check_tolerance(tolerance_mm)
    pred_to_gt, gt_to_pred = np.asarray(pred_to_gt), np.asarray(gt_to_pred)
    within = np.count_nonzero(pred_to_gt <= tolerance_mm) + np.count_nonzero(gt_to_pred <= tolerance_mm)
    return float(within / (pred_to_gt.size + gt_to_pred.size))


def normalized_surface_dice(pred, gt, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) of two boolean masks at
    ``tolerance_mm``: the fraction of both surfaces (in voxels) lying within the
    tolerance of the other surface. Both masks empty: 1; exactly one empty: 0 (the Dice
    rule of `missu_keras.metrics.CONVENTION`)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    check_tolerance(tolerance_mm)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not (has_pred and has_gt):
        return 1.0 if has_pred == has_gt else 0.0
    return surface_dice_from_distances(*surface_distances(pred, gt, spacing), tolerance_mm)

"""BraTS 2023 lesion-wise Dice and HD95 (numpy / scipy), as the challenge's organisers
score them (github.com/rachitsaluja/BraTS-2023-Metrics; BraTS 2024:
github.com/rachitsaluja/BraTS-2024-Metrics). Our own implementation of their rules; the
constants, their sources and where we differ are in `CONVENTION`.

For one region (a binary mask) of one case:

1. ground-truth lesions: the GT is dilated (`LesionCriteria.dilation` iterations of the
   18-connected structuring element) and split into 26-connected components; the GT
   voxels inside one dilated component form one lesion (lesions closer than the dilation
   merge);
2. predicted components: the 26-connected components of the prediction;
3. a GT lesion's match is every predicted component touching the lesion's dilation; its
   Dice and HD95 are those of the lesion against the union of its matched components
   (entire components); a lesion without a match is missed (Dice 0, HD95
   `MISS_DISTANCE_MM`);
4. GT lesions of at most `LesionCriteria.min_volume_mm3` are left out (they neither count
   nor are counted as missed); a predicted component touching no GT lesion's dilation is
   a false positive (Dice 0, HD95 `MISS_DISTANCE_MM`);
5. lesion-wise Dice = sum of the lesions' Dice / (lesions + false positives); HD95 the
   same with the false positives' `MISS_DISTANCE_MM`; no lesion and no false positive:
   Dice 1, HD95 0.

Connected components and dilations are computed on the bounding box of both masks
(widened by the dilation), and each lesion's Dice and HD95 on the bounding box of the
lesion and its matches, never on the whole volume per lesion.

Two GT lesions and a spurious blob, one lesion found exactly:

>>> import numpy as np
>>> gt = np.zeros((40, 20, 20), bool); gt[2:8, 2:8, 2:8] = True; gt[20:26, 2:8, 2:8] = True
>>> pred = np.zeros_like(gt); pred[2:8, 2:8, 2:8] = True; pred[32:38, 12:18, 12:18] = True
>>> r = lesion_wise(pred, gt, (1.0, 1.0, 1.0))
>>> r.dice, r.hd95, (r.true_positives, r.false_negatives, r.false_positives)
(0.3333333333333333, 249.33333333333334, (1, 1, 1))
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from missu_keras.labels import LABEL_CONVENTIONS, ConventionSpec, get_label_convention
from missu_keras.surface import check_spacing, hausdorff_percentile

# HD95 of a missed lesion or a false-positive component: the organisers' 374 mm (they
# replace the infinite distance of an empty mask by 374).
MISS_DISTANCE_MM = 374.0

# Percentile of the lesion-wise Hausdorff distance.
LESION_HD_PERCENTILE = 95.0

# Connected components: 26-connectivity (the organisers' cc3d connectivity=26).
COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 3)
# GT dilation: scipy's generate_binary_structure(3, 2) (18-connected), as theirs.
DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)


@dataclasses.dataclass(frozen=True)
class LesionCriteria:
    """How lesions are matched and which count, per challenge.

    Args:
        dilation: iterations of the 18-connected dilation of the GT (``0``: none).
        min_volume_mm3: GT lesions of at most this volume are left out.
    """

    dilation: int = 3
    min_volume_mm3: float = 50.0


# BraTS 2023 adult glioma (BraTS-GLI): dilation 3, GT lesions > 50 mm^3 (the organisers'
# get_challenge_parameters("BraTS-GLI")). Applied to the 2021 labels and the Decathlon
# Task01 ones too: the same regions of the same tumours.
BRATS_2023_GLI = LesionCriteria(dilation=3, min_volume_mm3=50.0)
# BraTS 2024 post-treatment glioma (metrics_GLI.py of BraTS-2024-Metrics): dilation 3,
# GT lesions > 20 mm^3, but > 10 mm^3 from ET on: their threshold variable is set to 10
# for ET and never reset, so RC (scored after ET) uses 10 too. We follow what their code
# computes, since that is what the leaderboard reports.
BRATS_2024_GLI = LesionCriteria(dilation=3, min_volume_mm3=20.0)
BRATS_2024_GLI_SMALL = LesionCriteria(dilation=3, min_volume_mm3=10.0)

# {registered convention: {region (None: every other region): criteria}}.
CRITERIA = {
    "brats": {None: BRATS_2023_GLI},
    "brats2023": {None: BRATS_2023_GLI},
    "msd_brats": {None: BRATS_2023_GLI},
    "brats2024": {None: BRATS_2024_GLI, "ET": BRATS_2024_GLI_SMALL, "RC": BRATS_2024_GLI_SMALL},
}

CONVENTION = f"""\
Lesion-wise metrics (missu_keras.lesionwise: <region>_lesion_dice, <region>_lesion_hd95),
as the BraTS 2023 organisers define them (github.com/rachitsaluja/BraTS-2023-Metrics),
for the BraTS conventions (brats = brats2021, brats2023, msd_brats, brats2024), per case:
- GT lesions: the GT region dilated by 3 iterations of the 18-connected structuring
  element, split into 26-connected components; the GT voxels of one dilated component
  are one lesion (lesions closer than the dilation merge). Predicted components:
  26-connected.
- A lesion is matched by every predicted component touching its dilation; its Dice and
  HD95 are against the union of those whole components. Missed lesion: Dice 0, HD95
  {MISS_DISTANCE_MM:g} mm. A predicted component touching no lesion's dilation is a false
  positive: Dice 0, HD95 {MISS_DISTANCE_MM:g} mm, whatever its size (as their code).
- GT lesions of at most the threshold volume (voxels x voxel volume) are left out (and a
  prediction touching only such a lesion is no false positive): BraTS 2023 (brats,
  brats2021, brats2023, msd_brats) 50 mm^3; BraTS 2024 (brats2024) 20 mm^3, but 10 mm^3 for
  ET and RC (their code sets 10 for ET and does not reset it before RC).
- Lesion-wise Dice = sum of the lesions' Dice / (lesions + false positives); HD95 likewise
  with {MISS_DISTANCE_MM:g} mm per false positive; no lesion and no false positive: Dice 1,
  HD95 0. Then averaged over cases like every metric.
- Where we differ from their code: a lesion's HD95 is ours (max of the directed 95th
  percentiles over surface voxels, as above), theirs DeepMind surface-distance's (surfel-
  area weighted), so lesion HD95 can differ slightly, Dice never; the spacing is the
  ground truth's header (theirs the prediction's; the grids are checked equal); their
  BraTS 2024 code also merges GT lesions of NETC, SNFH, ET and RC that touch lesions of
  another of these tissues, which we do not (each region's lesions are its own).
- Other conventions (chaos, dataset-defined) get no lesion-wise columns."""


@dataclasses.dataclass(frozen=True)
class LesionWiseResult:
    """One region's lesion-wise scores: ``dice``, ``hd95`` (mm), and the counts of
    matched (``true_positives``) and missed (``false_negatives``) GT lesions above the
    threshold and of unmatched predicted components (``false_positives``)."""

    dice: float
    hd95: float
    true_positives: int
    false_negatives: int
    false_positives: int


def criteria_for(convention: ConventionSpec, region: str) -> Optional[LesionCriteria]:
    """The `LesionCriteria` of ``region`` of a registered BraTS convention, ``None`` for
    any other convention (no lesion-wise scores).

    >>> criteria_for("brats2024", "ET").min_volume_mm3, criteria_for("chaos", "liver")
    (10.0, None)
    """
    conv = get_label_convention(convention)
    if LABEL_CONVENTIONS.get(conv.name) != conv or conv.name not in CRITERIA:
        return None
    by_region = CRITERIA[conv.name]
    return by_region.get(region, by_region[None])


def _box(mask: np.ndarray, margin: int):
    """The bounding box of a non-empty mask widened by ``margin`` voxels (clipped)."""
    box = []
    for axis, size in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)))
    return tuple(box)


def _union(boxes):
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes))
                 for i in range(len(boxes[0])))


def _lesions(gt: np.ndarray, dilation: int):
    """``(lesions, dilated)``: GT voxels labelled by their dilated component (1..n), and
    the dilated components themselves (dilated on the GT's own bounding box only)."""
    lesions = np.zeros(gt.shape, np.int32)
    dilated_cc = np.zeros(gt.shape, np.int32)
    if not gt.any():
        return lesions, dilated_cc
    box = _box(gt, dilation)
    dilated = gt[box]
    if dilation > 0:  # scipy's iterations=0 would dilate until nothing changes
        dilated = ndimage.binary_dilation(dilated, DILATION_STRUCTURE, iterations=dilation)
    dilated_cc[box] = ndimage.label(dilated, COMPONENT_STRUCTURE)[0]
    lesions[box] = np.where(gt[box], dilated_cc[box], 0)
    return lesions, dilated_cc


def _score_lesions(lesions, dilated_cc, pred_cc, n_pred, spacing, min_volume_mm3):
    """``(dice list, hd95 list, missed lesions, matched predicted components)`` for the
    lesions above ``min_volume_mm3``."""
    n = int(dilated_cc.max())
    touching = (dilated_cc > 0) & (pred_cc > 0)
    pairs = np.unique(dilated_cc[touching].astype(np.int64) * (n_pred + 1) + pred_cc[touching])
    matches = {k: [] for k in range(1, n + 1)}
    for key in pairs.tolist():
        matches[key // (n_pred + 1)].append(key % (n_pred + 1))
    sizes = np.bincount(lesions.ravel(), minlength=n + 1)
    lesion_boxes, pred_boxes = ndimage.find_objects(lesions, n), ndimage.find_objects(pred_cc, n_pred)
    voxel_mm3 = float(np.prod(spacing))
    dices, hds, missed = [], [], 0
    for k in range(1, n + 1):
        if sizes[k] * voxel_mm3 <= min_volume_mm3:
            continue
        if not matches[k]:
            missed += 1
            dices.append(0.0)
            hds.append(MISS_DISTANCE_MM)
            continue
        box = _union([lesion_boxes[k - 1]] + [pred_boxes[j - 1] for j in matches[k]])
        g, p = lesions[box] == k, np.isin(pred_cc[box], matches[k])
        dices.append(2.0 * np.count_nonzero(g & p) / (np.count_nonzero(g) + np.count_nonzero(p)))
        hds.append(hausdorff_percentile(p, g, spacing, LESION_HD_PERCENTILE))
    matched = {j for js in matches.values() for j in js}
    return dices, hds, missed, matched


def lesion_wise(pred, gt, spacing: Sequence[float],
                criteria: LesionCriteria = BRATS_2023_GLI) -> LesionWiseResult:
    """Lesion-wise Dice and HD95 of one region (see the module docstring).

    Args:
        pred, gt: boolean (or 0/1) 3-D masks of the same shape.
        spacing: voxel size in mm per axis (lesion volumes and distances).
        criteria: dilation and size threshold (`criteria_for` a convention's region).
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"prediction and ground truth must be 3-D masks of the same shape; "
                         f"received: pred {pred.shape}, gt {gt.shape}")
    spacing = check_spacing(spacing, 3)
    if not pred.any() and not gt.any():
        return LesionWiseResult(1.0, 0.0, 0, 0, 0)
    box = _box(pred | gt, criteria.dilation)
    pred, gt = pred[box], gt[box]
    lesions, dilated_cc = _lesions(gt, criteria.dilation)
    pred_cc, n_pred = ndimage.label(pred, COMPONENT_STRUCTURE)
    dices, hds, missed, matched = _score_lesions(lesions, dilated_cc, pred_cc, n_pred, spacing,
                                                 criteria.min_volume_mm3)
    false_positives = n_pred - len(matched)
    counted = len(dices) + false_positives
    if counted == 0:
        return LesionWiseResult(1.0, 0.0, 0, 0, 0)
    return LesionWiseResult(
        dice=float(sum(dices) / counted),
        hd95=float((sum(hds) + false_positives * MISS_DISTANCE_MM) / counted),
        true_positives=len(dices) - missed, false_negatives=missed,
        false_positives=false_positives)

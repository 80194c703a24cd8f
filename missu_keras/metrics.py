"""Segmentation metrics: BraTS-style per-region scores (numpy / scipy) and Keras Dice.

Two halves:

- **Evaluation** on whole label volumes, in dataset labels (0/1/2/4 for BraTS):
  `binary_metrics` for one pair of masks, `score_case` for every region of a
  `missu_keras.labels.LabelConvention` (whole-volume metrics, the normalised surface Dice
  at a tolerance, and for the BraTS conventions the BraTS 2023 lesion-wise Dice and HD95
  of `missu_keras.lesionwise`), `summarize` over cases, and the writers shared by
  ``missu-keras score`` and ``missu-keras evaluate``. The conventions (empty masks, how
  HD95 is taken, surfaces, lesions) are in `CONVENTION` (`convention_text` at another NSD
  tolerance), which every report prints.
- **Training**: `RegionDice`, a Keras metric for ``fit`` that accumulates a global Dice
  of one region over an epoch, and `region_dice_metrics` that makes one per region.

Example, a 4-voxel cube against the same cube shifted by one voxel along the first axis
with 2 mm spacing there:

>>> import numpy as np
>>> gt = np.zeros((8, 8, 8), "uint8"); gt[2:4, 2:4, 2:4] = 4
>>> pred = np.roll(gt, 1, axis=0)
>>> scores = score_case(pred, gt, spacing=(2.0, 1.0, 1.0), convention="brats")
>>> round(scores["ET_dice"], 3), scores["ET_hd95"], scores["ET_hausdorff"]
(0.5, 2.0, 2.0)
>>> scores["TC_dice"] == scores["ET_dice"]  # label 4 is in every region here
True
>>> summary = summarize([scores, scores])
>>> summary["WT"]["dice"]
{'mean': 0.5, 'std': 0.0, 'median': 0.5}
"""

from __future__ import annotations

import csv
import io
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from keras import ops

from missu_keras import lesionwise
from missu_keras.files import write_json_atomic, write_text_atomic
from missu_keras.labels import LabelConvention, get_label_convention
# The surface primitives live in surface.py (shared with lesionwise.py); these names stay
# importable from here, where callers have always found them.
from missu_keras.surface import SURFACE_CONNECTIVITY  # noqa: F401
from missu_keras.surface import check_spacing as _check_spacing
from missu_keras.surface import check_tolerance, surface_dice_from_distances, surface_distances

# HD95 / Hausdorff reported when exactly one of the two masks is empty: the diagonal of
# the 240 x 240 x 155 BraTS box at 1 mm, sqrt(240^2 + 240^2 + 155^2) = 373.13 mm.
EMPTY_MASK_DISTANCE_MM = 373.13

# Percentile of the directed surface distances for HD95.
HD_PERCENTILE = 95.0

# NSD tolerance by default: one voxel of the 1 mm BraTS grid. Surfaces are voxels, so
# surface distances on that grid are 0, 1, sqrt(2), ... mm: any tolerance under 1 mm
# is the same as 0 (exact agreement), and 1 mm is the smallest one that forgives a
# boundary drawn one voxel off, the least inter-rater disagreement there is.
DEFAULT_NSD_TOLERANCE_MM = 1.0

# Names of the per-region metrics, in the order of every output: the whole-volume
# ("legacy") metrics, the normalised surface Dice, and the BraTS 2023 lesion-wise Dice
# and HD95 (BraTS conventions only, `missu_keras.lesionwise`).
LEGACY_METRIC_NAMES = ("dice", "hd95", "hausdorff", "sensitivity", "specificity", "accuracy")
METRIC_NAMES = LEGACY_METRIC_NAMES + ("nsd", "lesion_dice", "lesion_hd95")

# Summary statistics per metric.
SUMMARY_STATS = ("mean", "std", "median")

_CONVENTION_TEMPLATE = f"""\
Scoring convention (missu_keras.metrics):
- Regions are sets of dataset labels (BraTS: WT = 1,2,4; TC = 1,4; ET = 4); every metric
  is computed on the binary mask of one region of one case, then averaged over cases.
- Dice = 2|P & G| / (|P| + |G|). Accuracy = (TP + TN) / all voxels.
  Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP).
- Surface of a mask = mask XOR its binary erosion with the 6-connected (face) structuring
  element, voxels on the volume border counting as surface. Distances in mm from
  scipy.ndimage.distance_transform_edt(~surface, sampling=voxel spacing), spacing from
  the ground-truth header.
- HD95 = max(95th percentile of distances from the prediction surface to the GT surface,
  95th percentile of distances from the GT surface to the prediction surface), numpy's
  linear-interpolated percentile (as MONAI's directed=False; medpy's hd95 instead takes
  one percentile over the pooled distances of both directions, which can be smaller).
  Hausdorff = the maximum of both directions (percentile 100).
- Empty masks (BraTS / nnU-Net): GT and prediction both empty -> Dice 1, HD95 0,
  Hausdorff 0; exactly one empty -> Dice 0, HD95 {EMPTY_MASK_DISTANCE_MM} mm, Hausdorff
  {EMPTY_MASK_DISTANCE_MM} mm (the diagonal of the 240 x 240 x 155 mm BraTS box).
- Sensitivity when GT is empty (0/0): 1 if the prediction is empty too, else 0;
  specificity when GT covers every voxel: 1 if the prediction does too, else 0 (the same
  rule as Dice). No metric is ever NaN or infinite.
- Summary: mean, population std (ddof=0) and median over cases, per region and metric.
- NSD (<region>_nsd), the normalised surface Dice of Nikolov et al. 2021,
  at a tolerance of {{tolerance}} mm: (prediction surface voxels within the tolerance of
  the GT surface + GT surface voxels within the tolerance of the prediction surface) /
  (all surface voxels of both), distances as for HD95. Approximation: surfaces are
  counted in voxels (the surfaces above), not in surface-element (surfel) areas as
  DeepMind's surface-distance package weighs them. Empty masks as Dice: both empty -> 1,
  exactly one -> 0. Default tolerance 1 mm: one voxel of the BraTS grid, where voxel
  surface distances are 0, 1, 1.41, ... mm, so a smaller one is the same as 0.
{lesionwise.CONVENTION}"""


def convention_text(nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> str:
    """The scoring convention (what ``convention.txt`` holds) with the NSD tolerance used.

    >>> "at a tolerance of 2.5 mm" in convention_text(2.5)
    True
    """
    tolerance = check_tolerance(nsd_tolerance_mm)
    return _CONVENTION_TEMPLATE.replace("{tolerance}", f"{tolerance:g}")


# The convention at the default NSD tolerance.
CONVENTION = convention_text()


# --------------------------------------------------------------------------------------
# Evaluation on label volumes (numpy / scipy)
# --------------------------------------------------------------------------------------


def _dice_from_counts(overlap: int, n_pred: int, n_gt: int) -> float:
    # Both empty: 1 (they agree); one empty: 0 (see CONVENTION).
    return 1.0 if n_pred + n_gt == 0 else 2.0 * overlap / (n_pred + n_gt)


def dice_score(pred, gt) -> float:
    """Dice of two binary masks of the same shape, with the empty-mask rule of
    `CONVENTION` (both empty: 1; one empty: 0). `binary_metrics` gives the same value.

    >>> dice_score([1, 1, 0, 0], [1, 0, 0, 0]), dice_score([0, 0], [0, 0])
    (0.6666666666666666, 1.0)
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth must have the same shape; received: "
                         f"pred {pred.shape}, gt {gt.shape}")
    return _dice_from_counts(int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)),
                             int(np.count_nonzero(gt)))


def _ratio_or_agreement(num: int, den: int, agree: bool) -> float:
    # 0/0: 1 when the prediction agrees with the (degenerate) GT, else 0 (see CONVENTION).
    if den == 0:
        return 1.0 if agree else 0.0
    return num / den


def binary_metrics(pred, gt, spacing: Sequence[float],
                   nsd_tolerance_mm: Optional[float] = None) -> Dict[str, float]:
    """The whole-volume metrics (`LEGACY_METRIC_NAMES`) for one pair of binary masks,
    and ``"nsd"`` at ``nsd_tolerance_mm`` when that is given.

    Args:
        pred, gt: boolean (or 0/1) arrays of the same shape.
        spacing: voxel size in mm per axis, e.g. ``header.get_zooms()[:3]``.
        nsd_tolerance_mm: the normalised surface Dice's tolerance (``None``: no NSD).

    Returns:
        ``{"dice", "hd95", "hausdorff", "sensitivity", "specificity", "accuracy"}`` (and
        ``"nsd"``) as Python floats, with the empty-mask conventions of `CONVENTION`.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction and ground truth must have the same shape; received: "
            f"pred {pred.shape}, gt {gt.shape}"
        )
    spacing = _check_spacing(spacing, gt.ndim)
    tp = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fp, fn = n_pred - tp, n_gt - tp
    tn = gt.size - tp - fp - fn

    dice = _dice_from_counts(tp, n_pred, n_gt)
    nsd = dice  # the empty-mask rule of Dice (see CONVENTION)
    if n_pred == 0 and n_gt == 0:
        hd95, hd = 0.0, 0.0
    elif n_pred == 0 or n_gt == 0:
        hd95, hd = EMPTY_MASK_DISTANCE_MM, EMPTY_MASK_DISTANCE_MM
    else:
        pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
        hd95 = max(np.percentile(pred_to_gt, HD_PERCENTILE),
                   np.percentile(gt_to_pred, HD_PERCENTILE))
        hd = max(pred_to_gt.max(), gt_to_pred.max())
        if nsd_tolerance_mm is not None:
            nsd = surface_dice_from_distances(pred_to_gt, gt_to_pred, nsd_tolerance_mm)

    n_neg = gt.size - n_gt
    scores = {
        "dice": float(dice),
        "hd95": float(hd95),
        "hausdorff": float(hd),
        "sensitivity": float(_ratio_or_agreement(tp, n_gt, agree=n_pred == 0)),
        "specificity": float(_ratio_or_agreement(tn, n_neg, agree=n_pred == gt.size)),
        "accuracy": float((tp + tn) / gt.size) if gt.size else 1.0,
    }
    if nsd_tolerance_mm is not None:
        check_tolerance(nsd_tolerance_mm)
        scores["nsd"] = float(nsd)
    return scores


def _convention(convention: Union[str, LabelConvention]) -> LabelConvention:
    return get_label_convention(convention)


def score_case(
    pred_labels,
    gt_labels,
    spacing: Sequence[float],
    convention: Union[str, LabelConvention] = "brats",
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> Dict[str, float]:
    """Scores one case, every region of ``convention``.

    Args:
        pred_labels, gt_labels: integer label volumes ``(H, W, D)`` in dataset labels
            (0/1/2/4 for ``"brats"``), same shape.
        spacing: voxel size in mm per axis (from the ground-truth header).
        convention: a `LabelConvention` or its name (``"brats"`` / ``"brats2021"``,
            ``"brats2023"``, ``"brats2024"``, ``"msd_brats"``, ``"chaos"``).
        nsd_tolerance_mm: the tolerance of ``<region>_nsd``.

    Returns:
        A flat ``{"<region>_<metric>": float}`` dict, region-major in the convention's
        order and metrics in `METRIC_NAMES` order: ``WT_dice, WT_hd95, ..., WT_nsd,
        WT_lesion_dice, WT_lesion_hd95, TC_dice, ...``; the lesion-wise ones
        (`missu_keras.lesionwise`) for the BraTS conventions only.
    """
    conv = _convention(convention)
    pred_labels = np.asarray(pred_labels)
    gt_labels = np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(
            f"prediction and ground truth must have the same shape; received: "
            f"pred {pred_labels.shape}, gt {gt_labels.shape}"
        )
    pred_masks = conv.region_masks(pred_labels)
    gt_masks = conv.region_masks(gt_labels)
    row = {}
    for region in conv.regions:
        pred, gt = pred_masks[region], gt_masks[region]
        scores = binary_metrics(pred, gt, spacing, nsd_tolerance_mm)
        criteria = lesionwise.criteria_for(conv, region)
        if criteria is not None:
            lesions = lesionwise.lesion_wise(pred, gt, spacing, criteria)
            scores.update(lesion_dice=lesions.dice, lesion_hd95=lesions.hd95)
        for metric, value in scores.items():
            row[f"{region}_{metric}"] = value
    return row


def _split_key(key: str) -> Tuple[str, Optional[str]]:
    """``(region, metric)`` of a `score_case` key (``"ET_lesion_dice"`` -> ``("ET",
    "lesion_dice")``), metric ``None`` for any other key; the longest metric name wins."""
    for metric in sorted(METRIC_NAMES, key=len, reverse=True):
        if key.endswith("_" + metric) and len(key) > len(metric) + 1:
            return key[: -len(metric) - 1], metric
    return key, None


def summarize(rows: Iterable[Mapping[str, object]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean, std (population, ddof=0) and median over cases.

    Args:
        rows: dicts from `score_case`; keys named ``<region>_<metric>`` are summarised,
            others (e.g. ``"case"``) ignored.

    Returns:
        ``{region: {metric: {"mean": .., "std": .., "median": ..}}}`` with Python floats.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("summarize needs at least one scored case; received none")
    columns: Dict[str, Dict[str, List[float]]] = {}
    for row in rows:
        for key, value in row.items():
            region, metric = _split_key(key)
            if metric is None:
                continue
            columns.setdefault(region, {}).setdefault(metric, []).append(float(value))
    summary = {}
    for region, metrics in columns.items():
        summary[region] = {}
        for metric in METRIC_NAMES:
            if metric not in metrics:
                continue
            values = np.asarray(metrics[metric], dtype=np.float64)
            summary[region][metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "median": float(np.median(values)),
            }
    return summary


def format_summary_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Plain-text tables: one row per region, ``mean +/- std (median)`` per metric; the
    whole-volume metrics first, then NSD and the lesion-wise ones (a table of their own,
    so that neither is too wide to read)."""
    groups = (LEGACY_METRIC_NAMES, METRIC_NAMES[len(LEGACY_METRIC_NAMES):])
    tables = []
    for group in groups:
        metrics = [m for m in group if any(m in v for v in summary.values())]
        if metrics:
            tables.append(_summary_table(summary, metrics))
    return "\n\n".join(tables) + "\n(mean +/- std (median) over cases; distances in mm)"


def _summary_table(summary, metrics: Sequence[str]) -> str:
    header = ["region"] + list(metrics)
    lines = [header]
    for region, values in summary.items():
        cells = [region]
        for metric in metrics:
            s = values.get(metric)
            cells.append("-" if s is None else
                         f"{s['mean']:.4f} +/- {s['std']:.4f} ({s['median']:.4f})")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def write_scores(
    out_dir: Union[str, os.PathLike],
    rows: Sequence[Mapping[str, object]],
    summary: Optional[Mapping] = None,
    *,
    convention: str = CONVENTION,
) -> Dict[str, str]:
    """Writes ``cases.csv`` (one row per case: ``case``, then the `score_case` keys),
    ``summary.json`` (shaped like `summarize`) and ``convention.txt`` (``convention``:
    `CONVENTION`, or `convention_text` at the NSD tolerance used), each atomically.

    Returns the three paths by name (``"cases"``, ``"summary"``, ``"convention"``).
    """
    if not rows:
        raise ValueError("write_scores needs at least one scored case; received none")
    summary = summarize(rows) if summary is None else summary
    os.makedirs(out_dir, exist_ok=True)
    columns = list(rows[0].keys())
    if "case" in columns:
        columns.remove("case")
    columns.insert(0, "case")
    paths = {
        "cases": os.path.join(out_dir, "cases.csv"),
        "summary": os.path.join(out_dir, "summary.json"),
        "convention": os.path.join(out_dir, "convention.txt"),
    }
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    # Atomic (files.atomic_path): a full disk never leaves a truncated summary behind.
    write_text_atomic(paths["cases"], table.getvalue())
    write_json_atomic(paths["summary"], summary)
    write_text_atomic(paths["convention"], convention + "\n")
    return paths


# --------------------------------------------------------------------------------------
# Keras metrics for fit
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="missu_keras")
class RegionDice(keras.metrics.Metric):
    """Global Dice of one region over an epoch, from the argmax of the prediction.

    The region is a set of *training class* indices (BraTS: WT = classes (1, 2, 3),
    since dataset label 4 is class 3). Intersection and both volumes are summed over
    every batch (and, under ``tf.distribute``, every replica: the state variables are
    summed on read), so ``result()`` is ``2 sum|P & G| / (sum|P| + sum|G|)`` over the
    epoch, not a mean of per-batch Dice. It is 1 when the region is absent from both.

    Args:
        class_ids: training class indices forming the region, e.g. ``(1, 2, 3)``.
        name, dtype: as for any Keras metric.

    Inputs to ``update_state``: ``y_true`` integer classes ``(B, H, W, D)`` or
    ``(B, H, W, D, 1)``; ``y_pred`` probabilities or logits ``(B, H, W, D, K)``;
    optional ``sample_weight`` ``(B,)`` weighting each sample's voxels.

    >>> import numpy as np
    >>> y_true = np.zeros((1, 4, 4, 4), "int32"); y_true[0, :2] = 1
    >>> y_pred = np.eye(2, dtype="float32")[np.zeros((1, 4, 4, 4), "int32")]
    >>> y_pred[0, :1] = [0.0, 1.0]  # predicts half of the region
    >>> m = RegionDice((1,), name="dice_fg")
    >>> m.update_state(y_true, y_pred)
    >>> round(float(m.result()), 4)  # 2 * 16 / (16 + 32)
    0.6667
    """

    def __init__(self, class_ids, name="region_dice", dtype=None):
        super().__init__(name=name, dtype=dtype or "float32")
        class_ids = tuple(int(c) for c in np.ravel(class_ids))
        if not class_ids or min(class_ids) < 0:
            raise ValueError(
                f"class_ids must be a non-empty tuple of non-negative training class "
                f"indices; received: {class_ids}"
            )
        self.class_ids = class_ids
        self._direction = "up"  # lets ModelCheckpoint(mode="auto") maximise it
        self.intersection = self.add_variable(shape=(), initializer="zeros",
                                              name="intersection")
        self.pred_volume = self.add_variable(shape=(), initializer="zeros",
                                             name="pred_volume")
        self.true_volume = self.add_variable(shape=(), initializer="zeros",
                                             name="true_volume")

    def _in_region(self, classes):
        hits = [ops.equal(classes, c) for c in self.class_ids]
        out = hits[0]
        for h in hits[1:]:
            out = ops.logical_or(out, h)
        return ops.cast(out, self.dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        pred = self._in_region(ops.cast(ops.argmax(y_pred, axis=-1), "int32"))
        true = self._in_region(y_true)
        if sample_weight is not None:
            w = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            w = ops.reshape(w, (-1,) + (1,) * (len(true.shape) - 1))
            pred_w, true_w = pred * w, true * w
        else:
            pred_w, true_w = pred, true
        self.intersection.assign_add(ops.sum(pred_w * true))
        self.pred_volume.assign_add(ops.sum(pred_w))
        self.true_volume.assign_add(ops.sum(true_w))

    def result(self):
        denom = self.pred_volume + self.true_volume
        safe = ops.where(denom > 0, denom, ops.ones_like(denom))
        return ops.where(denom > 0, 2.0 * self.intersection / safe, ops.ones_like(denom))

    def get_config(self):
        return {"class_ids": list(self.class_ids), "name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def region_dice_metrics(convention: Union[str, LabelConvention] = "brats") -> List[RegionDice]:
    """One `RegionDice` per region of ``convention``, named ``dice_<region>``.

    Region labels are mapped to training classes with ``convention.labels.index``:

    >>> [(m.name, m.class_ids) for m in region_dice_metrics("brats")]
    [('dice_WT', (1, 2, 3)), ('dice_TC', (1, 3)), ('dice_ET', (3,))]
    """
    conv = _convention(convention)
    metrics = []
    for region, labels in conv.regions.items():
        missing = [lab for lab in labels if lab not in conv.labels]
        if missing:
            raise ValueError(
                f"region {region!r} of convention {conv.name!r} uses labels {missing} "
                f"that are not in its labels {list(conv.labels)}"
            )
        class_ids = tuple(conv.labels.index(lab) for lab in labels)
        metrics.append(RegionDice(class_ids, name=f"dice_{region}"))
    return metrics

"""Voxelwise uncertainty of a segmentation: the entropy of its (averaged) class
probabilities, and how that entropy relates to the errors.

The probabilities are those ``predict`` and ``evaluate`` compute: the mean over the
ensemble members (`missu_keras.inference.SegmenterEnsemble`) of each member's mean over
the TTA flips (the sliding window averages the 8 flips of each window, ``--tta``), on
the case's own grid. The entropy is ``H = -sum_k p_k ln p_k`` in nats (natural log,
``0 ln 0 = 0``): 0 where one class has all the probability, at most ``ln K`` (uniform
over the ``K`` classes: ln 4 = 1.386 for BraTS, ln 2 = 0.693 for one organ). Outside
the crop box the probabilities are one-hot background, so the entropy there is 0.

>>> import numpy as np
>>> p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
>>> [round(float(h), 4) for h in entropy(p)], round(float(np.log(4)), 4), round(float(np.log(2)), 4)
([1.3863, 0.0, 0.6931], 1.3863, 0.6931)
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy import ndimage

# evaluate --uncertainty scores the voxels within this many voxels (6-connected steps,
# so a city-block distance) of the predicted or the true foreground: the whole volume
# would be mostly certain, correctly labelled background far from any tumour or organ
# (entropy 0 outside the crop box), and its mean would say more about the field of view
# than about the model.
ERROR_MASK_DILATION = 3

UNCERTAINTY_COLUMNS = ("entropy_correct_mean", "entropy_wrong_mean", "entropy_wrong_voxels",
                       "entropy_mask_voxels")

UNCERTAINTY_CONVENTION = (
    "uncertainty: entropy -sum_k p_k ln p_k of the averaged probabilities (ensemble members "
    "x TTA flips), in nats (maximum ln K); entropy_correct_mean / entropy_wrong_mean: its "
    "mean over the voxels labelled correctly / wrongly within "
    f"{ERROR_MASK_DILATION} voxels (6-connected steps) of the predicted or true foreground "
    "(NaN when there are none); entropy_wrong_voxels, entropy_mask_voxels: the counts")


def entropy(probabilities, axis: int = -1) -> np.ndarray:
    """Voxelwise entropy in nats (natural log; ``0 ln 0 = 0``) of class probabilities
    ``(..., K)`` -> float32 ``(...)``, in ``[0, ln K]``."""
    p = np.asarray(probabilities, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.maximum(-terms.sum(axis=axis), 0.0).astype(np.float32)


def max_entropy(num_classes: int) -> float:
    """``ln K``: the entropy of the uniform distribution over ``K`` classes.

    >>> round(max_entropy(4), 4)
    1.3863
    """
    return math.log(num_classes)


def entropy_by_correctness(entropy_map, predicted, truth,
                           dilation: int = ERROR_MASK_DILATION) -> Dict[str, float]:
    """Mean entropy over the correctly and the wrongly labelled voxels, within
    ``dilation`` voxels of the union of the predicted and the true foreground (label >
    0): the `UNCERTAINTY_COLUMNS` of one case (a mean is NaN when its set is empty).

    >>> truth = np.zeros((9, 9, 9), int); truth[3:6, 3:6, 3:6] = 1
    >>> predicted = truth.copy(); predicted[3, 3, 3] = 0
    >>> h = np.where(predicted != truth, 0.6, 0.1)
    >>> out = entropy_by_correctness(h, predicted, truth, dilation=1)
    >>> round(out["entropy_correct_mean"], 3), out["entropy_wrong_mean"], out["entropy_wrong_voxels"]
    (0.1, 0.6, 1)
    """
    entropy_map, predicted, truth = (np.asarray(a) for a in (entropy_map, predicted, truth))
    if not entropy_map.shape == predicted.shape == truth.shape:
        raise ValueError(f"entropy {entropy_map.shape}, prediction {predicted.shape} and ground "
                         f"truth {truth.shape} must share one grid")
    mask = (predicted > 0) | (truth > 0)
    if dilation > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(mask.ndim, 1),
                                       iterations=int(dilation))
    wrong = (predicted != truth) & mask
    correct = mask & ~wrong
    return {
        "entropy_correct_mean": _mean(entropy_map, correct),
        "entropy_wrong_mean": _mean(entropy_map, wrong),
        "entropy_wrong_voxels": int(wrong.sum()),
        "entropy_mask_voxels": int(mask.sum()),
    }


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean(dtype=np.float64)) if where.any() else float("nan")


def summarize_uncertainty(rows) -> Dict[str, object]:
    """The ``"uncertainty"`` entry of ``summary.json``: mean, std and median over the
    cases (NaN cases left out, their number given as ``n``) of each mean-entropy column,
    the voxel counts summed, and `UNCERTAINTY_CONVENTION`. With no case to average (no
    wrong voxel anywhere, say) the statistics are None, ``null`` in the JSON (a bare NaN
    is not JSON: ``jq`` and ``JSON.parse`` refuse it).

    >>> summarize_uncertainty([{"entropy_correct_mean": 0.1, "entropy_wrong_mean": float("nan"),
    ...                         "entropy_wrong_voxels": 0, "entropy_mask_voxels": 8}])["entropy_wrong_mean"]
    {'mean': None, 'std': None, 'median': None, 'n': 0}
    """
    out: Dict[str, object] = {}
    for column in ("entropy_correct_mean", "entropy_wrong_mean"):
        values = np.array([float(r[column]) for r in rows], np.float64)
        values = values[~np.isnan(values)]
        stats = map(float, (np.mean(values), np.std(values), np.median(values))) if values.size else (None,) * 3
        out[column] = {**dict(zip(("mean", "std", "median"), stats)), "n": int(values.size)}
    for column in ("entropy_wrong_voxels", "entropy_mask_voxels"):
        out[column] = int(sum(int(r[column]) for r in rows))
    out["convention"] = UNCERTAINTY_CONVENTION
    return out

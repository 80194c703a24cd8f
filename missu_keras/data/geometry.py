"""Orientation and voxel spacing: the geometry part of the preprocessing contract.

- Reorientation (`reorient`, `undo_orientation`) is NumPy and exact: flips and axis
  permutations chosen by nibabel (``io_orientation`` -> closest canonical orientation,
  also for an oblique sform; ``ornt_transform``, ``apply_orientation``,
  ``inv_ornt_aff``); no interpolation, so undoing it gives back the very same array.
- Resampling (`target_shape`, `resample_tensor`) is TensorFlow (graph-safe, dynamic
  shapes): the SavedModel and `missu_keras.inference` run it in their graphs, the
  training cache through `resample` (a ``tf.function``), so training and inference
  cannot differ. It is separable (``tf.image.resize`` over two axis pairs, half-pixel
  centres: the resampled grid covers the same physical extent), linear or cubic for
  images, nearest neighbour for labels, and it is skipped exactly (the input returned
  as it is) when the spacing equals the target within `SPACING_RTOL`: BraTS at 1 mm
  stays bit-identical.

>>> import numpy as np
>>> volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
>>> lps = np.diag([-1.0, -1.0, 1.0, 1.0])
>>> moved = reorient(volume, lps, "RAS")
>>> moved.array.shape, axis_codes(moved.affine), np.array_equal(moved.array, volume[::-1, ::-1])
((2, 3, 4), ('R', 'A', 'S'), True)
>>> np.array_equal(undo_orientation(moved.array, moved), volume)
True
>>> voxel_spacing(np.diag([0.8, 0.8, 3.0, 1.0]))
(0.8, 0.8, 3.0)
>>> resample(np.ones((4, 4, 2, 1), np.float32), (0.8, 0.8, 3.0), (1.0, 1.0, 1.0)).shape
(3, 3, 6, 1)
>>> median_spacing([(1, 1, 3), (0.8, 0.8, 5), (0.9, 0.7, 4)])
(0.9, 0.8, 4.0)
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import nibabel.orientations as nio
import numpy as np
import tensorflow as tf

from missu_keras.data.validation import spacing_from_affine

SPACING_RTOL = 1e-3  # spacings within 0.1 % of the target are not resampled
IMAGE_INTERPOLATIONS = ("linear", "cubic")
_TF_METHODS = {"linear": "bilinear", "cubic": "bicubic", "nearest": "nearest"}
_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})

Spacing = Tuple[float, float, float]


def check_axis_codes(codes) -> Tuple[str, str, str]:
    """``"RAS"`` (or a sequence of 3 letters) -> ``("R", "A", "S")``; ``ValueError`` for
    anything that is not one letter of each pair L/R, A/P, S/I.

    >>> check_axis_codes("lps")
    ('L', 'P', 'S')
    >>> check_axis_codes("RRS")
    Traceback (most recent call last):
    ...
    ValueError: orientation must be 3 axis codes with one of L/R, one of A/P and one of S/I (e.g. 'RAS', 'LPS'). Received: 'RRS'
    """
    letters = tuple(str(c).upper() for c in codes)
    if len(letters) != 3 or any(sum(c in pair for c in letters) != 1 for pair in _AXIS_PAIRS):
        raise ValueError("orientation must be 3 axis codes with one of L/R, one of A/P and one "
                         f"of S/I (e.g. 'RAS', 'LPS'). Received: {codes!r}")
    return letters


def axis_codes(affine) -> Tuple[str, str, str]:
    """The closest canonical axis codes of a voxel-to-world ``affine`` (nibabel's
    ``aff2axcodes``; an oblique affine gets those of its closest axes)."""
    return tuple(nio.aff2axcodes(np.asarray(affine, np.float64)))


def voxel_spacing(affine) -> Spacing:
    """Voxel size in mm along each array axis: the lengths of the affine's first three
    columns (also right for oblique and permuted affines), as the readers'
    `missu_keras.data.validation.spacing_from_affine`, rounded to 1e-6 mm."""
    return tuple(round(v, 6) for v in spacing_from_affine(np.asarray(affine, np.float64)))


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """A volume moved to a target orientation, and how to move it back.

    Attributes:
        array: the reoriented ``(H', W', D'[, C])`` array (a view where possible).
        affine: its voxel-to-world affine (the same world positions as the input's).
        forward: nibabel orientation ``(3, 2)`` from the input's axes to the target's.
        backward: the inverse of ``forward``.
        original_shape: the input's ``(H, W, D)``.
    """

    array: np.ndarray
    affine: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    original_shape: Tuple[int, int, int]

    @property
    def identity(self) -> bool:
        return bool(np.array_equal(self.forward, nio.axcodes2ornt("RAS")))

    @property
    def spacing(self) -> Spacing:
        return voxel_spacing(self.affine)

    def apply(self, other: np.ndarray) -> np.ndarray:
        """Another array on the input's grid (e.g. its labels) moved the same way."""
        return other if self.identity else nio.apply_orientation(other, self.forward)


def reorient(array: np.ndarray, affine, codes) -> Reorientation:
    """``array (H, W, D[, C])`` with ``affine`` -> a `Reorientation` to ``codes`` (e.g.
    ``"RAS"``): exact flips and permutations, no interpolation; the array itself when it
    already is in that orientation."""
    affine = np.asarray(affine, np.float64)
    shape = tuple(int(s) for s in np.shape(array)[:3])
    start = nio.io_orientation(affine)
    end = nio.axcodes2ornt(check_axis_codes(codes))
    forward = nio.ornt_transform(start, end)
    backward = nio.ornt_transform(end, start)
    if np.array_equal(forward, nio.axcodes2ornt("RAS")):
        return Reorientation(array, affine, forward, backward, shape)
    moved = nio.apply_orientation(array, forward)
    new_affine = affine @ nio.inv_ornt_aff(forward, shape)
    return Reorientation(moved, new_affine, forward, backward, shape)


def oriented_spacing(affine, codes) -> Spacing:
    """The voxel spacing of a volume with ``affine`` once reoriented to ``codes``, from
    the affine alone (no voxels needed).

    >>> oriented_spacing(np.array([[0, 0, 9.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]]), "RAS")
    (9.0, 1.0, 1.0)
    """
    spacing = voxel_spacing(affine)
    forward = nio.ornt_transform(nio.io_orientation(np.asarray(affine, np.float64)),
                                 nio.axcodes2ornt(check_axis_codes(codes)))
    moved = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(forward):  # input axis -> its place in the target
        moved[int(target)] = spacing[axis]
    return tuple(moved)


def undo_orientation(array: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """An array ``(H', W', D'[, ...])`` on the reoriented grid of ``reorientation`` ->
    the same voxels on the input's grid ``(H, W, D[, ...])`` (contiguous)."""
    if reorientation.identity:
        return array
    back = np.ascontiguousarray(nio.apply_orientation(array, reorientation.backward))
    if back.shape[:3] != reorientation.original_shape:
        raise ValueError(f"undo_orientation: expected an array of the reoriented shape, which "
                         f"goes back to {reorientation.original_shape}; found {array.shape}")
    return back


def median_spacing(spacings: Sequence[Sequence[float]]) -> Spacing:
    """The median voxel spacing per axis of a training set (nnU-Net's default target).

    ``spacings``: one ``(3,)`` per case, in the contract's orientation (`reorient` first).
    """
    spacings = np.asarray(spacings, np.float64)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or not len(spacings):
        raise ValueError(f"median_spacing: expected one (3,) spacing per case, found an array "
                         f"of shape {spacings.shape}")
    return tuple(float(round(v, 6)) for v in np.median(spacings, axis=0))


def target_shape(shape, spacing, target, rtol: float = SPACING_RTOL):
    """The grid size a volume of ``shape (3,)`` at ``spacing`` gets at ``target`` spacing,
    in TensorFlow: ``round(shape * spacing / target)`` (at least 1), or ``shape`` itself
    when every axis' spacing is within ``rtol`` of the target. int32 ``(3,)``.

    >>> target_shape([256, 256, 60], [0.8, 0.8, 3.0], [1.0, 1.0, 1.0]).numpy().tolist()
    [205, 205, 180]
    >>> target_shape([240, 240, 155], [1.0, 1.0, 1.0005], [1.0, 1.0, 1.0]).numpy().tolist()
    [240, 240, 155]
    """
    shape = tf.cast(tf.convert_to_tensor(shape)[:3], tf.int32)
    # Rounded to float32 first: the SavedModel takes the spacing as float32, the Python
    # path and the cache as float64; all three must get the same grid.
    spacing = tf.cast(tf.cast(spacing, tf.float32), tf.float64)
    target = tf.constant(np.asarray(target, np.float64).reshape(3))
    scaled = tf.round(tf.cast(shape, tf.float64) * spacing / target)
    resized = tf.maximum(tf.cast(scaled, tf.int32), 1)
    same = tf.reduce_all(tf.abs(spacing - target) <= rtol * target)
    return tf.where(same, shape, resized)


def resample_tensor(volume, size, method: str = "linear"):
    """``volume (h, w, d, C)`` -> ``(size[0], size[1], size[2], C)``, in TensorFlow
    (graph-safe, dynamic sizes). Separable: ``tf.image.resize`` over (h, w) per slice,
    then over d (an axis kept at its size is reproduced exactly), half-pixel centres.
    ``method``: ``"linear"``, ``"cubic"`` (float32 out) or ``"nearest"`` (dtype kept; for
    labels). When ``size`` is the volume's own size the volume is returned as it is
    (bit-identical, no resize op runs)."""
    if method not in _TF_METHODS:
        raise ValueError(f"resampling method must be one of {sorted(_TF_METHODS)}. Received: {method!r}")
    volume = tf.convert_to_tensor(volume)
    size = tf.cast(size, tf.int32)
    dtype = volume.dtype if method == "nearest" else tf.float32

    def resize():
        x = tf.transpose(tf.cast(volume, dtype), [2, 0, 1, 3])  # (d, h, w, C)
        x = tf.image.resize(x, size[:2], _TF_METHODS[method])  # (d, H, W, C)
        x = tf.transpose(x, [1, 0, 2, 3])  # (H, d, W, C)
        x = tf.image.resize(x, tf.stack([size[2], size[1]]), _TF_METHODS[method])  # (H, D, W, C)
        return tf.cast(tf.transpose(x, [0, 2, 1, 3]), dtype)

    same = tf.reduce_all(tf.equal(tf.shape(volume)[:3], size))
    out = tf.cond(same, lambda: tf.cast(volume, dtype), resize)
    out.set_shape([None, None, None, volume.shape[-1]])
    return out


_RESAMPLE_GRAPHS = {}


def resample(array: np.ndarray, spacing, target, method: str = "linear",
             size: Optional[Sequence[int]] = None) -> np.ndarray:
    """`resample_tensor` on a NumPy ``array (H, W, D[, C])`` (through one compiled
    ``tf.function`` per rank, channel count, dtype and method): to ``size`` when given,
    else to `target_shape` of ``spacing`` -> ``target``."""
    array = np.asarray(array)
    squeeze = array.ndim == 3
    x = array[..., None] if squeeze else array
    if size is None:
        size = target_shape(x.shape, spacing, target).numpy()
    key = (x.shape[-1], x.dtype.str, method)
    if key not in _RESAMPLE_GRAPHS:
        _RESAMPLE_GRAPHS[key] = tf.function(
            lambda v, s: resample_tensor(v, s, method), autograph=False,
            input_signature=[tf.TensorSpec([None, None, None, x.shape[-1]], x.dtype),
                             tf.TensorSpec([3], tf.int32)])
    out = _RESAMPLE_GRAPHS[key](tf.convert_to_tensor(x), tf.constant(np.asarray(size, np.int32)))
    out = out.numpy()
    return out[..., 0] if squeeze else out


__all__ = [
    "SPACING_RTOL",
    "IMAGE_INTERPOLATIONS",
    "Reorientation",
    "axis_codes",
    "check_axis_codes",
    "median_spacing",
    "reorient",
    "resample",
    "resample_tensor",
    "target_shape",
    "undo_orientation",
    "voxel_spacing",
]

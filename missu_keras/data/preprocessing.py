"""Preprocessing as in the paper (Sec. IV-A), and its inverse for predictions.

A case goes: reorientation to the contract's axis codes (exact, `missu_keras.data.geometry`)
-> crop to the bounding box of the non-zero voxels (plus a margin) -> resampling of
the cropped box to the contract's target spacing (skipped exactly at that spacing) ->
z-score each modality over the brain mask (voxels where any modality is non-zero),
background 0 -> dataset labels to training classes (`missu_keras.labels`). The crop
box is kept, so a prediction goes back to the original grid exactly (`restore_labels`).

The settings live in one `PreprocessingConfig` that is saved with the model config
(``to_dict`` / ``from_dict``, JSON-safe), so inference applies the same steps.

The box and the normalisation are written once, in TensorFlow (`foreground_bounds`,
`normalize_tensor`, `preprocess_volume`: graph-safe, dynamic shapes): the SavedModel and
`missu_keras.inference` run them in their graphs, and the NumPy functions below
(`foreground_box`, `normalize`, `preprocess_case`, used by the training cache) call
them through `tf.function`s.

>>> import numpy as np
>>> image = np.zeros((10, 10, 10, 2), np.float32)
>>> image[2:6, 3:7, 4:8] = np.random.default_rng(0).uniform(1, 2, (4, 4, 4, 2))
>>> box = foreground_box(image, margin=1)
>>> box.start, box.stop
((1, 2, 3), (7, 8, 9))
>>> cropped = crop(image, box)
>>> cropped.shape
(6, 6, 6, 2)
>>> np.array_equal(uncrop(cropped, box), image)
True
>>> z = normalize_nonzero(cropped)
>>> brain = np.any(cropped != 0, axis=-1)
>>> bool(np.allclose(z[brain].mean(0), 0, atol=1e-5)), bool(np.all(z[~brain] == 0))
(True, True)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from missu_keras.config import StrictConfig, int_or_triple
from missu_keras.data.chaos import chaos_channel_names
from missu_keras.data.geometry import (IMAGE_INTERPOLATIONS, check_axis_codes, median_spacing,
                                       oriented_spacing,
                                       reorient, resample, resample_tensor, target_shape,
                                       voxel_spacing)
from missu_keras.data.io import read_nifti_header
from missu_keras.labels import LABEL_CONVENTIONS, LabelConvention, get_label_convention

NORMALIZATIONS = ("zscore_nonzero", "zscore", "none")
NORMALIZE_EPS = 1e-8  # floor of the standard deviation in the z-scores
DATASETS = ("brats", "chaos", "msd", "nnunet")
MEDIAN = "median"  # target_spacing filled in from the training set (`with_median_spacing`)

IntOr3 = Union[int, Sequence[int]]


@dataclasses.dataclass
class PreprocessingConfig(StrictConfig):
    """The preprocessing contract, stored with the model so inference matches training.

    Args:
        dataset: ``"brats"``, ``"chaos"``, ``"msd"`` or ``"nnunet"`` (which reader
            produced the cases; `missu_keras.data.datasets`).
        modalities: channel names in order, e.g. ``("flair", "t1ce", "t1", "t2")``
            (BraTS) or ``("in_phase", "out_phase")`` (CHAOS T1DUAL).
        label_convention: the name of the label convention: a registered one
            (``"brats"`` 0/1/2/4, ``"brats2023"`` 0/1/2/3, ``"chaos"``, ``"msd_brats"``)
            or, with ``label_definition``, that definition's name.
        label_definition: a dataset-defined convention (`missu_keras.labels.LabelConvention`
            ``to_dict()``, built from an nnU-Net / Decathlon ``dataset.json``), or
            ``None`` for a registered one. Read through `convention`.
        normalization: ``"zscore_nonzero"`` (per channel over voxels where any channel
            is non-zero, background 0; the paper's BraTS rule), ``"zscore"`` (per
            channel over the whole cropped volume; MR without a zero background) or
            ``"none"``.
        crop_to_nonzero: crop each case to the bounding box of its non-zero voxels.
        crop_margin: voxels kept around that box on each side (int or 3 ints).
        patch_size: training crop ``(H, W, D)``; multiples of 8 (three stride-2 steps).
        pad_multiple: whole validation / inference volumes are padded (at the end of
            each axis) to a multiple of this.
        orientation: axis codes every case is reoriented to first (exact flips and
            permutations, e.g. ``"RAS"``; an oblique scan goes to its closest canonical
            orientation), or ``None``: as stored.
        target_spacing: voxel size in mm ``(3 floats)`` the cropped box is resampled to,
            ``"median"`` (the training set's median per axis, filled in by
            `with_median_spacing` before the cache is built) or ``None``: as stored.
        image_interpolation: ``"linear"`` or ``"cubic"`` for images (labels: nearest
            neighbour; predicted probabilities go back linearly).

    >>> cfg = PreprocessingConfig.chaos()
    >>> cfg.patch_size, cfg.modalities
    ((128, 128, 32), ('in_phase', 'out_phase'))
    >>> PreprocessingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    True
    >>> PreprocessingConfig(patch_size=(128, 128, 30))
    Traceback (most recent call last):
    ...
    ValueError: patch_size must be positive multiples of 8 on every axis. Received: patch_size=(128, 128, 30); e.g. CHAOS depth 30 -> 32.
    """

    dataset: str = "brats"
    modalities: Tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
    label_convention: str = "brats"
    label_definition: Optional[Dict[str, Any]] = None
    normalization: str = "zscore_nonzero"
    crop_to_nonzero: bool = True
    crop_margin: IntOr3 = 2
    patch_size: IntOr3 = (128, 128, 128)
    pad_multiple: int = 8
    orientation: Optional[str] = None
    target_spacing: Optional[Union[Tuple[float, float, float], str]] = None
    image_interpolation: str = "linear"

    SETTINGS_NAME = "preprocessing settings"

    def normalize(self):
        self.crop_margin = int_or_triple(self.crop_margin, "crop_margin")
        self.patch_size = int_or_triple(self.patch_size, "patch_size")
        if self.orientation is not None:
            self.orientation = "".join(check_axis_codes(self.orientation))
        if isinstance(self.target_spacing, tuple):
            self.target_spacing = tuple(float(v) for v in self.target_spacing)

    def validate(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={self.dataset!r}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct and non-empty. Received: modalities={self.modalities}")
        if self.label_definition is not None:
            defined = get_label_convention(self.label_definition)
            if defined.name != self.label_convention:
                raise ValueError(
                    f"label_convention must be the name of label_definition "
                    f"({defined.name!r}). Received: label_convention={self.label_convention!r}"
                )
        elif self.label_convention not in LABEL_CONVENTIONS:
            raise ValueError(
                f"label_convention must be one of {sorted(LABEL_CONVENTIONS)}, or the name of a "
                f"label_definition. Received: label_convention={self.label_convention!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}. Received: normalization={self.normalization!r}"
            )
        if any(m < 0 for m in self.crop_margin):
            raise ValueError(f"crop_margin must be >= 0. Received: crop_margin={self.crop_margin}")
        if any(p <= 0 or p % 8 for p in self.patch_size):
            raise ValueError(
                "patch_size must be positive multiples of 8 on every axis. "
                f"Received: patch_size={self.patch_size}; e.g. CHAOS depth 30 -> 32."
            )
        if not isinstance(self.pad_multiple, int) or self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be an int >= 1. Received: pad_multiple={self.pad_multiple!r}")
        spacing = self.target_spacing
        if isinstance(spacing, str) and spacing != MEDIAN or (
                isinstance(spacing, tuple) and not all(np.isfinite(v) and v > 0 for v in spacing)):
            raise ValueError("target_spacing must be 3 positive numbers (mm), 'median' or None. "
                             f"Received: target_spacing={spacing!r}")
        if self.image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(f"image_interpolation must be one of {IMAGE_INTERPOLATIONS}. "
                             f"Received: image_interpolation={self.image_interpolation!r}")

    @property
    def resampling(self) -> Optional[Tuple[float, float, float]]:
        """The target spacing to resample to, ``None`` when the contract keeps the
        stored spacing; ``ValueError`` while it is still ``"median"``."""
        if self.target_spacing == MEDIAN:
            raise ValueError("target_spacing='median' is filled in from the training set "
                             "(with_median_spacing) before any case is preprocessed")
        return self.target_spacing

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def convention(self) -> LabelConvention:
        """The label convention of the contract: the dataset-defined ``label_definition``
        if any, else the registered ``label_convention``."""
        return get_label_convention(self.label_definition or self.label_convention)

    @property
    def num_classes(self) -> int:
        return self.convention.num_classes

    @classmethod
    def from_cases(cls, dataset: str, cases: Sequence, **overrides) -> "PreprocessingConfig":
        """THE contract of a training set: ``dataset`` (`DATASETS`) and its cases' channel
        names and label convention (the first case's; all must agree).

        BraTS and CHAOS get their paper settings (`brats`, `chaos`); Decathlon and
        nnU-Net datasets the BraTS-style steps (crop to the non-zero box, z-score over it)
        with the dataset's channels and labels; a convention no name registers is
        carried in ``label_definition``. ``overrides`` are further fields (patch_size, ...).

        >>> from missu_keras.labels import LabelConvention
        >>> class Case:  # anything with channel_names and label_convention
        ...     channel_names = ("ct",)
        ...     label_convention = LabelConvention("Dataset009_Spleen", (0, 1), {"spleen": (1,)})
        >>> cfg = PreprocessingConfig.from_cases("nnunet", [Case()], patch_size=32)
        >>> cfg.modalities, cfg.label_convention, cfg.num_classes
        (('ct',), 'Dataset009_Spleen', 2)
        """
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={dataset!r}")
        if not cases:
            raise ValueError(f"no {dataset} cases to take the channels and labels from")
        conv, channels = get_label_convention(cases[0].label_convention), tuple(cases[0].channel_names)
        for case in cases:
            if tuple(case.channel_names) != channels or get_label_convention(case.label_convention) != conv:
                raise ValueError(f"case {case.case_id!r}: channels {list(case.channel_names)} / labels "
                                 f"differ from the first case's ({list(channels)}, {conv.name})")
        if dataset == "chaos":
            return cls.chaos(sequence="T2SPIR" if len(channels) == 1 else "T1DUAL", **overrides)
        if dataset == "brats":
            return cls.brats(label_convention=conv.name, modalities=channels, **overrides)
        registered = LABEL_CONVENTIONS.get(conv.name) == conv
        # nnU-Net's rule for a new dataset: closest canonical orientation, the training
        # set's median spacing (filled in by `with_median_spacing`).
        kwargs = dict(dataset=dataset, modalities=channels, label_convention=conv.name,
                      label_definition=None if registered else conv.to_dict(),
                      orientation="RAS", target_spacing=MEDIAN)
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def brats(cls, label_convention: str = "brats", **overrides) -> "PreprocessingConfig":
        """The paper's BraTS settings (FLAIR, T1ce, T1, T2; 128^3 crops), in the
        orientation (LPS) and spacing (1 mm) BraTS files are stored in, so a BraTS case
        goes through untouched and another scan is brought to what the weights saw."""
        kwargs = dict(orientation="LPS", target_spacing=(1.0, 1.0, 1.0))
        kwargs.update(overrides)
        return cls(dataset="brats", label_convention=label_convention, **kwargs)

    @classmethod
    def chaos(cls, sequence: str = "T1DUAL", **overrides) -> "PreprocessingConfig":
        """The paper's CHAOS MR settings (in/out phase, liver; 128 x 128 x 32 crops).

        Orientation and spacing as stored (``None``): the paper trains on 128 x 128 x 30
        crops of the native grid (about 30 slices is a CHAOS MR volume's depth, which
        resampling its 5.5-9 mm slices to a finer spacing would multiply), so paper
        fidelity keeps the native grid; set ``target_spacing`` to resample."""
        kwargs = dict(
            dataset="chaos",
            modalities=chaos_channel_names(sequence),
            label_convention="chaos",
            normalization="zscore",
            patch_size=(128, 128, 32),
        )
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A crop ``[start, stop)`` inside a volume of ``original_shape`` (3 axes each)."""

    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]
    original_shape: Tuple[int, int, int]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def to_dict(self) -> dict:
        return {"start": list(self.start), "stop": list(self.stop), "original_shape": list(self.original_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "CropBox":
        return cls(tuple(int(v) for v in d["start"]), tuple(int(v) for v in d["stop"]),
                   tuple(int(v) for v in d["original_shape"]))

    @classmethod
    def full(cls, shape: Sequence[int]) -> "CropBox":
        shape = tuple(int(s) for s in shape[:3])
        return cls((0, 0, 0), shape, shape)


def foreground_bounds(volume, margin: IntOr3 = 0):
    """The box of the voxels where any channel is non-zero, in TensorFlow (graph-safe).

    Args:
        volume: tensor or array ``(H, W, D)`` or ``(H, W, D, C)`` (static rank, any
            sizes, any dtype).
        margin: voxels added on each side (clipped to the volume).

    Returns:
        ``(start, stop)``, int32 ``(3,)`` each (``stop`` exclusive); the whole volume
        when nothing is non-zero.
    """
    margin = int_or_triple(margin, "margin")
    volume = tf.convert_to_tensor(volume)
    if volume.shape.rank not in (3, 4):
        raise ValueError(f"foreground_bounds: volume must be (H, W, D) or (H, W, D, C); "
                         f"received shape {volume.shape}")
    nonzero = tf.not_equal(volume, tf.zeros([], volume.dtype))
    mask = tf.reduce_any(nonzero, axis=-1) if volume.shape.rank == 4 else nonzero
    shape = tf.shape(mask)
    starts, stops = [], []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        index = tf.cast(tf.where(tf.reduce_any(mask, axis=others))[:, 0], tf.int32)
        # Empty index: min is INT32_MAX and max INT32_MIN; the tf.where below drops them.
        starts.append(tf.maximum(tf.reduce_min(index) - margin[axis], 0))
        stops.append(tf.minimum(tf.reduce_max(index) + 1 + margin[axis], shape[axis]))
    found = tf.reduce_any(mask)
    start = tf.where(found, tf.stack(starts), tf.zeros([3], tf.int32))
    stop = tf.where(found, tf.stack(stops), shape)
    return start, stop


class _Graphs:
    """``function(volume, *settings)`` compiled once per volume rank, channel count,
    dtype and settings, for volumes of any size (one trace: no retracing per case). The
    NumPy entry points below run the TF code through these, so the training cache and
    inference cannot differ."""

    def __init__(self, function):
        self.function = function
        self.graphs = {}

    def __call__(self, volume, *settings):
        volume = tf.convert_to_tensor(volume)
        rank = volume.shape.rank
        channels = volume.shape[-1] if rank == 4 else None
        key = (rank, channels, volume.dtype, settings)
        if key not in self.graphs:
            spec = tf.TensorSpec([None] * (rank - 1) + [channels], volume.dtype)
            # autograph=False: plain TF ops, no Python control flow on tensors to convert.
            self.graphs[key] = tf.function(lambda v: self.function(v, *settings),
                                           input_signature=[spec], autograph=False)
        return self.graphs[key](volume)


_foreground_bounds_graph = _Graphs(foreground_bounds)


def foreground_box(image: np.ndarray, margin: IntOr3 = 0) -> CropBox:
    """Bounding box of the voxels where any channel of ``image`` is non-zero
    (`foreground_bounds` on a NumPy array).

    Args:
        image: ``(H, W, D)`` or ``(H, W, D, C)``.
        margin: voxels added on each side (clipped to the volume).

    Returns:
        A `CropBox`; the whole volume if nothing is non-zero.
    """
    image = np.asarray(image)
    start, stop = _foreground_bounds_graph(tf.convert_to_tensor(image),
                                           int_or_triple(margin, "margin"))
    return CropBox(tuple(int(v) for v in start.numpy()), tuple(int(v) for v in stop.numpy()),
                   tuple(int(s) for s in image.shape[:3]))


def crop(volume: np.ndarray, box: CropBox) -> np.ndarray:
    """``volume (H, W, D[, C])`` -> ``(h, w, d[, C])`` inside ``box`` (a copy)."""
    if tuple(volume.shape[:3]) != tuple(box.original_shape):
        raise ValueError(
            f"crop: volume shape {tuple(volume.shape[:3])} does not match the box's "
            f"original_shape {box.original_shape}"
        )
    return np.ascontiguousarray(volume[box.slices])


def uncrop(cropped: np.ndarray, box: CropBox, fill=0) -> np.ndarray:
    """Inverse of `crop`: ``(h, w, d[, C])`` -> ``original_shape[, C]``, ``fill`` outside."""
    if tuple(cropped.shape[:3]) != box.shape:
        raise ValueError(f"uncrop: expected a volume of the box shape {box.shape}, found {tuple(cropped.shape[:3])}")
    out = np.full(tuple(box.original_shape) + tuple(cropped.shape[3:]), fill, dtype=cropped.dtype)
    out[box.slices] = cropped
    return out


def pad_to_multiple(volume: np.ndarray, multiple: int = 8, value=0) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Pads the first three axes at their end to a multiple of ``multiple``.

    Returns ``(padded, original_hwd)``; `unpad` with that shape undoes it.

    >>> padded, hwd = pad_to_multiple(np.ones((5, 8, 9)), 8)
    >>> padded.shape, hwd, unpad(padded, hwd).shape
    ((8, 8, 16), (5, 8, 9), (5, 8, 9))
    """
    hwd = tuple(int(s) for s in volume.shape[:3])
    target = [-(-s // multiple) * multiple for s in hwd]
    pads = [(0, t - s) for s, t in zip(hwd, target)] + [(0, 0)] * (volume.ndim - 3)
    if not any(p[1] for p in pads):
        return volume, hwd
    return np.pad(volume, pads, constant_values=value), hwd


def unpad(volume: np.ndarray, hwd: Sequence[int]) -> np.ndarray:
    """Inverse of `pad_to_multiple`: keeps ``volume[:H, :W, :D]``."""
    return volume[: hwd[0], : hwd[1], : hwd[2]]


def normalize_tensor(image, method: str, eps: float = NORMALIZE_EPS):
    """Applies ``method`` in `NORMALIZATIONS` to ``image`` ``(h, w, d, C)``, in
    TensorFlow (graph-safe, dynamic sizes, static ``C``) -> float32 of the same shape.

    - ``"zscore_nonzero"``: z-score each channel over the brain mask (voxels where any
      channel is non-zero, paper Sec. IV-A); background stays exactly 0, an empty mask
      gives zeros.
    - ``"zscore"``: z-score each channel over every voxel.
    - ``"none"``: the image as float32.

    Means and standard deviations are taken in float64, one channel after the other (the
    float64 temporaries of one channel only are alive at a time); a channel constant
    over its voxels becomes 0 (the deviation is floored at ``eps``).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {method!r}")
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    if method == "none":
        return image
    mask = tf.reduce_any(tf.not_equal(image, 0.0), axis=-1) if method == "zscore_nonzero" else None
    channels = []
    for c in range(image.shape[-1]):
        with tf.control_dependencies(channels[-1:]):
            x = tf.cast(image[..., c], tf.float64)
        values = tf.reshape(x, [-1]) if mask is None else tf.boolean_mask(x, mask)
        mean = tf.reduce_mean(values)
        std = tf.sqrt(tf.reduce_mean(tf.square(values - mean)))
        z = tf.cast((x - mean) / tf.maximum(std, tf.constant(eps, tf.float64)), tf.float32)
        # Background stays exactly 0 (an empty brain mask gives all zeros).
        channels.append(z if mask is None else tf.where(mask, z, 0.0))
    return tf.stack(channels, axis=-1)


_normalize_graph = _Graphs(normalize_tensor)


def normalize(image: np.ndarray, method: str, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """`normalize_tensor` on a NumPy ``image (H, W, D, C)`` -> float32 NumPy array."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {method!r}")
    image = tf.convert_to_tensor(np.asarray(image, dtype=np.float32))
    return _normalize_graph(image, method, float(eps)).numpy()


def normalize_nonzero(image: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """Z-score each channel over the brain mask; background stays 0.

    ``image (H, W, D, C)`` -> float32 of the same shape. The mask is the voxels where
    any channel is non-zero (paper Sec. IV-A); a channel constant over the mask
    becomes 0 there. (`normalize` with ``"zscore_nonzero"``.)
    """
    return normalize(image, "zscore_nonzero", eps)


def normalize_whole(image: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """Z-score each channel of ``image (H, W, D, C)`` over every voxel (`normalize`
    with ``"zscore"``)."""
    return normalize(image, "zscore", eps)


def preprocess_volume(volume, normalization: str, crop_margin: Optional[IntOr3] = None,
                      spacing=None, target_spacing: Optional[Sequence[float]] = None,
                      interpolation: str = "linear"):
    """The image part of the preprocessing contract, in TensorFlow (graph-safe), on a
    volume already in the contract's orientation (`missu_keras.data.geometry.reorient`).

    Args:
        volume: raw scan ``(H, W, D, C)`` float32 (static ``C``, any sizes).
        normalization: one of `NORMALIZATIONS`.
        crop_margin: crop to the non-zero box widened by this margin
            (`foreground_bounds`); ``None`` keeps the whole volume.
        spacing: the volume's voxel size in mm, ``(3,)`` (a tensor or numbers), or
            ``None``: already at ``target_spacing``.
        target_spacing: resample the cropped box to this spacing
            (`missu_keras.data.geometry.target_shape`: skipped exactly within 0.1 %),
            ``None``: keep the grid.
        interpolation: ``"linear"`` or ``"cubic"``.

    Returns:
        ``(image, start, stop)``: ``image (h, w, d, C)`` float32 cropped, resampled and
        normalised (`normalize_tensor`), and the crop box in the original grid, int32
        ``(3,)`` each.
    """
    volume = tf.cast(tf.convert_to_tensor(volume), tf.float32)
    channels = volume.shape[-1]
    if crop_margin is None:
        start, stop = tf.zeros([3], tf.int32), tf.shape(volume)[:3]
    else:
        start, stop = foreground_bounds(volume, crop_margin)
    cropped = tf.slice(volume, tf.concat([start, [0]], 0), tf.concat([stop - start, [-1]], 0))
    cropped.set_shape([None, None, None, channels])
    if spacing is not None and target_spacing is not None:
        size = target_shape(stop - start, spacing, target_spacing)
        cropped = resample_tensor(cropped, size, interpolation)
    return normalize_tensor(cropped, normalization), start, stop


_preprocess_volume_graph = _Graphs(preprocess_volume)


@dataclasses.dataclass
class PreprocessedCase:
    """Output of `preprocess_case`.

    Attributes:
        case_id: the case name.
        image: ``(h, w, d, C)`` float32, cropped, resampled and normalised.
        classes: ``(h, w, d)`` uint8 training classes, or ``None``.
        box: where the crop sits in the reoriented ``(H, W, D)`` grid (before resampling).
        affine: ``(4, 4)`` of the reoriented grid.
        spacing: ``(3,)`` voxel size in mm of the reoriented grid.
    """

    case_id: str
    image: np.ndarray
    classes: Optional[np.ndarray]
    box: CropBox
    affine: np.ndarray
    spacing: Tuple[float, float, float]


_preprocess_volume_spaced_graph = {}


def _preprocess_image(image: np.ndarray, spacing, config: PreprocessingConfig):
    """`preprocess_volume` on NumPy through a ``tf.function`` (compiled once per channel
    count and settings; the spacing is an input, so no retracing per case)."""
    margin = tuple(config.crop_margin) if config.crop_to_nonzero else None
    target = config.resampling
    if target is None:
        return _preprocess_volume_graph(tf.convert_to_tensor(image), config.normalization, margin)
    key = (image.shape[-1], config.normalization, margin, target, config.image_interpolation)
    if key not in _preprocess_volume_spaced_graph:
        _preprocess_volume_spaced_graph[key] = tf.function(
            lambda v, s: preprocess_volume(v, config.normalization, margin, s, target,
                                           config.image_interpolation),
            input_signature=[tf.TensorSpec([None, None, None, image.shape[-1]], tf.float32),
                             tf.TensorSpec([3], tf.float64)], autograph=False)
    return _preprocess_volume_spaced_graph[key](tf.convert_to_tensor(image),
                                                tf.constant(spacing, tf.float64))


def preprocess_case(loaded, config: PreprocessingConfig) -> PreprocessedCase:
    """Reorient, crop, resample, normalise and map labels of a validated `LoadedCase`.

    ``loaded.image (H, W, D, C)`` -> ``image (h, w, d, C)`` float32 and
    ``classes (h, w, d)`` uint8 (via `missu_keras.labels`; BraTS 4 -> 3; resampled with
    nearest neighbour onto the image's grid). The case's channels must be
    ``config.modalities``, in that order.
    """
    if tuple(loaded.channel_names) != tuple(config.modalities):
        raise ValueError(
            f"case {loaded.case_id!r}: channel order mismatch: expected {list(config.modalities)} "
            f"(preprocessing config), found {list(loaded.channel_names)}"
        )
    image, labels, affine = np.asarray(loaded.image, np.float32), loaded.labels, np.asarray(loaded.affine)
    if config.orientation is not None:
        moved = reorient(image, affine, config.orientation)
        image, affine = np.ascontiguousarray(moved.array), moved.affine
        if labels is not None:
            labels = np.ascontiguousarray(moved.apply(labels))
    spacing, grid = voxel_spacing(affine), tuple(int(s) for s in image.shape[:3])
    image, start, stop = _preprocess_image(image, spacing, config)
    box = CropBox(tuple(int(v) for v in start.numpy()), tuple(int(v) for v in stop.numpy()), grid)
    image = image.numpy()
    classes = None
    if labels is not None:
        classes = config.convention.to_classes(crop(labels, box), source=f"case {loaded.case_id!r} labels")
        if classes.shape != image.shape[:3]:
            classes = resample(classes, None, None, "nearest", size=image.shape[:3])
    return PreprocessedCase(loaded.case_id, image, classes, box, affine, spacing)


def case_affine(case) -> np.ndarray:
    """The voxel-to-world affine of a found case, from its reference NIfTI's header when it
    has one (no voxels read), else from the loaded case."""
    reference = getattr(case, "reference_path", None)
    if reference is not None:
        return read_nifti_header(reference, channels=True)[1]  # a Decathlon image is 4-D
    return np.asarray(case.load().affine)


def with_median_spacing(config: PreprocessingConfig, cases) -> PreprocessingConfig:
    """``config`` with ``target_spacing="median"`` replaced by the median voxel spacing
    per axis of ``cases`` in the contract's orientation (nnU-Net's rule); any other
    config is returned as it is. The training run calls this once it has found its cases,
    so the model stores the number, not the word."""
    if config.target_spacing != MEDIAN:
        return config
    if not cases:
        raise ValueError("target_spacing='median' needs at least one training case")
    spacings = [oriented_spacing(affine, config.orientation) if config.orientation else voxel_spacing(affine)
                for affine in map(case_affine, cases)]
    return dataclasses.replace(config, target_spacing=median_spacing(spacings))


def restore_labels(classes: np.ndarray, box: CropBox, label_convention) -> np.ndarray:
    """Training classes on the cropped (possibly padded) grid -> dataset labels on the original grid.

    ``classes (h', w', d')`` with ``h' >= h`` etc. (padding from `pad_to_multiple` is
    dropped) -> ``(H, W, D)`` uint8 labels (BraTS class 3 -> 4), background outside the box.
    The classes must be on the box's grid: with a contract that resamples, go through
    `missu_keras.inference` (which resamples the probabilities back) instead, and a
    reorientation is undone by `missu_keras.data.geometry.undo_orientation`.

    >>> box = CropBox((1, 1, 1), (3, 3, 3), (4, 4, 4))
    >>> out = restore_labels(np.full((8, 8, 8), 3), box, "brats")
    >>> out.shape, int(out.sum()), int(out.max())
    ((4, 4, 4), 32, 4)
    """
    classes = unpad(np.asarray(classes), box.shape)
    if tuple(classes.shape[:3]) != box.shape:
        raise ValueError(f"restore_labels: expected at least the box shape {box.shape}, found {classes.shape}")
    labels = get_label_convention(label_convention).to_labels(classes)
    return uncrop(labels, box, fill=0)

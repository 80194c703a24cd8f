"""``tf.data`` input pipelines from a `DataCache`: random training crops and whole cases.

Training (`make_training_dataset`), per sample ``i`` (an infinite counter):

1. case: epoch ``i // n`` draws a permutation of the ``n`` cases from the seed, sample
   ``i`` takes position ``i % n`` (every case once per epoch, reshuffled each epoch);
2. crop of ``patch_size`` (`sample_crop_start`): uniform inside the case, or with
   probability ``foreground_oversample`` centred on a voxel of a random foreground
   class (nnU-Net's over-sampling); an axis shorter than the patch is zero-padded
   with the case placed at a random offset, so a crop never leaves the padded volume;
3. optional in-plane rotation / scaling (CHAOS): the patch is resampled from the case
   around the crop centre (scipy ``map_coordinates``, linear for images, nearest for
   labels, 0 outside), inside the same ``numpy_function`` as the crop;
4. random flips of each axis (p = 0.5), per-channel intensity scale and shift, and
   Gaussian noise, as stateless TensorFlow ops.

Every random draw is a function of ``(seed, i)`` only (NumPy ``default_rng([seed, i])``
and ``tf.random.stateless_*`` with Philox), and the options set
``deterministic=True``, so the same seed gives identical batches whatever the number
of parallel calls. ``auto_shard_policy = DATA`` makes ``tf.distribute`` shard by
element (the source is a counter, not files). ``MirroredStrategy`` on one machine
just splits each global batch across replicas. With several workers, prefer
``strategy.distribute_datasets_from_function(lambda ctx: make_training_dataset(...,
input_context=ctx))``: it shards the sample counter before any crop is made, where
the DATA policy alone has every worker compute every crop and keep its share.

Images are ``(B, H, W, D, C)`` float32, labels ``(B, H, W, D)`` int32 training classes.

>>> import tempfile
>>> from missu_keras.data import (PreprocessingConfig, build_cache, find_brats_cases,
...                               write_synthetic_brats)
>>> root, cache_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=2, seed=0, shape=(24, 24, 16))
>>> cache = build_cache(find_brats_cases(root), cache_dir,
...                     PreprocessingConfig.brats(patch_size=16), progress=False).cache
>>> ds = make_training_dataset(cache, batch_size=2, seed=0)
>>> x, y = next(iter(ds))
>>> x.shape, x.dtype.name, y.shape, y.dtype.name
(TensorShape([2, 16, 16, 16, 4]), 'float32', TensorShape([2, 16, 16, 16]), 'int32')
>>> val = make_validation_dataset(cache)
>>> [tuple(x.shape[1:4]) == tuple(s + (-s) % 8 for s in cache.entry(c).shape[:3])
...  for (x, _), c in zip(val, cache.case_ids)]
[True, True]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from scipy import ndimage

from missu_keras.config import StrictConfig
from missu_keras.data.cache import DataCache
from missu_keras.data.preprocessing import pad_to_multiple

_EPOCH_STREAM = 0x5EED  # separates the epoch-permutation stream from per-sample streams


@dataclasses.dataclass
class AugmentationConfig(StrictConfig):
    """Training augmentations; `brats` and `chaos` give the paper's recipes.

    Args:
        flip_axes: axes of ``(H, W, D)`` flipped, each with probability ``flip_prob``.
        flip_prob: probability of each flip.
        intensity_scale: per-channel multiplier range ``(lo, hi)``, or ``None``.
        intensity_shift: per-channel offset range ``(lo, hi)``, or ``None``.
        rotation_prob: probability of an in-plane (H-W) rotation.
        rotation_degrees: rotation angle drawn from ``U(-deg, deg)``.
        scale_prob: probability of a zoom.
        scale_range: zoom factor range (``> 1`` magnifies).
        scale_axes: axes the zoom acts on (default in-plane, as nnU-Net does for
            anisotropic data such as CHAOS).
        noise_prob: probability of additive Gaussian noise.
        noise_variance: its variance range ``(lo, hi)``.
    """

    flip_axes: Tuple[int, ...] = (0, 1, 2)
    flip_prob: float = 0.5
    intensity_scale: Optional[Tuple[float, float]] = (0.9, 1.1)
    intensity_shift: Optional[Tuple[float, float]] = (-0.1, 0.1)
    rotation_prob: float = 0.0
    rotation_degrees: float = 180.0
    scale_prob: float = 0.0
    scale_range: Tuple[float, float] = (0.7, 1.4)
    scale_axes: Tuple[int, ...] = (0, 1)
    noise_prob: float = 0.0
    noise_variance: Tuple[float, float] = (0.0, 0.1)

    SETTINGS_NAME = "augmentation settings"

    def validate(self):
        for name in ("flip_prob", "rotation_prob", "scale_prob", "noise_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={v!r}")
        for name, axes in (("flip_axes", self.flip_axes), ("scale_axes", self.scale_axes)):
            if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
                raise ValueError(f"{name} must be distinct axes among (0, 1, 2). Received: {name}={axes}")
        if self.scale_range[0] <= 0 or self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi. Received: scale_range={self.scale_range}")
        if self.noise_variance[0] < 0 or self.noise_variance[0] > self.noise_variance[1]:
            raise ValueError(f"noise_variance must be 0 <= lo <= hi. Received: noise_variance={self.noise_variance}")

    @property
    def spatial(self) -> bool:
        return self.rotation_prob > 0 or self.scale_prob > 0

    @classmethod
    def brats(cls) -> "AugmentationConfig":
        """Paper Sec. IV-A: flips of the 3 axes (p 0.5), scale U(0.9, 1.1), shift U(-0.1, 0.1)."""
        return cls()

    @classmethod
    def chaos(cls) -> "AugmentationConfig":
        """nnU-Net's anisotropic recipe: flips, in-plane rotation (p 0.2, +-180 deg),
        in-plane zoom (p 0.2, 0.7-1.4), Gaussian noise (p 0.1, variance 0-0.1)."""
        return cls(intensity_scale=None, intensity_shift=None, rotation_prob=0.2, scale_prob=0.2,
                   noise_prob=0.1)

    @classmethod
    def none(cls) -> "AugmentationConfig":
        """Crops only."""
        return cls(flip_axes=(), intensity_scale=None, intensity_shift=None)


def crop_start_range(shape: Sequence[int], patch_size: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """Inclusive ``(lo, hi)`` crop start per axis: ``[0, s - p]``, or ``[s - p, 0]`` if ``s < p``."""
    return tuple((min(0, s - p), max(0, s - p)) for s, p in zip(shape[:3], patch_size))


def sample_crop_start(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    foreground: Optional[np.ndarray] = None,
    foreground_prob: float = 0.0,
) -> Tuple[int, int, int]:
    """Start ``(3,)`` of a random crop (may be negative where the case is smaller).

    Args:
        shape: case ``(H, W, D[, C])``.
        patch_size: crop ``(h, w, d)``.
        rng: NumPy generator.
        foreground: ``(N, 4)`` rows ``(i, j, k, class)`` (`DataCache.load_foreground`).
        foreground_prob: probability of centring the crop on a foreground voxel of a
            class drawn uniformly among the classes present (nnU-Net).

    The crop ``[start, start + patch)`` always lies inside the case padded to at
    least ``patch_size`` on every axis.

    >>> start = sample_crop_start((10, 40, 40), (16, 16, 16), np.random.default_rng(0))
    >>> -6 <= start[0] <= 0 and 0 <= start[1] <= 24 and 0 <= start[2] <= 24
    True
    """
    ranges = crop_start_range(shape, patch_size)
    use_fg = (foreground is not None and len(foreground) > 0 and foreground_prob > 0
              and rng.random() < foreground_prob)
    if use_fg:
        classes = np.unique(foreground[:, 3])
        pts = foreground[foreground[:, 3] == classes[rng.integers(len(classes))]]
        voxel = pts[rng.integers(len(pts)), :3]
        return tuple(int(np.clip(v - p // 2, lo, hi)) for v, p, (lo, hi) in zip(voxel, patch_size, ranges))
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in ranges)


def aligned_zeros(shape: Sequence[int], dtype, align: int = 64) -> np.ndarray:
    """``np.zeros`` whose data start on an ``align``-byte boundary.

    ``tf.numpy_function`` hands such an array to TensorFlow without a copy (an
    unaligned one is copied: about 25 ms for a 128^3 x 4 float32 patch).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.zeros(nbytes + align, np.uint8)
    offset = (-buf.ctypes.data) % align
    return buf[offset: offset + nbytes].view(dtype).reshape(tuple(shape))


def extract_patch(volume: np.ndarray, start: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
    """``volume[start : start + patch]`` on the first three axes, zeros outside the volume.

    ``volume (H, W, D[, C])`` -> ``patch_size[ + (C,)]``, same dtype (a copy).

    >>> extract_patch(np.arange(4).reshape(4, 1, 1), (-2, 0, 0), (4, 1, 1)).ravel().tolist()
    [0, 0, 0, 1]
    """
    out = aligned_zeros(tuple(patch_size) + tuple(volume.shape[3:]), volume.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch_size, volume.shape[:3]):
        a, b = max(s, 0), min(s + p, n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _resample_patch(image, label, start, patch_size, angle, scales):
    """Rotates (in the H-W plane) and zooms the patch around its centre by resampling the case."""
    p = np.asarray(patch_size, np.float64)
    centre = np.asarray(start, np.float64) + (p - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) - (n - 1) / 2 for n in patch_size],
                                indexing="ij"), axis=0)
    grid /= np.asarray(scales, np.float64).reshape(3, 1, 1, 1)
    c, s = math.cos(angle), math.sin(angle)
    src = np.empty_like(grid)
    src[0] = c * grid[0] - s * grid[1]
    src[1] = s * grid[0] + c * grid[1]
    src[2] = grid[2]
    src += centre.reshape(3, 1, 1, 1)
    # Read only the block the sampling points touch (zeros outside the case).
    lo = np.floor(src.reshape(3, -1).min(axis=1)).astype(int) - 1
    hi = np.ceil(src.reshape(3, -1).max(axis=1)).astype(int) + 2
    block_img = extract_patch(image, lo, hi - lo)
    block_lab = extract_patch(label, lo, hi - lo)
    src -= lo.reshape(3, 1, 1, 1)
    out_img = aligned_zeros(tuple(patch_size) + (image.shape[3],), np.float32)
    for ch in range(image.shape[3]):
        out_img[..., ch] = ndimage.map_coordinates(block_img[..., ch], src, order=1, mode="constant", cval=0.0)
    out_lab = aligned_zeros(patch_size, np.uint8)
    ndimage.map_coordinates(block_lab, src, output=out_lab, order=0, mode="constant", cval=0)
    return out_img, out_lab


class _PatchSampler:
    """The NumPy half of the training pipeline: sample index -> (image, label) crop."""

    def __init__(self, cache: DataCache, case_ids, patch_size, augmentation, foreground_prob, seed):
        self.image_paths = [str(cache.image_path(c)) for c in case_ids]
        self.label_paths = [str(cache.label_path(c)) for c in case_ids]
        self.foreground = [cache.load_foreground(c) for c in case_ids]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.aug = augmentation
        self.foreground_prob = float(foreground_prob)
        self.seed = int(seed)

    def case_index(self, i: int) -> int:
        n = len(self.image_paths)
        epoch, pos = divmod(int(i), n)
        return int(np.random.default_rng([self.seed, _EPOCH_STREAM, epoch]).permutation(n)[pos])

    def __call__(self, i):
        i = int(i)
        k = self.case_index(i)
        rng = np.random.default_rng([self.seed, i])
        image = np.load(self.image_paths[k], mmap_mode="r", allow_pickle=False)
        label = np.load(self.label_paths[k], mmap_mode="r", allow_pickle=False)
        start = sample_crop_start(image.shape, self.patch_size, rng, self.foreground[k], self.foreground_prob)
        aug = self.aug
        angle, scales = 0.0, [1.0, 1.0, 1.0]
        if aug.rotation_prob > 0 and rng.random() < aug.rotation_prob:
            angle = math.radians(rng.uniform(-aug.rotation_degrees, aug.rotation_degrees))
        if aug.scale_prob > 0 and rng.random() < aug.scale_prob:
            zoom = rng.uniform(*aug.scale_range)
            scales = [zoom if a in aug.scale_axes else 1.0 for a in range(3)]
        if angle != 0.0 or scales != [1.0, 1.0, 1.0]:
            return _resample_patch(image, label, start, self.patch_size, angle, scales)
        return extract_patch(image, start, self.patch_size), extract_patch(label, start, self.patch_size)


def augment_patch(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, augmentation: AugmentationConfig):
    """Flips, intensity scale / shift and noise with stateless ops.

    Args:
        image: ``(H, W, D, C)`` float32.
        label: ``(H, W, D)`` integer.
        seed: ``(2,)`` int64 stateless seed; the same seed gives the same result.
        augmentation: an `AugmentationConfig`.

    Returns:
        ``(image, label)``; every flip is applied to both.

    >>> x = tf.reshape(tf.range(8, dtype=tf.float32), (2, 2, 2, 1))
    >>> aug = AugmentationConfig(flip_axes=(0,), flip_prob=1.0, intensity_scale=None, intensity_shift=None)
    >>> xf, yf = augment_patch(x, tf.cast(x[..., 0], tf.int32), tf.constant([1, 2], tf.int64), aug)
    >>> bool(tf.reduce_all(xf[..., 0] == tf.cast(yf, tf.float32))), float(xf[0, 0, 0, 0])
    (True, 4.0)
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    if augmentation.flip_axes:
        # One reverse over all drawn axes: a single pass over the patch instead of one per axis.
        draws = tf.random.stateless_uniform([3], seeds[0], alg="philox") < augmentation.flip_prob
        flags = tf.gather(draws, list(augmentation.flip_axes))
        axes = tf.boolean_mask(tf.constant(augmentation.flip_axes, tf.int32), flags)
        image, label = tf.reverse(image, axes), tf.reverse(label, axes)
    channels = tf.shape(image)[-1:]
    if augmentation.intensity_scale is not None:
        lo, hi = augmentation.intensity_scale
        image = image * tf.random.stateless_uniform(channels, seeds[3], lo, hi, alg="philox")
    if augmentation.intensity_shift is not None:
        lo, hi = augmentation.intensity_shift
        image = image + tf.random.stateless_uniform(channels, seeds[4], lo, hi, alg="philox")
    if augmentation.noise_prob > 0:
        apply = tf.random.stateless_uniform([], seeds[5], alg="philox") < augmentation.noise_prob
        lo, hi = augmentation.noise_variance
        std = tf.sqrt(tf.random.stateless_uniform([], seeds[6], lo, hi, alg="philox"))
        image = tf.cond(
            apply,
            lambda: image + std * tf.random.stateless_normal(tf.shape(image), seeds[7], alg="philox"),
            lambda: image,
        )
    return image, label


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # The source is a counter / case index, not files: shard elements across workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _as_cache(cache) -> DataCache:
    return cache if isinstance(cache, DataCache) else DataCache(cache)


def _resolve_case_ids(cache: DataCache, case_ids, need_labels: bool):
    ids = list(cache.case_ids if case_ids is None else case_ids)
    if not ids:
        raise ValueError("no cases selected: case_ids is empty")
    for c in ids:
        cache.entry(c)
    if need_labels:
        unlabelled = [c for c in ids if cache.entry(c).label_file is None]
        if unlabelled:
            raise ValueError(f"cases without labels cannot be used for training / validation: {unlabelled}")
    return ids


def make_training_dataset(
    cache,
    batch_size: int,
    patch_size: Optional[Sequence[int]] = None,
    augmentation: Optional[AugmentationConfig] = None,
    case_ids: Optional[Sequence[str]] = None,
    seed: Optional[int] = None,
    foreground_oversample: float = 0.0,
    repeat: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = tf.data.AUTOTUNE,
    drop_remainder: bool = True,
    input_context: Optional[tf.distribute.InputContext] = None,
    skip_samples: int = 0,
) -> tf.data.Dataset:
    """Random augmented crops for ``model.fit``.

    Args:
        cache: a `DataCache` or its folder.
        batch_size: global batch size (per-replica under ``input_context``).
        patch_size: crop ``(H, W, D)``; default ``cache.config.patch_size``.
        augmentation: default `AugmentationConfig.chaos` for CHAOS caches, else `.brats`.
        case_ids: subset of the cache (e.g. a split); default all cases.
        seed: int >= 0; same seed -> identical batches. ``None`` draws one.
        foreground_oversample: probability a crop is centred on foreground.
        repeat: ``True`` for an endless stream of epochs (pass ``steps_per_epoch``,
            e.g. ``ceil(len(case_ids) / batch_size)``, to ``fit``); ``False`` for one
            epoch that is identical on every iteration.
        num_parallel_calls: parallel map width.
        prefetch: batches prefetched.
        drop_remainder: drop a last partial batch (static batch shape).
        input_context: from ``strategy.distribute_datasets_from_function``; shards
            the samples by pipeline.
        skip_samples: start the endless stream this many samples in (cheaply: the
            sample index is skipped before anything is read), so a resumed training
            sees the crops an uninterrupted one would have seen next.

    Returns:
        ``tf.data.Dataset`` of ``(image (B, H, W, D, C) float32, label (B, H, W, D) int32)``.
    """
    cache = _as_cache(cache)
    ids = _resolve_case_ids(cache, case_ids, need_labels=True)
    patch = tuple(int(p) for p in (patch_size or cache.config.patch_size))
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 3 positive ints. Received: patch_size={patch_size!r}")
    if augmentation is None:
        augmentation = AugmentationConfig.chaos() if cache.config.dataset == "chaos" else AugmentationConfig.brats()
    if not 0.0 <= float(foreground_oversample) <= 1.0:
        raise ValueError(f"foreground_oversample must be in [0, 1]. Received: {foreground_oversample!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0. Received: seed={seed!r}")
    seed = int(seed)
    channels = cache.config.num_channels
    sampler = _PatchSampler(cache, ids, patch, augmentation, foreground_oversample, seed)

    def load(i):
        image, label = tf.numpy_function(sampler, [i], [tf.float32, tf.uint8], stateful=False)
        image.set_shape(patch + (channels,))
        label.set_shape(patch)
        image, label = augment_patch(image, label, tf.stack([tf.constant(seed, tf.int64), i]), augmentation)
        return image, tf.cast(label, tf.int32)  # flipped as uint8: a quarter of the bytes

    if int(skip_samples) < 0:
        raise ValueError(f"skip_samples must be >= 0. Received: skip_samples={skip_samples!r}")
    ds = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(len(ids))
    if skip_samples:
        ds = ds.skip(int(skip_samples))
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(int(batch_size))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    ds = ds.prefetch(prefetch)
    return ds.with_options(_options())


def make_validation_dataset(
    cache,
    case_ids: Optional[Sequence[str]] = None,
    pad_multiple: Optional[int] = None,
    include_labels: bool = True,
) -> tf.data.Dataset:
    """Whole preprocessed cases, batch 1, in ``case_ids`` order.

    Each cropped case is zero-padded at the end of each axis to a multiple of
    ``pad_multiple`` (default ``cache.config.pad_multiple``, 8); strip it with
    `missu_keras.data.preprocessing.restore_labels` (or ``unpad``) using
    ``cache.entry(case_id)``.

    Returns:
        ``(image (1, H, W, D, C) float32, label (1, H, W, D) int32)``, or images only
        with ``include_labels=False`` (unlabelled cases allowed).
    """
    cache = _as_cache(cache)
    ids = _resolve_case_ids(cache, case_ids, need_labels=include_labels)
    multiple = int(pad_multiple or cache.config.pad_multiple)
    channels = cache.config.num_channels
    image_paths = [str(cache.image_path(c)) for c in ids]
    label_paths = [str(cache.label_path(c)) if include_labels else "" for c in ids]

    def read(k):
        image = pad_to_multiple(np.load(image_paths[int(k)], allow_pickle=False), multiple)[0]
        if not include_labels:
            return image
        label = pad_to_multiple(np.load(label_paths[int(k)], allow_pickle=False), multiple)[0]
        return image, label

    def load(k):
        if include_labels:
            image, label = tf.numpy_function(read, [k], [tf.float32, tf.uint8], stateful=False)
            label.set_shape((None, None, None))
            image.set_shape((None, None, None, channels))
            return image, tf.cast(label, tf.int32)
        image = tf.numpy_function(read, [k], tf.float32, stateful=False)
        image.set_shape((None, None, None, channels))
        return image

    ds = tf.data.Dataset.range(len(ids)).map(load, num_parallel_calls=2, deterministic=True)
    return ds.batch(1).prefetch(1).with_options(_options())

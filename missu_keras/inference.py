"""`SlidingWindowInferer`: whole-volume probabilities from a patch-sized model.

MISSU's learned position embedding fixes the patch size, so a full BraTS volume
(240 x 240 x 155) is segmented window by window: windows of ``roi_size`` overlapping
by ``overlap``, each prediction weighted by a Gaussian importance map (the centre of a
window is more reliable than its border), optionally averaged over the 8 mirrorings
of the 3 spatial axes (test-time augmentation). MONAI's ``SlidingWindowInferer`` and
nnU-Net's predictor are the models for the design: a small object holding the settings
and called with ``(predictor, volume)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np

# Smallest importance weight, relative to the window centre (1.0): a Gaussian with
# sigma = roi / 8 falls to ~1e-11 in the corners, which would make voxels covered only
# by window corners numerically fragile (MONAI clamps at the same value).
MIN_IMPORTANCE = 1e-3

MODES = ("gaussian", "constant")
PRECISIONS = (None, "float32", "mixed_bfloat16")
SPATIAL_AXES = (1, 2, 3)  # of a (batch, H, W, D, C) window batch


def _as_triple(value, name) -> Tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    try:
        triple = tuple(int(v) for v in value)
    except TypeError:
        triple = ()
    if len(triple) != 3 or min(triple) < 1:
        raise ValueError(
            f"{name} must be a positive int or 3 positive ints (H, W, D); received: {value!r}"
        )
    return triple


def window_starts(size: int, roi: int, overlap: float) -> List[int]:
    """Start positions of the windows along one axis.

    The step aims at ``roi * (1 - overlap)`` (at least 1 voxel); the windows are then
    spread evenly so that the first starts at 0 and the last ends flush with the
    volume (nnU-Net's rule), so every voxel is covered. An axis no longer than the
    window gets one window at 0 (the volume is padded to the window).

    >>> window_starts(20, 8, 0.5)
    [0, 4, 8, 12]
    >>> window_starts(20, 8, 0.0)
    [0, 6, 12]
    >>> window_starts(5, 8, 0.5)
    [0]
    """
    if size <= roi:
        return [0]
    target_step = max(1, int(roi * (1.0 - overlap)))
    num = int(math.ceil((size - roi) / target_step)) + 1
    step = (size - roi) / (num - 1)
    return sorted({int(round(i * step)) for i in range(num)})


def importance_map(roi_size: Sequence[int], mode: str = "gaussian",
                   sigma_scale: float = 0.125) -> np.ndarray:
    """Weights of one window, float32 ``roi_size``, maximum 1.

    ``"gaussian"``: a separable Gaussian centred on the window, sigma =
    ``sigma_scale * roi`` per axis, floored at `MIN_IMPORTANCE`; ``"constant"``: ones.
    """
    roi_size = _as_triple(roi_size, "roi_size")
    if mode == "constant":
        return np.ones(roi_size, np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be one of {MODES}; received: {mode!r}")
    weights = np.ones((), np.float64)
    for r in roi_size:
        x = np.arange(r, dtype=np.float64) - (r - 1) / 2.0
        g = np.exp(-0.5 * (x / (sigma_scale * r)) ** 2)
        weights = np.multiply.outer(weights, g)
    weights /= weights.max()
    return np.maximum(weights, MIN_IMPORTANCE).astype(np.float32)


def rebuild_with_dtype_policy(model: keras.Model, policy: str = "mixed_bfloat16") -> keras.Model:
    """A copy of ``model`` rebuilt under the global dtype ``policy``, with its weights.

    Works for models whose ``from_config`` rebuilds layers from constructor arguments
    without a fixed dtype (e.g. `missu_keras.models.backbone.MISSUBackbone`). The copy
    does not follow later weight updates of ``model``.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        clone = type(model).from_config(model.get_config())
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


class SlidingWindowInferer:
    """Runs a patch model over a whole volume.

    Args:
        roi_size: window size ``(H, W, D)`` or one int for all axes; the model's patch
            size (e.g. 128).
        overlap: fraction of the window shared by neighbours along each axis, in
            ``[0, 1)``; the step is ``roi * (1 - overlap)`` (see `window_starts`).
        sw_batch_size: windows per predictor call.
        mode: ``"gaussian"`` (importance weighting) or ``"constant"`` (plain average).
        sigma_scale: Gaussian sigma as a fraction of the window size, per axis.
        flip_tta: average over the 8 flips of the 3 spatial axes (flip each window,
            predict, flip the prediction back); costs 8 times the compute.
        precision: ``None`` / ``"float32"``, or ``"mixed_bfloat16"``, which requires a
            Keras predictor built under that dtype policy (it casts its float32 input
            itself; see `rebuild_with_dtype_policy`); plain callables receive float32
            and may compute in any dtype. The output is always float32.
        progress: show a ``keras.utils.Progbar`` over the windows.
        divisible_by: if > 1, every ``roi_size`` axis must be a multiple of it (8 for
            MISSU: three stride-2 downsamplings, e.g. 128 -> 16 tokens per axis).

    Call ``inferer(predictor, volume)``:

    - ``predictor``: a ``keras.Model`` or a callable mapping float32 windows
      ``(b, *roi_size, C)`` to probabilities ``(b, *roi_size, K)``, or to a dict with
      key ``"probabilities"`` (the MISSU backbone's output; use its inference model,
      without the training-only MSF branch). A Keras model runs through one cached
      ``tf.function`` and keeps following its current weights.
    - ``volume``: ``(H, W, D, C)`` or ``(B, H, W, D, C)``, any size; axes shorter than
      the window are zero-padded (centred) and cropped back.
    - returns float32 probabilities ``(H, W, D, K)`` or ``(B, H, W, D, K)``.

    Example, with a 1x1x1 convolution, whose sliding-window result equals the direct one:

    >>> import numpy as np, keras
    >>> inputs = keras.Input((None, None, None, 2))
    >>> model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="softmax")(inputs))
    >>> inferer = SlidingWindowInferer(roi_size=16, overlap=0.5, sw_batch_size=2)
    >>> volume = np.random.default_rng(0).normal(size=(20, 24, 12, 2)).astype("float32")
    >>> probs = inferer(model, volume)
    >>> probs.shape, probs.dtype
    ((20, 24, 12, 3), dtype('float32'))
    >>> bool(np.allclose(probs, model(volume[None])[0], atol=1e-5))
    True
    """

    def __init__(self, roi_size, overlap: float = 0.5, sw_batch_size: int = 4,
                 mode: str = "gaussian", sigma_scale: float = 0.125,
                 flip_tta: bool = False, precision: Optional[str] = None,
                 progress: bool = False, divisible_by: int = 1):
        self.roi_size = _as_triple(roi_size, "roi_size")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1); received: {overlap!r}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1; received: {sw_batch_size!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; received: {mode!r}")
        if not float(sigma_scale) > 0:
            raise ValueError(f"sigma_scale must be > 0; received: {sigma_scale!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; received: {precision!r}")
        if int(divisible_by) < 1 or any(r % int(divisible_by) for r in self.roi_size):
            raise ValueError(
                f"roi_size must be divisible by {divisible_by} on every axis; "
                f"received: roi_size={self.roi_size}"
            )
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.mode = mode
        self.sigma_scale = float(sigma_scale)
        self.flip_tta = bool(flip_tta)
        self.precision = precision
        self.progress = bool(progress)
        self.divisible_by = int(divisible_by)
        self._importance = importance_map(self.roi_size, mode, self.sigma_scale)
        self._cached_model = None
        self._cached_fn = None

    def importance_map(self) -> np.ndarray:
        """The weights of one window, float32 ``roi_size``."""
        return self._importance

    def window_slices(self, spatial_shape: Sequence[int]) -> List[Tuple[slice, slice, slice]]:
        """The windows for a (padded) volume of ``spatial_shape``, as slice triples."""
        padded = [max(s, r) for s, r in zip(spatial_shape, self.roi_size)]
        starts = [window_starts(s, r, self.overlap) for s, r in zip(padded, self.roi_size)]
        return [tuple(slice(a, a + r) for a, r in zip(corner, self.roi_size))
                for corner in itertools.product(*starts)]

    # ------------------------------------------------------------------ predictor --

    def _predict_fn(self, predictor) -> Callable[[np.ndarray], np.ndarray]:
        if not isinstance(predictor, keras.Model):
            if not callable(predictor):
                raise ValueError(
                    f"predictor must be a keras.Model or a callable; received: "
                    f"{type(predictor).__name__}"
                )
            return lambda x: _probabilities(predictor(x))
        if predictor is not self._cached_model:
            import tensorflow as tf  # the project's backend; compiled once per model

            model = predictor

            def call(x):
                out = _probabilities(model(x, training=False))
                return tf.cast(out, tf.float32)

            self._cached_fn = tf.function(call, reduce_retracing=True)
            self._cached_model = predictor
        fn = self._cached_fn
        return lambda x: keras.ops.convert_to_numpy(fn(x))

    def _check_model(self, predictor, channels: int):
        if not isinstance(predictor, keras.Model):
            return
        if self.precision == "mixed_bfloat16":
            compute = predictor.dtype_policy.compute_dtype
            if compute != "bfloat16":
                raise ValueError(
                    f"precision='mixed_bfloat16' needs a model built under the "
                    f"'mixed_bfloat16' dtype policy; received a model computing in "
                    f"{compute}. Build it after keras.config.set_dtype_policy("
                    f"'mixed_bfloat16'), or use rebuild_with_dtype_policy(model)."
                )
        try:
            shape = tuple(predictor.inputs[0].shape)
        except (AttributeError, IndexError, TypeError, ValueError):
            return  # subclassed or unbuilt model: the first call will tell
        if len(shape) != 5:
            raise ValueError(
                f"predictor must take (batch, H, W, D, C) windows; its input shape is {shape}"
            )
        if shape[-1] is not None and shape[-1] != channels:
            raise ValueError(
                f"volume has {channels} channels but the predictor expects {shape[-1]}; "
                f"received a volume with channels last ({channels})"
            )
        fixed = shape[1:4]
        if any(f is not None and f != r for f, r in zip(fixed, self.roi_size)):
            raise ValueError(
                f"roi_size {self.roi_size} does not match the predictor's input window "
                f"{fixed}; set roi_size to the model's patch size"
            )

    # ---------------------------------------------------------------------- call --

    def __call__(self, predictor, volume) -> np.ndarray:
        volume = np.asarray(keras.ops.convert_to_numpy(volume))
        if volume.ndim not in (4, 5):
            raise ValueError(
                f"volume must be (H, W, D, C) or (B, H, W, D, C), channels last; "
                f"received shape {volume.shape}"
            )
        squeeze = volume.ndim == 4
        if squeeze:
            volume = volume[None]
        if min(volume.shape) < 1:
            raise ValueError(f"volume must not be empty; received shape {volume.shape}")
        volume = volume.astype(np.float32, copy=False)
        batch, channels = volume.shape[0], volume.shape[-1]
        spatial = volume.shape[1:4]
        self._check_model(predictor, channels)
        predict = self._predict_fn(predictor)

        # Zero-pad axes shorter than the window, centred, and crop back at the end.
        pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2)
                for s, r in zip(spatial, self.roi_size)]
        if any(sum(p) for p in pads):
            volume = np.pad(volume, [(0, 0), *pads, (0, 0)])
        padded = volume.shape[1:4]
        windows = self.window_slices(padded)

        weight_sum = np.zeros(padded, np.float32)
        for win in windows:
            weight_sum[win] += self._importance
        jobs = [(b, win) for b in range(batch) for win in windows]

        output = None
        bar = keras.utils.Progbar(len(jobs), unit_name="window") if self.progress else None
        done = 0
        for first in range(0, len(jobs), self.sw_batch_size):
            chunk = jobs[first:first + self.sw_batch_size]
            x = np.stack([volume[(b, *win)] for b, win in chunk])
            probs = self._predict_windows(predict, x)
            if output is None:
                output = np.zeros((batch, *padded, probs.shape[-1]), np.float32)
            for (b, win), p in zip(chunk, probs):
                output[(b, *win)] += p * self._importance[..., None]
            done += len(chunk)
            if bar is not None:
                bar.update(done)

        output /= weight_sum[None, ..., None]
        crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))
        output = output[(slice(None), *crop)]
        return output[0] if squeeze else output

    def _predict_windows(self, predict, x: np.ndarray) -> np.ndarray:
        flips = [()]
        if self.flip_tta:
            flips = [axes for n in range(4) for axes in itertools.combinations(SPATIAL_AXES, n)]
        total = None
        for axes in flips:
            xin = np.ascontiguousarray(np.flip(x, axes)) if axes else x
            p = np.asarray(predict(xin), dtype=np.float32)
            if p.ndim != 5 or p.shape[:4] != x.shape[:4]:
                raise ValueError(
                    f"predictor must return probabilities (b, *roi_size, K) = "
                    f"({x.shape[0]}, {', '.join(map(str, x.shape[1:4]))}, K) for windows "
                    f"of shape {x.shape}; received shape {p.shape}"
                )
            if axes:
                p = np.flip(p, axes)
            total = p if total is None else total + p
        return total / len(flips) if len(flips) > 1 else total


def _probabilities(out):
    if isinstance(out, dict):
        if "probabilities" not in out:
            raise ValueError(
                f"a predictor returning a dict must have a 'probabilities' key; "
                f"received keys {sorted(out)}"
            )
        return out["probabilities"]
    if isinstance(out, (list, tuple)):
        raise ValueError(
            f"predictor must return one tensor or a dict with 'probabilities'; "
            f"received a {type(out).__name__} of {len(out)} outputs"
        )
    return out

"""The sliding window, written once in TensorFlow, and `SlidingWindowInferer`.

MISSU's learned position embedding fixes the patch size, so a full BraTS volume
(240 x 240 x 155) is segmented window by window: windows of ``roi_size`` overlapping
by ``overlap``, each prediction weighted by a Gaussian importance map (the centre of a
window is more reliable than its border), optionally averaged over the 8 mirrorings
of the 3 spatial axes (test-time augmentation). MONAI's ``sliding_window_inference``
and ``SlidingWindowInferer`` are the models for the design: one function does the work
(`sliding_window_inference`, graph-safe: the SavedModel runs it in its graph), and a
small object holds the settings and calls it (`SlidingWindowInferer`, also the NumPy
entry point: ``inferer(predictor, volume)``).

Windows are taken ``sw_batch_size`` at a time in a ``tf.while_loop``; each weighted
prediction is added into one float32 accumulator in place
(``TensorStridedSliceUpdate`` reuses the buffer it is given), and the sum is divided by
the summed weights at the end, window by window in a fixed order, so every caller gets
the same float32 result.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from missu_keras.config import int_or_triple

# Smallest importance weight, relative to the window centre (1.0): a Gaussian with
# sigma = roi / 8 falls to ~1e-11 in the corners, which would make voxels covered only
# by window corners numerically fragile (MONAI clamps at the same value).
MIN_IMPORTANCE = 1e-3

MODES = ("gaussian", "constant")
PRECISIONS = (None, "float32", "mixed_bfloat16")
SPATIAL_AXES = (1, 2, 3)  # of a (batch, H, W, D, C) window batch
# The 8 mirrorings of flip TTA, identity first: (), (1,), (2,), (3,), (1, 2), ...
FLIPS = tuple(axes for n in range(4) for axes in itertools.combinations(SPATIAL_AXES, n))
# Every in-graph finiteness check's message holds this (`ensure_finite`).
NON_FINITE = "holds NaN or Inf values"


# ------------------------------------------------------------------ non-finite input --

def ensure_finite(x, what: str):
    """``x`` (a float tensor) unchanged, after an in-graph check: a NaN or Inf value fails
    the graph with ``InvalidArgumentError("<what> holds NaN or Inf values; ...")``, so a
    server answers with an error status rather than a volume."""
    return tf.debugging.check_numerics(
        x, f"{what} {NON_FINITE}; expected finite intensities (a scan with NaN or Inf "
           "voxels cannot be segmented)")


@contextlib.contextmanager
def refusing_non_finite(subject: str):
    """Turns the in-graph `ensure_finite` error into ``ValueError("<subject> holds NaN or
    Inf values ...")`` for Python callers; other errors pass unchanged."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        if NON_FINITE not in err.message:
            raise
        found = re.search(r"Tensor had (NaN|Inf) values", err.message)
        kind = f" (found {found.group(1)})" if found else ""
        raise ValueError(f"{subject} {NON_FINITE}{kind}; expected finite intensities: "
                         "a scan with NaN or Inf voxels cannot be segmented") from None


# ------------------------------------------------------------------ windows, weights --

def window_starts_tensor(size, roi: int, overlap: float):
    """Start positions of the windows along one axis of ``size >= roi`` voxels, in
    TensorFlow (``size`` may be a dynamic scalar) -> int32 ``(n,)``; see `window_starts`."""
    target_step = max(1, int(roi * (1.0 - overlap)))
    extra = tf.maximum(tf.convert_to_tensor(size, tf.int32) - roi, 0)
    num = tf.where(extra > 0, (extra + target_step - 1) // target_step + 1, 1)
    step = tf.cast(extra, tf.float64) / tf.cast(tf.maximum(num - 1, 1), tf.float64)
    # tf.round, like Python's round, rounds half to even.
    return tf.cast(tf.round(tf.cast(tf.range(num), tf.float64) * step), tf.int32)


def window_starts(size: int, roi: int, overlap: float) -> List[int]:
    """Start positions of the windows along one axis.

    The step aims at ``roi * (1 - overlap)`` (at least 1 voxel); the windows are then
    spread evenly so that the first starts at 0 and the last ends flush with the
    volume (nnU-Net's rule), so every voxel is covered. An axis no longer than the
    window gets one window at 0 (the volume is padded to the window).
    (`window_starts_tensor`, evaluated.)

    >>> window_starts(20, 8, 0.5)
    [0, 4, 8, 12]
    >>> window_starts(20, 8, 0.0)
    [0, 6, 12]
    >>> window_starts(5, 8, 0.5)
    [0]
    """
    return [int(s) for s in window_starts_tensor(int(size), int(roi), float(overlap)).numpy()]


def window_corners(spatial_shape, roi_size: Sequence[int], overlap: float):
    """Corners of every window over a volume of ``spatial_shape`` (3 ints or an int32
    tensor, each ``>= roi``) -> int32 ``(n, 3)``, H slowest, D fastest (the order of
    ``itertools.product``)."""
    starts = [window_starts_tensor(spatial_shape[i], roi_size[i], overlap) for i in range(3)]
    grid = tf.meshgrid(*starts, indexing="ij")
    return tf.stack([tf.reshape(g, [-1]) for g in grid], axis=1)


def importance_map(roi_size: Sequence[int], mode: str = "gaussian",
                   sigma_scale: float = 0.125) -> np.ndarray:
    """Weights of one window, float32 ``roi_size``, maximum 1 (a constant of the graph).

    ``"gaussian"``: a separable Gaussian centred on the window, sigma =
    ``sigma_scale * roi`` per axis, floored at `MIN_IMPORTANCE`; ``"constant"``: ones.
    """
    roi_size = int_or_triple(roi_size, "roi_size", minimum=1)
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


def check_settings(overlap: float, sw_batch_size: int, mode: str, sigma_scale: float) -> None:
    """``ValueError`` naming the first bad sliding-window setting."""
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1); received: {overlap!r}")
    if isinstance(sw_batch_size, bool) or int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1; received: {sw_batch_size!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received: {mode!r}")
    if not float(sigma_scale) > 0:
        raise ValueError(f"sigma_scale must be > 0; received: {sigma_scale!r}")


# ------------------------------------------------------------------- the window loop --

@tf.autograph.experimental.do_not_convert
def sliding_window_inference(inputs, roi_size, sw_batch_size: int, predictor: Callable,
                             overlap: float = 0.5, mode: str = "gaussian",
                             sigma_scale: float = 0.125, flip_tta: bool = False,
                             num_classes: Optional[int] = None,
                             progress: Optional[Callable] = None):
    """Whole-volume probabilities from a patch predictor, in TensorFlow (graph-safe).

    Args:
        inputs: float ``(H, W, D, C)`` or ``(B, H, W, D, C)`` tensor, any sizes, static
            ``C``. Axes shorter than the window are zero-padded (centred) and cropped
            back. A NaN or Inf value fails with `ensure_finite`'s error.
        roi_size: window ``(H, W, D)`` or one int.
        sw_batch_size: windows per predictor call.
        predictor: maps float32 windows ``(b, *roi_size, C)`` to probabilities
            ``(b, *roi_size, K)`` (any float dtype) or to a dict with key
            ``"probabilities"``; called inside the loop (traced once in a graph).
        overlap, mode, sigma_scale: window placement (`window_starts`) and weighting
            (`importance_map`).
        flip_tta: average the predictions of the 8 flips of the 3 spatial axes
            (`FLIPS`; each flipped back), 8 predictor calls per window batch.
        num_classes: ``K`` when known (a Keras model's output width); ``None`` learns it
            from the first window batch, which is then predicted before the loop.
        progress: ``progress(done, total)`` called after each window batch through
            ``tf.py_function`` (Python process only: leave ``None`` in an export).

    Returns:
        float32 probabilities ``(H, W, D, K)`` or ``(B, H, W, D, K)``: per voxel the
        importance-weighted mean of the window predictions covering it.
    """
    roi = list(int_or_triple(roi_size, "roi_size", minimum=1))
    check_settings(overlap, sw_batch_size, mode, sigma_scale)
    x = tf.convert_to_tensor(inputs)
    if x.shape.rank not in (4, 5) or x.shape[-1] is None:
        raise ValueError(f"inputs must be (H, W, D, C) or (B, H, W, D, C), channels last and "
                         f"known; received shape {tuple(x.shape) if x.shape.rank else x.shape}")
    squeeze = x.shape.rank == 4
    x = ensure_finite(tf.cast(x[None] if squeeze else x, tf.float32), "sliding-window input")
    padded, pad_low, spatial = _pad_to_window(x, roi)
    corners = window_corners(tf.shape(padded)[1:4], roi, overlap)
    weights = tf.constant(importance_map(roi, mode, sigma_scale))
    loop = _WindowLoop(padded, corners, weights, predictor, int(sw_batch_size),
                       FLIPS if flip_tta else ((),), progress)
    total = loop.run(num_classes)
    with tf.control_dependencies([total]):  # not alive during the window loop
        weight_sum = _weight_sum(corners, weights, tf.shape(padded)[1:4])
    total = total / weight_sum[None, ..., None]
    out = tf.slice(total, tf.concat([[0], pad_low, [0]], 0), tf.concat([[-1], spatial, [-1]], 0))
    return out[0] if squeeze else out


def _pad_to_window(x, roi):
    """``x (B, H, W, D, C)`` zero-padded (centred) to at least ``roi`` on each axis ->
    ``(padded, pad_low (3,), spatial (3,))``."""
    spatial = tf.shape(x)[1:4]
    pad_total = tf.maximum(tf.constant(roi, tf.int32) - spatial, 0)
    pad_low = pad_total // 2
    paddings = tf.concat([tf.zeros([1, 2], tf.int32),
                          tf.stack([pad_low, pad_total - pad_low], axis=1),
                          tf.zeros([1, 2], tf.int32)], axis=0)
    # No copy when no axis is short (the usual case: a brain crop is larger than 128^3).
    padded = tf.cond(tf.reduce_any(pad_total > 0), lambda: tf.pad(x, paddings),
                     lambda: tf.identity(x))
    padded.set_shape([x.shape[0], None, None, None, x.shape[-1]])
    return padded, pad_low, spatial


def _update_slice(tensor, begin, size, value):
    """``tensor`` with ``tensor[begin:begin + size] = value`` (in place when TensorFlow
    holds the only reference to ``tensor``'s buffer, as inside the loops below)."""
    return tf.raw_ops.TensorStridedSliceUpdate(
        input=tensor, begin=begin, end=begin + size, strides=tf.ones_like(begin), value=value)


def _weight_sum(corners, weights, spatial):
    """Sum of the importance maps of every window -> float32 ``spatial``."""
    size = tf.shape(weights)

    def add(i, acc):
        current = tf.slice(acc, corners[i], size)
        return i + 1, _update_slice(acc, corners[i], size, current + weights)

    count = tf.shape(corners)[0]
    _, acc = tf.while_loop(lambda i, _: i < count, add,
                           (tf.constant(0), tf.zeros(spatial, tf.float32)))
    return acc


class _WindowLoop:
    """The predictor over every (volume, window) job of a padded batch, ``sw_batch_size``
    jobs per call; job ``j`` is window ``j % n`` of volume ``j // n`` (``n`` windows)."""

    def __init__(self, padded, corners, weights, predictor, sw_batch_size, flips, progress):
        self.padded, self.corners, self.weights = padded, corners, weights
        self.predictor, self.sw_batch_size = predictor, sw_batch_size
        self.flips, self.progress = flips, progress
        self.roi = [int(r) for r in weights.shape]
        self.channels = int(padded.shape[-1])
        self.count = tf.shape(padded)[0] * tf.shape(corners)[0]

    def run(self, num_classes: Optional[int]):
        """The importance-weighted sum of the predictions, float32 ``(B, *padded, K)``."""
        first = tf.constant(0)
        if num_classes is None:  # learn K from the first window batch, outside the loop
            size, probs = self._chunk(first)
            if probs.shape[-1] is None:
                raise ValueError("the predictor's number of classes (last output axis) is not "
                                 "known when tracing; pass num_classes")
            total = self._add(self._zeros(int(probs.shape[-1])), probs, first, size)
            first = tf.constant(self.sw_batch_size)
        else:
            total = self._zeros(int(num_classes))

        def step(first, total):
            size, probs = self._chunk(first)
            return first + self.sw_batch_size, self._add(total, probs, first, size)

        # One window batch at a time: the next batch's prediction does not depend on the
        # accumulator, so with TensorFlow's default (10 parallel iterations) several model
        # forwards would run at once and hold their activations together (a 240 x 240 x
        # 155 case peaked at 4.0 GB instead of 2.3 GB).
        _, total = tf.while_loop(lambda first, _: first < self.count, step, (first, total),
                                 parallel_iterations=1)
        return total

    def _zeros(self, classes: int):
        return tf.zeros(tf.concat([tf.shape(self.padded)[:4], [classes]], 0), tf.float32)

    def _begin(self, job):
        n = tf.shape(self.corners)[0]
        return tf.concat([[job // n], self.corners[job % n], [0]], 0)

    def _chunk(self, first):
        """``(size, probabilities (size, *roi, K))`` of jobs ``first ... first + size - 1``."""
        size = tf.minimum(self.sw_batch_size, self.count - first)
        shape = [1, *self.roi, self.channels]
        # sw_batch_size slices (a short last batch repeats its last job), cut to size: one
        # copy of each window, and none at all for one window per call.
        windows = [tf.slice(self.padded, self._begin(tf.minimum(first + k, self.count - 1)), shape)
                   for k in range(self.sw_batch_size)]
        batch = windows[0] if len(windows) == 1 else tf.concat(windows, 0)[:size]
        batch.set_shape([None, *shape[1:]])
        return size, self._predict(batch)

    def _predict(self, windows):
        """Mean over ``self.flips`` of the predictions, each flipped back."""
        total = None
        for axes in self.flips:
            p = _as_probabilities(self.predictor(tf.reverse(windows, axes) if axes else windows),
                                  windows)
            p = tf.reverse(p, axes) if axes else p
            total = p if total is None else total + p
        return total / len(self.flips) if len(self.flips) > 1 else total

    def _add(self, total, probs, first, size):
        """``total`` plus each job's prediction times the importance map, in place."""
        weights = self.weights[..., None]
        shape = tf.concat([[1], self.roi, tf.shape(total)[-1:]], 0)

        def add(j, total):
            begin = self._begin(first + j)
            current = tf.slice(total, begin, shape)
            return j + 1, _update_slice(total, begin, shape, current + probs[j][None] * weights)

        _, total = tf.while_loop(lambda j, _: j < size, add, (tf.constant(0), total))
        return self._report(first + size, total)

    def _report(self, done, total):
        if self.progress is None:
            return total
        with tf.control_dependencies([total]):
            tick = tf.py_function(self.progress, [done, self.count], tf.int32)
        with tf.control_dependencies([tick]):
            return tf.identity(total)


def probabilities_of(out):
    """The probabilities of a predictor's output: a tensor, or a dict's
    ``"probabilities"`` (the MISSU backbone's output)."""
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


def _as_probabilities(out, windows):
    """float32 ``(b, *roi, K)`` from a predictor's output for ``windows (b, *roi, C)``."""
    p = tf.cast(tf.convert_to_tensor(probabilities_of(out)), tf.float32)
    if p.shape.rank != 5 or not p.shape[:4].is_compatible_with(windows.shape[:4]):
        shape = tuple(windows.shape)
        raise ValueError(
            f"predictor must return probabilities (b, *roi_size, K) = "
            f"({shape[0]}, {', '.join(map(str, shape[1:4]))}, K) for windows of shape "
            f"{shape}; received shape {tuple(p.shape) if p.shape.rank else p.shape}"
        )
    return p


# ---------------------------------------------------------------- precision, models --

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


def output_classes(model: keras.Model) -> Optional[int]:
    """``K``, the last axis of a functional model's probabilities (its single output or
    its ``"probabilities"``), or ``None`` when the model does not say."""
    try:
        out = model.output
    except (AttributeError, ValueError):  # subclassed or not yet built
        return None
    if isinstance(out, dict):
        out = out.get("probabilities")
    shape = getattr(out, "shape", None)
    if not shape or not isinstance(shape[-1], int):
        return None
    return int(shape[-1])


class _ProgressBar:
    """A ``keras.utils.Progbar`` over the windows, fed from the graph (`sliding_window_inference`'s
    ``progress``); a new bar per run."""

    def __init__(self):
        self._bar = None

    def __call__(self, done, total):
        done, total = int(done), int(total)
        if self._bar is None:
            self._bar = keras.utils.Progbar(total, unit_name="window")
        self._bar.update(done)
        if done >= total:
            self._bar = None
        return 0


class SlidingWindowInferer:
    """Runs a patch model over a whole volume: the settings of `sliding_window_inference`.

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

    In a graph (a ``tf.function``, the SavedModel), call
    ``inferer.sliding_window(predictor, inputs)``: `sliding_window_inference` with these
    settings, on tensors. From Python, call ``inferer(predictor, volume)``:

    - ``predictor``: a ``keras.Model`` or a callable mapping float32 windows
      ``(b, *roi_size, C)`` to probabilities ``(b, *roi_size, K)``, or to a dict with
      key ``"probabilities"`` (the MISSU backbone's output; use its inference model,
      without the training-only MSF branch). A Keras model runs in one cached
      ``tf.function`` (the whole window loop in the graph) and keeps following its
      current weights; a plain callable runs eagerly and receives NumPy arrays.
    - ``volume``: ``(H, W, D, C)`` or ``(B, H, W, D, C)``, any size; axes shorter than
      the window are zero-padded (centred) and cropped back. NaN or Inf values raise
      ``ValueError``.
    - returns float32 NumPy probabilities ``(H, W, D, K)`` or ``(B, H, W, D, K)``.

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
        self.roi_size = int_or_triple(roi_size, "roi_size", minimum=1)
        check_settings(overlap, sw_batch_size, mode, sigma_scale)
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
        self._progress_bar = _ProgressBar() if self.progress else None
        self._cached_model = None
        self._cached_fn = None

    def importance_map(self) -> np.ndarray:
        """The weights of one window, float32 ``roi_size``."""
        return self._importance

    def window_slices(self, spatial_shape: Sequence[int]) -> List[Tuple[slice, slice, slice]]:
        """The windows for a (padded) volume of ``spatial_shape``, as slice triples, in
        the order the loop visits them."""
        padded = [max(int(s), r) for s, r in zip(spatial_shape, self.roi_size)]
        corners = window_corners(padded, self.roi_size, self.overlap).numpy()
        return [tuple(slice(int(a), int(a) + r) for a, r in zip(corner, self.roi_size))
                for corner in corners]

    def sliding_window(self, predictor: Callable, inputs, num_classes: Optional[int] = None):
        """`sliding_window_inference` of ``inputs`` (a tensor) with these settings, for
        use inside a graph; returns a float32 tensor."""
        return sliding_window_inference(
            inputs, self.roi_size, self.sw_batch_size, predictor, overlap=self.overlap,
            mode=self.mode, sigma_scale=self.sigma_scale, flip_tta=self.flip_tta,
            num_classes=num_classes, progress=self._progress_bar)

    # ------------------------------------------------------------------ predictor --

    def _runner(self, predictor, channels: int) -> Callable:
        """``(B, H, W, D, channels)`` float32 tensor -> probabilities tensor."""
        if isinstance(predictor, keras.Model):
            cached = self._cached_model
            if cached is None or cached[0] is not predictor or cached[1] != channels:
                model, classes = predictor, output_classes(predictor)

                def run(volumes):
                    return self.sliding_window(lambda x: model(x, training=False), volumes, classes)

                # One trace per model: the whole window loop runs in the graph, any size.
                self._cached_fn = tf.function(run, input_signature=[
                    tf.TensorSpec([None, None, None, None, channels], tf.float32)],
                    autograph=False)
                self._cached_model = (predictor, channels)
            return self._cached_fn
        if not callable(predictor):
            raise ValueError(
                f"predictor must be a keras.Model or a callable; received: "
                f"{type(predictor).__name__}"
            )
        # Plain callables (NumPy code included) run eagerly and receive NumPy windows.
        return lambda volumes: self.sliding_window(lambda x: predictor(x.numpy()), volumes)

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
        with refusing_non_finite(f"volume of shape {volume.shape}"):
            return self.run(predictor, tf.convert_to_tensor(volume.astype(np.float32, copy=False))).numpy()

    def run(self, predictor, volume):
        """``inferer(predictor, volume)`` on a float32 tensor, from Python (not inside a
        graph: there call `sliding_window`), returning a tensor; NaN or Inf values raise
        `ensure_finite`'s ``InvalidArgumentError``."""
        if volume.shape.rank not in (4, 5):
            raise ValueError(
                f"volume must be (H, W, D, C) or (B, H, W, D, C), channels last; "
                f"received shape {tuple(volume.shape)}"
            )
        if min(volume.shape) < 1:
            raise ValueError(f"volume must not be empty; received shape {tuple(volume.shape)}")
        self._check_model(predictor, int(volume.shape[-1]))
        run = self._runner(predictor, int(volume.shape[-1]))
        return run(volume[None])[0] if volume.shape.rank == 4 else run(volume)

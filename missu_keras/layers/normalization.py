"""GroupNorm computed from per-channel statistics (same result, 5.5x faster forward at 128^3 x 16),
with statistics exact to float32 rounding at every size the presets use."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from missu_keras.compat import onednn_enabled
from missu_keras.layers.base import register


def staged_mean(x, axes):
    """Mean of ``x`` over ``axes``, one axis at a time (outermost first).

    A float32 reduction over 2 M voxels in one pass (``ops.moments`` over 128^3) carries a
    relative error of about 1e-4 in the variance; reducing 128 values per stage keeps each
    partial sum exact to float32 rounding (relative error about 1e-7 at 128^3 x 16, as a
    float64 reduction), and costs the same single pass over the map: the later stages read
    1/128 of it.

    >>> import numpy as np
    >>> x = np.arange(24, dtype="float32").reshape(1, 2, 3, 4, 1)
    >>> float(staged_mean(x, [1, 2, 3])[0, 0])
    11.5
    """
    for count, axis in enumerate(sorted(axes)):
        x = ops.mean(x, axis=axis - count)  # earlier stages removed `count` axes before it
    return x


def channel_moments(x, axes):
    """Mean and (biased) variance of ``x`` over ``axes`` from two staged passes (the mean,
    then the mean squared deviation from it), exact to the dtype's rounding. As in
    ``tf.nn.moments`` the mean is held constant in the variance's gradient (exactly: the
    deviations sum to zero)."""
    axes = sorted(axes)
    mean = staged_mean(x, axes)
    broadcast = mean
    for axis in axes:
        broadcast = ops.expand_dims(broadcast, axis)
    return mean, staged_mean(ops.square(x - ops.stop_gradient(broadcast)), axes)


@register
class GroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` for channels-last maps, computed without
    reshaping the map into groups.

    Keras reshapes ``(B, H, W, D, C)`` to ``(B, H, W, D, G, C/G)`` and reduces over every
    axis but the group one; TensorFlow's CPU reduction over that non-contiguous pattern is
    slow (0.42 s for 1 x 128^3 x 16 here, against 0.07 s for per-channel moments). This
    layer takes per-channel mean ``m_c`` and variance ``v_c`` over the spatial axes, forms
    the group statistics exactly (law of total variance:
    ``mean_g = avg_c m_c``, ``var_g = avg_c v_c + avg_c (m_c - mean_g)^2``), folds them
    with gamma and beta into one per-channel scale and offset, and applies
    ``x * scale + offset`` in a single pass. The per-channel moments are reduced one
    spatial axis at a time (:func:`staged_mean`), which keeps them exact to float32 rounding
    at 128^3 (a one-pass float32 reduction over 2 M voxels is off by about 2e-4 in the
    variance; benchmarks/NOTES.md section 11). Statistics are in float32 whatever the
    compute dtype (as Keras does). Weights (``gamma``, ``beta``) and configuration are
    those of the Keras layer, so checkpoints are interchangeable.
    See benchmarks/NOTES.md (section 6) for the measurements.

    At inference under oneDNN on a CPU, for a single 3D sample, ``x * scale + offset`` runs as a 1x1x1
    convolution with the diagonal kernel ``diag(scale)`` and bias ``offset``
    (:func:`scale_and_shift`): one pass over the map instead of two, which oneDNN also
    fuses with a ReLU that follows (the encoder's), and which rounds once in bfloat16
    (float32 accumulation, bias fused in a traced graph) where the elementwise ops round
    twice. Same values in float32 for finite inputs (each output is ``x_c * scale_c +
    offset_c``; the kernel's zeros add nothing, but ``0 * inf`` would spread a non-finite
    value to the voxel's other channels).
    Training keeps the elementwise ops: the convolution's backward pass was slower (one
    GroupNorm + ReLU at 128^3 x 16, forward and backward: 0.38 -> 0.43 s in float32) and
    its bfloat16 kernel gradient (gamma's) far less accurate.
    """

    def group_moments(self, inputs):
        """Float32 group mean and variance of channels-last ``inputs``, each ``(B, G, 1)``:
        per-channel moments from :func:`channel_moments` (staged, exact to float32
        rounding), combined exactly (law of total variance)."""
        per_group = inputs.shape[-1] // self.groups
        spatial_axes = list(range(1, len(inputs.shape) - 1))
        mean_c, var_c = channel_moments(ops.cast(inputs, "float32"), spatial_axes)  # (B, C)
        mean_c = ops.reshape(mean_c, (-1, self.groups, per_group))
        var_c = ops.reshape(var_c, (-1, self.groups, per_group))
        mean_g = ops.mean(mean_c, axis=-1, keepdims=True)
        var_g = ops.mean(var_c, axis=-1, keepdims=True) + ops.mean(
            ops.square(mean_c - mean_g), axis=-1, keepdims=True)
        return mean_g, var_g

    def call(self, inputs, training=None):
        rank = len(inputs.shape)
        if self.axis not in (-1, rank - 1) or rank < 3:
            return super().call(inputs)
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        stats_dtype = "float32"
        mean_g, var_g = self.group_moments(inputs)
        inv = ops.rsqrt(var_g + self.epsilon)  # (B, G, 1)
        scale = ops.broadcast_to(inv, (ops.shape(inv)[0], self.groups, per_group))  # (B, G, C/G)
        if self.scale:
            scale = scale * ops.reshape(ops.cast(self.gamma, stats_dtype), (1, self.groups, per_group))
        offset = -mean_g * scale
        if self.center:
            offset = offset + ops.reshape(ops.cast(self.beta, stats_dtype), (1, self.groups, per_group))
        return scale_and_shift(ops.cast(inputs, self.compute_dtype), ops.reshape(scale, (-1, channels)),
                               ops.reshape(offset, (-1, channels)), as_convolution=not training)


def _cpu_onednn() -> bool:
    """oneDNN runs TensorFlow's CPU kernels and no GPU is visible: where a GPU runs the
    convolution (cuDNN, TensorFlow32 on Ampere and later) ``x * scale`` would lose float32
    precision, and elementwise ops are not slow there."""
    return onednn_enabled() and not tf.config.list_logical_devices("GPU")


def scale_and_shift(x, scale, offset, as_convolution=True):
    """``x * scale + offset`` per sample and channel: ``x`` channels-last, ``scale`` and
    ``offset`` float32 ``(B, C)``. With ``as_convolution``, under oneDNN on a CPU, for one 5D
    sample (a static batch of 1, as inference's windows), as a 1x1x1 convolution with
    kernel ``diag(scale)`` and bias ``offset`` in ``x``'s dtype, which oneDNN runs in one
    pass and fuses with a ReLU after it (128^3 x 16 with the ReLU: float32 0.049 -> 0.024
    s, bfloat16 0.080 -> 0.013 s; benchmarks/NOTES.md, section 17); elsewhere (and for
    training, whose gradients go through the elementwise form) as the two elementwise ops.

    >>> import numpy as np
    >>> x = np.ones((1, 2, 2, 2, 3), "float32")
    >>> y = scale_and_shift(x, np.array([[1.0, 2.0, 3.0]], "float32"), np.zeros((1, 3), "float32"))
    >>> [float(v) for v in np.asarray(y)[0, 0, 0, 0]]
    [1.0, 2.0, 3.0]
    """
    channels = x.shape[-1]
    if as_convolution and len(x.shape) == 5 and x.shape[0] == 1 and channels is not None and _cpu_onednn():
        kernel = ops.reshape(tf.linalg.diag(scale[0]), (1, 1, 1, channels, channels))
        y = tf.nn.conv3d(x, ops.cast(kernel, x.dtype), strides=[1] * 5, padding="VALID")
        return tf.nn.bias_add(y, ops.cast(offset[0], x.dtype))
    broadcast = (-1,) + (1,) * (len(x.shape) - 2) + (channels,)
    return x * ops.cast(ops.reshape(scale, broadcast), x.dtype) + ops.cast(ops.reshape(offset, broadcast), x.dtype)

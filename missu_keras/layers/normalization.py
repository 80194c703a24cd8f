"""GroupNorm computed from per-channel statistics (same result, 5.5x faster forward at 128^3 x 16)."""

from __future__ import annotations

import keras
from keras import ops

from missu_keras.layers.base import register


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
    ``x * scale + offset`` in a single pass. Statistics are in float32 whatever the
    compute dtype (as Keras does). Weights (``gamma``, ``beta``) and configuration are
    those of the Keras layer, so checkpoints are interchangeable.
    See benchmarks/NOTES.md (section 6) for the measurements.
    """

    def call(self, inputs):
        rank = len(inputs.shape)
        if self.axis not in (-1, rank - 1) or rank < 3:
            return super().call(inputs)
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        stats_dtype = "float32"
        x32 = ops.cast(inputs, stats_dtype)
        spatial_axes = list(range(1, rank - 1))
        mean_c, var_c = ops.moments(x32, axes=spatial_axes)  # (B, C)
        mean_c = ops.reshape(mean_c, (-1, self.groups, per_group))
        var_c = ops.reshape(var_c, (-1, self.groups, per_group))
        mean_g = ops.mean(mean_c, axis=-1, keepdims=True)
        var_g = ops.mean(var_c, axis=-1, keepdims=True) + ops.mean(
            ops.square(mean_c - mean_g), axis=-1, keepdims=True)
        inv = ops.rsqrt(var_g + self.epsilon)  # (B, G, 1)
        scale = ops.broadcast_to(inv, ops.shape(mean_c))  # (B, G, C/G)
        if self.scale:
            scale = scale * ops.reshape(ops.cast(self.gamma, stats_dtype), (1, self.groups, per_group))
        offset = -mean_g * scale
        if self.center:
            offset = offset + ops.reshape(ops.cast(self.beta, stats_dtype), (1, self.groups, per_group))
        broadcast = (-1,) + (1,) * (rank - 2) + (channels,)
        scale = ops.cast(ops.reshape(scale, broadcast), self.compute_dtype)
        offset = ops.cast(ops.reshape(offset, broadcast), self.compute_dtype)
        return ops.cast(inputs, self.compute_dtype) * scale + offset

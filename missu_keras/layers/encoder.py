"""Encoder blocks of the 3D CNN (TransBTS / MISSU backbone), channels-last."""

from __future__ import annotations

from keras import layers, ops

from missu_keras.layers.base import register
from missu_keras.layers.conv import SafeConv3D
from missu_keras.layers.normalization import GroupNormalization


@register
class InitConv(layers.Layer):
    """``init_conv``: Conv3D(filters, 3x3x3, same) then channel dropout (training only).

    The released code calls ``F.dropout3d`` without the training flag, so it also drops
    channels at evaluation; we treat it as training-only (known-pitfalls.md #5) unless
    ``dropout_at_inference=True`` (``MISSUConfig.released_stem_dropout``), which
    reproduces the released network, stochastic at inference.

    Input ``(B, H, W, D, C_in)`` -> output ``(B, H, W, D, filters)``.
    """

    def __init__(self, filters, dropout_rate=0.2, dropout_at_inference=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.dropout_rate = dropout_rate
        self.dropout_at_inference = bool(dropout_at_inference)
        self.conv = SafeConv3D(filters, 3, padding="same", name="conv", dtype=self.dtype_policy)
        self.dropout = layers.SpatialDropout3D(dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        if self.dropout_at_inference and not training:
            # The dropout layer's own call, not its __call__: a `training=True` passed to a
            # nested __call__ stays in Keras' call context, so every later layer of a model
            # called without `training` would run in training mode (BatchNorm on batch
            # statistics, updating its moving ones).
            return self.dropout.call(self.conv(x), training=True)
        return self.dropout(self.conv(x), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "dropout_rate": self.dropout_rate,
                "dropout_at_inference": self.dropout_at_inference}


@register
class EncoderBlock(layers.Layer):
    """``EnBlock(c)``: ``x + Conv3(ReLU(GN(Conv3(ReLU(GN(x))))))`` (pre-activation residual).

    GroupNorm with 8 groups, eps 1e-5; both convolutions c -> c with bias.
    Shape preserving: ``(B, H, W, D, c)`` -> ``(B, H, W, D, c)``.
    """

    def __init__(self, groups=8, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon
        self.norm1 = GroupNormalization(groups, epsilon=epsilon, name="bn1", dtype=self.dtype_policy)
        self.norm2 = GroupNormalization(groups, epsilon=epsilon, name="bn2", dtype=self.dtype_policy)
        self.conv1 = None
        self.conv2 = None

    def build(self, input_shape):
        c = input_shape[-1]
        self.conv1 = SafeConv3D(c, 3, padding="same", name="conv1", dtype=self.dtype_policy)
        self.conv2 = SafeConv3D(c, 3, padding="same", name="conv2", dtype=self.dtype_policy)
        for sub in (self.norm1, self.conv1, self.norm2, self.conv2):
            sub.build(input_shape)
        self.built = True

    def call(self, x):
        y = self.conv1(ops.relu(self.norm1(x)))
        y = self.conv2(ops.relu(self.norm2(y)))
        return x + y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


@register
class DownSample(layers.Layer):
    """``EnDown``: Conv3D(filters, 3x3x3, stride 2) with one voxel of zero padding on
    every side, no norm.

    ``padding="same"`` would pad only after on even sizes and shift the sampling grid by
    one voxel against PyTorch's ``padding=1`` (known-pitfalls.md #3), so we pad
    symmetrically and convolve with ``padding="valid"``.

    ``(B, H, W, D, C)`` -> ``(B, H/2, W/2, D/2, filters)`` for even H, W, D.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.pad = layers.ZeroPadding3D(1, dtype=self.dtype_policy)
        self.conv = SafeConv3D(filters, 3, strides=2, padding="valid", name="conv", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(self.pad.compute_output_shape(input_shape))
        self.built = True

    def call(self, x):
        return self.conv(self.pad(x))

    def compute_output_shape(self, input_shape):
        spatial = [None if s is None else (s - 1) // 2 + 1 for s in input_shape[1:-1]]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}

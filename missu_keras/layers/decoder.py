"""Bottleneck-to-output decoder blocks (BatchNorm eps 1e-5, PyTorch momentum 0.1)."""

from __future__ import annotations

import keras
from keras import layers, ops

from missu_keras.compat import stored_value
from missu_keras.layers.base import register
from missu_keras.layers.conv import SafeConv3D, SafeConv3DTranspose

# PyTorch's BatchNorm momentum 0.1 weights the new batch; Keras' momentum weights the
# running value, so 0.1 there is 0.9 here. Batch statistics are synchronised across
# replicas under tf.distribute, so N replicas of batch b train like one device of N*b.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@register
class DeBlock(layers.Layer):
    """``Conv3 -> BN -> ReLU -> Conv3 -> BN -> ReLU`` with an optional identity residual.

    ``residual=True`` is the released code's ``DeBlock`` and ``Enblock8_2``
    (``x + ReLU(BN(Conv3(ReLU(BN(Conv3(x))))))``); ``residual=False`` is ``Enblock8_1``,
    which also changes the width (E -> 8b).

    ``(B, H, W, D, C)`` -> ``(B, H, W, D, filters)``.

    At inference (BatchNorm on its moving statistics) each BatchNorm is folded into the
    convolution before it (:func:`fold_batch_norm`), so a ``Conv3 -> BN -> ReLU`` runs as
    one oneDNN convolution with bias and ReLU: the same values up to float rounding, without
    the four passes over the map Keras' BatchNorm makes in mixed precision (cast to float32,
    scale, shift, cast back) and the ReLU's (benchmarks/NOTES.md, section 17). Training
    (batch statistics) runs the layers as written.
    """

    def __init__(self, filters, residual=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.residual = residual
        p = self.dtype_policy
        self.conv1 = SafeConv3D(filters, 3, padding="same", name="conv1", dtype=p)
        self.bn1 = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name="bn1", dtype=p)
        self.conv2 = SafeConv3D(filters, 3, padding="same", name="conv2", dtype=p)
        self.bn2 = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name="bn2", dtype=p)

    def build(self, input_shape):
        if self.residual and input_shape[-1] != self.filters:
            raise ValueError(
                f"A residual DeBlock keeps the width: input channels {input_shape[-1]} "
                f"!= filters {self.filters}"
            )
        out_shape = (*input_shape[:-1], self.filters)
        self.conv1.build(input_shape)
        self.bn1.build(out_shape)
        self.conv2.build(out_shape)
        self.bn2.build(out_shape)
        self.built = True

    def call(self, x, training=None):
        y = conv_bn_relu(self.conv1, self.bn1, x, training)
        y = conv_bn_relu(self.conv2, self.bn2, y, training)
        return x + y if self.residual else y

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "residual": self.residual}


def _stored32(variable):
    """The stored (not autocast) value of ``variable`` in float32."""
    return ops.cast(stored_value(variable), "float32")


def fold_batch_norm(conv, bn):
    """Float32 kernel and bias of the convolution equal to ``bn(conv(x))`` with ``bn`` on
    its moving statistics: per output channel ``s = gamma / sqrt(var + eps)``,
    kernel ``W s`` and bias ``(b - mean) s + beta``. Read from the stored float32 weights
    (not the mixed-precision copies), so a bfloat16 model rounds the folded kernel once."""
    inv = ops.rsqrt(_stored32(bn.moving_variance) + bn.epsilon)
    scale = inv * _stored32(bn.gamma) if bn.scale else inv
    bias = -_stored32(bn.moving_mean)
    if conv.use_bias:
        bias = bias + _stored32(conv.bias)
    bias = bias * scale
    if bn.center:
        bias = bias + _stored32(bn.beta)
    return _stored32(conv.kernel) * scale, bias


def conv_bn_relu(conv, bn, x, training=None):
    """``ReLU(bn(conv(x)))``; where ``bn`` uses its moving statistics (inference, or a
    frozen BatchNorm) as one convolution with the folded kernel and bias
    (:func:`fold_batch_norm`), which oneDNN fuses with the bias and the ReLU."""
    if (training and bn.trainable) or conv.activation not in (None, keras.activations.linear):
        return ops.relu(bn(conv(x), training=training))
    kernel, bias = fold_batch_norm(conv, bn)
    y = conv.convolution_op(x, ops.cast(kernel, x.dtype))
    y = ops.add(y, ops.reshape(ops.cast(bias, y.dtype), (1,) * (len(y.shape) - 1) + (-1,)))
    return ops.relu(y)


@register
class UpCat(layers.Layer):
    """``DeUp_Cat``: Conv1x1(filters), ConvTranspose(filters, 2x2x2, stride 2),
    ``concat([skip, up])`` (skip first, as the released weights expect), Conv1x1(filters).

    Call as ``UpCat(f)(x)`` (no skip connection, Fig. 5's ablation) or
    ``UpCat(f)([x, skip])``. ``x``: ``(B, h, w, d, C_in)``; ``skip``: ``(B, 2h, 2w, 2d, C_s)``;
    output ``(B, 2h, 2w, 2d, filters)``.

    At inference the last three steps are linear, so they run folded
    (:meth:`folded_call`): the transposed convolution with its kernel composed with the up
    half of the 1x1 convolution's kernel, added to the 1x1 convolution of the skip, one bias
    (``b3 + W3_up^T b2``, which oneDNN fuses into that convolution with the addition): no
    concatenated map, no bias pass of its own for the transposed convolution, and the 1x1
    convolution reads only the skip's channels (benchmarks/NOTES.md, section 17). Training
    runs the layers as written.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        p = self.dtype_policy
        self.conv1 = SafeConv3D(filters, 1, name="conv1", dtype=p)
        self.conv2 = SafeConv3DTranspose(filters, 2, strides=2, name="conv2", dtype=p)
        self.conv3 = SafeConv3D(filters, 1, name="conv3", dtype=p)

    @staticmethod
    def _split(inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(f"UpCat takes x or [x, skip]; received {len(inputs)} inputs")
            return inputs[0], inputs[1]
        return inputs, None

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            x_shape, skip_shape = input_shape
        else:
            x_shape, skip_shape = input_shape, None
        self.conv1.build(x_shape)
        self.conv2.build((*x_shape[:-1], self.filters))
        cat_channels = self.filters + (skip_shape[-1] if skip_shape is not None else 0)
        up_shape = self.compute_output_shape(x_shape)
        self.conv3.build((*up_shape[:-1], cat_channels))
        self.built = True

    def call(self, inputs, training=None):
        x, skip = self._split(inputs)
        if not training and skip is not None:
            return self.folded_call(x, skip)
        y = self.conv2(self.conv1(x))
        if skip is not None:
            y = ops.concatenate([skip, y], axis=-1)
        return self.conv3(y)

    def folded_call(self, x, skip):
        """``conv3(concat([skip, conv2(conv1(x))]))`` with conv3's up half composed into
        conv2: ``convT(h, W2 . W3_up) + conv1x1(skip, W3_skip) + (b3 + W3_up^T b2)``, the
        same values up to float rounding (kernels composed in float32)."""
        h = self.conv1(x)
        skip_channels = skip.shape[-1]
        w3 = _stored32(self.conv3.kernel)[0, 0, 0]  # (C_s + f, f)
        w3_skip, w3_up = w3[:skip_channels], w3[skip_channels:]
        w2 = _stored32(self.conv2.kernel)  # (2, 2, 2, f out, f in)
        kernel = ops.einsum("abcoi,op->abcpi", w2, w3_up)
        bias = ops.zeros((self.filters,), "float32")
        if self.conv3.use_bias:
            bias = bias + _stored32(self.conv3.bias)
        if self.conv2.use_bias:
            bias = bias + ops.matmul(_stored32(self.conv2.bias)[None], w3_up)[0]
        conv2 = self.conv2
        up = ops.conv_transpose(h, ops.cast(kernel, h.dtype), strides=list(conv2.strides),
                                padding=conv2.padding, output_padding=conv2.output_padding,
                                dilation_rate=conv2.dilation_rate, data_format=conv2.data_format)
        y = self.conv3.convolution_op(skip, ops.cast(ops.reshape(w3_skip, (1, 1, 1, skip_channels, self.filters)), skip.dtype))
        y = ops.add(y, ops.reshape(ops.cast(bias, y.dtype), (1, 1, 1, 1, -1)))
        return ops.add(y, up)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        spatial = [None if s is None else 2 * s for s in input_shape[1:-1]]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}

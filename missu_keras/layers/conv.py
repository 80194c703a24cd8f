"""``Conv3D`` that steers round a oneDNN bfloat16 weight-gradient defect on tiny maps.

TensorFlow 2.21's oneDNN bfloat16 ``Conv3DBackpropFilterV2`` (3x3x3 kernel, padding
SAME) returns garbage (values near 1e37, or NaN) in about half of the calls when the
convolution's input is 2 x 2 x 2, on AMD EPYC CPUs with AVX512-BF16; at 4 x 4 x 4 and
above its error is bfloat16 rounding (4e-3 relative). Training a model whose deepest
feature map is that small under ``mixed_bfloat16`` (input side 16: deepest map 2^3) then
turns the weights of the deepest stage into NaN after one or two steps. The reproduction
and the measurements are in benchmarks/NOTES.md (section 10),
and ``tests/test_conv.py`` re-checks the kernel on every machine with bf16 units.

:class:`SafeConv3D` and :class:`SafeConv3DTranspose` are Keras' layers (same weights,
config and forward output) whose backward pass is computed in float32 exactly where the
defect can strike: bfloat16 compute, oneDNN on, and a statically known side under
:data:`SMALLEST_SAFE_SIDE` in a map the kernel gradient sees. Everywhere else (every
convolution of the brats preset at 128^3, whose deepest map is 16^3; float32 and float16
models; GPUs) they are the parent layers, op for op.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from missu_keras.compat import onednn_enabled
from missu_keras.layers.base import register

# The smallest input side whose bfloat16 weight gradient was measured correct (4; 2 fails;
# 3 is not known to work, so it is treated as failing).
SMALLEST_SAFE_SIDE = 4


def needs_float32_kernel_gradient(input_shape, compute_dtype, dilation_rate=(1, 1, 1),
                                  output_shape=None) -> bool:
    """Whether a convolution from ``input_shape`` to ``output_shape`` (channels-last; the
    output defaults to the input's size) in ``compute_dtype`` may hit the oneDNN bfloat16
    weight-gradient defect: some side of the maps the kernel sees is below
    :data:`SMALLEST_SAFE_SIDE`.

    The defect was measured on stride-1 "same" convolutions, where input and output have
    the same side; a strided convolution is judged by the smaller of the two. A dilated
    convolution runs as SpaceToBatch -> Conv3D -> BatchToSpace, whose inner Conv3D's output
    has side ``ceil(side / rate)``.

    >>> needs_float32_kernel_gradient((1, 2, 2, 2, 64), "float32")
    False
    >>> needs_float32_kernel_gradient((1, 16, 16, 16, 64), "bfloat16")
    False
    """
    if keras.backend.standardize_dtype(compute_dtype) != "bfloat16" or keras.backend.backend() != "tensorflow":
        return False
    output_shape = input_shape if output_shape is None else output_shape
    sides = []
    for side, out, rate in zip(input_shape[1:-1], output_shape[1:-1], dilation_rate):
        if side is not None:
            sides.append(-(-side // rate))  # what the inner Conv3D sees of a dilated one
        if out is not None:
            sides.append(out)
    return bool(sides) and min(sides) < SMALLEST_SAFE_SIDE and onednn_enabled()


def with_float32_kernel_gradient(conv_fn, x, kernel):
    """``conv_fn(x, kernel)`` whose backward pass runs in float32: the gradients with
    respect to ``x`` and ``kernel`` are computed from a float32 re-run of the convolution
    and rounded to their dtypes. The output is ``conv_fn``'s own. ``conv_fn`` is any
    differentiable convolution (strided, dilated).

    The whole backward pass, not only the kernel gradient, is float32: TensorFlow's
    gradient of a convolution builds the input and the kernel gradient together, so a
    bfloat16 re-run would put the defective kernel back in the graph. Costs nothing
    measurable because it is used only on maps with sides below 4.
    """

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            x32, k32 = tf.cast(x, tf.float32), tf.cast(kernel, tf.float32)
            with tf.GradientTape() as tape:
                tape.watch([x32, k32])
                y32 = conv_fn(x32, k32)
            dx, dk = tape.gradient(y32, [x32, k32], output_gradients=tf.cast(dy, tf.float32))
            return tf.cast(dx, x.dtype), tf.cast(dk, kernel.dtype)

        return conv_fn(x, kernel), grad

    return conv(x, kernel)


@register
class SafeConv3D(keras.layers.Conv3D):
    """``keras.layers.Conv3D`` with a float32 kernel gradient where oneDNN's bfloat16 one
    is wrong (see the module docstring); takes and saves exactly Conv3D's arguments.

    >>> import numpy as np
    >>> layer = SafeConv3D(4, 3, padding="same")
    >>> tuple(layer(np.zeros((1, 8, 8, 8, 2), "float32")).shape)
    (1, 8, 8, 8, 4)
    """

    def convolution_op(self, inputs, kernel):
        parent = super().convolution_op
        shape = tuple(inputs.shape)
        if not needs_float32_kernel_gradient(shape, inputs.dtype, self.dilation_rate,
                                             self.compute_output_shape(shape)):
            return parent(inputs, kernel)
        return with_float32_kernel_gradient(parent, inputs, ops.cast(kernel, inputs.dtype))


@register
class SafeConv3DTranspose(keras.layers.Conv3DTranspose):
    """``keras.layers.Conv3DTranspose`` with :class:`SafeConv3D`'s float32 backward pass
    where a side of its input or output is below :data:`SMALLEST_SAFE_SIDE` (its kernel
    gradient is a ``Conv3DBackpropFilterV2`` between the two maps).

    >>> import numpy as np
    >>> layer = SafeConv3DTranspose(4, 2, strides=2)
    >>> tuple(layer(np.zeros((1, 2, 2, 2, 8), "float32")).shape)
    (1, 4, 4, 4, 4)
    """

    def call(self, inputs):
        shape = tuple(inputs.shape)
        if not needs_float32_kernel_gradient(shape, inputs.dtype, self.dilation_rate,
                                             self.compute_output_shape(shape)):
            return super().call(inputs)

        def conv_transpose(x, kernel):
            return ops.conv_transpose(x, kernel, strides=list(self.strides), padding=self.padding,
                                      output_padding=self.output_padding,
                                      dilation_rate=self.dilation_rate, data_format=self.data_format)

        outputs = with_float32_kernel_gradient(conv_transpose, inputs, ops.cast(self.kernel, inputs.dtype))
        if self.use_bias:  # as the parent's call
            bias_shape = ((1,) * (self.rank + 1) + (self.filters,) if self.data_format == "channels_last"
                          else (1, self.filters) + (1,) * self.rank)
            outputs = ops.add(outputs, ops.reshape(ops.cast(self.bias, outputs.dtype), bias_shape))
        return outputs if self.activation is None else self.activation(outputs)

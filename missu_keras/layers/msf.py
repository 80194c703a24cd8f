"""The training-only multi-scale fusion (MSF) branch (paper Sec. III-B, Eq. 2-3)."""

from __future__ import annotations

import tensorflow as tf
from keras import layers, ops

from missu_keras.compat import onednn_enabled
from missu_keras.layers.base import register
from missu_keras.layers.conv import SafeConv3D


def _dilated_kernel_gradient(x, dy, kernel_shape, rate):
    """The kernel gradient of a stride-1 "same" 3x3x3 convolution with dilation ``rate``,
    computed as the kernel gradient of an undilated convolution over the ``rate``-strided
    sub-lattices of ``x`` and ``dy`` stacked in the batch (SpaceToBatch).

    Each sub-lattice sees exactly the dilated kernel's taps, one lattice step apart; the
    zeros padded to make every side a multiple of the rate add nothing (``dy`` is zero
    there). oneDNN's own dilated kernel gradient runs 2.5-3.4x slower than this at
    128^3 x 16 on a 2-core Sapphire Rapids (benchmarks/NOTES.md, section 16).
    """
    sides = [side if side is not None else tf.shape(x)[i + 1] for i, side in enumerate(x.shape[1:-1])]
    pad = [[0, 0]] + [[0, -(-side // r) * r - side] for side, r in zip(sides, rate)] + [[0, 0]]
    blocks = [[0, 0]] * 3
    xb = tf.space_to_batch_nd(tf.pad(x, pad), rate, blocks)
    dyb = tf.space_to_batch_nd(tf.pad(dy, pad), rate, blocks)
    return tf.raw_ops.Conv3DBackpropFilterV2(input=xb, filter_sizes=kernel_shape, out_backprop=dyb,
                                             strides=[1] * 5, padding="SAME")


def _dilated_conv3d(x, kernel, rate):
    """``tf.nn.conv3d(x, kernel, dilations=rate)`` ("same", stride 1) whose gradient takes
    oneDNN's dilated input gradient and :func:`_dilated_kernel_gradient`."""
    dilations = [1, *rate, 1]

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                  strides=[1] * 5, padding="SAME", dilations=dilations)
            return dx, _dilated_kernel_gradient(x, dy, tf.shape(kernel), rate)

        return tf.nn.conv3d(x, kernel, strides=[1] * 5, padding="SAME", dilations=dilations), grad

    return conv(x, kernel)


def direct_dilated_conv(conv, x):
    """``conv`` (a Keras ``Conv3D``, stride 1, "same", 3x3x3, dilation > 1, no activation)
    as one Conv3D op with its ``dilations`` attribute.

    Keras (through ``tf.nn.convolution``) expresses a dilated convolution as SpaceToBatch ->
    Conv3D -> BatchToSpace, two extra copies of the map forward and backward. oneDNN's CPU
    kernels and cuDNN take the dilation directly (forward 1.4x faster at 128^3 x 16, rate
    3; benchmarks/NOTES.md section 9), but oneDNN's dilated kernel gradient is slow, so the
    kernel gradient goes through the sub-lattices instead (:func:`_dilated_kernel_gradient`,
    section 16). TensorFlow's Eigen CPU kernel takes no dilation, so the caller uses this
    only when oneDNN is on, in float32. Same result up to float rounding.
    """
    y = _dilated_conv3d(x, ops.cast(conv.kernel, x.dtype), tuple(conv.dilation_rate))
    if conv.use_bias:
        y = tf.nn.bias_add(y, ops.cast(conv.bias, y.dtype))
    return y


@register
class MultiScaleFusion(layers.Layer):
    """Dense atrous block (the 3D form of CE-Net's DAC): ``Abar = A + b1 + b2 + b3 + b4``.

    Four parallel branches, each ending in ReLU, with receptive fields 3, 7, 9 and 19
    (all 3x3x3 unless said):

    - b1: conv rate 1
    - b2: conv rate 3, conv 1x1x1
    - b3: conv rate 1, conv rate 3, conv 1x1x1
    - b4: conv rate 1, conv rate 3, conv rate 5, conv 1x1x1

    By default (the paper's reading) every convolution has its own weights: seven 3x3x3
    and three 1x1x1 convolutions. ``shared_weights=True`` is CE-Net's DAC block: one
    convolution per rate (1, 3, 5) and one 1x1x1, shared by the branches that use it
    (three 3x3x3 and one 1x1x1: 43 % of the parameters). The shared prefixes are then
    the same computation, so ``rate3(rate1(A))`` and ``rate1(A)`` are computed once and
    reused (the same result as CE-Net's code, which recomputes them: 4 instead of 7
    3x3x3 convolutions).

    Shape preserving: ``(B, H, W, D, c)`` -> ``(B, H, W, D, c)``.
    """

    BRANCHES = ((1,), (3, "1x1"), (1, 3, "1x1"), (1, 3, 5, "1x1"))

    def __init__(self, shared_weights=False, **kwargs):
        super().__init__(**kwargs)
        self.shared_weights = bool(shared_weights)
        self.branches = []

    def build(self, input_shape):
        c = input_shape[-1]
        p = self.dtype_policy

        def make(rate, name):
            if rate == "1x1":
                conv = SafeConv3D(c, 1, name=f"{name}_1x1", dtype=p)
            else:
                conv = SafeConv3D(c, 3, padding="same", dilation_rate=rate, name=f"{name}_rate{rate}", dtype=p)
            conv.build(input_shape)
            return conv

        shared = {rate: make(rate, "shared") for rate in (1, 3, 5, "1x1")} if self.shared_weights else {}
        self.branches = [
            [shared[rate] if shared else make(rate, f"branch{i}_conv{j}") for j, rate in enumerate(spec, start=1)]
            for i, spec in enumerate(self.BRANCHES, start=1)
        ]
        self.built = True

    def convolution_calls(self):
        """``(conv, times called)`` per distinct convolution, as ``call`` runs them."""
        calls = {}
        done = set()
        for convs in self.branches:
            for depth, conv in enumerate(convs, start=1):
                prefix = tuple(id(c) for c in convs[:depth])
                if prefix in done:
                    continue  # computed by an earlier branch (shared weights only)
                done.add(prefix)
                calls[id(conv)] = (conv, calls.get(id(conv), (conv, 0))[1] + 1)
        return list(calls.values())

    def call(self, x, training=None):
        # In training (the branch exists only for training, unless msf_mode="ms_output")
        # the dilated convolutions run as single ops where oneDNN is on; inference and
        # export keep Keras' portable form, which every TensorFlow kernel set runs.
        # float32 only: oneDNN leaves bfloat16 / float16 convolutions to the Eigen kernels on
        # CPUs without native support for them (measured: the bf16 weight gradient then fails).
        direct = bool(training) and x.dtype == tf.float32 and onednn_enabled()
        out = x
        computed = {}  # prefix of convolutions (by identity) -> its output; shares shared prefixes
        for convs in self.branches:
            y = x
            for depth, conv in enumerate(convs, start=1):
                prefix = tuple(id(c) for c in convs[:depth])
                if prefix not in computed:
                    dilated = direct and max(conv.dilation_rate) > 1
                    computed[prefix] = direct_dilated_conv(conv, y) if dilated else conv(y)
                y = computed[prefix]
            out = out + ops.relu(y)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shared_weights": self.shared_weights}


@register
class PyramidFusion(layers.Layer):
    """One step of the bottom-up pyramid (Eq. 3):
    ``B_s = ConvA(Abar_s) + ConvB(B_{s-1})``.

    ConvA is 1x1x1 stride 1 (c_s -> c_s); ConvB is 3x3x3 stride 2 (c_{s-1} -> c_s) with
    one voxel of symmetric zero padding (as the encoder's downsampling).
    Call as ``PyramidFusion()([abar_s, b_prev])`` with ``abar_s``: ``(B, H, W, D, c_s)``
    and ``b_prev``: ``(B, 2H, 2W, 2D, c_{s-1})``; output ``(B, H, W, D, c_s)``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pad = layers.ZeroPadding3D(1, dtype=self.dtype_policy)
        self.conv_a = self.conv_b = None

    def build(self, input_shape):
        abar_shape, prev_shape = input_shape
        c = abar_shape[-1]
        p = self.dtype_policy
        self.conv_a = SafeConv3D(c, 1, name="conv_a", dtype=p)
        self.conv_b = SafeConv3D(c, 3, strides=2, padding="valid", name="conv_b", dtype=p)
        self.conv_a.build(abar_shape)
        self.conv_b.build(self.pad.compute_output_shape(prev_shape))
        self.built = True

    def call(self, inputs):
        abar, prev = inputs
        return self.conv_a(abar) + self.conv_b(self.pad(prev))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

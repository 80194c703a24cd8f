"""The Transformer bottleneck: feature projection, learned positions, pre-norm layers."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from missu_keras.compat import onednn_enabled
from missu_keras.layers.base import register
from missu_keras.layers.conv import SafeConv3D
from missu_keras.layers.decoder import BN_EPSILON, BN_MOMENTUM


# Dropout on the attention weights draws one 16-bit random number per weight (two per
# 32-bit Philox output, 1.7x faster than float32 uniforms): a weight is dropped when its
# number is below round(rate * 2^16), so the drop probability is that over 2^16 (0.1 ->
# 0.1000061), and kept weights are scaled by 2^16 / (2^16 - threshold), which keeps the
# expectation exact.
_DROP_LEVELS = 1 << 16


def attention_keep_mask(shape, seed, rate):
    """Boolean keep mask of ``shape`` for dropout ``rate``, a pure function of ``seed``
    (an int32 pair), and the scale for kept values. The same seed gives the same mask,
    which is what lets the backward pass regenerate it instead of storing it."""
    if rate >= 1.0:
        return tf.zeros(shape, tf.bool), 0.0
    threshold = min(int(round(rate * _DROP_LEVELS)), _DROP_LEVELS - 1)
    total = tf.reduce_prod(shape)
    bits = tf.random.stateless_uniform(((total + 1) // 2,), seed=seed, minval=None, maxval=None,
                                       dtype=tf.uint32)
    bits = tf.reshape(tf.bitcast(bits, tf.uint16), (-1,))[:total]
    keep = tf.reshape(bits >= threshold, shape)
    return keep, _DROP_LEVELS / (_DROP_LEVELS - threshold)


def attention_probs(q, k):
    """``softmax(q k^T)`` in float32 (q already scaled), shapes ``(B, heads, N, head_dim)``;
    k is read transposed by the matmul rather than copied."""
    return ops.softmax(ops.cast(tf.linalg.matmul(q, k, transpose_b=True), "float32"), axis=-1)


# Inference attends 128 queries at a time: each block's scores (8 heads x 128 x 4096 for
# the brats preset, 16 MB in float32) stay in the CPU's cache between the matmul, the
# softmax and the second matmul, where the whole 8 x 4096^2 tensor (512 MB) went through
# memory three times (benchmarks/NOTES.md, section 16).
QUERY_BLOCK = 128


def _attend(q, k, v):
    if q.dtype == tf.bfloat16 and onednn_enabled():
        # oneDNN's bfloat16 softmax computes in float32 and rounds once: bit for bit the
        # float32 softmax rounded to bfloat16 (measured over 134 M scores; tested), without
        # the two casts of 8 x N^2 values around it.
        probs = ops.softmax(tf.linalg.matmul(q, k, transpose_b=True), axis=-1)
    else:
        probs = ops.cast(attention_probs(q, k), v.dtype)
    return tf.linalg.matmul(probs, v)


def attention_core(q, k, v):
    """``softmax(q k^T) v`` with plain ops: what inference and export run. Softmax in
    float32 (or, for bfloat16 under oneDNN, its kernel that computes in float32); queries
    in blocks of :data:`QUERY_BLOCK` where the token count is a larger multiple of it."""
    tokens = q.shape[2]
    if tokens is None or tokens <= QUERY_BLOCK or tokens % QUERY_BLOCK:
        return _attend(q, k, v)
    blocks = [_attend(block, k, v) for block in tf.split(q, tokens // QUERY_BLOCK, axis=2)]
    return tf.concat(blocks, axis=2)


def recomputed_attention(q, k, v, seed, rate):
    """``dropout(softmax(q k^T)) v`` for training, with a hand-written gradient that keeps
    only q, k, v, the output and the dropout keep mask between the forward and backward
    passes.

    Automatic differentiation keeps the N x N scores, softmax output, dropout mask and
    dropped weights of every layer (8 x 4096^2 values each for the brats preset: 0.5 GB in
    float32 per tensor); here the backward pass recomputes the scores and softmax and keeps
    only the boolean keep mask (one byte a weight, 0.13 GB a layer: regenerating it from the
    seed cost more time than it saved memory). The dropout scale multiplies the (N, head_dim)
    output rather than the N x N weights, and the softmax gradient's row sums
    ``sum_j dW_ij P_ij`` are taken as ``d_out_i . out_i`` (as FlashAttention does), which
    saves three passes over N x N tensors. Same values as the automatic gradient up to float
    rounding (tests/test_layers.py); see benchmarks/NOTES.md (sections 7 and 16).
    """

    @tf.custom_gradient
    def core(q, k, v, seed):
        probs = attention_probs(q, k)
        if rate > 0:
            keep, scale = attention_keep_mask(tf.shape(probs), seed, rate)
            probs = tf.where(keep, probs, 0.0)
        else:
            keep, scale = None, 1.0
        out = tf.linalg.matmul(ops.cast(probs, v.dtype), v)
        if keep is not None:
            # scaled in float32: 1 / 0.9 in bfloat16 would be 0.16 % off
            out = ops.cast(ops.cast(out, "float32") * scale, out.dtype)

        def grad(d_out):
            # The control dependency on d_out keeps grappler from merging this
            # recomputation with the forward ops (common subexpression elimination),
            # which would keep the forward tensors alive again.
            with tf.control_dependencies([d_out]):
                q_, k_, v_ = (tf.identity(t) for t in (q, k, v))
            probs = attention_probs(q_, k_)
            d_o = d_out if keep is None else ops.cast(ops.cast(d_out, "float32") * scale, d_out.dtype)
            weights = probs if keep is None else tf.where(keep, probs, 0.0)
            d_v = tf.linalg.matmul(ops.cast(weights, d_o.dtype), d_o, transpose_a=True)
            d_weights = ops.cast(tf.linalg.matmul(d_o, v_, transpose_b=True), "float32")
            if keep is not None:
                d_weights = tf.where(keep, d_weights, 0.0)
            # sum_j d_weights_ij * probs_ij == d_out_i . out_i (out = dropped weights @ v)
            row = tf.reduce_sum(ops.cast(d_out, "float32") * ops.cast(out, "float32"), axis=-1, keepdims=True)
            d_scores = ops.cast(probs * (d_weights - row), q.dtype)
            d_q = tf.linalg.matmul(d_scores, k_)
            d_k = tf.linalg.matmul(d_scores, q_, transpose_a=True)
            return d_q, d_k, d_v, None

        return out, grad

    return core(q, k, v, seed)


@register
class Bottleneck(layers.Layer):
    """BatchNorm -> ReLU -> Conv3D(embed_dim, 3x3x3, same) on A4 (the released code's
    ``bn`` and ``conv_x``).

    ``(B, h, w, d, 8b)`` -> ``(B, h, w, d, embed_dim)``; reshaping to tokens
    ``(B, h*w*d, embed_dim)`` in row-major (h, w, d) order is done by the model.
    """

    def __init__(self, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        p = self.dtype_policy
        self.bn = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name="bn", dtype=p)
        self.conv = SafeConv3D(embed_dim, 3, padding="same", name="conv_x", dtype=p)

    def build(self, input_shape):
        self.bn.build(input_shape)
        self.conv.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        return self.conv(ops.relu(self.bn(x, training=training)))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim}


@register
class PositionEmbedding(layers.Layer):
    """Adds a learned position embedding ``(1, N, E)`` to tokens ``(B, N, E)``.

    N is fixed when the layer is built, so a model built for 128^3 patches takes 128^3
    patches. Initialised to zeros like the released code.
    """

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=self.initializer,
        )
        self.built = True

    def call(self, x):
        return x + ops.cast(self.position_embeddings, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(),
                "initializer": keras.initializers.serialize(self.initializer)}


@register
class TransformerLayer(layers.Layer):
    """One pre-norm Transformer layer of the released code:

    ``x = x + Dropout(MSA(LN(x)))`` then ``x = x + FFN(LN(x))`` with LayerNorm eps 1e-5.
    MSA uses one fused qkv projection without bias (output features ordered
    ``(3, heads, head_dim)``), scale ``head_dim ** -0.5``, softmax in float32, attention
    dropout, and an output projection with bias. FFN: Dense(mlp_dim) -> exact (erf)
    GELU -> Dropout -> Dense(E) -> Dropout.

    ``double_output_dropout=True`` (``MISSUConfig.released_attention_dropout``) drops the
    attention output twice, as the released code does: its ``proj_drop`` (at
    ``attn_dropout_rate``), then the pre-norm wrapper's dropout (at ``dropout_rate``).

    ``(B, N, E)`` -> ``(B, N, E)``.
    """

    def __init__(self, num_heads, mlp_dim, dropout_rate=0.1, attn_dropout_rate=0.1,
                 epsilon=1e-5, double_output_dropout=False, **kwargs):
        super().__init__(**kwargs)
        self.double_output_dropout = bool(double_output_dropout)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.attn_dropout_rate = attn_dropout_rate
        self.epsilon = epsilon
        p = self.dtype_policy
        self.norm1 = layers.LayerNormalization(epsilon=epsilon, name="norm1", dtype=p)
        self.norm2 = layers.LayerNormalization(epsilon=epsilon, name="norm2", dtype=p)
        # Not called: its seed generator seeds the attention dropout of recomputed_attention
        # (kept as a layer so checkpoints keep their seed-generator state).
        self.attn_dropout = layers.Dropout(attn_dropout_rate, dtype=p)
        self.proj_dropout = layers.Dropout(dropout_rate, dtype=p)
        # The released SelfAttention's own proj_drop (only with double_output_dropout, so
        # other checkpoints keep their layout).
        self.released_proj_dropout = (layers.Dropout(attn_dropout_rate, dtype=p)
                                      if self.double_output_dropout else None)
        self.mlp_dropout1 = layers.Dropout(dropout_rate, dtype=p)
        self.mlp_dropout2 = layers.Dropout(dropout_rate, dtype=p)
        self.qkv = self.proj = self.fc1 = self.fc2 = None

    def build(self, input_shape):
        embed_dim = input_shape[-1]
        if embed_dim % self.num_heads:
            raise ValueError(
                "embed_dim must be divisible by num_heads. "
                f"Received: embed_dim={embed_dim}, num_heads={self.num_heads}"
            )
        p = self.dtype_policy
        self.qkv = layers.Dense(3 * embed_dim, use_bias=False, name="qkv", dtype=p)
        self.proj = layers.Dense(embed_dim, name="proj", dtype=p)
        self.fc1 = layers.Dense(self.mlp_dim, name="fc1", dtype=p)
        self.fc2 = layers.Dense(embed_dim, name="fc2", dtype=p)
        self.norm1.build(input_shape)
        self.norm2.build(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.mlp_dim))
        self.built = True

    def attention(self, x, training=None):
        shape = ops.shape(x)
        batch, tokens, embed_dim = shape[0], shape[1], x.shape[-1]
        head_dim = embed_dim // self.num_heads
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, head_dim)
        # The scale goes on q (N x head_dim values) rather than on the N x N scores, and
        # k is read transposed by the matmul instead of being copied: 1.55x faster on
        # 4096 tokens (benchmarks/NOTES.md), equal to float rounding.
        q, k, v = ops.unstack(qkv, 3, axis=0)  # gradient: one stack, not three slice-gradients
        q = q * ops.cast(head_dim ** -0.5, q.dtype)
        if training:
            rate = self.attn_dropout_rate
            if rate > 0:  # the Dropout layer's seed generator (int64 state) -> an int32 pair
                seed = tf.cast(tf.math.floormod(self.attn_dropout.seed_generator.next(), 2**31 - 1), "int32")
            else:
                seed = tf.zeros((2,), "int32")
            out = recomputed_attention(q, k, v, seed, rate)
        else:
            out = attention_core(q, k, v)
        out = ops.transpose(out, (0, 2, 1, 3))
        out = self.proj(ops.reshape(out, (batch, tokens, embed_dim)))
        if self.released_proj_dropout is not None:
            out = self.released_proj_dropout(out, training=training)
        return out

    def call(self, x, training=None):
        x = x + self.proj_dropout(self.attention(self.norm1(x), training=training), training=training)
        y = self.fc1(self.norm2(x))
        # Exact GELU in float32 whatever the compute dtype: in bfloat16, TensorFlow's CPU erfc
        # runs 1.8x slower than casting to float32 and back, and rounds a third of its values
        # one bfloat16 step differently from the exact GELU (benchmarks/NOTES.md section 16).
        y = ops.cast(ops.gelu(ops.cast(y, "float32"), approximate=False), y.dtype)
        y = self.mlp_dropout2(self.fc2(self.mlp_dropout1(y, training=training)), training=training)
        return x + y

    def attention_macs(self, input_shape):
        """Multiply-accumulates of the two attention matmuls (QK^T and AV) per sample."""
        tokens, embed_dim = input_shape[-2], input_shape[-1]
        return 2 * tokens * tokens * embed_dim

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout_rate": self.dropout_rate,
            "attn_dropout_rate": self.attn_dropout_rate,
            "epsilon": self.epsilon,
            "double_output_dropout": self.double_output_dropout,
        }

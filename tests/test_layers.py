import numpy as np
import pytest
from keras import layers as klayers

from missu_keras.layers import (AttentionMap, Bottleneck, DeBlock, DownSample, EncoderBlock,
                                GroupNormalization, InitConv, MultiScaleFusion, PositionEmbedding, PyramidFusion,
                                SelfDistillationLoss, TransformerLayer, UpCat)
from tests.helpers import check_layer_config_roundtrip

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype("float32")


@pytest.mark.parametrize(
    "layer, inputs, out_shape",
    [
        (InitConv(8), rand(1, 8, 8, 8, 4), (1, 8, 8, 8, 8)),
        (EncoderBlock(), rand(1, 8, 8, 8, 16), (1, 8, 8, 8, 16)),
        (GroupNormalization(4), rand(2, 6, 8, 4, 8), (2, 6, 8, 4, 8)),
        (DownSample(16), rand(1, 8, 8, 8, 8), (1, 4, 4, 4, 16)),
        (Bottleneck(32), rand(2, 4, 4, 4, 16), (2, 4, 4, 4, 32)),
        (PositionEmbedding(initializer="random_normal"), rand(2, 10, 16), (2, 10, 16)),
        (TransformerLayer(4, 32, 0.0, 0.0), rand(2, 10, 16), (2, 10, 16)),
        (DeBlock(8, residual=True), rand(1, 4, 4, 4, 8), (1, 4, 4, 4, 8)),
        (DeBlock(8, residual=False), rand(1, 4, 4, 4, 16), (1, 4, 4, 4, 8)),
        (MultiScaleFusion(), rand(1, 8, 8, 8, 8), (1, 8, 8, 8, 8)),
        (AttentionMap(), rand(2, 4, 4, 4, 3), (2, 4, 4, 4)),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, (np.ndarray, tuple)) else None,
)
def test_layer_shapes_and_config_roundtrip(layer, inputs, out_shape):
    out = check_layer_config_roundtrip(layer, inputs)
    assert tuple(out.shape) == out_shape
    assert tuple(layer.compute_output_shape(inputs.shape)) == out_shape


def test_upcat_skip_first_and_without_skip():
    x, skip = rand(1, 4, 4, 4, 16), rand(1, 8, 8, 8, 8)
    up = UpCat(8)
    out = check_layer_config_roundtrip(up, ([x, skip],))
    assert out.shape == (1, 8, 8, 8, 8)
    # conv3 sees [skip, up]: its first input channels are the skip's.
    kernel = up.conv3.kernel.numpy()
    assert kernel.shape == (1, 1, 1, 16, 8)
    zeroed = kernel.copy()
    zeroed[..., 8:, :] = 0  # keep only the skip part
    up.conv3.kernel.assign(zeroed)
    a = np.asarray(up([x, skip]))
    b = np.asarray(up([rand(1, 4, 4, 4, 16), skip]))
    np.testing.assert_allclose(a, b, atol=1e-5)  # output then depends on skip only
    alone = UpCat(8)
    assert alone(x).shape == (1, 8, 8, 8, 8)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_upcat_inference_composes_its_linear_steps(policy):
    """At inference UpCat composes conv3's up half into the transposed convolution and adds
    the 1x1 convolution of the skip (no concatenated map): the values of the layers as
    written (training's path), float32 to rounding, bfloat16 within a bfloat16 step."""
    import tensorflow as tf

    up = UpCat(8, dtype=policy)
    x, skip = tf.constant(rand(1, 4, 4, 4, 16)), tf.constant(rand(1, 8, 8, 8, 6))
    up([x, skip])
    local = np.random.default_rng(7)
    for weight in up.weights:
        weight.assign(local.standard_normal(weight.shape) * 0.3)
    folded = tf.cast(up([x, skip]), tf.float32).numpy()
    written = tf.cast(up([x, skip], training=True), tf.float32).numpy()
    step = 2.0 ** -7 if policy == "mixed_bfloat16" else 1e-6
    assert np.abs(folded - written).max() <= 2 * step * np.abs(written).max()
    args = [tf.cast(t, up.compute_dtype) for t in (x, skip)]
    graph = tf.function(lambda a, b: up([a, b])).get_concrete_function(*args).graph
    assert "ConcatV2" not in {op.type for op in graph.get_operations()}


def test_pyramid_fusion_shapes_and_roundtrip():
    out = check_layer_config_roundtrip(PyramidFusion(), ([rand(1, 4, 4, 4, 16), rand(1, 8, 8, 8, 8)],))
    assert out.shape == (1, 4, 4, 4, 16)


def test_downsample_matches_pytorch_padding():
    # PyTorch Conv3d(k=3, s=2, p=1) samples centres 0, 2, 4, ... of the input; with a
    # delta kernel (centre tap) the output is x[::2, ::2, ::2].
    x = rand(1, 8, 8, 8, 1)
    down = DownSample(1)
    down(x)
    kernel = np.zeros((3, 3, 3, 1, 1), "float32")
    kernel[1, 1, 1] = 1
    down.conv.kernel.assign(kernel)
    down.conv.bias.assign(np.zeros(1, "float32"))
    np.testing.assert_allclose(np.asarray(down(x)), x[:, ::2, ::2, ::2], atol=1e-6)
    # Keras' own "same" padding would sample 1, 3, 5, ... instead:
    same = klayers.Conv3D(1, 3, strides=2, padding="same")
    same(x)
    same.kernel.assign(kernel)
    assert not np.allclose(np.asarray(same(x)), x[:, ::2, ::2, ::2])


def test_msf_receptive_fields():
    # The four branches see 3, 7, 9 and 19 voxels: a delta input spreads that far.
    msf = MultiScaleFusion()
    x = np.zeros((1, 25, 25, 25, 1), "float32")
    x[0, 12, 12, 12, 0] = 1
    msf(x)
    for convs in msf.branches:
        for conv in convs:
            conv.kernel.assign(np.ones(conv.kernel.shape, "float32"))
            conv.bias.assign(np.zeros(conv.bias.shape, "float32"))
    extents = []
    for convs in msf.branches:
        y = x
        for conv in convs:
            y = conv(y)
        support = np.nonzero(np.asarray(y)[0, :, 12, 12, 0])[0]
        extents.append(support.max() - support.min() + 1)
    assert extents == [3, 7, 9, 19]
    # Abar = A + sum of ReLU(branches)
    out = np.asarray(msf(x))
    assert out.shape == x.shape and out[0, 12, 12, 12, 0] > 1


def test_transformer_layer_matches_numpy_reference():
    layer = TransformerLayer(num_heads=2, mlp_dim=8, dropout_rate=0.0, attn_dropout_rate=0.0)
    x = rand(1, 5, 4)
    out = np.asarray(layer(x))
    w = {v.path.split("/")[-2] + "/" + v.name: v.numpy() for v in layer.weights}

    def ln(v, g, b):
        m, s = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - m) / np.sqrt(s + 1e-5) * g + b

    h = ln(x[0], w["norm1/gamma"], w["norm1/beta"])
    qkv = (h @ w["qkv/kernel"]).reshape(5, 3, 2, 2).transpose(1, 2, 0, 3)
    q, k, v = qkv
    s = q @ k.transpose(0, 2, 1) * 2 ** -0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    att = (p @ v).transpose(1, 0, 2).reshape(5, 4) @ w["proj/kernel"] + w["proj/bias"]
    y = x[0] + att
    from scipy.special import erf
    f = ln(y, w["norm2/gamma"], w["norm2/beta"]) @ w["fc1/kernel"] + w["fc1/bias"]
    f = 0.5 * f * (1 + erf(f / np.sqrt(2)))  # exact GELU
    ref = y + f @ w["fc2/kernel"] + w["fc2/bias"]
    np.testing.assert_allclose(out[0], ref, atol=1e-5)
    assert "qkv/bias" not in w


def test_self_distillation_loss_values():
    sd = SelfDistillationLoss()
    a = np.abs(rand(2, 4, 4, 4, 3))
    # identical maps -> 0 per stage
    np.testing.assert_allclose(np.asarray(sd([a, a, a], [a, a, a])), [0, 0], atol=1e-5)
    # disjoint (orthogonal) attention maps -> sqrt(2) per stage
    left = np.zeros((2, 4, 4, 4, 3), "float32")
    right = np.zeros_like(left)
    left[:, :2] = 1.0
    right[:, 2:] = 2.0
    np.testing.assert_allclose(np.asarray(sd([left] * 3, [right] * 3)), [3 * np.sqrt(2)] * 2, rtol=1e-5)
    # scale invariance: phi normalised, so B = 5 A gives 0
    np.testing.assert_allclose(np.asarray(sd([a], [5 * a])), [0, 0], atol=1e-5)
    check_layer_config_roundtrip(SelfDistillationLoss(teacher_stop_gradient=True), ([a], [a]))
    with pytest.raises(ValueError, match="as many teachers as students"):
        sd([a, a], [a])


@pytest.mark.parametrize("shape, groups", [((2, 6, 8, 4, 16), 8), ((3, 10, 12), 4), ((2, 5, 6, 7, 8), 1), ((1, 4, 4, 4, 8), 8)])
def test_group_norm_equals_keras_group_norm(shape, groups):
    """The per-channel-statistics GroupNorm gives Keras' GroupNorm (float64 reference)
    outputs and gradients within float32 rounding, for offset, scaled, non-cubic inputs."""
    import tensorflow as tf

    x = rand(*shape) * 3.0 + 5.0
    dy = rand(*shape)
    ours = GroupNormalization(groups, epsilon=1e-5, gamma_initializer="random_normal",
                              beta_initializer="random_normal")
    ours.build(shape)
    ref = klayers.GroupNormalization(groups, epsilon=1e-5, dtype="float64")
    ref.build(shape)
    ref.set_weights([w.astype("float64") for w in ours.get_weights()])

    def forward_backward(layer, x, dy):
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.cast(dy, y.dtype))
        return [y] + tape.gradient(loss, [x, *layer.trainable_variables])

    got = forward_backward(ours, x, dy)
    want = forward_backward(ref, x.astype("float64"), dy)
    assert got[0].dtype == tf.float32
    for name, g, w in zip(("output", "d/dx", "d/dgamma", "d/dbeta"), got, want):
        w = np.asarray(w)
        err = np.abs(np.asarray(g, dtype="float64") - w).max() / max(np.abs(w).max(), 1e-12)
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_group_norm_statistics_exact_at_full_size(policy):
    """At the brats preset's largest GroupNorm (1 x 128^3 x 16, 8 groups: 2 M voxels per
    group) the group mean and variance are float32-exact against a float64 NumPy reference
    (relative error measured ~1e-7; a one-pass float32 reduction gives 2e-4 in the
    variance), under every precision policy (statistics always in float32)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 128, 128, 128, 16), dtype=np.float32) * 3
    x += rng.uniform(-5, 5, 16).astype(np.float32)  # channel offsets, as after a conv
    layer = GroupNormalization(8, epsilon=1e-5, dtype=policy)
    layer.build(x.shape)
    seen = tf.cast(x, layer.compute_dtype)  # what the layer receives under the policy
    mean, var = layer.group_moments(seen)
    assert mean.dtype == tf.float32 and var.dtype == tf.float32
    ref = np.asarray(tf.cast(seen, tf.float32), dtype=np.float64).reshape(1, -1, 8, 2)
    ref_mean, ref_var = ref.mean(axis=(1, 3)), ref.var(axis=(1, 3))
    mean_err = np.abs(np.asarray(mean)[..., 0] - ref_mean).max() / np.abs(ref_mean).max()
    var_err = (np.abs(np.asarray(var)[..., 0] - ref_var) / ref_var).max()
    assert mean_err < 1e-6 and var_err < 1e-6, (mean_err, var_err)


def test_group_norm_mixed_precision_keeps_statistics_in_float32():
    import keras

    x = rand(2, 8, 8, 8, 16) * 50.0 + 300.0  # float16 sums of squares would overflow
    ours = GroupNormalization(8, epsilon=1e-5, dtype="mixed_float16")
    ref = klayers.GroupNormalization(8, epsilon=1e-5)
    y = ours(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert np.isfinite(np.asarray(y, dtype="float32")).all()
    np.testing.assert_allclose(np.asarray(y, dtype="float32"), np.asarray(ref(x)), atol=2e-2)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_group_norm_inference_scale_as_diagonal_convolution(policy):
    """At inference a single 3D sample's ``x * scale + offset`` is a 1x1x1 convolution with
    the kernel diag(scale) (one oneDNN pass, fused with the ReLU after it): the values of the
    elementwise form (float32: to rounding; bfloat16: within one bfloat16 step, as it
    rounds once where the elementwise ops round twice). Batches of 2 and training run the
    elementwise ops."""
    import tensorflow as tf

    from missu_keras.layers.normalization import scale_and_shift

    layer = GroupNormalization(8, epsilon=1e-5, gamma_initializer="random_normal",
                               beta_initializer="random_normal", dtype=policy)
    x = tf.constant(rand(1, 6, 5, 4, 16) * 3.0 + 1.0)
    layer.build(x.shape)
    step = 2.0 ** -7 if policy == "mixed_bfloat16" else 1e-6
    infer = tf.cast(layer(x), tf.float32).numpy()
    train = tf.cast(layer(x, training=True), tf.float32).numpy()
    np.testing.assert_allclose(infer, train, rtol=0, atol=step * np.abs(train).max())

    def op_types(fn, *args):
        return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}

    scale, offset = tf.constant(rand(1, 16)), tf.constant(rand(1, 16))
    xc = tf.cast(x, layer.compute_dtype)
    assert "Conv3D" in op_types(lambda t: tf.nn.relu(scale_and_shift(t, scale, offset)), xc)
    assert "Conv3D" not in op_types(lambda t: scale_and_shift(t, scale, offset, as_convolution=False), xc)
    two = tf.concat([xc, xc], axis=0)
    assert "Conv3D" not in op_types(lambda t: scale_and_shift(t, tf.concat([scale] * 2, 0),
                                                              tf.concat([offset] * 2, 0)), two)
    # the layer picks the form from `training`, also inside a block whose call has no
    # `training` argument (Keras passes it down through the call context)
    assert "Conv3D" in op_types(lambda t: layer(t), x)
    assert "Conv3D" not in op_types(lambda t: layer(t, training=True), x)
    block = EncoderBlock(groups=8, dtype=policy)
    block.build(x.shape)
    convs = sum(op.type == "Conv3D" for op in
                tf.function(lambda t: block(t)).get_concrete_function(x).graph.get_operations())
    convs_training = sum(op.type == "Conv3D" for op in tf.function(
        lambda t: block(t, training=True)).get_concrete_function(x).graph.get_operations())
    assert (convs, convs_training) == (4, 2)  # two 3x3x3 convolutions, plus two GroupNorms at inference
    conv = tf.cast(scale_and_shift(xc, scale, offset), tf.float32).numpy()
    elementwise = tf.cast(scale_and_shift(xc, scale, offset, as_convolution=False), tf.float32).numpy()
    np.testing.assert_allclose(conv, elementwise, rtol=0, atol=step * np.abs(elementwise).max())


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_deblock_inference_folds_batch_norm_into_the_convolution(policy):
    """At inference DeBlock runs each Conv -> BN -> ReLU as one convolution with the folded
    kernel and bias: the values of the layers run one after the other (BN on its moving
    statistics), float32 to rounding and bfloat16 within a bfloat16 step. Training (batch
    statistics) runs the layers as written; a frozen BatchNorm folds in training too."""
    import tensorflow as tf
    from keras import ops

    block = DeBlock(8, residual=True, dtype=policy)
    x = tf.constant(rand(2, 6, 6, 6, 8))
    block.build(x.shape)
    local = np.random.default_rng(5)
    for conv in (block.conv1, block.conv2):  # conv biases too: the fold scales them
        conv.kernel.assign(local.normal(size=conv.kernel.shape) * 0.2)
        conv.bias.assign(local.normal(size=8))
    for bn in (block.bn1, block.bn2):
        bn.moving_mean.assign(local.normal(size=8))
        bn.moving_variance.assign(local.uniform(0.2, 3.0, size=8))
        bn.gamma.assign(local.normal(size=8))
        bn.beta.assign(local.normal(size=8))

    def layer_by_layer(training):
        y = ops.relu(block.bn1(block.conv1(x), training=training))
        y = ops.relu(block.bn2(block.conv2(y), training=training))
        return tf.cast(ops.cast(x, y.dtype) + y, tf.float32).numpy()

    step = 2.0 ** -7 if policy == "mixed_bfloat16" else 1e-6
    want = layer_by_layer(False)
    got = tf.cast(block(x), tf.float32).numpy()
    assert np.abs(got - want).max() <= 2 * step * np.abs(want).max()
    graph = tf.function(lambda t: block(t)).get_concrete_function(tf.cast(x, block.compute_dtype)).graph
    on_the_map = {op.type for op in graph.get_operations() if op.outputs and op.outputs[0].shape == x.shape}
    assert "Conv3D" in on_the_map and not {"Mul", "Cast"} & on_the_map, on_the_map  # no BN passes
    # training: batch statistics, as the layers one after the other
    np.testing.assert_allclose(tf.cast(block(x, training=True), tf.float32).numpy(), layer_by_layer(True),
                               rtol=0, atol=2 * step * np.abs(want).max())
    # a frozen BatchNorm uses its moving statistics in training too, so it folds there
    block.bn1.trainable = block.bn2.trainable = False
    frozen = tf.cast(block(x, training=True), tf.float32).numpy()
    assert np.abs(frozen - layer_by_layer(False)).max() <= 2 * step * np.abs(want).max()
    np.testing.assert_array_equal(frozen, tf.cast(block(x), tf.float32).numpy())


def test_group_norm_validates_groups():
    with pytest.raises(ValueError, match="multiple"):
        GroupNormalization(3).build((1, 4, 4, 4, 8))


def _attention_reference(q, k, v, seed, rate):
    """Plain ops, differentiated automatically: softmax(q k^T), the same keep mask, v."""
    import tensorflow as tf

    from missu_keras.layers.transformer import attention_keep_mask

    probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True), axis=-1)
    if rate > 0:
        keep, scale = attention_keep_mask(tf.shape(probs), seed, rate)
        probs = tf.where(keep, probs * scale, 0.0)
    return tf.matmul(probs, v)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_recomputed_attention_gradient_equals_automatic_gradient(rate):
    """The hand-written backward pass (scores and softmax recomputed, dropout mask
    regenerated from the seed) gives the automatic gradient of the same forward."""
    import tensorflow as tf

    from missu_keras.layers.transformer import recomputed_attention

    q, k, v, d_out = (tf.constant(rand(2, 3, 9, 4)) for _ in range(4))  # 9 tokens: odd count
    seed = tf.constant([7, 11], tf.int32)

    @tf.function  # graph mode, where grappler could merge the recomputation away
    def both():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([q, k, v])
            ours = recomputed_attention(q, k, v, seed, rate)
            ref = _attention_reference(q, k, v, seed, rate)
            loss_ours, loss_ref = tf.reduce_sum(ours * d_out), tf.reduce_sum(ref * d_out)
        return ours, ref, tape.gradient(loss_ours, [q, k, v]), tape.gradient(loss_ref, [q, k, v])

    ours, ref, g_ours, g_ref = both()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    for name, a, b in zip("qkv", g_ours, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d/d{name}")
    if rate:
        assert not np.allclose(ours, recomputed_attention(q, k, v, seed, 0.0))  # dropout happened


def test_attention_keep_mask_rate_and_determinism():
    import tensorflow as tf

    from missu_keras.layers.transformer import attention_keep_mask

    seed = tf.constant([1, 2], tf.int32)
    keep, scale = attention_keep_mask(tf.constant([400, 1001]), seed, 0.1)
    dropped = 1.0 - np.mean(keep)
    assert abs(dropped - 0.1) < 0.003  # 400k draws: standard error 0.0005
    assert scale == pytest.approx(65536 / (65536 - 6554))  # expectation kept: (1 - p) * scale == 1
    again, _ = attention_keep_mask(tf.constant([400, 1001]), seed, 0.1)
    other, _ = attention_keep_mask(tf.constant([400, 1001]), tf.constant([1, 3], tf.int32), 0.1)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)
    none_kept, _ = attention_keep_mask(tf.constant([10, 10]), seed, 1.0)
    assert not np.any(none_kept)


def test_transformer_training_path_matches_inference_path_without_dropout():
    """training=True runs the recomputing attention; with dropout off it must give the same
    output and weight gradients as the plain path (training=False)."""
    import tensorflow as tf

    layer = TransformerLayer(4, 32, dropout_rate=0.0, attn_dropout_rate=0.0)
    x = tf.constant(rand(2, 12, 16))

    def run(training):
        with tf.GradientTape() as tape:
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, layer.trainable_variables)

    y_train, g_train = run(True)
    y_eval, g_eval = run(False)
    np.testing.assert_allclose(y_train, y_eval, atol=1e-6)
    for a, b, var in zip(g_train, g_eval, layer.trainable_variables):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=var.path)


def test_recomputed_attention_keeps_no_score_matrices_for_backward():
    """Four stacked attentions (8 x 1024^2 scores, 32 MiB per score-sized tensor) in one
    tf.function: the recomputing attention's peak allocator memory stays well below the
    automatic gradient's, which keeps softmax output, mask and dropped weights per layer.
    Guards against grappler merging the recomputation back into the forward pass."""
    import tensorflow as tf

    from missu_keras.layers.transformer import recomputed_attention

    x = tf.constant(rand(1, 8, 1024, 16))

    def peak_mib(attention):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = x
                for i in range(4):
                    y = y + attention(y, y * 0.5, y * 0.25, tf.constant([i, 1]), 0.1)
                loss = tf.reduce_sum(y)
            return tape.gradient(loss, x)

        step(x)
        tf.config.experimental.reset_memory_stats("CPU:0")
        # The allocator is the process's: what earlier tests still hold is not the step's.
        held = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x).numpy()
        return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - held) / 2**20

    ours, automatic = peak_mib(recomputed_attention), peak_mib(_attention_reference)
    assert ours < 0.7 * automatic, (ours, automatic)  # measured: 190 vs 359 MiB


def test_msf_training_path_matches_keras_dilated_convolutions():
    """In training, where oneDNN runs (the package turns it on), MultiScaleFusion calls
    Conv3D with its dilations attribute instead of Keras' SpaceToBatch form; outputs and
    gradients must equal the inference path's (Keras' form)."""
    import tensorflow as tf

    from missu_keras.compat import onednn_enabled

    layer = MultiScaleFusion()
    x = tf.constant(rand(1, 12, 10, 8, 4))  # non-cubic, not a multiple of the rates
    layer.build(x.shape)

    def run(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, [x, *layer.trainable_variables])

    assert onednn_enabled()  # tests/conftest.py sets TF_ENABLE_ONEDNN_OPTS=1 like the package
    for a, b in zip(run(True), run(False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("rate", [(3, 3, 3), (5, 5, 5), (2, 3, 1)])
def test_dilated_conv_kernel_gradient_through_sub_lattices(rate):
    """The training MSF's dilated convolution (one Conv3D op with dilations, its kernel
    gradient taken over the rate-strided sub-lattices) gives the output and both gradients
    of Keras' form, on sides that are not multiples of the rate, batch 2."""
    import tensorflow as tf

    from missu_keras.layers.msf import _dilated_conv3d

    x = tf.constant(rand(2, 7, 9, 11, 3))
    kernel = tf.constant(rand(3, 3, 3, 3, 4))
    d_y = tf.constant(rand(2, 7, 9, 11, 4))

    def run(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(y * d_y)
        return [y, *tape.gradient(loss, [x, kernel])]

    ours = tf.function(lambda: run(lambda a, b: _dilated_conv3d(a, b, rate)))()
    ref = run(lambda a, b: tf.nn.convolution(a, b, padding="SAME", dilations=rate))
    for name, a, b in zip(("output", "d/dx", "d/dkernel"), ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), err_msg=name)


def test_attention_core_query_blocks_equal_one_block():
    """Inference attends QUERY_BLOCK queries at a time; the result is the whole softmax
    attention's (each query's softmax runs over all keys in either case)."""
    import tensorflow as tf

    from missu_keras.layers import transformer

    q, k, v = (tf.constant(rand(2, 3, 4 * transformer.QUERY_BLOCK, 8)) for _ in range(3))
    blocked = transformer.attention_core(q, k, v)
    whole = transformer._attend(q, k, v)
    reference = tf.matmul(tf.nn.softmax(tf.matmul(q, k, transpose_b=True), axis=-1), v)
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(blocked, reference, rtol=1e-5, atol=1e-6)


def test_bfloat16_attention_softmax_is_the_float32_softmax_rounded():
    """In bfloat16 under oneDNN the attention's softmax runs on the bfloat16 scores directly
    (no casts of the N x N tensor); that kernel computes in float32 and rounds once, so its
    weights are the float32 softmax rounded to bfloat16 (within one bfloat16 step, 2^-7
    relative; measured bit-identical on a Sapphire Rapids over 134 M scores)."""
    import tensorflow as tf

    from missu_keras.compat import onednn_enabled
    from missu_keras.layers import transformer

    scores = tf.cast(tf.constant(rand(2, 4, 64, 300) * 4.0), tf.bfloat16)
    assert onednn_enabled()  # tests/conftest.py sets TF_ENABLE_ONEDNN_OPTS=1 like the package
    direct = tf.cast(tf.nn.softmax(scores, axis=-1), tf.float32).numpy()
    rounded = tf.cast(tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(direct, rounded, rtol=2.0 ** -7, atol=0)
    # and attention_core's bfloat16 output is that of the float32-softmax route
    q, k, v = (tf.cast(tf.constant(rand(1, 2, 256, 16)), tf.bfloat16) for _ in range(3))
    ours = tf.cast(transformer.attention_core(q, k, v), tf.float32).numpy()
    probs = tf.cast(tf.nn.softmax(tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32), axis=-1), tf.bfloat16)
    ref = tf.cast(tf.matmul(probs, v), tf.float32).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2.0 ** -7 * float(np.abs(ref).max()))


def test_recomputed_attention_bfloat16_dropout_scale_unbiased():
    """In bfloat16 the dropout scale (1 / 0.9) is applied in float32: a bfloat16 scale would
    make every kept weight 0.16 % too small. Keys are zero, so the weights are exactly 1/128
    and the values exact in bfloat16: what is left is unbiased per-value rounding, and over
    24 k outputs the fitted gain against float32 is 1 within 2e-4 (measured: under 5e-5;
    with the scale in bfloat16: 1.6e-3 off)."""
    import tensorflow as tf

    from missu_keras.layers.transformer import recomputed_attention

    q = tf.constant(rand(2, 3, 128, 32))
    k = tf.zeros((2, 3, 128, 32))
    v = tf.cast(tf.cast(tf.constant(rand(2, 3, 128, 32)), tf.bfloat16), tf.float32)
    seed = tf.constant([3, 5], tf.int32)
    ref = recomputed_attention(q, k, v, seed, 0.1).numpy()
    low = recomputed_attention(*(tf.cast(t, tf.bfloat16) for t in (q, k, v)), seed, 0.1)
    low = tf.cast(low, tf.float32).numpy()
    gain = float(np.sum(low * ref) / np.sum(ref * ref))
    assert abs(gain - 1.0) < 2e-4, gain

"""The ablation options from the paper's sources and the switches that reproduce the
released code (README, "Differences from the released code"): each changes what it
should and nothing else."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from missu_keras import MISSU, MISSUConfig
from missu_keras.complexity import count_macs, layer_macs
from missu_keras.layers import AttentionMap, MultiScaleFusion, SelfDistillationLoss, TransformerLayer
from missu_keras.losses import per_sample_soft_dice, released_dice
from tests.conftest import NO_DROPOUT, TINY


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# ------------------------------------------------------------- attention-map power --

def test_attention_map_power_two_is_the_square_sum():
    f = _rand(2, 4, 4, 4, 6)
    np.testing.assert_allclose(np.asarray(AttentionMap()(f)), np.abs(f).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(AttentionMap(2)(f)), (f ** 2).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(AttentionMap(3)(f)), (np.abs(f) ** 3).sum(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="power"):
        AttentionMap(0.5)
    with pytest.raises(ValueError, match="attention_map_power"):
        MISSUConfig(attention_map_power=0)


def test_attention_map_power_reaches_the_loss_only():
    a, b = _rand(2, 4, 4, 4, 8), _rand(2, 4, 4, 4, 8, seed=1)

    def by_hand(p):
        def q(x):
            m = (np.abs(x) ** p).sum(-1).reshape(2, -1)
            return m / np.linalg.norm(m, axis=-1, keepdims=True)
        return np.linalg.norm(q(a) - q(b), axis=-1)

    for p in (1, 2):
        got = np.asarray(SelfDistillationLoss(attention_power=p)([a], [b]))
        np.testing.assert_allclose(got, by_hand(p), rtol=1e-4)
    assert not np.allclose(by_hand(1), by_hand(2))
    # in the model: same network and weights, only the distillation term moves
    x = _rand(1, 32, 32, 32, 4)
    y = (x[..., 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    one = MISSU(**TINY, **NO_DROPOUT)
    two = MISSU(**TINY, **NO_DROPOUT, attention_map_power=2.0)
    two.set_weights(one.get_weights())
    seg1, sd1, _ = one.compute_losses(x, y, training=False)
    seg2, sd2, _ = two.compute_losses(x, y, training=False)
    np.testing.assert_allclose(np.asarray(seg1), np.asarray(seg2), rtol=1e-6)
    assert not np.allclose(np.asarray(sd1), np.asarray(sd2))
    assert MISSU.from_config(two.get_config()).sd_loss_fn.attention_power == 2.0


# ------------------------------------------------------------------ shared MSF -----

def test_shared_msf_parameters_shapes_and_macs():
    c = 8
    x = _rand(1, 8, 8, 8, c)
    own, shared = MultiScaleFusion(), MultiScaleFusion(shared_weights=True)
    out_own, out_shared = own(x), shared(x)
    assert out_own.shape == out_shared.shape == x.shape
    conv3, conv1 = 27 * c * c + c, c * c + c  # kernel + bias
    assert own.count_params() == 7 * conv3 + 3 * conv1
    assert shared.count_params() == 3 * conv3 + conv1
    # CE-Net's DAC by hand: one conv per rate and one 1x1, reused along the branches
    r1, r3, r5, one = (next(conv for convs in shared.branches for conv in convs if conv.name == f"shared_{n}")
                       for n in ("rate1", "rate3", "rate5", "1x1"))
    relu = tf.nn.relu
    expected = x + relu(r1(x)) + relu(one(r3(x))) + relu(one(r3(r1(x)))) + relu(one(r5(r3(r1(x)))))
    np.testing.assert_allclose(np.asarray(out_shared), np.asarray(expected), atol=1e-5)
    # MACs per call: 4 dilated 3x3x3 + three 1x1 calls with sharing, 7 + 3 without
    v3, v1 = 8 ** 3 * 27 * c * c, 8 ** 3 * c * c
    model = keras.Sequential([keras.Input((8, 8, 8, c)), MultiScaleFusion(shared_weights=True)])
    assert count_macs(model) == 4 * v3 + 3 * v1
    model = keras.Sequential([keras.Input((8, 8, 8, c)), MultiScaleFusion()])
    assert count_macs(model) == 7 * v3 + 3 * v1 == sum(layer_macs(conv) for convs in model.layers[0].branches
                                                         for conv in convs)


def test_shared_msf_in_the_model_changes_only_the_msf():
    own = MISSU(**TINY)
    shared = MISSU(**TINY, msf_shared_weights=True)
    assert own.inference_model().count_params() == shared.inference_model().count_params()
    c_total = sum(8 * 2 ** s for s in range(3))  # MSF widths b, 2b, 4b
    per_c2 = (7 * 27 + 3) - (3 * 27 + 1)  # kernel weights dropped per c^2
    dropped = sum((8 * 2 ** s) ** 2 * per_c2 for s in range(3)) + 6 * c_total  # + 6 biases per channel
    assert own.backbone.count_params() - shared.backbone.count_params() == dropped
    outputs = shared.backbone(_rand(1, 32, 32, 32, 4), training=True)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == \
        {k: tuple(v.shape) for k, v in own.backbone(_rand(1, 32, 32, 32, 4), training=True).items()}
    assert MISSU.from_config(shared.get_config()).config.msf_shared_weights


# --------------------------------------------------------------- released Dice -----

def test_released_dice_is_three_batch_level_terms_summed():
    """By hand: each foreground class's Dice over the whole batch, 1 - 2I/(P + G + 1e-5),
    summed (0 to 3); the per-sample "dice" loss is a mean of per-sample terms (0 to 1)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, (2, 3, 4, 5)).astype("int32")
    logits = rng.standard_normal((2, 3, 4, 5, 4)).astype("float32") * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    terms = []
    for k in (1, 2, 3):
        g = (y == k).astype("float64")
        terms.append(1 - 2 * (p[..., k] * g).sum() / (p[..., k].sum() + g.sum() + 1e-5))
    got = np.asarray(released_dice(y, logits))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, [sum(terms)] * 2, rtol=1e-5)
    # the scale against "dice": up to three times larger
    ours = np.asarray(per_sample_soft_dice(y, logits)).mean()
    assert 2.0 < got[0] / ours < 3.5, (got[0], ours)
    model = MISSU(**TINY, seg_loss="released_dice")
    seg, _, _ = model.compute_losses(_rand(2, 32, 32, 32, 4), np.zeros((2, 32, 32, 32), "int32"), training=False)
    assert 0 <= float(seg[0]) <= 3 and float(seg[0]) == float(seg[1])


# ------------------------------------------------------------ released dropouts -----

def test_released_stem_dropout_makes_inference_stochastic():
    x = _rand(1, 32, 32, 32, 4)
    keras.utils.set_random_seed(0)
    ours = MISSU(**TINY)
    released = MISSU(**TINY, released_stem_dropout=True)
    released.set_weights(ours.get_weights())
    net, rnet = ours.inference_model(), released.inference_model()
    np.testing.assert_array_equal(net.predict(x, verbose=0), net.predict(x, verbose=0))
    first, second = rnet.predict(x, verbose=0), rnet.predict(x, verbose=0)
    assert np.abs(first - second).max() > 1e-3  # two evaluation runs differ
    # nothing else: without the stem dropout rate the two networks agree
    keras.utils.set_random_seed(0)
    a = MISSU(**TINY, stem_dropout_rate=0.0)
    b = MISSU(**TINY, stem_dropout_rate=0.0, released_stem_dropout=True)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(b.inference_model().predict(x, verbose=0),
                               a.inference_model().predict(x, verbose=0), atol=1e-6)


def test_released_stem_dropout_leaves_the_rest_of_the_network_in_inference_mode():
    """The stem's dropout runs at inference without telling the layers after it that this
    is training: a model called without `training` keeps BatchNorm on its moving statistics
    (a `training=True` passed to the nested dropout layer's __call__ stayed in Keras' call
    context and moved them)."""
    from missu_keras.layers import InitConv

    inputs = keras.Input((8, 8, 8, 2))
    stem = InitConv(4, 0.5, dropout_at_inference=True)
    norm = keras.layers.BatchNormalization()
    model = keras.Model(inputs, norm(stem(inputs)))
    x = _rand(2, 8, 8, 8, 2)
    before = norm.moving_mean.numpy().copy()
    model(x)
    np.testing.assert_array_equal(norm.moving_mean.numpy(), before)
    assert (stem(x).numpy() == 0).mean() > 0.1  # the stem still drops channels at inference
    model(x, training=True)
    assert not np.array_equal(norm.moving_mean.numpy(), before)  # training still trains


def test_released_attention_dropout_drops_the_output_twice():
    x = _rand(2, 64, 32)
    plain = TransformerLayer(4, 64, dropout_rate=0.0, attn_dropout_rate=0.5)
    twice = TransformerLayer(4, 64, dropout_rate=0.0, attn_dropout_rate=0.5, double_output_dropout=True)
    plain.build(x.shape)
    twice.build(x.shape)
    twice.set_weights(plain.get_weights())
    norm = twice.norm1(x)
    # the released proj_drop zeroes about attn_dropout_rate of the projected output in training
    zeros_twice = np.mean(np.asarray(twice.attention(norm, training=True)) == 0)
    zeros_plain = np.mean(np.asarray(plain.attention(norm, training=True)) == 0)
    assert zeros_plain == 0 and 0.4 < zeros_twice < 0.6, (zeros_plain, zeros_twice)
    # inference is unchanged
    np.testing.assert_allclose(np.asarray(twice(x, training=False)), np.asarray(plain(x, training=False)), atol=1e-6)
    model = MISSU(**TINY, released_attention_dropout=True)
    assert all(layer.double_output_dropout for layer in model.backbone.layers if isinstance(layer, TransformerLayer))
    assert MISSU.from_config(model.get_config()).config.released_attention_dropout


def test_boolean_switches_are_type_checked():
    for name in ("msf_shared_weights", "released_stem_dropout", "released_attention_dropout"):
        with pytest.raises(ValueError, match=name):
            MISSUConfig(**{name: "False"})

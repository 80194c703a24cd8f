"""SlidingWindowInferer on predictors whose whole-volume answer is known."""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from missu_keras.inference import (MIN_IMPORTANCE, SlidingWindowInferer, importance_map,
                                   rebuild_with_dtype_policy, sliding_window_inference,
                                   window_starts, window_starts_tensor)


def threshold_one_hot(x):
    """Voxel-wise, so translation- and flip-equivariant: (b, ..., C) -> (b, ..., 2)."""
    fg = (np.asarray(x)[..., 0] > 0).astype("float32")
    return np.stack([1.0 - fg, fg], axis=-1)


def identity(x):
    return np.asarray(x)


def volume(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ------------------------------------------------------------------ windows, weights --


@pytest.mark.parametrize("size,roi,overlap", [(20, 8, 0.5), (20, 8, 0.0), (37, 16, 0.25),
                                              (16, 16, 0.5), (17, 16, 0.5), (5, 8, 0.5)])
def test_window_starts_cover_the_axis_and_end_flush(size, roi, overlap):
    starts = window_starts(size, roi, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if size <= roi:
        assert starts == [0]
        return
    assert starts[-1] + roi == size  # last window flush with the end
    gaps = np.diff(starts)
    assert gaps.max() <= max(1, int(roi * (1 - overlap)))  # never sparser than asked


def test_every_voxel_covered_and_weights_sum():
    inferer = SlidingWindowInferer(roi_size=(8, 6, 4), overlap=0.5)
    shape = (19, 13, 9)  # not a multiple of the window on any axis
    count = np.zeros(shape, int)
    for win in inferer.window_slices(shape):
        assert all(s.stop - s.start == r for s, r in zip(win, inferer.roi_size))
        count[win] += 1
    assert count.min() >= 1
    # A constant predictor comes back unchanged: the weights are normalised per voxel.
    out = inferer(lambda x: np.full(x.shape[:4] + (3,), 0.25, "float32"),
                  volume(shape + (1,)))
    np.testing.assert_allclose(out, 0.25, rtol=1e-6)


def test_gaussian_importance_is_symmetric_and_peaks_in_the_centre():
    w = importance_map((9, 8, 5), "gaussian", 0.125)
    assert w.dtype == np.float32 and w.shape == (9, 8, 5)
    for axis in range(3):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-6)
    assert w.max() == pytest.approx(1.0)
    assert w[4, 3, 2] == w.max() and w[4, 4, 2] == w.max()  # odd / even centres
    assert w.min() == pytest.approx(MIN_IMPORTANCE)  # clamped away from 0
    assert w[0, 0, 0] < w[2, 2, 1] < w[4, 3, 2]
    np.testing.assert_array_equal(importance_map(4, "constant"), np.ones((4, 4, 4)))


# ----------------------------------------------------------------- known answers --


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_equals_direct_whole_volume_result(mode, overlap):
    vol = volume((21, 18, 11, 2))
    inferer = SlidingWindowInferer((8, 8, 8), overlap=overlap, sw_batch_size=3, mode=mode)
    out = inferer(threshold_one_hot, vol)
    assert out.shape == (21, 18, 11, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, threshold_one_hot(vol), atol=1e-6)


def test_identity_predictor_returns_the_input():
    vol = volume((13, 10, 9, 3))
    out = SlidingWindowInferer(6, overlap=0.5, sw_batch_size=5)(identity, vol)
    np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)


def test_volume_smaller_than_the_window_is_padded_and_cropped():
    vol = volume((5, 20, 3, 1))
    seen = []

    def predictor(x):
        seen.append(x.shape)
        return identity(x)

    out = SlidingWindowInferer((8, 8, 8), overlap=0.5)(predictor, vol)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out, vol, rtol=1e-5, atol=1e-6)
    assert all(s[1:4] == (8, 8, 8) for s in seen)  # the predictor only sees full windows


def test_batch_dimension():
    vol = volume((3, 12, 11, 10, 2))
    inferer = SlidingWindowInferer(8, overlap=0.5, sw_batch_size=4)
    out = inferer(threshold_one_hot, vol)
    assert out.shape == (3, 12, 11, 10, 2)
    for b in range(3):
        np.testing.assert_allclose(out[b], inferer(threshold_one_hot, vol[b]), atol=1e-6)
    np.testing.assert_allclose(out, threshold_one_hot(vol), atol=1e-6)


def test_flip_tta():
    vol = volume((12, 10, 9, 2))
    calls = []

    def counting(x):
        calls.append(x.copy())
        return threshold_one_hot(x)

    plain = SlidingWindowInferer(8, overlap=0.5)(threshold_one_hot, vol)
    tta_inferer = SlidingWindowInferer(8, overlap=0.5, sw_batch_size=64, flip_tta=True)
    tta = tta_inferer(counting, vol)
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    assert len(calls) == 8  # one batch, 8 flip combinations
    flipped = {axes for n in range(4) for axes in itertools.combinations((1, 2, 3), n)}
    for axes, x in zip(sorted(flipped, key=lambda a: (len(a), a)), calls):
        np.testing.assert_array_equal(x, np.flip(calls[0], axes) if axes else calls[0])
    # Flipping back is right: an identity predictor still returns the input...
    np.testing.assert_allclose(tta_inferer(identity, vol[..., :1]), vol[..., :1], atol=1e-5)

    # ...and a predictor that is not flip-symmetric does change under TTA.
    def ramp(x):
        r = np.linspace(0.0, 1.0, x.shape[1], dtype="float32")[None, :, None, None, None]
        return np.asarray(x) * r

    assert not np.allclose(tta_inferer(ramp, vol), SlidingWindowInferer(8)(ramp, vol))


def test_dict_output_keras_model_and_cached_function():
    inputs = keras.Input((None, None, None, 2))
    logits = keras.layers.Conv3D(3, 1, name="conv")(inputs)
    probs = keras.layers.Softmax(name="probabilities")(logits)
    model = keras.Model(inputs, {"probabilities": probs, "logits": logits})
    vol = volume((10, 12, 9, 2))
    inferer = SlidingWindowInferer(8, overlap=0.5, sw_batch_size=3, progress=True)
    out = inferer(model, vol)
    direct = keras.ops.convert_to_numpy(model(vol[None])["probabilities"])[0]
    np.testing.assert_allclose(out, direct, atol=1e-5)
    fn = inferer._cached_fn
    w = model.get_layer("conv").get_weights()
    bias = np.array([1.0, 0.0, -1.0], "float32")
    model.get_layer("conv").set_weights([w[0] * 0, bias])  # constant output now
    out2 = inferer(model, vol)
    assert inferer._cached_fn is fn  # no new tf.function for the same model
    expected = np.exp(bias) / np.exp(bias).sum()
    np.testing.assert_allclose(out2, np.broadcast_to(expected, out2.shape), atol=1e-5)


def test_mixed_bfloat16_with_a_rebuilt_missu_model():
    from missu_keras.models.backbone import MISSUBackbone

    net = MISSUBackbone(image_size=16, in_channels=2, num_classes=3, base_width=8,
                        embed_dim=16, num_heads=2, num_layers=1, mlp_dim=16,
                        msf_mode="none", self_distill=False)
    vol = volume((18, 16, 12, 2))
    with pytest.raises(ValueError, match="mixed_bfloat16.*float32"):
        SlidingWindowInferer(16, precision="mixed_bfloat16")(net, vol)
    bf16 = rebuild_with_dtype_policy(net, "mixed_bfloat16")
    assert bf16.dtype_policy.compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # restored
    full = SlidingWindowInferer(16, overlap=0.25, divisible_by=8)(net, vol)
    half = SlidingWindowInferer(16, overlap=0.25, precision="mixed_bfloat16")(bf16, vol)
    assert half.dtype == np.float32 and half.shape == (18, 16, 12, 3)
    np.testing.assert_allclose(half.sum(-1), 1.0, atol=1e-2)
    np.testing.assert_allclose(half, full, atol=0.05)


# ------------------------------------------------------------------- bad inputs --


@pytest.mark.parametrize("kwargs,match", [
    ({"roi_size": (8, 8)}, r"roi_size.*\(8, 8\)"),
    ({"roi_size": 0}, r"roi_size.*0"),
    ({"roi_size": 8, "overlap": 1.0}, r"overlap.*1\.0"),
    ({"roi_size": 8, "sw_batch_size": 0}, r"sw_batch_size.*0"),
    ({"roi_size": 8, "mode": "mean"}, r"mode.*'mean'"),
    ({"roi_size": 8, "sigma_scale": 0}, r"sigma_scale.*0"),
    ({"roi_size": 8, "precision": "float16"}, r"precision.*'float16'"),
    ({"roi_size": 12, "divisible_by": 8}, r"divisible by 8.*\(12, 12, 12\)"),
])
def test_bad_settings_raise_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlidingWindowInferer(**kwargs)


def test_bad_calls_raise_naming_the_value():
    inferer = SlidingWindowInferer(8)
    with pytest.raises(ValueError, match=r"\(10, 10, 10\)"):
        inferer(identity, np.zeros((10, 10, 10), "float32"))
    inputs = keras.Input((8, 8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    with pytest.raises(ValueError, match=r"2 channels.*expects 4"):
        inferer(model, np.zeros((10, 10, 10, 2), "float32"))
    with pytest.raises(ValueError, match=r"\(16, 16, 16\).*\(8, 8, 8\)"):
        SlidingWindowInferer(16)(model, np.zeros((10, 10, 10, 4), "float32"))
    with pytest.raises(ValueError, match=r"received shape \(\d+, 4, 4, 4, 1\)"):
        inferer(lambda x: x[:, ::2, ::2, ::2], np.zeros((10, 10, 10, 1), "float32"))
    with pytest.raises(ValueError, match=r"keys \['logits'\]"):
        inferer(lambda x: {"logits": x}, np.zeros((10, 10, 10, 1), "float32"))
    with pytest.raises(ValueError, match=r"list of 2"):
        inferer(lambda x: [x, x], np.zeros((10, 10, 10, 1), "float32"))
    with pytest.raises(ValueError, match=r"received: int"):
        inferer(3, np.zeros((10, 10, 10, 1), "float32"))


# ------------------------------------------------- the TF implementation itself --


def reference_window_starts(size, roi, overlap):
    """The placement rule written out in Python (nnU-Net's): the spec the TF code meets."""
    if size <= roi:
        return [0]
    target_step = max(1, int(roi * (1.0 - overlap)))
    num = int(math.ceil((size - roi) / target_step)) + 1
    step = (size - roi) / (num - 1)
    return sorted({int(round(i * step)) for i in range(num)})


@pytest.mark.parametrize("size", [8, 16, 17, 31, 32, 33, 47, 48, 100, 155, 240])
@pytest.mark.parametrize("roi,overlap", [(8, 0.5), (16, 0.25), (32, 0.5), (32, 0.0), (128, 0.5)])
def test_window_starts_in_a_graph_follow_the_rule(size, roi, overlap):
    if size < roi:
        size = roi  # the sliding window pads short axes to the window first
    starts = tf.function(lambda n: window_starts_tensor(n, roi, overlap))
    expected = reference_window_starts(size, roi, overlap)
    assert starts(tf.constant(size)).numpy().tolist() == expected  # dynamic size
    assert window_starts(size, roi, overlap) == expected


def test_the_numpy_entry_point_and_the_graph_function_agree():
    """`SlidingWindowInferer.__call__` (a Keras model: one tf.function; a plain callable:
    eagerly) and `sliding_window_inference` traced with dynamic shapes give the same
    float32 result."""
    inputs = keras.Input((8, 8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 3, padding="same", activation="softmax")(inputs))
    vol = volume((19, 13, 10, 2), seed=3)
    inferer = SlidingWindowInferer(8, overlap=0.5, sw_batch_size=3, flip_tta=True)
    graph = tf.function(lambda v: sliding_window_inference(
        v, 8, 3, lambda x: model(x, training=False), overlap=0.5, flip_tta=True, num_classes=3),
        input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    expected = graph(tf.constant(vol)).numpy()
    np.testing.assert_array_equal(inferer(model, vol), expected)
    eager = inferer(lambda x: model(x, training=False), vol)
    np.testing.assert_allclose(eager, expected, atol=1e-6)


def test_window_slices_follow_the_loop_order():
    inferer = SlidingWindowInferer((8, 6, 4), overlap=0.5)
    slices = inferer.window_slices((19, 13, 9))
    starts = [reference_window_starts(s, r, 0.5) for s, r in zip((19, 13, 9), (8, 6, 4))]
    assert [tuple(s.start for s in win) for win in slices] == list(itertools.product(*starts))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_volume_is_refused(bad):
    vol = volume((12, 10, 9, 2))
    vol[3, 4, 5, 1] = bad
    inputs = keras.Input((8, 8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    for predictor in (model, threshold_one_hot):
        with pytest.raises(ValueError, match=r"volume of shape \(12, 10, 9, 2\) holds NaN or Inf"):
            SlidingWindowInferer(8)(predictor, vol)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sliding-window input holds NaN or Inf"):
        sliding_window_inference(tf.constant(vol), 8, 1, threshold_one_hot)

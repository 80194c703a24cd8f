import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import missu_keras
from missu_keras import MISSU, MISSUBackbone, MISSUConfig
from tests.conftest import NO_DROPOUT, TINY

rng = np.random.default_rng(0)


def batch(n=2, size=32, channels=4, classes=4):
    x = rng.standard_normal((n, size, size, size, channels)).astype("float32")
    y = rng.integers(0, classes, (n, size, size, size)).astype("int32")
    return x, y


# --- configuration ------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 36}, r"divisible by 8.*image_size=\(36, 36, 36\)"),
        ({"image_size": (32, 32)}, r"image_size must be an integer or a list of 3 values.*\(32, 32\)"),
        ({"embed_dim": 30, "num_heads": 8}, "embed_dim=30, num_heads=8"),
        ({"dropout_rate": 1.5}, r"dropout_rate=1.5"),
        ({"attn_dropout_rate": -0.1}, r"attn_dropout_rate=-0.1"),
        ({"msf_mode": "global"}, "msf_mode='global'"),
        ({"msf_mode": "none", "self_distill": True}, "self_distill=True"),
        ({"num_skip_connections": 4}, "num_skip_connections=4"),
        ({"base_width": 12}, "base_width=12"),
        ({"seg_loss": "focal"}, "seg_loss='focal'"),
        ({"distill_weight": -1}, "distill_weight=-1"),
    ],
)
def test_config_validation_names_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        MISSU.from_preset("tiny", **overrides)


def test_unknown_preset_and_override_names():
    with pytest.raises(ValueError, match=r"Accepted presets: \['brats', 'chaos', 'tiny'\]"):
        MISSU.from_preset("unet")
    with pytest.raises(ValueError, match="embedding_dim"):
        MISSU.from_preset("tiny", embedding_dim=64)
    assert missu_keras.list_presets() == ["brats", "chaos", "tiny"]


def test_presets_match_the_paper():
    brats = MISSUConfig(**missu_keras.get_preset_config("brats"))
    assert (brats.image_size, brats.in_channels, brats.num_classes) == ((128,) * 3, 4, 4)
    assert (brats.base_width, brats.embed_dim, brats.num_layers, brats.num_heads,
            brats.mlp_dim) == (16, 512, 4, 8, 1024)
    chaos = MISSUConfig(**missu_keras.get_preset_config("chaos"))
    assert (chaos.image_size, chaos.in_channels, chaos.num_classes) == ((128, 128, 32), 2, 2)
    assert brats.distill_weight == 0.3 and brats.msf_mode == "local" and brats.self_distill
    assert brats.teacher_stop_gradient is False


# --- shapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset, size, channels, classes", [
    ("brats", (32, 32, 32), 4, 4), ("chaos", (32, 32, 16), 2, 2), ("tiny", (32, 32, 32), 4, 4)])
def test_preset_output_shapes_at_small_size(preset, size, channels, classes):
    small = dict(image_size=size, base_width=8, embed_dim=32, num_layers=1, mlp_dim=64, num_heads=4)
    model = MISSU.from_preset(preset, **small)
    x = np.zeros((1, *size, channels), "float32")
    assert model(x).shape == (1, *size, classes)
    out = model.backbone(x)
    b = 8
    for s in (1, 2, 3, 4):
        f = 2 ** (s - 1)
        assert out[f"A{s}"].shape == (1, *(n // f for n in size), b * f)
    for s in (1, 2, 3):
        assert out[f"B{s}"].shape == out[f"A{s}"].shape


# Table IV rows (Transformer on/off x MSF none/local/ms_output x SD on/off) and
# Fig. 5's skip connections.
ABLATIONS = [
    dict(use_transformer=t, msf_mode=m, self_distill=sd)
    for t, m, sd in itertools.product([False, True], ["none", "local", "ms_output"], [False, True])
    if not (m == "none" and sd)
] + [dict(num_skip_connections=k) for k in (0, 1, 2)]


@pytest.mark.parametrize("switches", ABLATIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_ablation_switches_shapes_and_msf_presence(switches):
    model = MISSU.from_preset("tiny", **TINY, **switches)
    x, y = batch(1)
    assert model(x).shape == (1, 32, 32, 32, 4)
    seg, sd, _ = model.compute_losses(x, y, training=False)
    assert seg.shape == (1,) and sd.shape == (1,)
    msf_mode = switches.get("msf_mode", "local")
    inference = model.inference_model()
    has_msf = any("msf" in w.path for w in inference.weights)
    assert has_msf == (msf_mode == "ms_output")
    assert any("msf" in w.path for w in model.weights) == (msf_mode != "none")
    has_transformer = any("transformer" in w.path for w in model.weights)
    assert has_transformer == switches.get("use_transformer", True)
    if model.uses_distillation:
        assert float(sd[0]) > 0
    else:
        assert float(sd[0]) == 0


def test_skip_connections_change_decoder_inputs():
    widths = {}
    for k in (0, 3):
        model = MISSU.from_preset("tiny", **TINY, num_skip_connections=k)
        widths[k] = model.backbone.get_layer("deup2").conv3.kernel.shape[-2]
    assert widths == {0: 8, 3: 16}  # conv3 reads [skip, up] only with the skip


# --- the inference model --------------------------------------------------------------
def test_inference_model_matches_and_has_no_msf(tmp_path):
    model = MISSU.from_preset("tiny", **TINY)
    model.compile(optimizer=missu_keras.paper_optimizer(4))
    x, y = batch(2)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0)  # "trained" (BN stats move)
    inference = model.inference_model()
    assert isinstance(inference, keras.Model) and not isinstance(inference, MISSU)
    assert not [w.path for w in inference.weights if "msf" in w.path]
    assert not [l.name for l in inference.layers if "msf" in l.name]
    # shares the trained weights (same variables, not copies)
    ids = {id(v) for v in model.weights}
    assert all(id(v) in ids for v in inference.weights)
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(inference.predict(x, verbose=0), expected, atol=1e-5)

    path = tmp_path / "inference.keras"
    inference.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-5)

    path = tmp_path / "missu.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, MISSU) and reloaded.config == model.config
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), expected, atol=1e-5)
    np.testing.assert_allclose(reloaded.inference_model().predict(x, verbose=0), expected, atol=1e-5)


def test_ms_output_inference_keeps_msf():
    model = MISSU.from_preset("tiny", **TINY, msf_mode="ms_output")
    x, _ = batch(1)
    inference = model.inference_model()
    assert any("msf" in w.path for w in inference.weights)
    np.testing.assert_allclose(inference(x), model(x, training=False), atol=1e-5)


def test_config_roundtrip_through_json():
    from missu_keras.data import PreprocessingConfig
    pre = PreprocessingConfig.brats().to_dict()
    model = MISSU.from_preset("tiny", **TINY, msf_mode="ms_output", num_skip_connections=2,
                              preprocessing=pre)
    config = json.loads(json.dumps(model.get_config()))
    assert MISSU.from_config(config).preprocessing == PreprocessingConfig.brats()
    clone = MISSU.from_config(config)
    assert clone.get_config() == model.get_config()
    backbone_config = json.loads(json.dumps(model.backbone.get_config()))
    assert MISSUBackbone.from_config(backbone_config).get_config() == model.backbone.get_config()


# --- self-distillation gradients --------------------------------------------------------
def _sd_gradients(**overrides):
    model = MISSU.from_preset("tiny", **TINY, **NO_DROPOUT, **overrides)
    x, y = batch(1)
    with tf.GradientTape() as tape:
        seg, sd, _ = model.compute_losses(x, y, training=True)
        loss = tf.reduce_mean(sd) * model.config.distill_weight
    variables = model.trainable_weights
    grads = tape.gradient(loss, variables)
    return {v.path: g for v, g in zip(variables, grads)}


def _nonzero(g):
    return g is not None and float(tf.reduce_max(tf.abs(g))) > 0


def test_self_distillation_reaches_msf_and_encoder():
    grads = _sd_gradients()
    msf = {p: g for p, g in grads.items() if "msf" in p and p.endswith("kernel")}
    assert msf and all(_nonzero(g) for g in msf.values()), [p for p, g in msf.items() if not _nonzero(g)]
    for stage in ("enblock1", "endown1", "enblock2_1", "enblock2_2", "endown2", "enblock3_1", "enblock3_2"):
        kernels = [g for p, g in grads.items() if p.startswith(f"{stage}/") and p.endswith("kernel")]
        assert kernels and all(_nonzero(g) for g in kernels), stage
    # nothing past A3 is touched by L_sd
    for p, g in grads.items():
        if "enblock4" in p or "transformer" in p or "deblock" in p:
            assert not _nonzero(g), p


def test_teacher_stop_gradient_blocks_msf():
    grads = _sd_gradients(teacher_stop_gradient=True)
    assert not any(_nonzero(g) for p, g in grads.items() if "msf" in p)
    assert _nonzero(next(g for p, g in grads.items() if p.startswith("enblock1/") and p.endswith("kernel")))


def test_without_self_distillation_msf_gets_no_gradient():
    model = MISSU.from_preset("tiny", **TINY, **NO_DROPOUT, self_distill=False)
    model.compile(optimizer="adam")
    x, y = batch(1)
    before = {w.path: w.numpy().copy() for w in model.weights if "msf" in w.path}
    with tf.GradientTape() as tape:
        seg, sd, _ = model.compute_losses(x, y, training=True)
        loss = tf.reduce_mean(seg + model.config.distill_weight * sd)
    grads = tape.gradient(loss, model.trainable_weights)
    for v, g in zip(model.trainable_weights, grads):
        if "msf" in v.path:
            assert not _nonzero(g), v.path
    model.fit(x, y, epochs=1, verbose=0)
    for w in model.weights:
        if "msf" in w.path:
            np.testing.assert_array_equal(w.numpy(), before[w.path])


# --- losses ------------------------------------------------------------------------------
def test_segmentation_losses():
    from missu_keras.losses import get_segmentation_loss
    y = np.zeros((2, 4, 4, 4), "int32")
    y[:, :2] = 1
    perfect = np.where(np.eye(3)[y] > 0, 30.0, -30.0).astype("float32")
    wrong = np.where(np.eye(3)[(y + 1) % 3] > 0, 30.0, -30.0).astype("float32")
    uniform = np.zeros((2, 4, 4, 4, 3), "float32")
    ce, dice, both = (get_segmentation_loss(n) for n in ("ce", "dice", "dice_ce"))
    np.testing.assert_allclose(ce(y, perfect), [0, 0], atol=1e-6)
    np.testing.assert_allclose(ce(y, uniform), [np.log(3)] * 2, rtol=1e-5)
    np.testing.assert_allclose(dice(y, perfect), [0, 0], atol=1e-5)
    assert np.all(np.asarray(dice(y, wrong)) > 0.99)
    np.testing.assert_allclose(both(y, uniform), np.asarray(ce(y, uniform)) + np.asarray(dice(y, uniform)), rtol=1e-6)
    # labels with a trailing channel axis are accepted
    np.testing.assert_allclose(ce(y[..., None], uniform), ce(y, uniform))
    with pytest.raises(ValueError, match="'focal'"):
        get_segmentation_loss("focal")


def test_paper_optimizer():
    opt = missu_keras.paper_optimizer(total_steps=10)
    assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.9, 0.999, 1e-5)
    schedule = opt._learning_rate
    np.testing.assert_allclose(float(schedule(0)), 4e-4)
    np.testing.assert_allclose(float(schedule(5)), 4e-4 * 0.5 ** 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="total_steps=0"):
        missu_keras.paper_optimizer(0)


# --- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("seg_loss", ["ce", pytest.param("dice_ce", marks=pytest.mark.slow)])
def test_fit_lowers_the_loss(seg_loss):
    keras.utils.set_random_seed(1)
    model = MISSU.from_preset("tiny", **TINY, **NO_DROPOUT, seg_loss=seg_loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = batch(2)
    y = (x[..., 0] > 0.5).astype("int32") + (x[..., 1] > 1.0).astype("int32")  # learnable
    history = model.fit(x, y, batch_size=2, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    for key in ("loss", "seg_loss", "sd_loss"):
        assert np.isfinite(history.history[key]).all()
    np.testing.assert_allclose(
        history.history["loss"][-1],
        history.history["seg_loss"][-1] + 0.3 * history.history["sd_loss"][-1], rtol=1e-4)
    result = model.evaluate(x, y, batch_size=1, verbose=0, return_dict=True)
    assert set(result) == {"loss", "seg_loss", "sd_loss"}


def test_compile_with_a_loss_is_refused():
    model = MISSU.from_preset("tiny", **TINY)
    model.compile(optimizer="adam", loss="mse")
    x, y = batch(1)
    with pytest.raises(ValueError, match="seg_loss"):
        model.fit(x, y, verbose=0)


def test_preprocessing_contract_survives_keras_save(tmp_path):
    from missu_keras.data import PreprocessingConfig
    model = MISSU.from_preset("tiny", **TINY, preprocessing=PreprocessingConfig.brats().to_dict())
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.preprocessing == PreprocessingConfig.brats()

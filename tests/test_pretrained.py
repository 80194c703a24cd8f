import numpy as np
import pytest

import missu_keras
from missu_keras import MISSU
from tests.conftest import TINY, rebuild_full_parity_state_dict

PARITY_CONFIG = dict(image_size=32, base_width=8, embed_dim=256, num_layers=2, mlp_dim=512)


def test_parity_with_the_released_code(parity_fixture):
    model = missu_keras.load_pretrained("brats", weights=str(parity_fixture), **PARITY_CONFIG)
    data = np.load(parity_fixture)
    x = data["input"].transpose(0, 2, 3, 4, 1)
    expected = data["output"].transpose(0, 2, 3, 4, 1)
    out = model.predict(x, verbose=0)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 1e-4
    assert not [w.path for w in model.weights if "msf" in w.path]


def test_full_size_parity_with_the_released_code(full_parity_fixture, tmp_path):
    """The brats preset at 128^3 with the fixture's weights (through load_pretrained, as a
    user would) reproduces the authors' network run in float64: logits within 1e-4 at the
    sampled voxels (the authors' own float32 run is within 3.2e-5) and the label map on at
    least 99.999 % of the 2.1 M voxels."""
    data = np.load(full_parity_fixture)
    path = tmp_path / "full.npz"
    np.savez(path, **rebuild_full_parity_state_dict(data))
    model = missu_keras.load_pretrained("brats", weights=str(path), training_model=True)
    x = np.random.default_rng(7).standard_normal((1, 4, 128, 128, 128), dtype=np.float32)
    logits = np.asarray(model.backbone(x.transpose(0, 2, 3, 4, 1), training=False)["logits"])
    assert logits.shape == (1, 128, 128, 128, 4) and logits.dtype == np.float32
    flat = logits.reshape(-1, 4).astype(np.float64)
    err = np.abs(flat[data["voxel_index"]] - data["logits_at_voxels"]).max()
    assert err < 1e-4, f"largest logit difference {err:.2e} (authors' float32: {float(data['torch_fp32_logit_err']):.2e})"
    np.testing.assert_allclose(flat.mean(axis=0), data["logits_mean"], rtol=0, atol=1e-5)
    agree = np.mean(np.argmax(logits[0], axis=-1) == data["labels"])
    assert agree >= 0.99999, f"{(1 - agree) * 128 ** 3:.0f} voxels change class"


def _state_dict(parity_fixture):
    data = np.load(parity_fixture)
    return {k: data[k] for k in data.files}


def test_missing_and_mismatched_tensors_are_named(parity_fixture, tmp_path):
    state = _state_dict(parity_fixture)
    broken = dict(state)
    del broken["state_dict/Unet.EnBlock2_1.conv1.weight"]
    path = tmp_path / "missing.npz"
    np.savez(path, **broken)
    with pytest.raises(ValueError, match=r"Unet\.EnBlock2_1\.conv1\.weight"):
        missu_keras.load_pretrained("brats", weights=str(path), **PARITY_CONFIG)
    # a checkpoint for another width: the message names the tensor and both shapes
    with pytest.raises(ValueError, match=r"Unet\.InitConv\.conv\.weight.*\(8, 4, 3, 3, 3\).*\(3, 3, 3, 4, 16\)"):
        missu_keras.load_pretrained("brats", weights=str(parity_fixture), **{**PARITY_CONFIG, "base_width": 16})


def test_module_prefix_and_unused_tensors(parity_fixture, tmp_path):
    state = {k.replace("state_dict/", "module."): v for k, v in _state_dict(parity_fixture).items()}
    state["module.extra.weight"] = np.zeros(3, "float32")
    path = tmp_path / "ddp.npz"
    np.savez(path, **state)
    with pytest.warns(UserWarning, match="extra.weight"):
        missu_keras.load_pretrained("brats", weights=str(path), **PARITY_CONFIG)


def test_keras_weights_roundtrip(tmp_path):
    model = MISSU.from_preset("tiny", **TINY)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 32, 4)).astype("float32")
    expected = model.inference_model().predict(x, verbose=0)
    model.save_weights(tmp_path / "train.weights.h5")
    model.inference_model().save_weights(tmp_path / "infer.weights.h5")
    for name in ("train.weights.h5", "infer.weights.h5"):
        loaded = missu_keras.load_pretrained("tiny", weights=str(tmp_path / name), **TINY)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


def test_bad_weights_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        missu_keras.load_pretrained("tiny", weights=str(tmp_path / "nope.weights.h5"), **TINY)
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        missu_keras.load_pretrained("tiny", weights=str(bad), **TINY)
    with pytest.raises(ValueError, match="Accepted presets"):
        missu_keras.load_pretrained("resnet")


def test_keras_weights_of_another_config_are_refused(tmp_path):
    MISSU.from_preset("tiny", **TINY).save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(ValueError, match="small.weights.h5"):
        missu_keras.load_pretrained("tiny", weights=str(tmp_path / "small.weights.h5"),
                                    **{**TINY, "embed_dim": 64})

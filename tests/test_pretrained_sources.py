"""`load_pretrained` as the Keras Applications entry point: every weight source, the
download path (with a monkeypatched registry entry and a local file:// URL), preset
folders, and each error."""

import hashlib
import json
import sys
import warnings

import numpy as np
import pytest

import missu_keras
from missu_keras import MISSU, presets
from missu_keras.data import PreprocessingConfig
from missu_keras.presets import get_preset_preprocessing
from missu_keras.pretrained import load_pretrained
from tests.conftest import TINY

PARITY_CONFIG = dict(image_size=32, base_width=8, embed_dim=256, num_layers=2, mlp_dim=512)
X = np.random.default_rng(0).standard_normal((1, 32, 32, 32, 4)).astype("float32")


def predict(model):
    return model.predict(X, verbose=0)


@pytest.fixture(scope="module")
def trained():
    """A tiny MISSU with its weights moved off their initial values."""
    model = MISSU.from_preset("tiny", **TINY)
    rng = np.random.default_rng(5)
    for variable in model.weights:
        if "kernel" in variable.path:
            variable.assign(variable.numpy() * rng.uniform(0.7, 1.3, variable.shape).astype("float32"))
    return model, predict(model.inference_model())


def fixture_state(parity_fixture):
    data = np.load(parity_fixture)
    return {k[len("state_dict/"):]: data[k] for k in data.files if k.startswith("state_dict/")}


def with_batch_counters(state, counter=lambda: np.array(1234, np.int64)):
    """``state`` as PyTorch saves it: every BatchNorm also carries ``num_batches_tracked``."""
    out = dict(state)
    for key in state:
        if key.endswith(".running_mean"):
            out[key[: -len("running_mean")] + "num_batches_tracked"] = counter()
    return out


def parity_expectation(parity_fixture):
    data = np.load(parity_fixture)
    return data["input"].transpose(0, 2, 3, 4, 1), data["output"].transpose(0, 2, 3, 4, 1)


# ------------------------------------------------------------------ registry --------


def test_every_preset_is_registered_without_an_invented_url():
    for name in missu_keras.list_presets():
        entry = presets.get_preset_weights(name)
        assert entry == {"url": None, "sha256": None}
        prep = get_preset_preprocessing(name)
        assert prep["patch_size"] == list(presets.get_preset_config(name)["image_size"])
        assert len(prep["modalities"]) == presets.get_preset_config(name)["in_channels"]


@pytest.mark.parametrize("name", ["brats", "chaos", "tiny"])
def test_published_weights_say_none_exist_and_list_the_alternatives(name):
    with pytest.raises(ValueError, match=f"No published weights for preset '{name}'") as err:
        load_pretrained(name, weights="published")
    for alternative in ("weights=None", ".weights.h5", ".keras", "save_preset", ".npz", ".pth"):
        assert alternative in str(err.value)


def test_training_model_carries_the_preset_preprocessing():
    model = load_pretrained("tiny", weights=None, training_model=True, **TINY)
    assert isinstance(model, MISSU)
    assert model.preprocessing == PreprocessingConfig.from_dict(
        get_preset_preprocessing("tiny", patch_size=32))
    chaos = load_pretrained("chaos", weights=None, training_model=True, image_size=[32, 32, 16],
                            embed_dim=32, num_layers=1, mlp_dim=64, base_width=8)
    assert chaos.preprocessing.dataset == "chaos" and chaos.preprocessing.patch_size == (32, 32, 16)


# ---------------------------------------------------------------- downloads ---------


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def published(trained, tmp_path, monkeypatch):
    """The 'tiny' registry entry pointing at a local file:// URL."""
    source = tmp_path / "server" / "missu_tiny.weights.h5"
    source.parent.mkdir()
    trained[0].save_weights(source)
    entry = {"url": source.as_uri(), "sha256": sha256(source)}
    monkeypatch.setitem(presets.PRESETS["tiny"], "weights", entry)
    return source, entry, tmp_path / "cache"


def test_published_weights_download_once_then_work_offline(published, trained):
    source, entry, cache = published
    model = load_pretrained("tiny", weights="published", cache_dir=cache, **TINY)
    np.testing.assert_allclose(predict(model), trained[1], atol=1e-6)
    cached = cache / "models" / "missu_keras" / "missu_tiny.weights.h5"
    assert cached.is_file() and sha256(cached) == entry["sha256"]
    source.unlink()  # "offline": the URL no longer answers, the cache does
    again = load_pretrained("tiny", weights="published", cache_dir=cache, **TINY)
    np.testing.assert_allclose(predict(again), trained[1], atol=1e-6)


def test_published_weights_hash_mismatch(published, monkeypatch):
    source, entry, cache = published
    monkeypatch.setitem(presets.PRESETS["tiny"], "weights", {**entry, "sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"sha256 mismatch.*expected 0{64}, downloaded "
                                         + entry["sha256"]):
        load_pretrained("tiny", weights="published", cache_dir=cache, **TINY)
    assert not (cache / "models" / "missu_keras" / "missu_tiny.weights.h5").exists()


def test_published_weights_offline_with_nothing_cached(published, monkeypatch, tmp_path):
    source, entry, cache = published
    missing = tmp_path / "gone" / "missu_tiny.weights.h5"
    monkeypatch.setitem(presets.PRESETS["tiny"], "weights", {**entry, "url": missing.as_uri()})
    with pytest.raises(ConnectionError, match="no verified copy is cached at .*missu_tiny.weights.h5"):
        load_pretrained("tiny", weights="published", cache_dir=cache, **TINY)
    monkeypatch.setitem(presets.PRESETS["tiny"], "weights", {**entry, "sha256": None})
    with pytest.raises(ValueError, match="no sha256"):
        load_pretrained("tiny", weights="published", cache_dir=cache, **TINY)


# ------------------------------------------------------------- local sources ---------


def test_saved_preset_folder_round_trip(trained, tmp_path):
    model, expected = trained
    model.preprocessing = get_preset_preprocessing("tiny", patch_size=32)
    folder = missu_keras.save_preset(model, tmp_path / "preset")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "metadata.json", "model.weights.h5", "preprocessing.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class_name"] == "MISSU" and config["config"] == model.config.to_dict()
    assert json.loads((folder / "preprocessing.json").read_text()) == model.preprocessing.to_dict()
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["parameter_count"] == model.count_params()
    assert meta["missu_keras_version"] == missu_keras.__version__

    loaded = load_pretrained(str(folder))  # the folder is the preset
    np.testing.assert_allclose(predict(loaded), expected, atol=1e-6)
    again = load_pretrained(folder, training_model=True)
    assert again.preprocessing == model.preprocessing
    # ... or the weights of a named preset (configuration from the folder).
    np.testing.assert_allclose(predict(load_pretrained("tiny", weights=str(folder))), expected,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"in_channels=4.*preset 'chaos'.*in_channels=2"):
        load_pretrained("chaos", weights=str(folder))
    with pytest.raises(ValueError, match="carries its own weights"):
        load_pretrained(str(folder), weights="x.weights.h5")
    with pytest.raises(ValueError, match="needs a missu_keras.MISSU"):
        missu_keras.save_preset(model.inference_model(), tmp_path / "other")


def test_keras_files_training_and_inference_models(trained, tmp_path):
    model, expected = trained
    model.save(tmp_path / "missu.keras")
    loaded = load_pretrained("tiny", weights=str(tmp_path / "missu.keras"))
    np.testing.assert_allclose(predict(loaded), expected, atol=1e-6)
    # The inference model alone holds no configuration beyond its shapes: the preset
    # and overrides give the rest, the file the patch size.
    model.inference_model().save(tmp_path / "inference.keras")
    widths = {k: v for k, v in TINY.items() if k != "image_size"}
    loaded = load_pretrained("tiny", weights=str(tmp_path / "inference.keras"), **widths)
    np.testing.assert_allclose(predict(loaded), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"inference.keras.*num_classes=4.*expects num_classes=2"):
        load_pretrained("chaos", weights=str(tmp_path / "inference.keras"), in_channels=4, **widths)
    with pytest.raises(ValueError, match="configuration the file was saved with"):
        load_pretrained("tiny", weights=str(tmp_path / "inference.keras"))  # tiny's own widths


def test_keras_weights_with_other_channels_are_named(trained, tmp_path):
    path = tmp_path / "tiny.weights.h5"
    trained[0].save_weights(path)
    with pytest.raises(ValueError, match=r"tiny.weights.h5.*in_channels=4.*expects in_channels=2"):
        load_pretrained("tiny", weights=str(path), **{**TINY, "in_channels": 2})
    with pytest.raises(ValueError, match=r"num_classes=4.*expects num_classes=3"):
        load_pretrained("tiny", weights=str(path), **{**TINY, "num_classes": 3})


def test_npz_with_other_classes_is_named(parity_fixture, tmp_path):
    with pytest.raises(ValueError, match=r"num_classes=4.*'chaos'.*expects .*num_classes=2.*fits: \['brats', 'tiny'\]"):
        load_pretrained("chaos", weights=str(parity_fixture), **PARITY_CONFIG)


def test_num_batches_tracked_is_ignored_silently(parity_fixture, tmp_path):
    """Real checkpoints carry a num_batches_tracked buffer per BatchNorm: no warning (run
    with warnings as errors), and the network still matches the reference."""
    state = with_batch_counters(fixture_state(parity_fixture))
    assert sum(k.endswith("num_batches_tracked") for k in state) >= 10
    path = tmp_path / "real_style.npz"
    np.savez(path, **state)
    x, expected = parity_expectation(parity_fixture)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_pretrained("brats", weights=str(path), **PARITY_CONFIG)
    assert np.abs(model.predict(x, verbose=0) - expected).max() < 1e-4
    # any other unused tensor is still reported
    np.savez(path, **{**state, "Unet.extra.weight": np.zeros(3, np.float32)})
    with pytest.warns(UserWarning, match=r"Ignored 1 checkpoint tensors.*Unet\.extra\.weight"):
        load_pretrained("brats", weights=str(path), **PARITY_CONFIG)


def test_pth_checkpoint_of_the_released_code(parity_fixture, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    state = {k: torch.from_numpy(v) for k, v in with_batch_counters(fixture_state(parity_fixture)).items()}
    x, expected = parity_expectation(parity_fixture)
    bare = tmp_path / "model.pth"
    torch.save(state, bare)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # num_batches_tracked buffers are known
        model = load_pretrained("brats", weights=str(bare), **PARITY_CONFIG)
    assert np.abs(model.predict(x, verbose=0) - expected).max() < 1e-4
    # The released training checkpoint: {"epoch", "state_dict", "optim_dict"}, DataParallel names.
    checkpoint = tmp_path / "model_epoch_last.pt"
    torch.save({"epoch": 999, "state_dict": {"module." + k: v for k, v in state.items()},
                "optim_dict": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, checkpoint)
    model = load_pretrained("brats", weights=str(checkpoint), **PARITY_CONFIG)
    assert np.abs(model.predict(x, verbose=0) - expected).max() < 1e-4
    with pytest.raises(ValueError, match=r"in_channels=4.*expects in_channels=2"):
        load_pretrained("brats", weights=str(bare), **{**PARITY_CONFIG, "in_channels": 2})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pth.*weights_only=True"):
        load_pretrained("brats", weights=str(junk), **PARITY_CONFIG)


def test_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"model.pth.*missu-keras\[torch\]"):
        load_pretrained("tiny", weights=str(path), **TINY)


def test_errors_name_what_was_given(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown preset 'kits'. Accepted presets: \['brats', 'chaos', 'tiny'\]"):
        load_pretrained("kits")
    with pytest.raises(FileNotFoundError, match="preset folder not found: .*nowhere"):
        load_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="is not a saved preset folder"):
        load_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope.pth"):
        load_pretrained("tiny", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved preset folder"):
        load_pretrained("tiny", weights=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="weights must be None, 'published' or a path"):
        load_pretrained("tiny", weights=3)

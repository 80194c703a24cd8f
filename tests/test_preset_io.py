"""`MISSU.from_preset(name | folder | .keras | train run)` and `MISSU.save_to_preset`:
exact round trips, the preprocessing object the model owns, older folders, errors."""

import json

import numpy as np
import pytest

import missu_keras
from missu_keras import MISSU
from missu_keras.data import PreprocessingConfig
from missu_keras.prediction import load_segmenter
from missu_keras.presets import get_preset_preprocessing
from tests.conftest import TINY

# Not the preset's own contract, so a round trip cannot pass by rebuilding the default.
CUSTOM_PREP = PreprocessingConfig.brats(patch_size=32, crop_margin=5, pad_multiple=16)


@pytest.fixture(scope="module")
def trained():
    """A tiny MISSU with every weight moved off its initial value, a custom name and a
    custom preprocessing contract."""
    model = MISSU.from_preset("tiny", **TINY, msf_mode="local", name="lab_missu",
                              preprocessing=CUSTOM_PREP)
    rng = np.random.default_rng(3)
    for variable in model.weights:
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
    return model


def named_weights(model):
    return [(v.path, np.asarray(v.numpy())) for v in model.weights]


def assert_same_weights(a, b):
    wa, wb = named_weights(a), named_weights(b)
    assert [p for p, _ in wa] == [p for p, _ in wb]
    for (path, x), (_, y) in zip(wa, wb):
        assert x.dtype == y.dtype and np.array_equal(x, y), path


def test_save_to_preset_round_trips_exactly(trained, tmp_path):
    folder = trained.save_to_preset(tmp_path / "preset")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "metadata.json", "model.weights.h5", "preprocessing.json"]
    loaded = MISSU.from_preset(folder)
    assert loaded.get_config() == trained.get_config()  # name and preprocessing included
    assert loaded.config == trained.config and loaded.name == "lab_missu"
    assert isinstance(loaded.preprocessing, PreprocessingConfig)
    assert loaded.preprocessing == CUSTOM_PREP
    assert_same_weights(loaded, trained)
    # ... and again, from what it read (a fixed point), through the str path and the alias.
    again = MISSU.from_preset(str(missu_keras.save_preset(loaded, tmp_path / "again")))
    assert again.get_config() == trained.get_config()
    assert_same_weights(again, trained)
    assert (tmp_path / "preset" / "preprocessing.json").read_text() == (
        tmp_path / "again" / "preprocessing.json").read_text()
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


def test_preset_folder_with_overrides_and_older_files(trained, tmp_path):
    folder = trained.save_to_preset(tmp_path / "preset")
    # Overrides that keep the architecture keep the weights; the preprocessing may change.
    other = PreprocessingConfig.brats(patch_size=32)
    tuned = MISSU.from_preset(folder, dropout_rate=0.0, preprocessing=other)
    assert tuned.config.dropout_rate == 0.0 and tuned.preprocessing == other
    assert_same_weights(tuned, trained)
    # A folder written before config.json had a "name" and with a null preprocessing.
    stored = json.loads((folder / "config.json").read_text())
    del stored["name"]
    (folder / "config.json").write_text(json.dumps(stored))
    (folder / "preprocessing.json").write_text("null\n")
    old = MISSU.from_preset(folder)
    assert old.name == "missu" and old.preprocessing is None and old.config == trained.config
    assert_same_weights(old, trained)
    with pytest.raises(ValueError, match="Could not load .*model.weights.h5"):
        MISSU.from_preset(folder, embed_dim=64)


def test_keras_file(trained, tmp_path):
    trained.save(tmp_path / "missu.keras")
    loaded = MISSU.from_preset(str(tmp_path / "missu.keras"))
    assert loaded.get_config() == trained.get_config()
    assert loaded.preprocessing == CUSTOM_PREP
    assert_same_weights(loaded, trained)
    tuned = MISSU.from_preset(tmp_path / "missu.keras", dropout_rate=0.0)
    assert tuned.config.dropout_rate == 0.0
    assert_same_weights(tuned, trained)
    trained.inference_model().save(tmp_path / "inference.keras")
    with pytest.raises(ValueError, match=r"not a MISSU.*load_pretrained\(PRESET, weights="):
        MISSU.from_preset(tmp_path / "inference.keras")
    with pytest.raises(FileNotFoundError, match="model file not found: .*nope.keras"):
        MISSU.from_preset(tmp_path / "nope.keras")


def test_train_output_folder_uses_best_else_last(trained, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {}, "preprocessing": CUSTOM_PREP.to_dict()}))
    plain = MISSU.from_config({**trained.get_config(), "preprocessing": None})
    plain.save(run / "checkpoints" / "last.keras")  # a checkpoint without its contract
    last = MISSU.from_preset(run)
    assert last.preprocessing == CUSTOM_PREP  # from the run's config.json
    assert not np.array_equal(last.backbone.get_layer("init_conv").get_weights()[0],
                              trained.backbone.get_layer("init_conv").get_weights()[0])
    trained.save(run / "checkpoints" / "best.keras")
    assert_same_weights(MISSU.from_preset(run), trained)
    segmenter = load_segmenter(run)
    assert segmenter.preprocessing == CUSTOM_PREP and segmenter.patch_size == (32, 32, 32)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 32, 4)).astype("float32")
    np.testing.assert_array_equal(segmenter.model.predict(x, verbose=0),
                                  trained.inference_model().predict(x, verbose=0))


def test_a_preset_name_is_the_preset_with_its_contract():
    model = MISSU.from_preset("tiny", **TINY)
    assert model.preprocessing == PreprocessingConfig.from_dict(
        get_preset_preprocessing("tiny", patch_size=32))
    assert model.get_config()["preprocessing"] == model.preprocessing.to_dict()
    chaos = MISSU.from_preset("chaos", **{**TINY, "image_size": [32, 32, 16]})
    assert chaos.preprocessing.modalities == ("in_phase", "out_phase")
    # channels overridden away from the preset's data: no contract rather than a wrong one
    assert MISSU.from_preset("tiny", **TINY, in_channels=2).preprocessing is None


def test_preprocessing_is_an_object_the_model_checks(trained):
    model = MISSU.from_preset("tiny", **TINY, preprocessing=CUSTOM_PREP.to_dict())
    assert model.preprocessing == CUSTOM_PREP  # a dict is read into the object
    model.preprocessing = PreprocessingConfig.brats(patch_size=32).to_dict()
    assert isinstance(model.preprocessing, PreprocessingConfig)
    with pytest.raises(ValueError, match=r"preprocessing lists 2 modalities.*in_channels=4"):
        model.preprocessing = PreprocessingConfig.chaos(patch_size=32)
    with pytest.raises(ValueError, match="must be a missu_keras.data.PreprocessingConfig, its dict or None"):
        model.preprocessing = "brats"
    model.preprocessing = None
    assert model.get_config()["preprocessing"] is None


def test_errors_name_the_accepted_forms(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown preset 'kits'. Accepted presets: \['brats', 'chaos', 'tiny'\].*\.keras"):
        MISSU.from_preset("kits")
    with pytest.raises(ValueError, match=r"Unknown configuration names \['embed_size'\]"):
        MISSU.from_preset("tiny", embed_size=3)
    with pytest.raises(FileNotFoundError, match="preset folder not found: .*nowhere"):
        MISSU.from_preset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is not a saved preset folder .* nor a train output folder"):
        MISSU.from_preset(tmp_path)
    with pytest.raises(ValueError, match="preset must be a preset name"):
        MISSU.from_preset(3)


def test_a_saved_model_refuses_weights_none(trained, tmp_path):
    """``weights=None`` is random for a name; for a saved model it is refused, never
    guessed (it used to mean "its own weights")."""
    folder = trained.save_to_preset(tmp_path / "preset")
    trained.save(tmp_path / "m.keras")
    for source in (folder, tmp_path / "m.keras"):
        with pytest.raises(ValueError, match=r"carries its own weights; pass weights='published'"):
            missu_keras.load_pretrained(source, weights=None)
        with pytest.raises(ValueError, match=r"carries its own weights; pass weights='published'"):
            load_segmenter(source, weights=None)
    assert missu_keras.load_pretrained(folder).name == "missu_inference"

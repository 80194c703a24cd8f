"""Published weights: `load_pretrained(name)` through the built-in table and user
registries (``registry=`` / ``$MISSU_KERAS_REGISTRY``, files and ``file://`` URLs, JSON
and YAML), sha256 checks, and `missu_keras.publish`. Nothing is downloaded from the
internet: every URL is ``file://``."""

import hashlib
import json

import numpy as np
import pytest
import yaml

import missu_keras
from missu_keras import MISSU, presets
from missu_keras.data import PreprocessingConfig
from missu_keras.prediction import load_segmenter
from missu_keras.pretrained import load_pretrained
from missu_keras.weights.publishing import PublishedWeights, publish
from tests.conftest import TINY

X = np.random.default_rng(1).standard_normal((1, 32, 32, 32, 4)).astype("float32")


@pytest.fixture(autouse=True)
def no_ambient_registry(monkeypatch):
    monkeypatch.delenv(presets.REGISTRY_ENV, raising=False)


@pytest.fixture(scope="module")
def trained():
    model = MISSU.from_preset("tiny", **TINY)
    rng = np.random.default_rng(9)
    for variable in model.weights:
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
    return model, model.inference_model().predict(X, verbose=0)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_weights(a, b):
    assert [v.path for v in a.weights] == [v.path for v in b.weights]
    for x, y in zip(a.weights, b.weights):
        assert np.array_equal(np.asarray(x.numpy()), np.asarray(y.numpy())), x.path


def write_registry(path, presets_):
    path.write_text(json.dumps({"presets": presets_}))
    return path


# --------------------------------------------------------- nothing published --------


def test_no_entry_names_weights_none_and_the_publish_command():
    with pytest.raises(ValueError) as err:
        load_pretrained("brats")  # the default is weights="published"
    message = str(err.value)
    assert "No published weights for preset 'brats'" in message
    assert "weights=None" in message
    assert "missu-keras publish RUN --preset brats --registry FILE" in message
    assert "MISSU_KERAS_REGISTRY" in message
    with pytest.raises(ValueError, match="missu-keras publish RUN --preset tiny"):
        load_segmenter("tiny")  # prediction never runs an untrained network silently


def test_a_registry_without_the_name_says_so(tmp_path):
    registry = write_registry(tmp_path / "r.json", {"chaos": {"path": "c.keras", "sha256": "0" * 64}})
    with pytest.raises(ValueError, match=r"neither the registry .*r.json nor the built-in table.*"
                                         r"weights=None.*missu-keras publish"):
        load_pretrained("brats", registry=str(registry))
    with pytest.raises(ValueError, match=r"Unknown preset 'kits'.*from the registry .*\['chaos'\]"):
        load_pretrained("kits", registry=str(registry))


# ------------------------------------------------------------ user registries -------


@pytest.fixture
def lab(trained, tmp_path):
    """A lab folder: its weights file and a registry entry (relative path) for 'tiny'."""
    folder = tmp_path / "lab"
    (folder / "weights").mkdir(parents=True)
    weights = folder / "weights" / "missu_tiny.weights.h5"
    trained[0].save_weights(weights)
    registry = write_registry(folder / "registry.json", {
        "tiny": {"path": "weights/missu_tiny.weights.h5", "sha256": sha256(weights),
                 "description": "tiny, perturbed"}})
    return registry, weights


def test_registry_from_the_environment(lab, trained, monkeypatch):
    registry, weights = lab
    monkeypatch.setenv("MISSU_KERAS_REGISTRY", str(registry))
    entry = presets.get_preset_weights("tiny")
    assert entry["path"] == str(weights) and entry["sha256"] == sha256(weights)
    assert entry["registry"] == str(registry)
    model = load_pretrained("tiny", **TINY)
    np.testing.assert_array_equal(model.predict(X, verbose=0), trained[1])
    assert presets.get_preset_weights("brats") == {"url": None, "sha256": None}  # built-in


def test_registry_argument_and_yaml(lab, trained, tmp_path, monkeypatch):
    registry, weights = lab
    monkeypatch.setenv("MISSU_KERAS_REGISTRY", str(tmp_path / "elsewhere.json"))  # overridden
    as_yaml = registry.with_suffix(".yaml")
    as_yaml.write_text(yaml.safe_dump(json.loads(registry.read_text())))
    for source in (registry, as_yaml):
        model = load_pretrained("tiny", registry=str(source), training_model=True, **TINY)
        assert_same_weights(model, trained[0])
        assert model.preprocessing.patch_size == (32, 32, 32)


def test_file_url_entry_downloads_into_the_cache(lab, trained, tmp_path):
    _, weights = lab
    registry = write_registry(tmp_path / "remote.json", {
        "tiny": {"url": weights.as_uri(), "sha256": sha256(weights).upper()}})
    cache = tmp_path / "cache"
    model = load_pretrained("tiny", registry=registry.as_uri(), cache_dir=cache, **TINY)
    np.testing.assert_array_equal(model.predict(X, verbose=0), trained[1])
    cached = cache / "models" / "missu_keras" / weights.name
    assert cached.is_file() and sha256(cached) == sha256(weights)
    # a relative path in a registry URL is relative to that URL
    relative = write_registry(tmp_path / "lab" / "by_url.json", {
        "tiny": {"path": "weights/" + weights.name, "sha256": sha256(weights)}})
    assert presets.get_preset_weights("tiny", registry=relative.as_uri())["url"] == weights.as_uri()


def test_a_wrong_sha256_is_refused(lab, tmp_path):
    _, weights = lab
    wrong = "f" * 64
    local = write_registry(tmp_path / "wrong.json", {"tiny": {"path": str(weights), "sha256": wrong}})
    with pytest.raises(ValueError, match=rf"sha256 mismatch.*expects {wrong}, the file has {sha256(weights)}"):
        load_pretrained("tiny", registry=str(local), **TINY)
    remote = write_registry(tmp_path / "wrong_url.json", {"tiny": {"url": weights.as_uri(), "sha256": wrong}})
    with pytest.raises(ValueError, match=rf"sha256 mismatch.*expected {wrong}, downloaded {sha256(weights)}"):
        load_pretrained("tiny", registry=str(remote), cache_dir=tmp_path / "cache", **TINY)
    assert not (tmp_path / "cache" / "models" / "missu_keras" / weights.name).exists()


@pytest.mark.parametrize("entry, message", [
    ({"path": "a.keras"}, "sha256 must be 64 hexadecimal digits; received None"),
    ({"path": "a.keras", "sha256": "xyz"}, "sha256 must be 64 hexadecimal digits; received 'xyz'"),
    ({"url": "file:///a", "path": "a", "sha256": "0" * 64}, r"expected exactly one of 'url' or 'path'; found \['url', 'path'\]"),
    ({"path": "a.keras", "sha256": "0" * 64, "md5": "x"}, r"unknown keys \['md5'\]"),
])
def test_malformed_entries_are_named(tmp_path, entry, message):
    registry = write_registry(tmp_path / "bad.json", {"tiny": entry})
    with pytest.raises(ValueError, match=rf"bad.json, preset 'tiny': {message}"):
        presets.get_preset_weights("tiny", registry=str(registry))


def test_missing_or_malformed_registry_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MISSU_KERAS_REGISTRY", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match=r"registry not found: .*missing.json.*MISSU_KERAS_REGISTRY"):
        load_pretrained("tiny", **TINY)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: expected a mapping with a 'presets' mapping"):
        presets.get_preset_weights("tiny", registry=str(tmp_path / "list.json"))
    (tmp_path / "broken.yaml").write_text("presets: [unclosed")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        presets.get_preset_weights("tiny", registry=str(tmp_path / "broken.yaml"))


# --------------------------------------------------------------------- publish -------


def test_publish_then_load_pretrained_returns_the_same_weights(trained, tmp_path):
    model, expected = trained
    (tmp_path / "lab").mkdir()
    registry = write_registry(tmp_path / "lab" / "registry.json", {
        "chaos": {"url": "https://example.org/c.keras", "sha256": "0" * 64}})  # kept
    result = publish(model, "tiny", registry, description="lab tiny")
    assert isinstance(result, PublishedWeights)
    assert result.weights_file == registry.parent / "missu_tiny.keras"
    assert result.sha256 == sha256(result.weights_file)
    assert result.checksum_file.read_text() == f"{result.sha256}  missu_tiny.keras\n"
    stored = json.loads(registry.read_text())
    assert set(stored["presets"]) == {"chaos", "tiny"}
    entry = stored["presets"]["tiny"]
    assert entry["path"] == "missu_tiny.keras" and entry["sha256"] == result.sha256
    assert entry["description"] == "lab tiny" and entry["metadata"]["modalities"] == [
        "flair", "t1ce", "t1", "t2"]
    assert not [p for p in registry.parent.iterdir() if p.name.startswith(".tmp")]

    loaded = load_pretrained("tiny", registry=str(registry), training_model=True)
    assert loaded.get_config() == model.get_config()
    assert_same_weights(loaded, model)
    np.testing.assert_array_equal(load_pretrained("tiny", registry=str(registry)).predict(X, verbose=0),
                                  expected)

    with pytest.raises(FileExistsError, match=r"already has an entry for 'tiny'.*overwrite=True"):
        publish(model, "tiny", registry)
    again = publish(model, "tiny", registry, overwrite=True)
    assert json.loads(registry.read_text())["presets"]["tiny"]["sha256"] == again.sha256


def test_publish_a_train_run_under_a_new_name_to_yaml(trained, tmp_path, monkeypatch):
    model = trained[0]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preprocessing": model.preprocessing.to_dict()}))
    model.save(run / "checkpoints" / "last.keras")
    registry = tmp_path / "registry.yaml"
    result = publish(run, "tiny_lab.v1", registry, weights_file=tmp_path / "files" / "t.keras",
                     url="https://example.org/t.keras")
    stored = yaml.safe_load(registry.read_text())
    assert stored["presets"]["tiny_lab.v1"]["url"] == "https://example.org/t.keras"
    assert stored["presets"]["tiny_lab.v1"]["metadata"]["source"] == str(run)
    # served from here instead: a local path entry, through the environment variable
    stored["presets"]["tiny_lab.v1"] = {"path": str(result.weights_file), "sha256": result.sha256}
    registry.write_text(yaml.safe_dump(stored))
    monkeypatch.setenv("MISSU_KERAS_REGISTRY", str(registry))
    loaded = load_pretrained("tiny_lab.v1", training_model=True)
    assert_same_weights(loaded, model)
    assert loaded.preprocessing == model.preprocessing


def test_publish_refuses_what_it_cannot_publish(trained, tmp_path):
    model = trained[0]
    registry = tmp_path / "registry.json"
    with pytest.raises(ValueError, match="preset name, i.e. an untrained network"):
        publish("tiny", "tiny", registry)
    with pytest.raises(ValueError, match="needs a missu_keras.MISSU"):
        publish(model.inference_model(), "tiny", registry)
    with pytest.raises(ValueError, match=r"cannot be published as the built-in preset 'chaos': in_channels=4"):
        publish(model, "chaos", registry)
    with pytest.raises(ValueError, match="preset_name must be letters"):
        publish(model, "../x", registry)
    with pytest.raises(ValueError, match="registry_file must be a local file"):
        publish(model, "tiny", "https://example.org/registry.json")
    bare = MISSU.from_config({**model.get_config(), "preprocessing": None})
    with pytest.raises(ValueError, match="carries no preprocessing contract"):
        publish(bare, "tiny", registry)
    assert not registry.exists()
    with pytest.raises(ValueError, match=r"must be a '.keras' MISSU"):
        weights = tmp_path / "w.weights.h5"
        model.save_weights(weights)
        load_pretrained("lab_only", registry=str(write_registry(
            tmp_path / "r.json", {"lab_only": {"path": str(weights), "sha256": sha256(weights)}})))


def test_preprocessing_of_published_weights_is_the_models(trained, tmp_path):
    model = MISSU.from_config({**trained[0].get_config(),
                               "preprocessing": PreprocessingConfig.brats(patch_size=32, crop_margin=4)})
    model.set_weights(trained[0].get_weights())
    publish(model, "tiny", tmp_path / "r.json")
    segmenter = load_segmenter("tiny", registry=str(tmp_path / "r.json"))
    assert segmenter.preprocessing.crop_margin == (4, 4, 4)
    assert missu_keras.load_pretrained("tiny", registry=str(tmp_path / "r.json"),
                                       training_model=True).preprocessing == model.preprocessing

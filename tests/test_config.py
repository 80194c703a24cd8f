"""One configuration mechanism (missu_keras/config.py): every configuration class checks
types naming the field, reads numbers written as text, refuses unknown names, round-trips
through JSON; ``--set`` is parsed one way."""

import json

import pytest

from missu_keras.config import MISSUConfig, StrictConfig, int_or_triple, parse_set_options
from missu_keras.data.pipeline import AugmentationConfig
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.training import TrainConfig

REQUIRED = {TrainConfig: {"data": "d", "out": "o"}}

# (class, a boolean field, an integer field, a float field)
CLASSES = [
    (MISSUConfig, "use_transformer", "embed_dim", "distill_weight"),
    (TrainConfig, "skip_invalid", "epochs", "learning_rate"),
    (PreprocessingConfig, "crop_to_nonzero", "pad_multiple", None),
    (AugmentationConfig, None, None, "flip_prob"),
]


def make(cls, **fields):
    return cls(**{**REQUIRED.get(cls, {}), **fields})


@pytest.mark.parametrize("cls, boolean, integer, number", CLASSES)
def test_wrong_types_are_refused_naming_the_field(cls, boolean, integer, number):
    assert issubclass(cls, StrictConfig)
    if boolean:
        for bad in ("False", 0, None):
            with pytest.raises(ValueError, match=rf"{cls.__name__}: {boolean} must be true or false.*{bad!r}"):
                make(cls, **{boolean: bad})
    if integer:
        for bad in (1.5, "many", True):
            with pytest.raises(ValueError, match=rf"{integer} must be an integer.*{integer}={bad!r}"):
                make(cls, **{integer: bad})
    if number:
        for bad in ("fast", [1.0], False):
            with pytest.raises(ValueError, match=rf"{number} must be a number.*{number}="):
                make(cls, **{number: bad})


@pytest.mark.parametrize("cls, boolean, integer, number", CLASSES)
def test_numbers_written_as_text_are_numbers(cls, boolean, integer, number):
    """PyYAML reads ``4e-4`` (an exponent without a dot) as a string; flags are strings."""
    if integer:
        assert getattr(make(cls, **{integer: "16"}), integer) == 16
    if number:
        value = getattr(make(cls, **{number: "4e-1"}), number)
        assert value == pytest.approx(0.4) and isinstance(value, float)


@pytest.mark.parametrize("cls, boolean, integer, number", CLASSES)
def test_unknown_names_and_json_round_trip(cls, boolean, integer, number):
    config = make(cls)
    text = json.dumps(config.to_dict())
    assert cls.from_dict(json.loads(text)) == config
    with pytest.raises(ValueError, match=r"Unknown .*\['colour'\]; accepted names: \["):
        cls.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="expected a mapping"):
        cls.from_dict(["not", "a", "mapping"])


def test_yaml_learning_rate_4e_4_is_a_number(tmp_path):
    """The paper's learning rate as a user writes it in YAML reaches the optimizer as a
    float (it used to pass validation as a string and crash at the first step)."""
    import yaml

    from missu_keras.config import read_settings_file

    path = tmp_path / "train.yaml"
    path.write_text("data: d\nout: o\nlearning_rate: 4e-4\nsteps_per_epoch: 2\n")
    assert yaml.safe_load(path.read_text())["learning_rate"] == "4e-4"  # the YAML misreading
    config = TrainConfig.from_dict(read_settings_file(path))
    assert config.learning_rate == 4e-4 and isinstance(config.learning_rate, float)
    path.write_text("data: d\nout: o\nsteps_per_epoch: true\n")
    with pytest.raises(ValueError, match=r"steps_per_epoch must be an integer or null.*True"):
        TrainConfig.from_dict(read_settings_file(path))


def test_set_options_are_read_as_yaml_values():
    options = parse_set_options(["use_transformer=False", "distill_weight=0.5", "msf_mode=ms_output",
                                 "image_size=[64, 64, 32]", "learning_rate=4e-4", "seg_loss=dice"])
    assert options == {"use_transformer": False, "distill_weight": 0.5, "msf_mode": "ms_output",
                       "image_size": [64, 64, 32], "learning_rate": "4e-4", "seg_loss": "dice"}
    config = MISSUConfig(**{k: v for k, v in options.items() if k != "learning_rate"})
    assert config.use_transformer is False and config.image_size == (64, 64, 32)
    for bad in ("embed_dim", "=3", "x=[1,"):
        with pytest.raises(ValueError, match="--set"):
            parse_set_options([bad])


def test_int_or_triple_is_the_one_parser():
    assert int_or_triple(8, "patch_size") == (8, 8, 8)
    assert int_or_triple(("8", 16, 24.0), "patch_size") == (8, 16, 24)
    for bad in ([1, 2], "x", [1.5, 2, 3], True):
        with pytest.raises(ValueError, match="patch_size"):
            int_or_triple(bad, "patch_size")
    with pytest.raises(ValueError, match="crop_margin must be >= 0"):
        int_or_triple(-1, "crop_margin")

"""`precision="auto"` (missu_keras.hardware): the choice from fake CPU flag sets and GPU
lists (no test depends on this machine's CPU or GPUs), its logged reason, and the
commands that accept ``--precision auto``."""

import logging

import pytest

from missu_keras import hardware
from missu_keras.cli.common import segmenter_kwargs
from missu_keras.cli.main import build_parser
from missu_keras.cli.train import settings_from_args
from missu_keras.training.config import TrainConfig

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}


@pytest.mark.parametrize("purpose, flags, gpus, expected, reason", [
    ("training", AVX2, [], "float32", "no bf16 units"),            # emulated bf16: never
    ("inference", AVX2, [], "float32", "no bf16 units"),
    ("training", AVX512, [], "float32", "no bf16 units"),          # AVX-512 alone is not enough
    ("training", AVX512 | {"avx512_bf16"}, [], "mixed_bfloat16", "CPU has avx512_bf16"),
    ("inference", AVX512 | {"avx512_bf16"}, [], "mixed_bfloat16", "CPU has avx512_bf16"),
    ("inference", AVX512 | {"amx_bf16", "amx_tile"}, [], "mixed_bfloat16", "CPU has amx_bf16"),
    ("training", AVX512 | {"amx_bf16", "avx512_bf16"}, [], "mixed_bfloat16",
     "CPU has amx_bf16, avx512_bf16"),
    ("training", None, [], "float32", "CPU flags unknown"),       # not Linux
    ("training", AVX512 | {"avx512_bf16"}, ["/physical_device:GPU:0"], "mixed_float16", "GPU visible"),
    ("inference", AVX512 | {"avx512_bf16"}, ["/physical_device:GPU:0"], "float32", "no float16 path"),
])
def test_choose_precision(purpose, flags, gpus, expected, reason):
    choice, why = hardware.choose_precision(purpose, flags, gpus)
    assert choice == expected
    assert reason in why


def test_choose_precision_refuses_an_unknown_purpose():
    with pytest.raises(ValueError, match="purpose must be one of.*'export'"):
        hardware.choose_precision("export", AVX2)


@pytest.fixture
def fake_machine(monkeypatch):
    """Sets the CPU flags and GPUs `resolve_precision` reads."""
    def set_machine(flags, gpus=()):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware, "visible_gpus", lambda: list(gpus))
    return set_machine


def test_resolve_precision_reads_the_machine_and_logs_why(fake_machine, caplog):
    fake_machine(AVX512 | {"avx512_bf16"})
    with caplog.at_level(logging.INFO, logger="missu_keras.hardware"):
        assert hardware.resolve_precision("auto", "inference") == "mixed_bfloat16"
    assert "precision auto -> mixed_bfloat16 (CPU has avx512_bf16)" in caplog.text
    fake_machine(set())  # empty: unreadable flags (e.g. not Linux)
    lines = []
    assert hardware.resolve_precision("auto", "training", log=lines.append) == "float32"
    assert lines and lines[0].startswith("precision auto -> float32 (CPU flags unknown")


def test_explicit_precision_is_kept_without_reading_the_machine(monkeypatch):
    def fail():
        raise AssertionError("the machine was read for an explicit precision")
    monkeypatch.setattr(hardware, "cpu_flags", fail)
    monkeypatch.setattr(hardware, "visible_gpus", fail)
    assert hardware.resolve_precision("mixed_bfloat16", "inference") == "mixed_bfloat16"
    assert hardware.resolve_precision("float32") == "float32"


@pytest.mark.parametrize("flags, expected", [(AVX2, "float32"), (AVX512 | {"amx_bf16"}, "mixed_bfloat16")])
def test_predict_and_evaluate_accept_precision_auto(fake_machine, capsys, flags, expected):
    fake_machine(flags)
    parser = build_parser()
    for argv in (["predict", "case", "--out", "o", "--model", "tiny", "--precision", "auto"],
                 ["evaluate", "cases", "--out", "o", "--model", "tiny", "--precision", "auto"]):
        args = parser.parse_args(argv)
        assert args.precision == "auto"
        assert segmenter_kwargs(args)["precision"] == expected
        assert f"precision auto -> {expected} (" in capsys.readouterr().err
    assert parser.parse_args(["predict", "case", "--out", "o", "--model", "tiny"]).precision == "float32"


def test_train_accepts_precision_auto():
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--precision", "auto"])
    assert TrainConfig.from_dict(settings_from_args(args)).precision == "auto"
    default = parser.parse_args(["train", "--data", "d", "--out", "o"])
    assert TrainConfig.from_dict(settings_from_args(default)).precision == "float32"


@pytest.mark.parametrize("flags, inferer_precision", [(AVX2, None), (AVX512 | {"avx512_bf16"}, "mixed_bfloat16")])
def test_segmenter_resolves_precision_auto(fake_machine, flags, inferer_precision):
    from missu_keras.data import PreprocessingConfig
    from missu_keras.inference import Segmenter
    from missu_keras.models import MISSU

    fake_machine(flags)
    model = MISSU.from_preset("tiny", image_size=16, embed_dim=16, num_layers=1).inference_model()
    segmenter = Segmenter(model, PreprocessingConfig.brats(patch_size=16), precision="auto")
    assert segmenter.inferer.precision == inferer_precision
    assert (segmenter.model.dtype_policy.name == "mixed_bfloat16") == (inferer_precision is not None)

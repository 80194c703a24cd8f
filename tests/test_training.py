"""`missu-keras train`: outputs, TensorBoard, resumption after a crash, config handling."""

import csv
import json

import keras
import numpy as np
import pytest
import yaml

import missu_keras
from missu_keras import cli
from missu_keras.data import write_synthetic_brats
from missu_keras.optimizers import poly_schedule
from missu_keras.cli.train import settings_from_args
from missu_keras.training import TrainConfig, train
from tests.helpers import Crash, CrashAfter

EPOCHS, STEPS, BATCH = 3, 2, 1
MODEL = {"base_width": 8, "embed_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, num_cases=3, seed=1, shape=(32, 32, 32))
    return root


def _config_file(tmp_path, data_dir, **extra):
    settings = dict(data=str(data_dir), out=str(tmp_path / "run"), preset="tiny", patch_size=32,
                    epochs=EPOCHS, steps_per_epoch=STEPS, batch_size=BATCH, validation_every=1,
                    image_every=1, verbose=0, seed=3, model=MODEL, **extra)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for sub in ("train", "validation"):
        acc = EventAccumulator(str(folder / sub), size_guidance={"tensors": 0, "images": 0})
        acc.Reload()
        tags[sub] = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    return tags


@pytest.mark.slow
def test_crash_and_resume_with_the_same_command(tmp_path, data_dir, capsys):
    config_path = _config_file(tmp_path, data_dir)
    settings = yaml.safe_load(config_path.read_text())
    out = tmp_path / "run"
    # 1) The run dies in the middle of its second epoch.
    with pytest.raises(Crash):
        train(settings, callbacks=[CrashAfter(STEPS + 1)], log=None)
    meta = json.loads((out / "backup" / "epoch-0001.json").read_text())
    assert meta["epoch"] == 1 and not (out / "backup" / "epoch-0002.json").exists()
    assert len(_read_log(out / "log.csv")) == 1

    # 2) The same command again, from the command line: resumes at epoch 1.
    assert cli.main(["train", "--config", str(config_path)]) == 0
    assert "resuming from epoch 1" in capsys.readouterr().out
    rows = _read_log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    schedule = poly_schedule(EPOCHS * STEPS)
    for r in rows:  # the learning rate after each epoch follows one unbroken schedule
        expected = float(schedule((int(r["epoch"]) + 1) * STEPS))
        assert float(r["learning_rate"]) == pytest.approx(expected, rel=1e-5, abs=1e-9)
        for key in ("loss", "seg_loss", "sd_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET",
                    "val_dice_mean"):
            assert np.isfinite(float(r[key])), (key, r)
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert int(last.optimizer.iterations) == EPOCHS * STEPS
    best = json.loads((out / "checkpoints" / "best.keras.json").read_text())
    assert best["val_dice_mean"] == pytest.approx(max(float(r["val_dice_mean"]) for r in rows))

    # Everything a run promises is there.
    stored = json.loads((out / "config.json").read_text())
    assert stored["train"]["epochs"] == EPOCHS and stored["model"]["embed_dim"] == 32
    assert stored["preprocessing"]["patch_size"] == [32, 32, 32]
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["validation"]) == 1
    tags = _tensorboard_tags(out / "tensorboard")
    assert {"epoch_loss", "epoch_seg_loss", "epoch_sd_loss", "epoch_learning_rate"} <= tags["train"]
    assert {"epoch_dice_WT", "epoch_dice_mean"} <= tags["validation"]
    assert "overlay" in tags["validation"]

    # 3) A finished run started again trains nothing more; --save-preset may be added.
    result = train(settings, save_preset=str(tmp_path / "preset"), log=None)
    assert result.initial_epoch == EPOCHS
    assert int(result.model.optimizer.iterations) == EPOCHS * STEPS
    assert {p.name for p in (tmp_path / "preset").iterdir()} >= {
        "config.json", "model.weights.h5", "preprocessing.json", "metadata.json"}
    reloaded = missu_keras.load_pretrained(str(tmp_path / "preset"))
    x = np.zeros((1, 32, 32, 32, 4), "float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               result.model.inference_model().predict(x, verbose=0), atol=1e-6)

    # 4) Another configuration in the same folder is refused, naming the change.
    with pytest.raises(ValueError, match="different configuration.*epochs: 3 -> 4"):
        train(settings, epochs=4, log=None)


def test_resumed_data_stream_continues_where_it_stopped(data_dir, tmp_path):
    from missu_keras.data import PreprocessingConfig, build_cache, find_brats_cases, make_training_dataset

    cache = build_cache(find_brats_cases(data_dir), tmp_path / "cache",
                        PreprocessingConfig.brats(patch_size=16), progress=False).cache
    full = [x.numpy() for x, _ in make_training_dataset(cache, batch_size=1, seed=5).take(6)]
    resumed = [x.numpy() for x, _ in make_training_dataset(cache, batch_size=1, seed=5,
                                                           skip_samples=4).take(2)]
    np.testing.assert_array_equal(resumed[0], full[4])
    np.testing.assert_array_equal(resumed[1], full[5])


def test_flags_override_the_config_file(tmp_path, data_dir):
    path = _config_file(tmp_path, data_dir, loss="ce")
    args = cli.build_parser().parse_args([
        "train", "--config", str(path), "--epochs", "7", "--loss", "dice", "--patch-size", "32",
        "32", "16", "--precision", "mixed_bfloat16", "--distill-weight", "0.5",
        "--set", "num_layers=2", "--set", "msf_mode=ms_output",
    ])
    config = TrainConfig.from_dict(settings_from_args(args))
    assert config.epochs == 7 and config.loss == "dice" and config.patch_size == [32, 32, 16]
    assert config.precision == "mixed_bfloat16" and config.distill_weight == 0.5
    assert config.model == {**MODEL, "num_layers": 2, "msf_mode": "ms_output"}
    assert config.steps_per_epoch == STEPS  # from the file
    json_path = tmp_path / "train.json"
    json_path.write_text(json.dumps({"data": str(data_dir), "out": "x", "batch-size": 2}))
    args = cli.build_parser().parse_args(["train", "--config", str(json_path)])
    assert TrainConfig.from_dict(settings_from_args(args)).batch_size == 2


@pytest.mark.parametrize("settings, match", [
    ({"epochs": 0}, "epochs must be an integer >= 1. Received: epochs=0"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"layout": "2018"}, "layout must be one of"),
    ({"preset": "huge"}, "Unknown preset 'huge'"),
    ({"val_fraction": 1.5}, "val_fraction must be in"),
    ({"learnig_rate": 1e-3}, r"Unknown training settings \['learnig_rate'\]"),
    ({"data": None}, "data is required"),
])
def test_bad_settings_name_the_value(settings, match):
    base = {"data": "d", "out": "o"}
    base.update(settings)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(base)


def test_bad_config_file_and_mismatched_model(tmp_path, data_dir, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: training configuration not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model in_channels=2 does not match the data"):
        train(data=str(data_dir), out=str(tmp_path / "r"), preset="tiny", patch_size=32,
              model={**MODEL, "in_channels": 2}, log=None, verbose=0)

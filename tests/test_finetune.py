"""Issue 15 item 4, fine-tuning: ``train --init-weights`` from a ``.weights.h5`` (and
``load_initial_weights`` from a released-code ``.pth``, ``.npz``, ``.keras``) starts from the
loaded network, another number of classes
re-initialises only the head, shapes that differ are named, ``--freeze`` and
``--head-learning-rate`` act on the right weights, and a fine-tuning run resumes from its
backup."""

import keras
import numpy as np
import pytest

from missu_keras import MISSU
from missu_keras.cli import build_parser
from missu_keras.cli.train import settings_from_args
from missu_keras.data import write_synthetic_brats
from missu_keras.layers import PositionEmbedding
from missu_keras.training import TrainConfig, train
from missu_keras.training.finetune import load_initial_weights
from missu_keras.weights.torch_convert import _TORCH_NAMES, _pairs
from tests.conftest import TINY

MODEL = {k: v for k, v in TINY.items() if k != "image_size"}  # train sets it from the patch
# The training run of the end-to-end test: without the MSF branch, whose gradient graph
# doubles the time TensorFlow takes to compile the training step (other tests load MSF).
RUN_MODEL = {**MODEL, "msf_mode": "none", "self_distill": False}
X = np.random.default_rng(0).standard_normal((1, 32, 32, 32, 4)).astype("float32")
Y = np.random.default_rng(1).integers(0, 4, (1, 32, 32, 32))


def losses(model):
    """``(segmentation loss, total loss)`` on the fixed batch, without dropout."""
    seg, sd, _ = model.compute_losses(X, Y, training=False)
    return float(np.mean(seg)), float(np.mean(seg + model.config.distill_weight * sd))


def weights(model, names=None):
    return {layer.name: layer.get_weights() for layer in model.backbone.layers
            if layer.weights and (names is None or layer.name in names)}


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def state_dict(backbone):
    """The released-code state dict of a Keras backbone (the inverse of
    weights/torch_convert.py's layouts), as numpy arrays."""
    state = {}
    for layer, prefix in _pairs(backbone):
        if isinstance(layer, PositionEmbedding):
            state[f"{prefix}.position_embeddings"] = layer.position_embeddings.numpy()
            continue
        names = next(_TORCH_NAMES[k] for k in type(layer).__mro__ if k in _TORCH_NAMES)
        for name, variable in zip(names, layer.weights):
            value = variable.numpy()
            if name == "weight" and value.ndim == 5:  # (kH, kW, kD, in, out) -> (out, in, kH, kW, kD)
                value = value.transpose(4, 3, 0, 1, 2)
            elif name == "weight" and value.ndim == 2:  # Dense
                value = value.T
            state[f"{prefix}.{name}"] = np.ascontiguousarray(value)
    return state


def make_source(**overrides):
    """A tiny MISSU far from any fresh initialisation (its head favours background)."""
    model = MISSU.from_preset("tiny", **{**TINY, **overrides})
    rng = np.random.default_rng(5)
    for variable in model.weights:
        if "kernel" in variable.path:
            variable.assign(variable.numpy() * rng.uniform(0.7, 1.3, variable.shape).astype("float32"))
    head = model.backbone.get_layer("endconv")
    head.bias.assign(np.linspace(2.0, -1.0, head.bias.shape[0]).astype("float32"))
    return model


@pytest.fixture(scope="module")
def source():
    return make_source()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, num_cases=2, seed=1, shape=(32, 32, 32))
    return root


class FirstLoss(keras.callbacks.Callback):
    """The run's losses on the fixed batch before its first update."""

    def on_train_begin(self, logs=None):
        self.losses = losses(self.model)


def test_run_from_weights_h5_starts_from_it_freezes_and_resumes(source, data_dir, tmp_path):
    # The weights of the inference graph (what export and publish hand out): no MSF
    # branch, like the run below.
    h5 = tmp_path / "source.weights.h5"
    source.inference_model().save_weights(h5)
    settings = dict(data=str(data_dir), out=str(tmp_path / "run"), preset="tiny", patch_size=32,
                    epochs=1, steps_per_epoch=2, batch_size=1, val_fraction=0.0, image_every=0,
                    verbose=0, seed=3, workers=1, model=RUN_MODEL, init_weights=str(h5),
                    freeze=["encoder"], head_learning_rate=0.0)
    first, lines = FirstLoss(), []
    result = train(settings, callbacks=[first], log=lines.append)

    # The run starts with the source network's loss (the segmentation loss: the run has
    # no MSF branch), not with a fresh network's.
    random_seg = losses(MISSU.from_preset("tiny", **TINY))[0]
    assert first.losses[0] == pytest.approx(losses(source)[0], rel=1e-5)
    assert abs(first.losses[0] - random_seg) > 0.05, (first.losses[0], random_seg)
    assert any("initialised from" in line and "25 layers loaded" in line for line in lines), lines
    assert any("parameters:" in line and "trainable of" in line for line in lines), lines

    # After an epoch: the frozen encoder and the head at rate 0 are the source's, bit for
    # bit; the rest trained.
    after, before = weights(result.model), weights(source)
    encoder = [n for n in after if n.startswith(("enblock", "endown"))]
    assert len(encoder) == 12 and all(same(after[n], before[n]) for n in encoder + ["init_conv", "endconv"])
    assert not same(after["deblock2"], before["deblock2"])
    assert not same(after["transformer_0"], before["transformer_0"])

    # Another source is another run.
    with pytest.raises(ValueError, match=r"init_weights: .*source.weights.h5.* -> .*other.pth"):
        train(settings, init_weights=str(tmp_path / "other.pth"), log=None)
    # Started again with the source gone: the run restores its backup (weights, the
    # optimizer's state), not the source, and keeps its frozen parts. (The backup machinery
    # itself, mid-run resumption included, is tested in test_training_resume.py.)
    h5.unlink()
    resumed = train(settings, log=None)
    assert resumed.initial_epoch == 1 and not resumed.model.backbone.get_layer("enblock1").trainable
    assert all(same(w, after[n]) for n, w in weights(resumed.model).items())
    assert same([v.numpy() for v in resumed.model.optimizer.variables],
                [v.numpy() for v in result.model.optimizer.variables])
    assert int(resumed.model.optimizer.iterations) == 2 and resumed.model.optimizer.head_scale == 0


def test_pth_loads_with_the_source_loss(source, tmp_path):
    """The released code's checkpoint (torch needed to read it; the run itself is the
    same as from any source, tested above)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    pth = tmp_path / "released.pth"
    torch.save({"epoch": 7, "state_dict": {k: torch.from_numpy(v) for k, v in
                                           state_dict(source.backbone).items()}}, pth)
    target = MISSU.from_preset("tiny", **TINY)
    transfer = load_initial_weights(target, pth, preset="tiny", overrides=dict(TINY))
    assert transfer.not_in_source == ["msf1", "msf2", "msf_pyramid2", "msf3", "msf_pyramid3"]
    assert losses(target)[0] == pytest.approx(losses(source)[0], rel=1e-5)


def test_weights_h5_same_loss_and_new_classes_reinitialise_only_the_head(source, tmp_path):
    h5 = tmp_path / "source.weights.h5"
    source.save_weights(h5)
    expected = losses(source)
    target = MISSU.from_preset("tiny", **TINY)
    random_loss = losses(target)[1]
    load_initial_weights(target, h5, preset="tiny", overrides=dict(TINY))
    assert losses(target)[1] == pytest.approx(expected[1], rel=1e-5)
    assert abs(random_loss - expected[1]) > 0.05

    two = MISSU.from_preset("tiny", **TINY, num_classes=2)
    head_before = two.backbone.get_layer("endconv").get_weights()
    transfer = load_initial_weights(two, h5, preset="tiny", overrides={**TINY, "num_classes": 2})
    assert transfer.reinitialised == {"endconv": "4 -> 2 classes"} and transfer.not_in_source == []
    loaded, original = weights(two), weights(source)
    assert set(loaded) == set(original)
    assert all(same(loaded[n], original[n]) for n in loaded if n != "endconv")
    assert [w.shape for w in loaded["endconv"]] == [(1, 1, 1, 8, 2), (2,)]
    assert same(loaded["endconv"], head_before)

    # A released-code state dict (.npz) or an inference model's weights hold no MSF
    # branch: it keeps its initialisation.
    msf = ["msf1", "msf2", "msf_pyramid2", "msf3", "msf_pyramid3"]
    npz = tmp_path / "released.npz"
    np.savez(npz, **state_dict(source.backbone))
    fresh = MISSU.from_preset("tiny", **TINY)
    assert load_initial_weights(fresh, npz, preset="tiny", overrides=dict(TINY)).not_in_source == msf
    assert losses(fresh)[0] == pytest.approx(expected[0], rel=1e-5)
    inference_h5 = tmp_path / "inference.weights.h5"
    source.inference_model().save_weights(inference_h5)
    assert load_initial_weights(two, inference_h5, preset="tiny",
                                overrides={**TINY, "num_classes": 2}).not_in_source == msf


def test_shapes_that_differ_are_named(tmp_path):
    two_channels = tmp_path / "two.weights.h5"
    make_source(in_channels=2).save_weights(two_channels)
    target = MISSU.from_preset("tiny", **TINY)
    with pytest.raises(ValueError, match=r"stem convolution 'init_conv' reads 2 input channels in "
                                         r"the source but 4 in the run"):
        load_initial_weights(target, two_channels, preset="tiny", overrides=dict(TINY))
    other_patch = tmp_path / "patch16.keras"
    make_source(image_size=16).save(other_patch)
    with pytest.raises(ValueError, match=r"position embedding 'position_embedding' holds 8 tokens "
                                         r"in the source but 64 in the run"):
        load_initial_weights(target, other_patch, preset="tiny", overrides=dict(TINY))
    with pytest.raises(FileNotFoundError, match=r"init_weights .*nope.pth"):
        load_initial_weights(target, tmp_path / "nope.pth", preset="tiny")


def test_command_line_flags():
    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--init-weights", "w.pth", "--freeze", "encoder",
         "--freeze", "msf", "--head-learning-rate", "1e-3"])
    config = TrainConfig.from_dict(settings_from_args(args))
    assert config.init_weights == "w.pth" and config.freeze == ["encoder", "msf"]
    assert config.head_learning_rate == 1e-3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--freeze", "decoder"])
    with pytest.raises(ValueError, match=r"freeze must list parts of .*'decoder'"):
        TrainConfig(data="d", out="o", freeze=["decoder"])
    with pytest.raises(ValueError, match=r"head_learning_rate must be >= 0"):
        TrainConfig(data="d", out="o", head_learning_rate=-1)


def test_runs_written_before_fine_tuning_still_resume():
    from missu_keras.training.run import _setting_diffs

    new = TrainConfig(data="d", out="o").to_dict()
    old = {k: v for k, v in new.items() if k not in ("init_weights", "freeze", "head_learning_rate")}
    assert _setting_diffs(old, new) == []
    assert _setting_diffs(old, {**new, "freeze": ["encoder"]}) == ["freeze: None -> ['encoder']"]

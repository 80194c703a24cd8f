"""missu_keras/compat.py: every private TensorFlow / Keras internal we rely on still
exists and still means what we use it for. A failure here after an upgrade names the
internal that moved (the real multi-worker run is tests/test_multiworker.py)."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from missu_keras import MISSU, compat
from tests.conftest import NO_DROPOUT, TINY


def test_trainer_internals_behind_the_custom_train_step():
    model = MISSU(**TINY, **NO_DROPOUT)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    assert model.metrics[0] is tracker  # what fit resets each epoch and logs as "loss"
    assert compat.compiled_loss(model) is None and compat.compiled_metrics(model) is None
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 32, 4)).astype("float32")
    y = (x[..., 0] > 0).astype("int32")
    seg, sd, _ = model.compute_losses(x, y, training=False)
    expected = float(np.mean(np.asarray(seg) + model.config.distill_weight * np.asarray(sd)))
    logs = model.test_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)  # the tracker is what "loss" reports
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    assert compat.compiled_loss(model) is not None and compat.compiled_metrics(model) is not None


def test_multi_worker_internals():
    assert not compat.is_multi_worker(tf.distribute.get_strategy())
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert callable(getattr(CollectiveAllReduceExtended, "_in_multi_worker_mode", None))
    # Our override must still be the hook fit calls, with the same arguments.
    hook = inspect.signature(keras.Model._maybe_symbolic_build)
    assert list(hook.parameters)[1:] == ["iterator", "data_batch"]
    assert MISSU._maybe_symbolic_build is compat.MultiWorkerBuild._maybe_symbolic_build


def test_layer_walk_and_built_shapes():
    inputs = keras.Input((8, 8, 8, 2))
    inner = keras.Sequential([keras.layers.Conv3D(3, 1, name="inner_conv")], name="block")
    model = keras.Model(inputs, inner(inputs))
    names = [layer.name for layer in compat.flatten_layers(model)]
    assert names.index("block") < names.index("inner_conv")  # parents before children
    assert compat.built_input_shape(inner.layers[0]) == (None, 8, 8, 8, 2)


def test_stored_value_reads_float32_weights_inside_mixed_precision_calls():
    seen = {}

    class Probe(keras.layers.Conv3D):
        def call(self, inputs):
            seen["autocast"] = self.kernel.value.dtype
            seen["stored"] = compat.stored_value(self.kernel).dtype
            return super().call(inputs)

    Probe(2, 1, dtype="mixed_bfloat16")(np.zeros((1, 2, 2, 2, 3), "float32"))
    assert seen == {"autocast": tf.bfloat16, "stored": tf.float32}


def test_export_archive_root():
    archive = keras.export.ExportArchive()
    root = compat.archive_root(archive)
    root.probe = tf.Variable(1.0)  # attributes on it are what write_out saves
    assert isinstance(root, tf.Module) or hasattr(root, "_track_trackable")

"""Checks and tools shared by the tests (keras-hub's habit)."""

import json

import keras
import numpy as np


def check_layer_config_roundtrip(layer, inputs):
    """get_config -> JSON -> from_config gives a layer with the same config and the
    same output for the same weights; also checks the registered name."""
    out = layer(*inputs) if isinstance(inputs, tuple) else layer(inputs)
    config = layer.get_config()
    config = json.loads(json.dumps(config))
    clone = type(layer).from_config(config)
    assert clone.get_config() == layer.get_config()
    registered = keras.saving.get_registered_name(type(layer))
    assert registered.startswith("missu_keras>"), registered
    out2 = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
    if layer.weights:
        clone.set_weights(layer.get_weights())
        out2 = clone(*inputs) if isinstance(inputs, tuple) else clone(inputs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out2), atol=1e-6)
    return out


def run_command(argv):
    """A ``missu-keras`` command through the real parser, its errors raised (``main``
    turns them into one line and exit code 2)."""
    from missu_keras.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


class Crash(RuntimeError):
    """What `CrashAfter` raises."""


class CrashAfter(keras.callbacks.Callback):
    """Raises `Crash` after ``n`` training batches, as a killed process would stop."""

    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.n:
            raise Crash(f"stopped after {self.seen} batches")

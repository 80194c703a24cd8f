"""Micro-benchmark: forward vs forward+backward of single 3D layers on this machine.

Finds where training-step time goes on CPU (the brats training step is far slower
than the forward pass). Prints a table, then one JSON object as the last line.

    python benchmarks/bench_conv_backward.py [--size 64] [--channels 16]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def timed(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    x = tf.random.normal((1, args.size, args.size, args.size, args.channels))
    c = args.channels
    layers = {
        "conv3x3x3": keras.layers.Conv3D(c, 3, padding="same"),
        "conv3x3x3_dilation3": keras.layers.Conv3D(c, 3, padding="same", dilation_rate=3),
        "conv1x1x1": keras.layers.Conv3D(c, 1),
        "groupnorm8": keras.layers.GroupNormalization(8, epsilon=1e-5),
        "batchnorm_sync": keras.layers.BatchNormalization(synchronized=True),
    }
    results = {}
    print(f"input 1x{args.size}^3x{c}, best of {args.repeats}")
    print(f"{'layer':<22} {'fwd s':>8} {'fwd+bwd s':>10} {'ratio':>6}")
    for name, layer in layers.items():
        layer(x)

        @tf.function
        def fwd():
            return layer(x, training=True)

        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(layer(x, training=True))
            return tape.gradient(y, [x] + layer.trainable_weights)

        f = timed(lambda: [t.numpy() for t in [fwd()]], args.repeats)
        fb = timed(lambda: [t.numpy() for t in fwd_bwd()], args.repeats)
        results[name] = {"forward_s": f, "forward_backward_s": fb}
        print(f"{name:<22} {f:>8.3f} {fb:>10.3f} {fb / f:>6.1f}")
    print(json.dumps({"input": [1, args.size, args.size, args.size, c], "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

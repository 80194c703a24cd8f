"""float32 against mixed_bfloat16 forward, measured side by side in ONE process.

`bench_model.py` runs each configuration in its own child process, one after the other; on a
host whose speed drifts (a shared VM: the same forward took 2.7-4.1 s within an hour on the
development host, benchmarks/NOTES.md section 16) a ratio of two such runs carries that
drift. This script builds both models in one process, alternates their forwards (float32
first in odd rounds, bfloat16 first in even ones) with a float32 and a bfloat16 4096^2
matmul after each round, and reports the median bf16 / float32 ratio and each forward as a
fraction of the matmul rate measured in the same rounds. Prints a table, then one JSON
object as the last line.

    python benchmarks/bench_precision.py                      # brats, 1 x 128^3 x 4, 8 rounds
    python benchmarks/bench_precision.py --preset tiny --image-size 32 --repeats 2 --matmul-size 256

On CPUs without bf16 units (AVX2-only) bfloat16 is emulated and far slower; the script
says so and still measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=8, help="rounds (each: one forward per precision)")
    p.add_argument("--matmul-size", type=int, default=4096)
    args = p.parse_args(argv)

    from missu_keras import MISSU  # first: it turns oneDNN on before TensorFlow loads
    from missu_keras.compat import cpu_has_bf16_units
    from missu_keras.complexity import count_macs

    import keras
    import numpy as np
    import tensorflow as tf

    overrides = {"image_size": args.image_size} if args.image_size else {}
    forwards, flops = {}, None
    policy = keras.mixed_precision.global_policy()
    try:
        for precision in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(precision)
            net = MISSU.from_preset(args.preset, **overrides).inference_model()
            flops = 2 * count_macs(net)
            cfg_shape = net.inputs[0].shape[1:]
            x = np.random.default_rng(0).standard_normal((1, *cfg_shape)).astype("float32")
            forward = tf.function(lambda t, net=net: net(t, training=False))
            forward(x).numpy()  # trace + warm-up
            forwards[precision] = forward
    finally:
        keras.mixed_precision.set_global_policy(policy)

    n = args.matmul_size
    a32 = tf.random.normal((n, n), seed=0)
    b32 = tf.random.normal((n, n), seed=1)
    pairs = {"float32": (a32, b32), "bfloat16": (tf.cast(a32, tf.bfloat16), tf.cast(b32, tf.bfloat16))}
    matmul = tf.function(lambda u, v: tf.linalg.matmul(u, v))
    for u, v in pairs.values():
        matmul(u, v).numpy()

    times = {name: [] for name in ("float32", "mixed_bfloat16", "matmul_float32", "matmul_bfloat16")}
    for round_ in range(args.repeats):
        order = ("float32", "mixed_bfloat16") if round_ % 2 == 0 else ("mixed_bfloat16", "float32")
        for precision in order:
            start = time.perf_counter()
            forwards[precision](x).numpy()
            times[precision].append(time.perf_counter() - start)
        for dtype, (u, v) in pairs.items():
            start = time.perf_counter()
            matmul(u, v).numpy()
            times[f"matmul_{dtype}"].append(time.perf_counter() - start)

    median = {k: float(np.median(v)) for k, v in times.items()}
    rate = {dtype: 2 * n ** 3 / min(times[f"matmul_{dtype}"]) for dtype in pairs}
    results = {
        precision: {"median_s": median[precision], "min_s": float(min(times[precision])),
                    "times_s": times[precision], "flops": flops,
                    "fraction_of_matmul": flops / median[precision] / rate[dtype], "matmul_dtype": dtype}
        for precision, dtype in (("float32", "float32"), ("mixed_bfloat16", "bfloat16"))
    }
    ratio = median["mixed_bfloat16"] / median["float32"]
    bf16_units = cpu_has_bf16_units()
    print(f"MISSU {args.preset} forward, input 1x{'x'.join(map(str, x.shape[1:]))}, {args.repeats} "
          f"alternating rounds in one process; CPU bf16 units: {'yes' if bf16_units else 'no (bf16 emulated)'}")
    print(f"matmul {n}^2: float32 {rate['float32'] / 1e9:.1f} GFLOP/s, bfloat16 {rate['bfloat16'] / 1e9:.1f} GFLOP/s")
    print(f"{'precision':<16} {'median s':>9} {'min s':>7} {'of matmul':>10}")
    for precision, row in results.items():
        print(f"{precision:<16} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {100 * row['fraction_of_matmul']:>9.0f}%")
    print(f"mixed_bfloat16 / float32 forward time (medians): {ratio:.3f}")
    print(json.dumps({"preset": args.preset, "input_shape": [1, *map(int, x.shape[1:])], "repeats": args.repeats,
                      "bf16_units": bf16_units, "matmul_flops_per_s": rate, "results": results,
                      "ratio_bf16_over_float32": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

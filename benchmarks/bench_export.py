"""Export benchmark: latency of the exported ``serving_default`` signature (loaded back
with ``tf.saved_model.load``) against the Keras inference model for one patch (target:
no more than 5 % slower), and the SavedModel's size on disk against parameters x 4 bytes.

The two predictors are timed alternately, one call each per round, so that load from
other processes on the machine hits both alike. Prints a table, then one JSON object as
the last line.

    python benchmarks/bench_export.py                                   # tiny preset, 32^3
    python benchmarks/bench_export.py --preset brats --image-size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_model import cpu_model  # noqa: E402 (the benchmarks folder is on sys.path)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, nargs="+", default=[32],
                        help="N or H W D (default 32; 0 keeps the preset's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from missu_keras.export import export_savedmodel
    from missu_keras.pretrained import load_pretrained

    overrides = {}
    if args.image_size and args.image_size != [0]:
        overrides["image_size"] = args.image_size[0] if len(args.image_size) == 1 else args.image_size
    model = load_pretrained(args.preset, weights=None, training_model=True, **overrides)
    cfg = model.config
    inference = model.inference_model()
    params = int(inference.count_params())

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = export_savedmodel(model, out, preset=args.preset, log=None)
        export_s = time.perf_counter() - t0
        size = folder_size(result.path)
        variables = folder_size(result.path / "variables")
        graph = (result.path / "saved_model.pb").stat().st_size

        served = tf.saved_model.load(str(result.path)).signatures["serving_default"]
        keras_fn = tf.function(lambda t: inference(t, training=False))
        x = tf.constant(np.random.default_rng(0).standard_normal(
            (args.batch, *cfg.image_size, cfg.in_channels)).astype("float32"))

        def run_saved():
            return served(image=x)["probabilities"].numpy()

        def run_keras():
            return keras_fn(x).numpy()

        diff = float(np.abs(run_saved() - run_keras()).max())
        for _ in range(args.warmup):
            run_saved(), run_keras()
        times = {"savedmodel": [], "keras": []}
        for _ in range(args.repeats):
            for name, fn in (("savedmodel", run_saved), ("keras", run_keras)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)

    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = med["savedmodel"] / med["keras"]
    shape = [args.batch, *cfg.image_size, cfg.in_channels]
    print(f"MISSU export benchmark: preset {args.preset!r}, input {shape}, "
          f"{args.repeats} alternating rounds, TF {tf.__version__}, {cpu_model()}, "
          f"{os.cpu_count()} CPUs")
    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| serving_default via tf.saved_model.load, median | {med['savedmodel'] * 1e3:.1f} ms |")
    print(f"| Keras inference model (tf.function), median | {med['keras'] * 1e3:.1f} ms |")
    print(f"| SavedModel / Keras | {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; target: at most +5 %) |")
    print(f"| max abs difference of the probabilities | {diff:.2e} |")
    print(f"| parameters (inference graph) x 4 bytes | {params:,} x 4 = {params * 4 / 2**20:.2f} MiB |")
    print(f"| SavedModel on disk (variables / graph / total) | {variables / 2**20:.2f} / "
          f"{graph / 2**20:.2f} / {size / 2**20:.2f} MiB ({size / (params * 4):.2f} x params x 4) |")
    print(f"| export time | {export_s:.1f} s |")
    print(json.dumps({
        "preset": args.preset, "input_shape": shape, "repeats": args.repeats,
        "savedmodel_median_s": med["savedmodel"], "keras_median_s": med["keras"],
        "latency_ratio": ratio, "meets_target": ratio <= 1.05,
        "max_abs_diff": diff, "parameters": params, "param_bytes": params * 4,
        "savedmodel_bytes": size, "variables_bytes": variables, "graph_bytes": graph,
        "size_ratio": size / (params * 4), "export_s": export_s,
        "tensorflow": tf.__version__, "cpu": cpu_model(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

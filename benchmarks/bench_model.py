"""Model benchmark: params, FLOPs, forward latency (float32 and mixed_bfloat16), one
training step (MSF + self-distillation on) and peak resident memory of each.

Each measurement runs in its own Python process so that its peak memory is its own.
Prints a table, then one JSON object as the last line.

    python benchmarks/bench_model.py                       # brats preset, 128^3 x 4
    python benchmarks/bench_model.py --preset tiny --image-size 32 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf, keras
args = json.loads(sys.argv[1])
if args["precision"] != "float32":
    keras.mixed_precision.set_global_policy(args["precision"])
from missu_keras import MISSU, paper_optimizer
overrides = {"image_size": args["image_size"]} if args["image_size"] else {}
model = MISSU.from_preset(args["preset"], **overrides)
cfg = model.config
x = np.random.default_rng(0).standard_normal((1, *cfg.image_size, cfg.in_channels)).astype("float32")
y = np.random.default_rng(1).integers(0, cfg.num_classes, (1, *cfg.image_size)).astype("int32")
times = []
if args["mode"] == "forward":
    net = model.inference_model()
    fn = tf.function(lambda t: net(t, training=False))
    fn(x).numpy()  # trace + warm-up
    for _ in range(args["repeats"]):
        t = time.perf_counter(); fn(x).numpy(); times.append(time.perf_counter() - t)
else:
    model.compile(optimizer=paper_optimizer(1000))
    model.train_on_batch(x, y)  # trace + warm-up
    for _ in range(args["repeats"]):
        t = time.perf_counter(); model.train_on_batch(x, y); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
print(json.dumps({"median_s": float(np.median(times)), "min_s": float(min(times)), "peak_gb": peak}))
"""


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(preset, image_size, mode, precision, repeats):
    spec = json.dumps({"preset": preset, "image_size": image_size, "mode": mode,
                       "precision": precision, "repeats": repeats})
    proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-bf16", action="store_true",
                   help="skip mixed_bfloat16 (slow where the CPU has no bf16 units, e.g. AVX2-only)")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from missu_keras.complexity import complexity_report
    from missu_keras.models import MISSU

    overrides = {"image_size": args.image_size} if args.image_size else {}
    report = complexity_report(MISSU.from_preset(args.preset, **overrides))
    precisions = ["float32"] + ([] if args.skip_bf16 else ["mixed_bfloat16"])
    modes = ["forward"] + ([] if args.skip_train else ["train_step"])
    runs = [(m, p) for m in modes for p in precisions]
    results = {}
    for mode, precision in runs:
        results[f"{mode}_{precision}"] = measure(args.preset, args.image_size, mode, precision, args.repeats)
        print(f"  {mode} {precision}: {results[f'{mode}_{precision}']}", file=sys.stderr, flush=True)

    import tensorflow as tf
    machine = {"cpu": cpu_model(), "threads": os.cpu_count(), "tensorflow": tf.__version__,
               "gpus": len(tf.config.list_physical_devices("GPU"))}
    shape = "x".join(str(s) for s in report["input_shape"])
    print(f"MISSU preset {args.preset}, input {shape}, {machine['cpu']}, {machine['threads']} threads, "
          f"TF {machine['tensorflow']}, GPUs: {machine['gpus']}")
    print(f"params: training {report['training']['params'] / 1e6:.2f} M, exported "
          f"{report['exported']['params'] / 1e6:.2f} M; GMACs: training {report['training']['macs'] / 1e9:.1f}, "
          f"exported {report['exported']['macs'] / 1e9:.1f}")
    print(f"{'measurement':<28} {'median s':>9} {'min s':>8} {'peak GB':>8}")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<28} error: {r['error']}")
        else:
            print(f"{key:<28} {r['median_s']:>9.2f} {r['min_s']:>8.2f} {r['peak_gb']:>8.2f}")
    print(json.dumps({"preset": args.preset, "input_shape": report["input_shape"], "machine": machine,
                      "params": {k: report[k]["params"] for k in ("training", "exported")},
                      "macs": {k: report[k]["macs"] for k in ("training", "exported")},
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

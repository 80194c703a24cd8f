"""Model benchmark: params, FLOPs, forward latency (float32 and mixed_bfloat16), one
training step (MSF + self-distillation on) and peak resident memory of each.

Each measurement runs in its own Python process so that its peak memory is its own:
"peak GB" is the process's peak resident memory (what the OS sees, TensorFlow's runtime and
allocator caches included); "tensors GB" is the most tensor memory TensorFlow's allocator
had live at once during the timed runs (`tf.config.experimental.get_memory_info`).
Prints a table, then one JSON object as the last line.

The machine's own peak, measured in the same run (issue 17): a 4096^2 x 4096^2 float32
`tf.linalg.matmul` (warmed up, best of 5, in a child process like the others, so with the
same threads and oneDNN setting), and in bfloat16 where the CPU has bf16 units
(avx512_bf16 or amx_bf16). Every MISSU timing is also given as a fraction of that rate:
its FLOPs (`missu_keras.complexity`: the exported graph for the forward; 3 x the training
graph's forward for a training step: forward, input and weight gradients) per second over
the matmul's FLOP/s (the bfloat16 matmul for mixed_bfloat16 rows where it was measured).

    python benchmarks/bench_model.py                       # brats preset, 128^3 x 4
    python benchmarks/bench_model.py --preset tiny --image-size 32 --repeats 2 --matmul-size 1024
    python benchmarks/bench_model.py --skip-train --skip-bf16 --compare-unetr   # + MONAI UNETR, same input and threads (pip install monai torch)

``--compare-unetr`` adds MONAI's UNETR (PyTorch, the MONAI BraTS tutorial's settings:
feature_size 16, hidden 768, MLP 3072, 12 heads, instance norm, residual blocks, conv patch
embedding) forward on the same 1 x C x D x H x W input, with torch.set_num_threads set to the
thread count TensorFlow uses, under torch.inference_mode(), one warm-up then --repeats timed
runs. Where torch, monai or einops (which UNETR needs) is missing its row says "skipped" and
the rest still runs.
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
from missu_keras import MISSU, paper_optimizer  # first: it turns oneDNN on before TensorFlow loads
import numpy as np, tensorflow as tf, keras
args = json.loads(sys.argv[1])
if args["precision"] != "float32":
    keras.mixed_precision.set_global_policy(args["precision"])
overrides = {"image_size": args["image_size"]} if args["image_size"] else {}
model = MISSU.from_preset(args["preset"], **overrides)
cfg = model.config
x = np.random.default_rng(0).standard_normal((1, *cfg.image_size, cfg.in_channels)).astype("float32")
y = np.random.default_rng(1).integers(0, cfg.num_classes, (1, *cfg.image_size)).astype("int32")
def reset_memory_stats():
    try:  # statistics exist with oneDNN's CPU allocator (missu_keras turns oneDNN on)
        tf.config.experimental.reset_memory_stats("CPU:0")
    except ValueError:
        pass
times = []
if args["mode"] == "forward":
    net = model.inference_model()
    fn = tf.function(lambda t: net(t, training=False))
    fn(x).numpy()  # trace + warm-up
    reset_memory_stats()
    for _ in range(args["repeats"]):
        t = time.perf_counter(); fn(x).numpy(); times.append(time.perf_counter() - t)
else:
    model.compile(optimizer=paper_optimizer(1000))
    model.train_on_batch(x, y)  # trace + warm-up
    reset_memory_stats()
    for _ in range(args["repeats"]):
        t = time.perf_counter(); model.train_on_batch(x, y); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
# TensorFlow's own allocator: the most tensor memory live at once in the timed runs
try:
    live = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 1024 ** 3
except ValueError:
    live = None
print(json.dumps({"median_s": float(np.median(times)), "min_s": float(min(times)), "peak_gb": peak,
                  "tensor_peak_gb": live}))
"""


# MONAI's UNETR as the MONAI BraTS tutorial sets it up, built for args["img_size"]; where
# torch, monai or einops is missing, prints a "skipped" JSON line and exits. Shared with
# bench_inference.py --compare-monai (sliding window), so both compare the same network.
UNETR_BUILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
# monai imports torch.utils.tensorboard, which loads TensorFlow when it is installed (~0.5 GB
# of resident memory that UNETR does not use); hide it so peak_gb is PyTorch + UNETR only.
sys.modules.setdefault("tensorflow", None)
try:
    import torch, monai
    import einops  # noqa: F401  (UNETR's attention needs it; monai imports it only when used)
    from monai.networks.nets import UNETR
except Exception as exc:  # ImportError, or a monai that does not work with this torch
    print(json.dumps({"skipped": "pip install monai torch einops", "reason": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
import inspect
import numpy as np
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
# the patch embedding's keyword: proj_type (MONAI >= 1.3), pos_embed before
proj_kw = "proj_type" if "proj_type" in inspect.signature(UNETR.__init__).parameters else "pos_embed"
size = tuple(args["img_size"])
if any(side % 16 for side in size):
    raise SystemExit(f"UNETR needs every side divisible by its patch size 16, got {size}")
net = UNETR(in_channels=args["in_channels"], out_channels=args["out_channels"], img_size=size,
            feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, norm_name="instance",
            res_block=True, dropout_rate=0.0, **{proj_kw: "conv"}).eval()
params = sum(p.numel() for p in net.parameters())
about = {"params": int(params), "threads": torch.get_num_threads(), "torch": torch.__version__,
         "monai": monai.__version__, "patch_embedding": f"{proj_kw}=conv"}
"""

UNETR_CHILD = UNETR_BUILD + r"""
x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, args["in_channels"], *size)).astype("float32"))
times = []
with torch.inference_mode():
    net(x)  # warm-up
    for _ in range(args["repeats"]):
        t = time.perf_counter(); net(x); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
print(json.dumps({"median_s": float(np.median(times)), "min_s": float(min(times)), "peak_gb": peak,
                  "input_shape": [1, args["in_channels"], *size], **about}))
"""


MATMUL_CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import missu_keras  # noqa: F401  (first: it turns oneDNN on before TensorFlow loads, as in CHILD)
import tensorflow as tf
args = json.loads(sys.argv[1])
n = args["size"]
a = tf.random.normal((n, n), dtype="float32", seed=0)
b = tf.random.normal((n, n), dtype="float32", seed=1)
a, b = tf.cast(a, args["dtype"]), tf.cast(b, args["dtype"])
mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
mm(a, b).numpy()  # trace + warm-up
mm(a, b).numpy()
times = []
for _ in range(args["repeats"]):
    t = time.perf_counter(); mm(a, b).numpy(); times.append(time.perf_counter() - t)
print(json.dumps({"dtype": args["dtype"], "size": n, "best_s": min(times),
                  "flops_per_s": 2 * n ** 3 / min(times)}))
"""

# The CPU flags printed at the top (what decides oneDNN's kernels and bf16's speed).
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SHORT = {"float32": "f32", "bfloat16": "bf16"}


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_child(code, spec):
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_matmul(dtype, size, repeats=5):
    """The machine's matmul rate in ``dtype`` (``{"flops_per_s", "best_s", ...}``)."""
    return run_child(MATMUL_CHILD, {"dtype": dtype, "size": size, "repeats": repeats})


def matmul_rates(size, bf16_units):
    """float32 and (where the CPU has bf16 units) bfloat16 matmul rates."""
    rates = {"float32": measure_matmul("float32", size)}
    rates["bfloat16"] = (measure_matmul("bfloat16", size) if bf16_units
                         else {"skipped": "no bf16 units (avx512_bf16 / amx_bf16) on this CPU"})
    return rates


def add_fractions(results, flops, rates):
    """Each timed row's ``flops`` (per run), achieved FLOP/s and fraction of the matmul rate
    of its precision (the bfloat16 one for mixed_bfloat16 rows where measured)."""
    for key, r in results.items():
        if "median_s" not in r:
            continue
        rate = rates["float32"]
        if "bfloat16" in key and "flops_per_s" in rates["bfloat16"]:
            rate = rates["bfloat16"]
        r["flops"] = flops["train_step" if key.startswith("train_step") else "forward"]
        r["flops_per_s"] = r["flops"] / r["median_s"]
        r["matmul_dtype"] = rate.get("dtype", "float32")
        r["fraction_of_matmul"] = r["flops_per_s"] / rate["flops_per_s"] if "flops_per_s" in rate else None


def measure(preset, image_size, mode, precision, repeats):
    return run_child(CHILD, {"preset": preset, "image_size": image_size, "mode": mode,
                             "precision": precision, "repeats": repeats})


def measure_unetr(img_size, in_channels, out_channels, repeats, threads):
    """MONAI UNETR forward (PyTorch) on a 1 x in_channels x *img_size input."""
    return run_child(UNETR_CHILD, {"img_size": list(img_size), "in_channels": in_channels,
                                   "out_channels": out_channels, "repeats": repeats, "threads": threads})


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-bf16", action="store_true",
                   help="skip mixed_bfloat16 (slow where the CPU has no bf16 units, e.g. AVX2-only)")
    p.add_argument("--matmul-size", type=int, default=4096,
                   help="side of the square matmul that measures the machine's rate (default 4096)")
    p.add_argument("--compare-unetr", action="store_true",
                   help="also time MONAI's UNETR forward (PyTorch) on the same input and thread count "
                        "(needs: pip install monai torch einops)")
    return p.parse_args(argv)


def _print_table(args, machine, report, results, rates, unetr, ratio):
    shape = "x".join(str(s) for s in report["input_shape"])
    print(f"MISSU preset {args.preset}, input {shape}, {machine['cpu']}, {machine['threads']} threads, "
          f"TF {machine['tensorflow']}, GPUs: {machine['gpus']}")
    print("CPU flags: " + ", ".join(f"{f} {'yes' if machine['flags'][f] else 'no'}" for f in SHOWN_FLAGS))
    for dtype, r in rates.items():
        text = (f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s ({r['size']}^2 matmul, best {r['best_s']:.3f} s)"
                if "flops_per_s" in r else r.get("skipped") or f"error: {r.get('error')}")
        print(f"matmul rate {dtype}: {text}")
    print(f"params: training {report['training']['params'] / 1e6:.2f} M, exported "
          f"{report['exported']['params'] / 1e6:.2f} M; GMACs: training {report['training']['macs'] / 1e9:.1f}, "
          f"exported {report['exported']['macs'] / 1e9:.1f}")
    print(f"{'measurement':<28} {'median s':>9} {'min s':>8} {'peak GB':>8} {'tensors GB':>10} "
          f"{'GFLOP/s':>8} {'of matmul':>10}")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<28} error: {r['error']}")
            continue
        frac = r.get("fraction_of_matmul")
        of_matmul = "-" if frac is None else f"{100 * frac:.0f}% {SHORT[r['matmul_dtype']]}"
        print(f"{key:<28} {r['median_s']:>9.2f} {r['min_s']:>8.2f} {r['peak_gb']:>8.2f} "
              f"{r.get('tensor_peak_gb') or float('nan'):>10.2f} {r['flops_per_s'] / 1e9:>8.1f} "
              f"{of_matmul:>10}")
    if unetr is not None:
        _print_unetr(unetr, ratio)


def _print_unetr(unetr, ratio):
    key = "forward_float32_unetr"
    if "median_s" in unetr:
        print(f"{key:<28} {unetr['median_s']:>9.2f} {unetr['min_s']:>8.2f} {unetr['peak_gb']:>8.2f}")
        print(f"UNETR (MONAI {unetr['monai']}, torch {unetr['torch']}, {unetr['threads']} threads, "
              f"{unetr['patch_embedding']}): params {unetr['params'] / 1e6:.2f} M")
    elif "skipped" in unetr:
        print(f"{key:<28} skipped: {unetr['skipped']} ({unetr['reason']})")
    else:
        print(f"{key:<28} error: {unetr['error']}")
    if ratio is not None:
        print(f"MISSU / UNETR forward time ratio: {ratio:.2f} (<1: MISSU faster)")


def main(argv=None):
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from missu_keras.compat import cpu_flags
    from missu_keras.complexity import complexity_report
    from missu_keras.hardware import BF16_FLAGS
    from missu_keras.models import MISSU

    overrides = {"image_size": args.image_size} if args.image_size else {}
    model = MISSU.from_preset(args.preset, **overrides)
    report = complexity_report(model)
    in_channels, num_classes = model.config.in_channels, model.config.num_classes
    del model
    flags = cpu_flags()
    rates = matmul_rates(args.matmul_size, bool(set(BF16_FLAGS) & flags))
    print(f"  matmul rates: {rates}", file=sys.stderr, flush=True)
    precisions = ["float32"] + ([] if args.skip_bf16 else ["mixed_bfloat16"])
    modes = ["forward"] + ([] if args.skip_train else ["train_step"])
    results = {}
    for mode, precision in [(m, p) for m in modes for p in precisions]:
        results[f"{mode}_{precision}"] = measure(args.preset, args.image_size, mode, precision, args.repeats)
        print(f"  {mode} {precision}: {results[f'{mode}_{precision}']}", file=sys.stderr, flush=True)
    # FLOPs per run: the exported graph's forward; a training step ~ 3 x the training graph's
    # forward (forward, input gradients, weight gradients)
    add_fractions(results, {"forward": report["exported"]["flops"],
                            "train_step": 3 * report["training"]["flops"]}, rates)
    unetr = ratio = None
    if args.compare_unetr:
        # same input as the MISSU forward: 1 x C x (report's spatial sides), channels-first
        unetr = measure_unetr(report["input_shape"][1:-1], in_channels, num_classes, args.repeats, os.cpu_count())
        print(f"  forward float32 UNETR: {unetr}", file=sys.stderr, flush=True)
        missu = results.get("forward_float32", {})
        if "median_s" in missu and "median_s" in unetr:
            ratio = missu["median_s"] / unetr["median_s"]

    import tensorflow as tf
    machine = {"cpu": cpu_model(), "threads": os.cpu_count(), "tensorflow": tf.__version__,
               "gpus": len(tf.config.list_physical_devices("GPU")),
               "flags": {f: f in flags for f in SHOWN_FLAGS}}
    _print_table(args, machine, report, results, rates, unetr, ratio)
    print(json.dumps({"preset": args.preset, "input_shape": report["input_shape"], "machine": machine,
                      "params": {k: report[k]["params"] for k in ("training", "exported")},
                      "macs": {k: report[k]["macs"] for k in ("training", "exported")},
                      "matmul": rates, "results": results, "unetr": unetr,
                      "ratio_missu_over_unetr": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

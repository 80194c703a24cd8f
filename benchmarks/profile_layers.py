"""Where the forward time goes: each top-level layer of the MISSU graph timed on its
real inputs (eager execution, the same oneDNN kernels as the graph), summed per kind.

Runs the functional backbone through Keras' own graph walker with a timing wrapper
around every layer call; the first pass warms up, the reported figure is the median of
``--repeats`` further passes. Prints a table (slowest first), then one JSON object as the
last line. See benchmarks/NOTES.md for what was learnt from it.

    python benchmarks/profile_layers.py                       # brats, 1 x 128^3 x 4, exported graph
    python benchmarks/profile_layers.py --training-graph      # with the MSF branch
    python benchmarks/profile_layers.py --preset tiny --image-size 64
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def kind_of(name: str) -> str:
    """Groups layer names: enblock2_1 -> enblock, transformer_0 -> transformer, ..."""
    return re.sub(r"[\d_]+$", "", name) or name


def profile(model, x, repeats: int):
    times = collections.defaultdict(list)

    def operation_fn(op):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = op(*args, **kwargs)
            if hasattr(out, "numpy"):
                out.numpy()
            elif isinstance(out, (list, tuple, dict)):
                for v in (out.values() if isinstance(out, dict) else out):
                    if hasattr(v, "numpy"):
                        v.numpy()
            times[op.name].append(time.perf_counter() - t)
            return out
        return call

    for _ in range(repeats + 1):
        t = time.perf_counter()
        model._run_through_graph(x, operation_fn=operation_fn)
        times["<total>"].append(time.perf_counter() - t)
    return {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--training-graph", action="store_true",
                   help="profile the backbone with the MSF branch (what training runs forward)")
    args = p.parse_args(argv)
    import numpy as np

    from missu_keras import MISSU

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import cpu_model

    overrides = {"image_size": args.image_size} if args.image_size else {}
    model = MISSU.from_preset(args.preset, **overrides)
    graph = model.backbone if args.training_graph else model.inference_model()
    cfg = model.config
    x = np.random.default_rng(0).standard_normal((1, *cfg.image_size, cfg.in_channels)).astype("float32")
    per_layer = profile(graph, x, args.repeats)
    total = per_layer.pop("<total>")
    per_kind = collections.defaultdict(float)
    for name, seconds in per_layer.items():
        per_kind[kind_of(name)] += seconds
    print(f"MISSU {args.preset} {'training' if args.training_graph else 'exported'} graph, input "
          f"{'x'.join(map(str, x.shape))}, {cpu_model()}, {os.cpu_count()} threads; eager pass "
          f"{total:.2f} s (sum of layers {sum(per_layer.values()):.2f} s)")
    print(f"{'layer':<26} {'seconds':>8} {'share':>6}")
    for name, seconds in sorted(per_layer.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{name:<26} {seconds:>8.3f} {seconds / total:>6.1%}")
    print(f"\n{'kind':<26} {'seconds':>8} {'share':>6}")
    for name, seconds in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"{name:<26} {seconds:>8.3f} {seconds / total:>6.1%}")
    print(json.dumps({"preset": args.preset, "input_shape": list(x.shape), "total_s": total,
                      "training_graph": args.training_graph, "per_layer_s": per_layer,
                      "per_kind_s": dict(per_kind)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

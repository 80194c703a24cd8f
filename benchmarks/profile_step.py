"""Where a forward pass or a training step spends its time and memory, from a
``tf.profiler`` trace of one step (after a warm-up step).

Prints two tables: time per TensorFlow op type (summed over the executor's threads, so
ops that ran at the same time both count), and the tensors TensorFlow's allocator held at
the moment of its peak use during the step, grouped by the layer that allocated them (from
the trace's MemoryAllocation events). The last line is one JSON object. The trace stays in
``--logdir`` for TensorBoard's profile plugin. benchmarks/NOTES.md (sections 7 and 8) reports
what this found for the brats preset.

    python benchmarks/profile_step.py                         # brats training step, 128^3
    python benchmarks/profile_step.py --mode forward          # exported graph forward
    python benchmarks/profile_step.py --preset tiny --image-size 32
    python benchmarks/profile_step.py --mode forward --precision mixed_bfloat16 --by-op
"""

from __future__ import annotations

import argparse
import bisect
import collections
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def read_trace(logdir):
    """(op time per op type, [(time, kind, stats, enclosing op name)] of memory events,
    op time per op name "layer/.../op:OpType")."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    op_time, by_name = collections.Counter(), collections.Counter()
    memory_events = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            ops = []
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # op events are "layer/.../op_name:OpType"
                if ":" in name and "/" in name.split(":")[0]:
                    ops.append((event.offset_ps, event.offset_ps + event.duration_ps, name))
                    op_time[name.rsplit(":", 1)[1]] += event.duration_ps / 1e12
                    by_name[name] += event.duration_ps / 1e12
            ops.sort()
            starts = [op[0] for op in ops]
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].name
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {stat_names[s.metadata_id]: (s.str_value or s.uint64_value or s.int64_value)
                         for s in event.stats}
                i = bisect.bisect_right(starts, event.offset_ps) - 1
                owner = ops[i][2] if i >= 0 and ops[i][1] >= event.offset_ps else "(outside an op)"
                memory_events.append((line.timestamp_ns * 1000 + event.offset_ps, kind, stats, owner))
    memory_events.sort(key=lambda e: e[0])
    return op_time, memory_events, by_name


def live_at_peak(memory_events):
    """(peak bytes in use, {layer: bytes} of the allocations live at that moment)."""
    live, best, best_live = {}, 0, {}
    for _, kind, stats, owner in memory_events:
        if kind == "MemoryAllocation":
            live[stats.get("addr")] = (stats.get("allocation_bytes", 0), owner)
        else:
            live.pop(stats.get("addr"), None)
        in_use = stats.get("bytes_allocated", 0)
        if in_use > best:
            best, best_live = in_use, dict(live)
    per_layer = collections.Counter()
    for size, owner in best_live.values():
        parts = owner.rsplit(":", 1)[0].split("/")
        depth = 3 if parts[0] == "gradient_tape" else 2  # model/layer, or gradient_tape/model/layer
        per_layer["/".join(parts[:depth])] += size
    return best, per_layer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--mode", choices=("train", "forward"), default="train")
    p.add_argument("--logdir", default=None, help="where the trace goes (default: a temporary folder)")
    p.add_argument("--top", type=int, default=20, help="rows per table")
    p.add_argument("--precision", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16")
    p.add_argument("--by-op", action="store_true",
                   help="also list the slowest single ops by name (layer/op), not only by type")
    args = p.parse_args(argv)

    from missu_keras import MISSU, paper_optimizer  # first: it turns oneDNN on before TensorFlow loads

    import keras
    import numpy as np
    import tensorflow as tf

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    model = MISSU.from_preset(args.preset, **overrides)
    cfg = model.config
    x = np.random.default_rng(0).standard_normal((1, *cfg.image_size, cfg.in_channels)).astype("float32")
    y = np.random.default_rng(1).integers(0, cfg.num_classes, (1, *cfg.image_size)).astype("int32")
    if args.mode == "train":
        model.compile(optimizer=paper_optimizer(1000))

        def step():
            model.train_on_batch(x, y)
    else:
        net = model.inference_model()
        forward = tf.function(lambda t: net(t, training=False))

        def step():
            forward(x).numpy()

    step()  # trace + warm-up
    logdir = args.logdir or tempfile.mkdtemp(prefix="missu_profile_")
    try:  # the allocator keeps statistics with oneDNN's allocator only
        tf.config.experimental.reset_memory_stats("CPU:0")
    except ValueError:
        pass
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    try:
        allocator_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except ValueError:
        allocator_peak = float("nan")

    op_time, memory_events, by_name = read_trace(logdir)
    peak, per_layer = live_at_peak(memory_events)
    total = sum(op_time.values()) or 1.0
    print(f"MISSU {args.preset} {args.mode}, input {'x'.join(map(str, x.shape))}: "
          f"{seconds:.2f} s under the profiler, allocator peak {allocator_peak / 2**30:.2f} GiB; trace in {logdir}")
    print(f"{'op type':<40} {'op seconds':>10} {'share':>6} ")
    for name, value in op_time.most_common(args.top):
        print(f"{name:<40} {value:>10.3f} {100 * value / total:>5.1f}%")
    if args.by_op:
        print(f"{'op (layer/.../name:type)':<100} {'seconds':>8}")
        for name, value in by_name.most_common(args.top):
            print(f"{name:<100} {value:>8.3f}")
    print(f"tensors live at the traced peak ({peak / 2**30:.2f} GiB), by layer:")
    for name, size in per_layer.most_common(args.top):
        print(f"  {size / 2**30:8.3f} GiB  {name}")
    print(json.dumps({"preset": args.preset, "mode": args.mode, "precision": args.precision, "input_shape": list(x.shape),
                      "seconds_under_profiler": seconds, "allocator_peak_bytes": None if allocator_peak != allocator_peak else int(allocator_peak),
                      "op_seconds": dict(op_time.most_common(args.top)),
                      "live_at_peak_bytes": {k: int(v) for k, v in per_layer.most_common(args.top)},
                      "logdir": logdir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

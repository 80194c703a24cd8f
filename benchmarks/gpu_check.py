"""GPU check, one command (issue 17): training steps, whole-case inference through the
Python path and the exported SavedModel, a table and one JSON object as the last line.

(a) Training: the preset (brats, 4 x 128^3) at batch 2 on a crop of a generated BraTS-style
    case (`missu_keras.data.write_synthetic_brats`, preprocessed by the brats contract), with
    MSF and self-distillation as in training, for each precision (mixed_float16, float32)
    with and without ``jit_compile``: one warm-up step (trace / XLA compile, timed apart),
    then ``--steps`` timed steps. Reported: median step time, images per second, peak GPU
    memory (``tf.config.experimental.get_memory_info("GPU:0")["peak"]``, reset before each
    configuration) and the fraction of the GPU's dense fp16/bf16 tensor peak (`GPU_PEAKS`,
    by device name; another GPU: "unknown peak") at 3 x the training graph's forward FLOPs
    (`missu_keras.complexity`) per image.
(b) Whole case: a generated 240 x 240 x 155 case through `Segmenter` (float32, overlap 0.5,
    Gaussian) and through the exported SavedModel's ``segment_volume`` signature (loaded
    back with ``tf.saved_model.load``); each timed on its second call; the labels must agree
    (exactly, or in >= 99.9 % of the voxels where GPU kernels are not bitwise deterministic).
(c) The table, then one JSON line.

On a machine without a GPU it runs the tiny preset at tiny sizes (32^3 patches, a 48 x 48 x
32 case, one step, float32 only: float16 Conv3D is emulated on CPU and XLA compiles 3D
convolutions slowly there, so mixed_float16 and jit_compile rows say "skipped") and says
"CPU, tiny preset: not a GPU measurement"; CI runs it that way (tests/test_benchmarks.py).

    python benchmarks/gpu_check.py                   # GPU: brats, 2 precisions x jit off/on
    python benchmarks/gpu_check.py --steps 5 --skip-jit
    python benchmarks/gpu_check.py --preset tiny --image-size 32 --shape 48 48 32 --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench_model import cpu_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Dense (no sparsity) fp16 / bf16 tensor-core peaks in TFLOP/s, from the vendors' data
# sheets; the first name contained in TensorFlow's device name wins (so "H100 PCIe" is
# listed before "H100").
GPU_PEAKS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
    ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0),
)
CPU_NOTE = "CPU, tiny preset: not a GPU measurement"


def gpu_peak(device_name: str):
    """``(name, TFLOP/s)`` of the first `GPU_PEAKS` entry in ``device_name``, or ``None``."""
    for name, peak in GPU_PEAKS:
        if name.lower() in device_name.lower():
            return name, peak
    return None


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="default: brats on a GPU, tiny on CPU")
    p.add_argument("--image-size", type=int, default=None, help="patch side (default: preset's; CPU: 32)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (GPU 3, CPU 1)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("H", "W", "D"),
                   help="the whole case (GPU: 240 240 155; CPU: 48 48 32)")
    p.add_argument("--precisions", nargs="+", default=None,
                   help="training precisions (GPU: mixed_float16 float32; CPU: float32)")
    p.add_argument("--skip-jit", action="store_true", help="no jit_compile runs (never run on CPU)")
    p.add_argument("--only-jit", action="store_true", help="only the jit_compile runs (GPU)")
    p.add_argument("--skip-savedmodel", action="store_true", help="no export / SavedModel run")
    return p.parse_args(argv)


def _machine():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else None
    for gpu in gpus:  # grow as needed, so that "peak" is what the runs used
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was initialised already (e.g. called twice in one process)
            pass
    return {"gpu": name, "gpus": len(gpus), "cpu": cpu_model(), "threads": os.cpu_count(),
            "tensorflow": tf.__version__, "peak_tflops": (gpu_peak(name) or (None, None))[1] if name else None}


def _settings(args, machine):
    on_gpu = machine["gpus"] > 0
    preset = args.preset or ("brats" if on_gpu else "tiny")
    return {
        "preset": preset, "image_size": args.image_size or (None if on_gpu else 32),
        "batch": args.batch, "steps": args.steps or (3 if on_gpu else 1),
        "shape": list(args.shape or ((240, 240, 155) if on_gpu else (48, 48, 32))),
        "precisions": args.precisions or (["mixed_float16", "float32"] if on_gpu else ["float32"]),
        "jit": [False] if (args.skip_jit or not on_gpu) else [True] if args.only_jit else [False, True],
        "note": None if on_gpu else CPU_NOTE,
    }


def _training_batch(pre, patch, batch):
    """``batch`` crops of ``patch`` from the middle of a preprocessed case (zero-padded where
    the case is smaller), the second and later ones flipped."""
    import numpy as np

    image, classes = pre.image, pre.classes
    pad = [(max(0, (p - s + 1) // 2), max(0, p - s - (p - s + 1) // 2)) for s, p in zip(image.shape[:3], patch)]
    image = np.pad(image, pad + [(0, 0)])
    classes = np.pad(classes, pad)
    start = [(s - p) // 2 for s, p in zip(image.shape[:3], patch)]
    box = tuple(slice(b, b + p) for b, p in zip(start, patch))
    xs = [image[box], *[np.flip(image[box], axis=i % 3) for i in range(batch - 1)]]
    ys = [classes[box], *[np.flip(classes[box], axis=i % 3) for i in range(batch - 1)]]
    return np.stack(xs).astype("float32"), np.stack(ys).astype("int32")


def _train_config(settings, precision, jit, x, y, on_gpu):
    """One training configuration: warm-up step, then timed steps; peak GPU memory."""
    import keras
    import numpy as np
    import tensorflow as tf

    from missu_keras import MISSU, paper_optimizer

    keras.backend.clear_session()
    overrides = {"image_size": settings["image_size"]} if settings["image_size"] else {}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = MISSU.from_preset(settings["preset"], **overrides)
        model.compile(optimizer=paper_optimizer(1000), jit_compile=jit)
    finally:
        keras.config.set_dtype_policy(previous)
    if on_gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    t = time.perf_counter()
    model.train_on_batch(x, y)
    warmup = time.perf_counter() - t
    times = []
    for _ in range(settings["steps"]):
        t = time.perf_counter()
        loss = model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    step = float(np.median(times))
    out = {"step_s": step, "images_per_s": len(x) / step, "warmup_s": warmup,
           "loss_finite": bool(np.all(np.isfinite(np.asarray(loss, dtype="float64"))))}
    if on_gpu:
        out["peak_gpu_gb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1024 ** 3
    return out


def run_training(settings, machine, pre):
    """(a): every precision x jit configuration; their FLOP rates against the GPU's peak."""
    from missu_keras import MISSU
    from missu_keras.complexity import complexity_report

    overrides = {"image_size": settings["image_size"]} if settings["image_size"] else {}
    model = MISSU.from_preset(settings["preset"], **overrides)
    report = complexity_report(model)
    patch = tuple(report["input_shape"][1:-1])
    x, y = _training_batch(pre, patch, settings["batch"])
    flops_per_step = 3 * report["training"]["flops"] * settings["batch"]
    results = {}
    for precision in ("mixed_float16", "float32"):
        for jit in (False, True):
            key = f"train_{precision}{'_jit' if jit else ''}"
            if precision not in settings["precisions"]:
                results[key] = {"skipped": "not asked for" if machine["gpus"] else
                                "CPU: float16 Conv3D is emulated there (slow)"}
            elif jit not in settings["jit"]:
                results[key] = {"skipped": "not asked for" if machine["gpus"] else
                                "CPU: XLA compiles 3D convolutions slowly there"}
            else:
                try:
                    results[key] = _train_config(settings, precision, jit, x, y, machine["gpus"] > 0)
                except Exception as exc:  # one failing configuration must not hide the others
                    results[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            r = results[key]
            if "step_s" in r:
                r["tflops_per_s"] = flops_per_step / r["step_s"] / 1e12
                r["fraction_of_peak"] = (r["tflops_per_s"] / machine["peak_tflops"]
                                         if machine["peak_tflops"] else None)
            print(f"  {key}: {r}", file=sys.stderr, flush=True)
    return report, results


def run_whole_case(settings, loaded, skip_savedmodel):
    """(b): one case through the Segmenter and the exported SavedModel; labels compared."""
    import numpy as np
    import tensorflow as tf

    from missu_keras import MISSU
    from missu_keras.export import export_savedmodel
    from missu_keras.inference import Segmenter

    overrides = {"image_size": settings["image_size"]} if settings["image_size"] else {}
    model = MISSU.from_preset(settings["preset"], **overrides)
    segmenter = Segmenter.from_model(model)
    segmenter.segment(loaded)  # trace + warm-up
    t = time.perf_counter()
    expected = segmenter.segment(loaded).labels
    out = {"case_shape": list(loaded.image.shape[:3]), "python_s": time.perf_counter() - t}
    if skip_savedmodel:
        return out
    folder = tempfile.mkdtemp(prefix="gpu_check_export_")
    try:
        t = time.perf_counter()
        result = export_savedmodel(model, folder, preset=settings["preset"], log=None)
        out["export_s"] = time.perf_counter() - t
        segment = tf.saved_model.load(str(result.path)).signatures["segment_volume"]
        volume = tf.constant(loaded.image)
        segment(volume=volume)  # warm-up
        t = time.perf_counter()
        got = segment(volume=volume)["labels"].numpy()
        out["savedmodel_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    agree = float(np.mean(got == expected)) if got.shape == expected.shape else 0.0
    out.update(labels_agree_fraction=agree, labels_identical=agree == 1.0, agree=agree >= 0.999)
    return out


def _print_table(settings, machine, report, training, case):
    where = f"GPU: {machine['gpu']}" if machine["gpus"] else CPU_NOTE
    peak = (f"{machine['peak_tflops']:.0f} TFLOP/s dense fp16/bf16" if machine["peak_tflops"]
            else "unknown peak")
    print(f"gpu_check: {where}; preset {settings['preset']}, patch {tuple(report['input_shape'][1:-1])}, "
          f"batch {settings['batch']}, {settings['steps']} timed step(s); TF {machine['tensorflow']}, "
          f"{machine['cpu']}, {machine['threads']} threads; peak: {peak}")
    print(f"{'training configuration':<28} {'step s':>8} {'img/s':>8} {'warm-up s':>10} "
          f"{'peak GPU GB':>12} {'TFLOP/s':>8} {'of peak':>8}")
    for key, r in training.items():
        if "step_s" not in r:
            print(f"{key:<28} {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}")
            continue
        gb = f"{r['peak_gpu_gb']:.2f}" if "peak_gpu_gb" in r else "-"
        frac = f"{100 * r['fraction_of_peak']:.1f}%" if r.get("fraction_of_peak") is not None else "unknown"
        print(f"{key:<28} {r['step_s']:>8.3f} {r['images_per_s']:>8.2f} {r['warmup_s']:>10.1f} "
              f"{gb:>12} {r['tflops_per_s']:>8.2f} {frac:>8}")
    line = f"whole case {tuple(case['case_shape'])}: Python path (Segmenter) {case['python_s']:.2f} s"
    if "savedmodel_s" in case:
        line += (f", SavedModel segment_volume {case['savedmodel_s']:.2f} s (export {case['export_s']:.1f} s); "
                 f"labels agree in {100 * case['labels_agree_fraction']:.3f} % of voxels: "
                 f"{'OK' if case['agree'] else 'MISMATCH'}")
    print(line)


def main(argv=None):
    args = _parse(argv)
    from missu_keras.data import PreprocessingConfig, find_brats_cases, preprocess_case, write_synthetic_brats

    machine = _machine()
    settings = _settings(args, machine)
    data = tempfile.mkdtemp(prefix="gpu_check_data_")
    try:
        write_synthetic_brats(data, num_cases=1, seed=0, shape=tuple(settings["shape"]))
        loaded = find_brats_cases(data)[0].load()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    pre = preprocess_case(loaded, PreprocessingConfig.brats())
    report, training = run_training(settings, machine, pre)
    case = run_whole_case(settings, loaded, args.skip_savedmodel)
    _print_table(settings, machine, report, training, case)
    print(json.dumps({"note": settings["note"], "machine": machine, "settings": settings,
                      "input_shape": report["input_shape"],
                      "training_flops_per_image": 3 * report["training"]["flops"],
                      "training": training, "whole_case": case}))
    ok = case.get("agree", True) and all("error" not in r for r in training.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

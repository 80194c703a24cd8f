"""Whole-case inference benchmark: time and peak memory to segment one full-size
240 x 240 x 155 BraTS-style case (generated) with the brats preset, from the loaded
NIfTI volumes to labels in the original grid (preprocessing, Gaussian sliding window
with overlap 0.5, argmax, uncrop), with and without flip TTA, float32 and
mixed_bfloat16. Weights are random: speed does not depend on them.

A case that needs resampling (issue 15) runs too, float32 without TTA: a generated
256 x 256 x 60 case stored at 0.8 x 0.8 x 3 mm (LPS), which the brats contract (LPS,
1 mm) resamples to 1 mm after the crop and whose probabilities go back to the 0.8 x 0.8 x
3 mm box. Its row reports the time of the two resampling steps alone (each timed on its
own on the same sizes, compiled, median of 3) and their share of the whole-case time.

Each configuration runs in its own Python process so that its peak memory is its own.
Prints a table, then one JSON object as the last line.

    python benchmarks/bench_inference.py                      # all configurations
    python benchmarks/bench_inference.py --skip-tta --skip-bf16
    python benchmarks/bench_inference.py --skip-tta --skip-bf16 --only-resampled
    python benchmarks/bench_inference.py --preset tiny --image-size 64 --shape 96 96 64
    python benchmarks/bench_inference.py --skip-tta --skip-bf16 --skip-resampled --compare-monai

``--compare-monai`` (issue 17) also segments the same generated case with MONAI's
`sliding_window_inference` over UNETR (PyTorch; bench_model.py's --compare-unetr settings,
built for the same ROI as the MISSU patch), at the same overlap, Gaussian weighting,
windows per call and thread count, followed by the argmax, in its own process (one
warm-up forward on one ROI first). MONAI gets the whole case as loaded (the MONAI BraTS
tutorial's validation crops nothing); MISSU's pipeline crops the foreground first, so the
two window counts are both reported. The table and JSON give both times and the ratio
MISSU float32 / MONAI (goal: at most 0.6). Where torch, monai or einops is missing the row
says "skipped".

Targets: (issue 4) 2-core machine, float32 without TTA: under 60 s and 4 GB; (issue 15)
the resampling adds at most 20 % to the whole-case time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from bench_model import UNETR_BUILD, cpu_model

CHILD = r"""
import dataclasses, json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
args = json.loads(sys.argv[1])
from missu_keras import MISSU
from missu_keras.data import PreprocessingConfig, find_brats_cases, preprocess_case
from missu_keras.prediction import Segmenter
overrides = {"image_size": args["image_size"]} if args["image_size"] else {}
model = MISSU.from_preset(args["preset"], **overrides)
patch = model.config.image_size
segmenter = Segmenter(model.inference_model(), PreprocessingConfig.brats(patch_size=patch),
                      overlap=args["overlap"], flip_tta=args["tta"], precision=args["precision"],
                      sw_batch_size=args["sw_batch_size"])
case = find_brats_cases(args["data"])[0]
loaded = case.load()
if args["spacing"]:  # the same voxels, stored at another spacing (LPS, as BraTS)
    affine = np.diag([-args["spacing"][0], -args["spacing"][1], args["spacing"][2], 1.0])
    loaded = dataclasses.replace(loaded, affine=affine, spacing=tuple(args["spacing"]))
pre = preprocess_case(loaded, segmenter.preprocessing)
crop = pre.image.shape[:3]
windows = len(segmenter.inferer.window_slices(crop))
# Trace + warm-up: the same call on a one-window volume (the pipeline is traced once
# for every volume size; the window loop and the model run in that graph).
warm = np.zeros((*patch, model.config.in_channels), "float32")
warm[1:-1, 1:-1, 1:-1] = 1.0
t = time.perf_counter()
segmenter.segment(dataclasses.replace(loaded, image=warm))
warmup = time.perf_counter() - t
t = time.perf_counter()
labels = segmenter.segment(loaded).labels
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
out = {"seconds": seconds, "warmup_seconds": warmup, "peak_gb": peak, "windows": windows,
       "model_calls": windows * (8 if args["tta"] else 1), "crop": list(crop),
       "labels": sorted(int(v) for v in np.unique(labels))}
if args["spacing"]:  # the two resampling steps of the pipeline, alone, on the same sizes
    import tensorflow as tf
    from missu_keras.data.geometry import resample_tensor
    box, grid = pre.box.shape, crop
    image = tf.random.uniform([*box, model.config.in_channels])
    probs = tf.random.uniform([*grid, model.config.num_classes])
    step = tf.function(lambda v, s: resample_tensor(v, s, "linear"), autograph=False,
                       reduce_retracing=True)
    timings = []
    for volume, size in ((image, grid), (probs, box)):
        step(volume, tf.constant(size)).numpy()  # trace + warm-up
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            step(volume, tf.constant(size)).numpy()
            runs.append(time.perf_counter() - t)
        timings.append(sorted(runs)[1])
    out.update(box=list(box), resample_image_seconds=timings[0],
               resample_probabilities_seconds=timings[1], resample_seconds=sum(timings),
               resample_share=sum(timings) / seconds,
               resample_added=sum(timings) / (seconds - sum(timings)))
print(json.dumps(out))
"""


MONAI_CHILD = UNETR_BUILD + r"""
import math
from monai.inferers import sliding_window_inference
volume = np.load(args["volume"])  # (H, W, D, C), as loaded
x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, -1, 0)[None]))
# windows per axis as MONAI places them: a step of int(roi * (1 - overlap)), at least 1
steps = [max(int(r * (1 - args["overlap"])), 1) for r in size]
windows = math.prod(1 if n <= r else math.ceil((n - r) / s) + 1 for n, r, s in zip(x.shape[2:], size, steps))
with torch.inference_mode():
    net(torch.zeros((1, args["in_channels"], *size)))  # warm-up
    t = time.perf_counter()
    probs = sliding_window_inference(x, roi_size=size, sw_batch_size=args["sw_batch_size"], predictor=net,
                                     overlap=args["overlap"], mode="gaussian")
    labels = probs.argmax(1)
    seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
print(json.dumps({"seconds": seconds, "peak_gb": peak, "windows": windows, "model_calls": windows,
                  "input_shape": list(x.shape), "roi": list(size), **about}))
"""


def compare_monai(args, volume_file: str) -> dict:
    """MONAI sliding_window_inference + UNETR on the saved case volume (own process)."""
    from missu_keras.presets import get_preset_config

    preset = get_preset_config(args.preset)
    roi = [args.image_size] * 3 if args.image_size else list(preset["image_size"])
    spec = {"img_size": roi, "in_channels": preset["in_channels"], "out_channels": preset["num_classes"],
            "threads": os.cpu_count(), "overlap": args.overlap, "sw_batch_size": args.sw_batch_size,
            "volume": volume_file}
    proc = subprocess.run([sys.executable, "-c", MONAI_CHILD, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_monai(monai: dict, ratio) -> None:
    key = "monai_unetr_float32"
    if "seconds" in monai:
        print(f"{key:<24} {monai['seconds']:>9.1f} {monai['peak_gb']:>8.2f} {monai['model_calls']:>12}")
        print(f"MONAI {monai['monai']} sliding_window_inference + UNETR (torch {monai['torch']}, "
              f"{monai['threads']} threads, ROI {tuple(monai['roi'])}, Gaussian) on the whole case "
              f"{tuple(monai['input_shape'][2:])}: params {monai['params'] / 1e6:.2f} M")
    elif "skipped" in monai:
        print(f"{key:<24} skipped: {monai['skipped']} ({monai['reason']})")
    else:
        print(f"{key:<24} error: {monai['error']}")
    if ratio is not None:
        print(f"MISSU float32 / MONAI UNETR whole-case time ratio: {ratio:.2f} (goal <= 0.6)")


def _report(args, machine: dict, results: dict, monai=None) -> None:
    """The table, the resampling line and the last-line JSON."""
    first = next((r for r in results.values() if "error" not in r), {})
    print(f"MISSU preset {args.preset}, case {tuple(args.shape)} (crop {first.get('crop')}, "
          f"{first.get('windows')} windows, overlap {args.overlap}), {machine['cpu']}, "
          f"{machine['threads']} threads, TF {machine['tensorflow']}, GPUs: {machine['gpus']}")
    print(f"{'configuration':<24} {'seconds':>9} {'peak GB':>8} {'model calls':>12} "
          f"{'resampling s':>13} {'share':>6}")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<24} error: {r['error']}")
        else:
            extra = (f" {r['resample_seconds']:>13.2f} {100 * r['resample_share']:>5.1f}%"
                     if "resample_seconds" in r else "")
            print(f"{key:<24} {r['seconds']:>9.1f} {r['peak_gb']:>8.2f} {r['model_calls']:>12}{extra}")
    resampled = {k: r for k, r in results.items() if "resample_seconds" in r}
    for key, r in resampled.items():
        print(f"{key}: case {tuple(args.resampled_shape)} at {tuple(args.resampled_spacing)} mm, "
              f"box {tuple(r['box'])} -> {tuple(r['crop'])} at 1 mm; resampling adds "
              f"{100 * r['resample_added']:.1f} % to the rest of the case (target <= 20 %)")
    ratio = None
    if monai is not None:
        missu = results.get("float32", {})
        ratio = missu["seconds"] / monai["seconds"] if "seconds" in missu and "seconds" in monai else None
        _print_monai(monai, ratio)
    print(json.dumps({"preset": args.preset, "shape": list(args.shape), "overlap": args.overlap,
                      "resampled_shape": list(args.resampled_shape),
                      "resampled_spacing": list(args.resampled_spacing),
                      "machine": machine, "results": results, "monai": monai,
                      "ratio_missu_over_monai": ratio}))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="brats")
    p.add_argument("--image-size", type=int, default=None, help="override the patch size")
    p.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), metavar=("H", "W", "D"))
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch-size", type=int, default=1)
    p.add_argument("--skip-tta", action="store_true", help="skip the 8-flip TTA runs (8x longer)")
    p.add_argument("--skip-bf16", action="store_true",
                   help="skip mixed_bfloat16 (slow where the CPU has no bf16 units, e.g. AVX2-only)")
    p.add_argument("--resampled-shape", type=int, nargs=3, default=(256, 256, 60),
                   metavar=("H", "W", "D"), help="the case that needs resampling (default 256 256 60)")
    p.add_argument("--resampled-spacing", type=float, nargs=3, default=(0.8, 0.8, 3.0),
                   metavar=("X", "Y", "Z"), help="its voxel spacing in mm (default 0.8 0.8 3)")
    p.add_argument("--skip-resampled", action="store_true", help="skip the case that needs resampling")
    p.add_argument("--only-resampled", action="store_true", help="run only the case that needs resampling")
    p.add_argument("--compare-monai", action="store_true",
                   help="also run MONAI's sliding_window_inference with UNETR on the same case, ROI, "
                        "overlap, Gaussian mode and threads (needs: pip install monai torch einops)")
    return p.parse_args(argv)


def _run_configs(args, data: str) -> dict:
    """Each MISSU configuration in its own process."""
    from missu_keras.data import write_synthetic_brats

    configs = [(tta, precision, None) for tta in ([False] if args.skip_tta else [False, True])
               for precision in (["float32"] if args.skip_bf16 else ["float32", "mixed_bfloat16"])]
    configs = [] if args.only_resampled else configs
    if not args.skip_resampled:
        resampled = tempfile.mkdtemp(prefix="bench_inference_resampled_")
        write_synthetic_brats(resampled, num_cases=1, seed=0, shape=tuple(args.resampled_shape))
        configs.append((False, "float32", resampled))
    results = {}
    for tta, precision, case_data in configs:
        key = f"{precision}{'_tta' if tta else ''}{'_resampled' if case_data else ''}"
        spec = json.dumps({"preset": args.preset, "image_size": args.image_size,
                           "data": case_data or data, "overlap": args.overlap, "tta": tta,
                           "precision": precision, "sw_batch_size": args.sw_batch_size,
                           "spacing": list(args.resampled_spacing) if case_data else None})
        proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True)
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            results[key] = {"error": lines[-1] if lines else "failed"}
        else:
            results[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {key}: {results[key]}", file=sys.stderr, flush=True)
    return results


def main(argv=None):
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from missu_keras.data import find_brats_cases, write_synthetic_brats

    data = tempfile.mkdtemp(prefix="bench_inference_")
    write_synthetic_brats(data, num_cases=1, seed=0, shape=tuple(args.shape))
    results = _run_configs(args, data)
    monai = None
    if args.compare_monai:
        volume_file = os.path.join(tempfile.mkdtemp(prefix="bench_inference_monai_"), "volume.npy")
        np.save(volume_file, find_brats_cases(data)[0].load().image)
        monai = compare_monai(args, volume_file)
        print(f"  monai_unetr_float32: {monai}", file=sys.stderr, flush=True)

    import tensorflow as tf

    machine = {"cpu": cpu_model(), "threads": os.cpu_count(), "tensorflow": tf.__version__,
               "gpus": len(tf.config.list_physical_devices("GPU"))}
    _report(args, machine, results, monai)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Data-layer throughput: writing synthetic cases, reading + preprocessing full-size
cases, and training crops per second.

``python benchmarks/bench_data.py [--cases N] [--crops N] [--patch P] [--batch B]``
prints a table, then (last line) one JSON object with ``synthetic_cases_per_second``,
``cases_per_second`` and ``crops_per_second``. Synthetic full-size BraTS cases (240 x 240
x 155) are written to a temporary folder (timed: the tests used to hold this to a
wall-clock bound; timings belong here), read and preprocessed into a cache, then
``make_training_dataset`` draws 128^3 x 4 crops with all BraTS augmentations.
Target (issue 3): at least 10 crops per second on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Optional, Sequence

from missu_keras.data.brats import find_brats_cases
from missu_keras.data.cache import build_cache
from missu_keras.data.pipeline import AugmentationConfig, make_training_dataset
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.data.synthetic import FULL_BRATS_SHAPE, write_synthetic_brats


def run_benchmark(
    num_cases: int = 2,
    num_crops: int = 40,
    patch_size: int = 128,
    batch_size: int = 2,
    shape: Sequence[int] = FULL_BRATS_SHAPE,
    workers: int = 1,
    work_dir: Optional[str] = None,
) -> dict:
    """Times case reading + preprocessing and training-crop generation.

    Returns a dict with ``cases_per_second``, ``crops_per_second`` and the settings.
    """
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        src, cache_dir = os.path.join(tmp, "src"), os.path.join(tmp, "cache")
        t0 = time.perf_counter()
        write_synthetic_brats(src, num_cases=num_cases, seed=0, shape=shape)
        synth_s = time.perf_counter() - t0
        cases = find_brats_cases(src)
        config = PreprocessingConfig.brats(patch_size=patch_size)
        t0 = time.perf_counter()
        cache = build_cache(cases, cache_dir, config, workers=workers, progress=False).cache
        read_s = time.perf_counter() - t0
        ds = make_training_dataset(cache, batch_size=batch_size, seed=0, augmentation=AugmentationConfig.brats())
        it = iter(ds)
        next(it)  # warm-up: graph tracing, first file opens
        n_batches = max(1, -(-num_crops // batch_size))
        t0 = time.perf_counter()
        for _ in range(n_batches):
            x, _ = next(it)
        x.numpy()
        crop_s = time.perf_counter() - t0
    return {
        "batch_size": batch_size,
        "cases_per_second": round(num_cases / read_s, 3),
        "synthetic_cases_per_second": round(num_cases / synth_s, 3),
        "crops_per_second": round(n_batches * batch_size / crop_s, 2),
        "num_cases": num_cases,
        "num_crops": n_batches * batch_size,
        "patch_size": [patch_size] * 3,
        "shape": list(shape),
        "workers": workers,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=list(FULL_BRATS_SHAPE))
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--crops", type=int, default=40)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    result = run_benchmark(args.cases, args.crops, args.patch, args.batch, shape=tuple(args.shape),
                           workers=args.workers)
    shape = "x".join(map(str, result["shape"]))
    print(f"{'measurement':<52} {'per second':>10}")
    print(f"{'write synthetic BraTS cases (' + shape + ')':<52} {result['synthetic_cases_per_second']:>10}")
    print(f"{'read + preprocess cases into the cache':<52} {result['cases_per_second']:>10}")
    print(f"{'training crops (' + str(args.patch) + '^3 x 4, all augmentations)':<52} "
          f"{result['crops_per_second']:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

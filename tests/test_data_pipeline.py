"""tf.data pipelines: shapes, determinism, augmentations, crops, over-sampling, tf.distribute."""

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from missu_keras.data import (
    AugmentationConfig,
    PreprocessingConfig,
    build_cache,
    chaos_split,
    find_brats_cases,
    find_chaos_cases,
    make_training_dataset,
    make_validation_dataset,
    restore_labels,
    sample_crop_start,
    write_synthetic_brats,
    write_synthetic_chaos,
)
from missu_keras.data.pipeline import _resample_patch, crop_start_range, extract_patch

PATCH = (16, 16, 16)
NO_AUG = AugmentationConfig.none()


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    write_synthetic_brats(src, num_cases=3, seed=9, shape=(48, 48, 32))
    cases = find_brats_cases(src)
    cache = build_cache(cases, tmp_path_factory.mktemp("cache"), PreprocessingConfig.brats(patch_size=PATCH),
                        progress=False).cache
    return cases, cache


def _take(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in itertools.islice(iter(ds), n)]


def test_shapes_dtypes_and_options(brats):
    _, cache = brats
    ds = make_training_dataset(cache, batch_size=2, seed=0)
    assert ds.element_spec[0].shape == (2, 16, 16, 16, 4) and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape == (2, 16, 16, 16) and ds.element_spec[1].dtype == tf.int32
    opts = ds.options()
    assert opts.deterministic is True
    assert opts.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    (x, y), = _take(ds, 1)
    assert np.isfinite(x).all() and set(np.unique(y).tolist()) <= {0, 1, 2, 3}
    one_epoch = make_training_dataset(cache, batch_size=1, seed=0, repeat=False, patch_size=(8, 8, 8))
    assert sum(1 for _ in one_epoch) == len(cache) == 3


def test_same_seed_same_batches_different_seed_different(brats):
    _, cache = brats
    a = _take(make_training_dataset(cache, batch_size=2, seed=123), 4)
    b = _take(make_training_dataset(cache, batch_size=2, seed=123, num_parallel_calls=1), 4)
    c = _take(make_training_dataset(cache, batch_size=2, seed=124), 4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_every_case_once_per_epoch(brats):
    _, cache = brats
    # Whole cases fit in a 64^3 patch without augmentation: identify each crop's case.
    ds = make_training_dataset(cache, batch_size=1, patch_size=(64, 64, 64), augmentation=NO_AUG, seed=5)
    totals = {cid: float(np.abs(cache.load_image(cid)).sum()) for cid in cache.case_ids}
    seen = []
    for x, _ in _take(ds, 6):
        s = float(np.abs(x).sum())
        seen.append(min(totals, key=lambda cid: abs(totals[cid] - s)))
    assert sorted(seen[:3]) == sorted(cache.case_ids) and sorted(seen[3:]) == sorted(cache.case_ids)


def test_flips_apply_identically_to_image_and_label(brats):
    _, cache = brats
    flips_only = AugmentationConfig(intensity_scale=None, intensity_shift=None)
    plain = _take(make_training_dataset(cache, batch_size=4, augmentation=NO_AUG, seed=77), 3)
    flipped = _take(make_training_dataset(cache, batch_size=4, augmentation=flips_only, seed=77), 3)
    combos = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    used = []
    for (x0, y0), (x1, y1) in zip(plain, flipped):
        for i in range(len(x0)):
            match = [c for c in combos
                     if np.array_equal(np.flip(x0[i], c) if c else x0[i], x1[i])
                     and np.array_equal(np.flip(y0[i], c) if c else y0[i], y1[i])]
            assert match, f"sample {i}: image and label are not the same flip of the crop"
            used.append(match[0])
    assert len(set(used)) > 2  # different samples get different flips
    assert {a for c in used for a in c} == {0, 1, 2}


def test_intensity_scale_and_shift_per_channel(brats):
    _, cache = brats
    plain = _take(make_training_dataset(cache, batch_size=4, augmentation=NO_AUG, seed=3), 2)
    intensity = AugmentationConfig(flip_axes=())
    shifted = _take(make_training_dataset(cache, batch_size=4, augmentation=intensity, seed=3), 2)
    for (x0, y0), (x1, y1) in zip(plain, shifted):
        np.testing.assert_array_equal(y0, y1)
        for i in range(len(x0)):
            for c in range(4):
                a, b = x0[i, ..., c].ravel(), x1[i, ..., c].ravel()
                if np.ptp(a) < 1e-3:
                    continue
                scale, shift = np.polyfit(a, b, 1)
                assert 0.9 <= scale <= 1.1 and -0.1 <= shift <= 0.1
                np.testing.assert_allclose(b, scale * a + shift, atol=1e-4)


def test_crops_stay_inside_the_padded_volume():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(rng.integers(4, 40, 3))
        patch = tuple(rng.integers(4, 40, 3))
        fg = np.concatenate([rng.integers(0, shape, (5, 3)), rng.integers(1, 4, (5, 1))], axis=1)
        start = sample_crop_start(shape, patch, rng, fg, foreground_prob=0.5)
        for s, p, st, (lo, hi) in zip(shape, patch, start, crop_start_range(shape, patch)):
            assert lo <= st <= hi
            if s >= p:  # inside the case
                assert 0 <= st and st + p <= s
            else:  # the whole axis is inside the crop (the rest is padding)
                assert st <= 0 and st + p >= s
    vol = np.arange(24).reshape(2, 3, 4)
    patch = extract_patch(vol, (-1, 0, 1), (4, 3, 2))
    assert patch.shape == (4, 3, 2) and patch[0].sum() == 0 and patch[3].sum() == 0
    np.testing.assert_array_equal(patch[1:3], vol[:, :, 1:3])


def test_small_case_is_padded_and_fully_contained(brats):
    _, cache = brats
    ds = make_training_dataset(cache, batch_size=3, patch_size=(64, 64, 64), augmentation=NO_AUG, seed=1)
    (x, y), = _take(ds, 1)
    totals = sorted(int((cache.load_label(c) > 0).sum()) for c in cache.case_ids)
    assert sorted(int((yy > 0).sum()) for yy in y) == totals
    images = sorted(float(np.abs(cache.load_image(c)).sum()) for c in cache.case_ids)
    np.testing.assert_allclose(sorted(float(np.abs(xx).sum()) for xx in x), images, rtol=1e-5)


def test_foreground_oversampling_raises_foreground_fraction(brats):
    _, cache = brats
    patch = (8, 8, 8)

    def fraction(p):
        ds = make_training_dataset(cache, batch_size=8, patch_size=patch, augmentation=NO_AUG, seed=2,
                                   foreground_oversample=p)
        return float(np.mean([(y > 0).mean() for _, y in _take(ds, 3)]))

    low, high = fraction(0.0), fraction(1.0)
    assert high > 0.5 and high > low + 0.2, (low, high)


def test_validation_dataset_whole_cases_and_restoring_labels(brats):
    cases, cache = brats
    ds = make_validation_dataset(cache)
    items = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(items) == len(cases)
    for (x, y), case in zip(items, cases):
        entry = cache.entry(case.case_id)
        h, w, d, _ = entry.shape
        assert x.shape[0] == 1 and all(s % 8 == 0 for s in x.shape[1:4]) and x.shape[-1] == 4
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x[0, :h, :w, :d], cache.load_image(case.case_id))
        assert np.all(x[0, h:] == 0) and np.all(x[0, :, w:] == 0) and np.all(x[0, :, :, d:] == 0)
        # A perfect prediction goes back to the original labels on the original grid.
        np.testing.assert_array_equal(restore_labels(y[0], entry.box, "brats"), case.load().labels)
    images_only = make_validation_dataset(cache, case_ids=[cases[1].case_id], include_labels=False)
    (x,) = list(images_only)
    np.testing.assert_array_equal(x.numpy(), items[1][0])


def test_chaos_pipeline_with_rotation_scaling_noise(tmp_path):
    src = tmp_path / "chaos"
    write_synthetic_chaos(src, num_cases=2, seed=0, shape=(40, 40, 10), t2spir=False)
    cases = find_chaos_cases(src)
    cfg = PreprocessingConfig.chaos(patch_size=(24, 24, 8))
    cache = build_cache(cases, tmp_path / "cache", cfg, progress=False).cache
    heavy = AugmentationConfig(intensity_scale=None, intensity_shift=None, rotation_prob=1.0,
                               rotation_degrees=30.0, scale_prob=1.0, noise_prob=1.0)
    a = _take(make_training_dataset(cache, batch_size=2, augmentation=heavy, seed=4), 2)
    b = _take(make_training_dataset(cache, batch_size=2, augmentation=heavy, seed=4), 2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (2, 24, 24, 8, 2) and ya.shape == (2, 24, 24, 8)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert set(np.unique(ya).tolist()) <= {0, 1}
    # A 90-degree in-plane rotation maps the patch grid onto itself: image (linear) and
    # label (nearest) must both equal the rotated plain crop.
    image, label = cache.load_image(cases[0].case_id), cache.load_label(cases[0].case_id)
    start, patch = (3, -2, 1), (24, 24, 8)
    rx, ry = _resample_patch(image, label, start, patch, np.pi / 2, [1.0, 1.0, 1.0])
    px, py = extract_patch(image, start, patch), extract_patch(label, start, patch)
    k = 1 if np.allclose(rx, np.rot90(px, 1, axes=(0, 1)), atol=1e-5) else -1
    np.testing.assert_allclose(rx, np.rot90(px, k, axes=(0, 1)), atol=1e-5)
    np.testing.assert_array_equal(ry, np.rot90(py, k, axes=(0, 1)))
    assert py.any()
    default = make_training_dataset(cache, batch_size=1, seed=0)  # CHAOS recipe by default
    assert default.element_spec[0].shape == (1, 24, 24, 8, 2)
    split = chaos_split(cache.case_ids)
    assert len(split["train"]) == 1 and len(split["val"]) == 1


def test_argument_checks(brats):
    _, cache = brats
    with pytest.raises(ValueError, match="foreground_oversample must be in"):
        make_training_dataset(cache, batch_size=1, foreground_oversample=1.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_training_dataset(cache, batch_size=0)
    with pytest.raises(KeyError, match="not in the cache"):
        make_training_dataset(cache, batch_size=1, case_ids=["nope"])
    with pytest.raises(ValueError, match="flip_prob must be in"):
        AugmentationConfig(flip_prob=2.0)
    aug = AugmentationConfig.chaos()
    assert AugmentationConfig.from_dict(aug.to_dict()) == aug


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from missu_keras.data import make_training_dataset

    cache_dir = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    ds = make_training_dataset(cache_dir, batch_size=4, seed=3)
    ref_x, ref_y = next(iter(ds))
    x, y = next(iter(strategy.experimental_distribute_dataset(ds)))
    xs, ys = strategy.experimental_local_results(x), strategy.experimental_local_results(y)
    assert len(xs) == 2 and all(t.shape[0] == 2 for t in xs), [t.shape for t in xs]
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in xs]), ref_x.numpy())
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in ys]), ref_y.numpy())

    per_replica = strategy.distribute_datasets_from_function(
        lambda ctx: make_training_dataset(cache_dir, batch_size=4, seed=3, input_context=ctx))
    x, _ = next(iter(per_replica))
    assert [t.shape[0] for t in strategy.experimental_local_results(x)] == [2, 2]

    with strategy.scope():
        model = keras.Sequential([keras.Input((16, 16, 16, 4)), keras.layers.Conv3D(4, 1)])
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    print("DISTRIBUTED_OK")
    """
)


def test_sharding_under_mirrored_strategy_on_two_logical_cpus(brats, tmp_path):
    _, cache = brats
    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script), str(cache.directory)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "DISTRIBUTED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]

"""The .npy cache: reused when nothing changed, rebuilt for a changed source."""

import json
import os

import numpy as np
import pytest

from missu_keras.data import (
    DataCache,
    PreprocessingConfig,
    build_cache,
    find_brats_cases,
    preprocess_case,
    read_nifti,
    sha256_file,
    write_synthetic_brats,
)
from missu_keras.data.synthetic import write_nifti

SHAPE = (32, 32, 24)
CFG = PreprocessingConfig.brats(patch_size=16)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    write_synthetic_brats(root, num_cases=3, seed=4, shape=SHAPE)
    return root


def _mtimes(cache_dir):
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*.npy")}


def test_cache_contents_and_manifest(source, tmp_path):
    cases = find_brats_cases(source)
    result = build_cache(cases, tmp_path / "cache", CFG, progress=False)
    assert result.processed == [c.case_id for c in cases] and result.reused == [] and result.skipped == []
    cache = result.cache
    assert cache.case_ids == [c.case_id for c in cases] and cache.config == CFG
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    for case in cases:
        entry = manifest["cases"][case.case_id]
        assert len(entry["sources"]) == 5  # 4 modalities + seg
        for f in case.source_files():
            assert entry["sources"][str(f.resolve())]["sha256"] == sha256_file(f)
        pre = preprocess_case(case.load(), CFG)
        np.testing.assert_array_equal(cache.load_image(case.case_id), pre.image)
        np.testing.assert_array_equal(cache.load_label(case.case_id), pre.classes)
        assert cache.entry(case.case_id).box == pre.box
        fg = cache.load_foreground(case.case_id)
        assert fg.shape[1] == 4 and set(np.unique(fg[:, 3]).tolist()) == {1, 2, 3}
        assert np.all(pre.classes[tuple(fg[:, :3].T)] == fg[:, 3])
    # No pickles: every array loads with allow_pickle=False.
    for p in (tmp_path / "cache").glob("*.npy"):
        np.load(p, allow_pickle=False)


def test_cache_reused_when_unchanged_and_rebuilt_for_a_changed_source(source, tmp_path):
    cache_dir = tmp_path / "cache"
    cases = find_brats_cases(source)
    build_cache(cases, cache_dir, CFG, progress=False)
    before = _mtimes(cache_dir)
    again = build_cache(find_brats_cases(source), cache_dir, CFG, progress=False)
    assert again.processed == [] and again.reused == [c.case_id for c in cases]
    assert _mtimes(cache_dir) == before

    # Change the content of one source file of the second case.
    changed = cases[1]
    path = changed.image_paths["t2"]
    data, affine = read_nifti(path, dtype=np.int16)
    data[: SHAPE[0] // 2] *= 2  # not a global shift / scale, which z-scoring would undo
    write_nifti(path, data, affine)
    old_image = DataCache(cache_dir).load_image(changed.case_id)
    third = build_cache(find_brats_cases(source), cache_dir, CFG, progress=False)
    assert third.processed == [changed.case_id]
    assert third.reused == [cases[0].case_id, cases[2].case_id]
    after = _mtimes(cache_dir)
    for name, mtime in before.items():
        assert (mtime == after[name]) == (not name.startswith(changed.case_id)), name
    assert not np.array_equal(third.cache.load_image(changed.case_id), old_image)

    # A touch that keeps the bytes: the hash is unchanged, so nothing is re-processed.
    os.utime(path, ns=(1, 1))
    fourth = build_cache(find_brats_cases(source), cache_dir, CFG, progress=False)
    assert fourth.processed == []

    # A different preprocessing config re-processes every case.
    fifth = build_cache(find_brats_cases(source), cache_dir, PreprocessingConfig.brats(crop_margin=0, patch_size=16),
                        progress=False)
    assert fifth.processed == [c.case_id for c in cases]


def test_cache_drops_cases_no_longer_listed_and_rebuilds_deleted_arrays(source, tmp_path):
    cache_dir = tmp_path / "cache"
    cases = find_brats_cases(source)
    build_cache(cases, cache_dir, CFG, progress=False)
    result = build_cache(cases[:2], cache_dir, CFG, progress=False)
    assert result.cache.case_ids == [c.case_id for c in cases[:2]]
    assert not list(cache_dir.glob(f"{cases[2].case_id}_*"))
    (cache_dir / f"{cases[0].case_id}_image.npy").unlink()
    result = build_cache(cases[:2], cache_dir, CFG, progress=False)
    assert result.processed == [cases[0].case_id]


def test_parallel_build_matches_serial_and_shows_progress(source, tmp_path, capsys):
    cases = find_brats_cases(source)
    serial = build_cache(cases, tmp_path / "serial", CFG, progress=False).cache
    parallel = build_cache(cases, tmp_path / "parallel", CFG, workers=2, progress=True)
    out = capsys.readouterr().out
    assert "3/3" in out
    assert parallel.processed == [c.case_id for c in cases]
    for c in cases:
        np.testing.assert_array_equal(serial.load_image(c.case_id), parallel.cache.load_image(c.case_id))
        np.testing.assert_array_equal(serial.load_label(c.case_id), parallel.cache.load_label(c.case_id))


def test_cache_errors(tmp_path, source):
    with pytest.raises(FileNotFoundError, match="no cache manifest"):
        DataCache(tmp_path / "nothing")
    cases = find_brats_cases(source)
    with pytest.raises(ValueError, match="duplicate case ids"):
        build_cache([cases[0], cases[0]], tmp_path / "c", CFG, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        build_cache(cases, tmp_path / "c", CFG, workers=0, progress=False)
    cache = build_cache(cases[:1], tmp_path / "c", CFG, progress=False).cache
    with pytest.raises(KeyError, match="not in the cache"):
        cache.entry("BraTS2021_99999")


def test_config_mismatch_fails_before_any_work(source, tmp_path):
    cases = find_brats_cases(source, modalities=("t1", "t2", "flair", "t1ce"))
    with pytest.raises(ValueError, match=r"channels expected \['flair', 't1ce', 't1', 't2'\]"):
        build_cache(cases, tmp_path / "c", CFG, skip_invalid=True, progress=False)
    with pytest.raises(ValueError, match="label convention expected 'brats2023'"):
        build_cache(find_brats_cases(source), tmp_path / "c",
                    PreprocessingConfig.brats(label_convention="brats2023", patch_size=16), progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()

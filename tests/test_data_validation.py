"""Each bad input gives its error naming the file, expected and found values, or is
skipped with the reason; the source folder is byte-for-byte unchanged afterwards."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from missu_keras.data import (
    PreprocessingConfig,
    build_cache,
    find_brats_cases,
    read_nifti,
    validate_cases,
    write_synthetic_brats,
)
from missu_keras.data.synthetic import brats_affine, write_nifti

SHAPE = (32, 32, 24)


def tree_digest(root):
    """{relative path: sha256} of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def _file(case_dir, modality):
    return case_dir / f"{case_dir.name}_{modality}.nii.gz"


def _break_missing(case_dir):
    _file(case_dir, "t1ce").unlink()
    return _file(case_dir, "t1ce"), FileNotFoundError, r"modality 't1ce'.*not found"


def _break_shape(case_dir):
    path = _file(case_dir, "t2")
    data, affine = read_nifti(path, dtype=np.int16)
    write_nifti(path, data[:-2], affine)
    return path, ValueError, r"shape mismatch: expected \(32, 32, 24\).*found \(30, 32, 24\)"


def _break_affine(case_dir):
    path = _file(case_dir, "t1")
    data, affine = read_nifti(path, dtype=np.int16)
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    write_nifti(path, data, shifted)
    return path, ValueError, r"affine mismatch: expected .* found .*max difference 0\.5"


def _break_nan(case_dir):
    path = _file(case_dir, "flair")
    data, affine = read_nifti(path)
    data[16, 16, 12] = np.nan
    write_nifti(path, data.astype(np.float32), affine)
    return path, ValueError, r"expected finite values, found 1 non-finite"


def _break_labels(case_dir):
    path = _file(case_dir, "seg")
    seg, affine = read_nifti(path, dtype=np.uint8)
    seg[seg == 4] = 3  # 3 does not exist before BraTS 2023
    write_nifti(path, seg, affine)
    return path, ValueError, r"found label values \[3\]; expected only \[0, 1, 2, 4\]"


def _break_empty(case_dir):
    for m in ("flair", "t1ce", "t1", "t2"):
        path = _file(case_dir, m)
        data, affine = read_nifti(path, dtype=np.int16)
        write_nifti(path, np.zeros_like(data), affine)
    return case_dir.name, ValueError, r"empty brain mask: expected voxels where some modality is non-zero, found all"


def _break_truncated(case_dir):
    path = _file(case_dir, "t2")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path, ValueError, r"cannot read NIfTI"


def _break_garbage(case_dir):
    path = _file(case_dir, "t1")
    path.write_bytes(b"this is not a nifti file" * 40)
    return path, ValueError, r"cannot read NIfTI"


BREAKERS = {
    "missing_modality": _break_missing,
    "mismatched_shape": _break_shape,
    "mismatched_affine": _break_affine,
    "nan_values": _break_nan,
    "out_of_range_labels": _break_labels,
    "empty_brain": _break_empty,
    "truncated_file": _break_truncated,
    "garbage_file": _break_garbage,
}


@pytest.fixture(scope="module")
def good_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    write_synthetic_brats(root, num_cases=1, seed=3, shape=SHAPE)
    return root


@pytest.fixture
def broken(request, good_root, tmp_path):
    """A copy of one good case, broken by the named breaker."""
    import shutil

    root = tmp_path / "src"
    shutil.copytree(good_root, root)
    (case_dir,) = [p for p in root.iterdir() if p.is_dir()]
    named, error, pattern = BREAKERS[request.param](case_dir)
    return root, str(named), error, pattern


@pytest.mark.parametrize("broken", sorted(BREAKERS), indirect=True)
def test_bad_input_raises_naming_the_file(broken):
    root, named, error, pattern = broken
    before = tree_digest(root)
    (case,) = find_brats_cases(root, layout="2021")
    with pytest.raises(error, match=pattern) as info:
        case.load()
    message = str(info.value)
    assert named in message and "expected" in message and "found" in message
    with pytest.raises(error, match=pattern):
        validate_cases([case])
    assert tree_digest(root) == before


def test_affine_within_tolerance_is_accepted(good_root, tmp_path):
    import shutil

    shutil.copytree(good_root, tmp_path / "src")
    (case_dir,) = (tmp_path / "src").iterdir()
    path = _file(case_dir, "t1")
    data, affine = read_nifti(path, dtype=np.int16)
    write_nifti(path, data, affine + 5e-4)
    (case,) = find_brats_cases(tmp_path / "src")
    assert case.load().image.shape == SHAPE + (4,)


def test_skip_invalid_reports_each_bad_case_and_keeps_sources(tmp_path, caplog):
    root = tmp_path / "src"
    n_bad = len(BREAKERS)
    dirs = write_synthetic_brats(root, num_cases=n_bad + 2, seed=5, shape=SHAPE)
    expected = {}
    for case_dir, (name, breaker) in zip(dirs[2:], sorted(BREAKERS.items())):
        named, _, pattern = breaker(case_dir)
        expected[case_dir.name] = (str(named), pattern)
    before = tree_digest(root)
    cases = find_brats_cases(root)
    with pytest.raises((ValueError, FileNotFoundError)):
        validate_cases(cases)
    with caplog.at_level(logging.WARNING, logger="missu_keras.data"):
        valid, skipped = validate_cases(cases, skip_invalid=True)
    assert [c.case_id for c in valid] == [d.name for d in dirs[:2]]
    assert sorted(s.case_id for s in skipped) == sorted(expected)
    import re

    for case_id, reason in skipped:
        named, pattern = expected[case_id]
        assert named in reason and re.search(pattern, reason), (case_id, reason)
        assert any(case_id in r.getMessage() for r in caplog.records)
    # The cache skips the same cases, builds the rest, and writes only to its own folder.
    result = build_cache(cases, tmp_path / "cache", PreprocessingConfig.brats(patch_size=16),
                         skip_invalid=True, progress=False)
    assert result.processed == [d.name for d in dirs[:2]]
    assert sorted(s.case_id for s in result.skipped) == sorted(expected)
    with pytest.raises((ValueError, FileNotFoundError)):
        build_cache(cases, tmp_path / "cache2", PreprocessingConfig.brats(patch_size=16), progress=False)
    assert tree_digest(root) == before


def test_2023_labels_are_checked_against_their_convention(tmp_path):
    (case_dir,) = write_synthetic_brats(tmp_path, num_cases=1, seed=1, shape=SHAPE, layout="2023")
    (case,) = find_brats_cases(tmp_path)
    assert set(np.unique(case.load().labels).tolist()) == {0, 1, 2, 3}
    # Read as the 2019-2021 convention, label 3 is out of range.
    with pytest.raises(ValueError, match=r"found label values \[3\]"):
        case.load("brats")
    seg_path = case_dir / f"{case_dir.name}-seg.nii.gz"
    seg, _ = read_nifti(seg_path, dtype=np.uint8)
    seg[0, 0, 0] = 4
    write_nifti(seg_path, seg, brats_affine(SHAPE))
    with pytest.raises(ValueError, match=r"-seg\.nii\.gz: found label values \[4\]; expected only \[0, 1, 2, 3\]"):
        case.load()

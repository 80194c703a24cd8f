"""The synthetic generator: determinism, labels, contrasts, headers, speed and the CLI."""

import hashlib
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from missu_keras.data import (
    find_brats_cases,
    find_chaos_cases,
    synthetic_brats_volumes,
    write_synthetic_brats,
    write_synthetic_chaos,
)
from missu_keras.data.synthetic import FULL_BRATS_SHAPE, smooth_field
from tests.helpers import run_command

SHAPE = (48, 48, 32)


def tree_digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("layout,extension", [("2021", ".nii.gz"), ("2020", ".nii"), ("2023", ".nii.gz")])
def test_brats_same_seed_same_bytes(tmp_path, layout, extension, monkeypatch):
    kwargs = dict(num_cases=2, shape=(32, 32, 24), layout=layout, extension=extension)
    write_synthetic_brats(tmp_path / "a", seed=5, **kwargs)
    # A clock a day later must not change the bytes (gzip mtime, header fields).
    later = time.time() + 86400.0
    monkeypatch.setattr(time, "time", lambda: later)
    write_synthetic_brats(tmp_path / "b", seed=5, **kwargs)
    monkeypatch.undo()
    write_synthetic_brats(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 10
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_chaos_same_seed_same_bytes(tmp_path):
    write_synthetic_chaos(tmp_path / "a", num_cases=2, seed=1, shape=(32, 32, 4))
    write_synthetic_chaos(tmp_path / "b", num_cases=2, seed=1, shape=(32, 32, 4))
    write_synthetic_chaos(tmp_path / "c", num_cases=2, seed=2, shape=(32, 32, 4))
    a = tree_digest(tmp_path / "a")
    assert a == tree_digest(tmp_path / "b")
    assert a != tree_digest(tmp_path / "c")
    # 2 cases x (in + out + T1 masks + T2SPIR + T2 masks) x 4 slices
    assert len(a) == 2 * 5 * 4


def test_case_depends_only_on_seed_and_index(tmp_path):
    write_synthetic_brats(tmp_path / "two", num_cases=2, seed=3, shape=(32, 32, 24))
    write_synthetic_brats(tmp_path / "four", num_cases=4, seed=3, shape=(32, 32, 24))
    two, four = tree_digest(tmp_path / "two"), tree_digest(tmp_path / "four")
    assert all(four[k] == v for k, v in two.items())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_and_contrasts(seed):
    vols = synthetic_brats_volumes(SHAPE, seed=seed)
    seg, img = vols["seg"], {k: v.astype(np.float64) for k, v in vols["images"].items()}
    assert seg.dtype == np.uint8 and set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    brain = img["flair"] > 0
    assert all(np.array_equal(v > 0, brain) for v in img.values())  # skull-stripped: background exactly 0
    assert np.all(seg[~brain] == 0)
    healthy = brain & (seg == 0)
    edema, rim, necrosis = seg == 2, seg == 4, seg == 1

    def mean(m, region):
        return img[m][region].mean()

    assert mean("flair", edema) > 1.3 * mean("flair", healthy)  # edema bright on FLAIR
    assert mean("t2", edema) > mean("t2", healthy)  # ... and on T2
    assert mean("t1ce", rim) > 1.2 * max(mean("t1ce", edema), mean("t1ce", healthy))  # enhancing rim
    assert mean("t1ce", necrosis) < 0.5 * mean("t1ce", healthy)  # dark necrotic core
    # Tumour position and size vary with the seed.
    other = synthetic_brats_volumes(SHAPE, seed=seed + 10)["seg"]
    assert not np.array_equal(seg > 0, other > 0)
    assert 0.01 < (seg > 0).sum() / brain.sum() < 0.5


def test_2023_layout_uses_label_3(tmp_path):
    write_synthetic_brats(tmp_path, num_cases=1, seed=0, shape=(32, 32, 24), layout="2023")
    (case,) = find_brats_cases(tmp_path)
    assert set(np.unique(case.load().labels).tolist()) == {0, 1, 2, 3}


def test_nifti_headers_are_1mm_and_fixed(tmp_path):
    (case_dir,) = write_synthetic_brats(tmp_path, num_cases=1, seed=0, shape=SHAPE)
    img = nib.load(str(case_dir / f"{case_dir.name}_flair.nii.gz"))
    assert img.shape == SHAPE and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    seg = nib.load(str(case_dir / f"{case_dir.name}_seg.nii.gz"))
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(seg.affine, img.affine)


@pytest.mark.slow
def test_full_size_case(tmp_path):
    (case_dir,) = write_synthetic_brats(tmp_path, num_cases=1, seed=0)
    (case,) = find_brats_cases(tmp_path)
    loaded = case.load()
    assert loaded.image.shape == FULL_BRATS_SHAPE + (4,)
    assert set(np.unique(loaded.labels).tolist()) == {0, 1, 2, 4}


def test_smooth_field_is_smooth_and_normalised():
    f = smooth_field((40, 30, 20), np.random.default_rng(0))
    assert f.shape == (40, 30, 20) and abs(f.mean()) < 1e-5 and abs(f.std() - 1) < 1e-4
    assert np.abs(np.diff(f, axis=0)).max() < 0.5


def test_chaos_generator_writes_the_real_layout(tmp_path):
    dirs = write_synthetic_chaos(tmp_path, num_cases=2, seed=0, shape=(32, 32, 5))
    assert [d.name for d in dirs] == ["1", "2"]
    base = tmp_path / "Train_Sets" / "MR" / "1"
    for sub in ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground",
                "T2SPIR/DICOM_anon", "T2SPIR/Ground"):
        assert len(list((base / sub).iterdir())) == 5, sub
    import pydicom

    ds = pydicom.dcmread(str(sorted((base / "T1DUAL/DICOM_anon/InPhase").iterdir())[2]))
    assert ds.Modality == "MR" and ds.Rows == 32 and ds.Columns == 32 and int(ds.InstanceNumber) == 3
    assert len(ds.PixelSpacing) == 2 and float(ds.SliceThickness) > 0 and len(ds.ImagePositionPatient) == 3
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert len(find_chaos_cases(tmp_path, sequence="T2SPIR")) == 2


def _run_cli(argv):
    return run_command(argv)


def test_cli_synth_brats_and_chaos(tmp_path, capsys):
    out = tmp_path / "brats"
    assert _run_cli(["synth", "brats", str(out), "--cases", "2", "--seed", "4",
                     "--shape", "32", "32", "24", "--layout", "2019"]) == 0
    assert "wrote 2 synthetic BraTS 2019" in capsys.readouterr().out
    cases = find_brats_cases(out)
    assert len(cases) == 2 and cases[0].layout == "2019"
    # Same as the Python API with the same arguments.
    write_synthetic_brats(tmp_path / "api", num_cases=2, seed=4, shape=(32, 32, 24), layout="2019")
    assert tree_digest(out) == tree_digest(tmp_path / "api")
    assert _run_cli(["synth", "chaos", str(tmp_path / "chaos"), "--cases", "1", "--seed", "0",
                     "--shape", "32", "32", "4"]) == 0
    assert len(find_chaos_cases(tmp_path / "chaos")) == 1
    with pytest.raises(SystemExit):
        _run_cli(["synth", "brats", str(out), "--layout", "2018"])
    with pytest.raises(SystemExit):
        _run_cli(["synth", "brats", str(out), "--cases", "0"])

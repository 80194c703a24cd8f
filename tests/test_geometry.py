"""Orientation and voxel spacing in the preprocessing contract (issue 15, item 2).

A smooth synthetic "head" is written in its canonical form (RAS, 1 mm) and as copies
flipped to LPS, rotated 90 degrees about an axis, stored with an oblique sform, and
resampled to 0.8 x 0.8 x 3 mm. A predictor that thresholds intensity (a fixed 1x1x1
Conv3D, so the test measures geometry, not a network) must segment every copy like the
canonical one once both are mapped to one grid, through the real ``predict`` path, and
each output NIfTI must carry its input's exact geometry.
"""

import dataclasses
import itertools
import types

import keras
import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import missu_keras
from missu_keras.data import geometry
from missu_keras.data.io import write_nifti
from missu_keras.data.preprocessing import (PreprocessingConfig, preprocess_case,
                                            with_median_spacing)
from missu_keras.data.validation import LoadedCase
from missu_keras.export import SCAN_SIGNATURE, export_savedmodel
from missu_keras.inference import Segmenter
from missu_keras.prediction import predict
from tests.conftest import TINY

MODALITIES = ("flair", "t1ce", "t1", "t2")
SHAPE = (64, 70, 54)  # the canonical copy: RAS, 1 mm
PATCH = (32, 32, 32)
BLOB = np.array([3.0, -2.0, 2.0])  # mm, the bright region's centre


def canonical_affine(shape=SHAPE, spacing=(1.0, 1.0, 1.0)):
    """RAS affine of ``shape`` voxels of ``spacing`` covering the canonical extent."""
    affine = np.diag([*spacing, 1.0])
    extent = np.asarray(SHAPE, float)  # mm, the same for every spacing
    affine[:3, 3] = -extent / 2 + np.asarray(spacing) / 2
    return affine


def head(affine, shape):
    """``(H, W, D, 4)`` float32: an ellipsoid brain with a smooth bright blob, sampled at
    the voxel centres of ``affine``."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    brain = ((world / [29.0, 32.0, 25.0]) ** 2).sum(-1) <= 1
    value = 1 + 2 * np.exp(-((world - BLOB) ** 2).sum(-1) / (2 * 12.0 ** 2))
    scales = np.array([1.0, 1.5, 0.8, 1.2])
    return (np.where(brain, value, 0)[..., None] * scales * 100).astype(np.float32)


def reoriented_copy(data, affine, codes):
    """``data`` and ``affine`` in axis codes ``codes`` (exact, as a scanner might store it)."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    return (np.ascontiguousarray(nio.apply_orientation(data, ornt)),
            affine @ nio.inv_ornt_aff(ornt, data.shape[:3]))


def rotation(degrees, axis):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def resampled_copy(data, affine, spacing):
    """``data`` (canonical, 1 mm) linearly resampled to ``spacing`` over the same extent."""
    shape = tuple(int(round(n / s)) for n, s in zip(SHAPE, spacing))
    new_affine = canonical_affine(shape, spacing)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).reshape(3, -1)
    source = np.linalg.inv(affine) @ new_affine @ np.vstack([idx, np.ones(idx.shape[1])])
    out = [ndimage.map_coordinates(data[..., c], source[:3], order=1, mode="nearest")
           for c in range(data.shape[-1])]
    return np.stack(out, -1).reshape(*shape, -1).astype(np.float32), new_affine


def variants():
    """``{name: (data, stored affine, head affine)}``: the canonical copy and its moved /
    resampled copies. An oblique copy stores a rotated affine; its voxels were sampled
    from the head in the unrotated one (the scanner's world turned, not the head), so
    its segmentation is compared through the head affine."""
    affine = canonical_affine()
    data = head(affine, SHAPE)
    lps = reoriented_copy(data, affine, "LPS")
    aniso = resampled_copy(data, affine, (0.8, 0.8, 3.0))
    moved_aniso = reoriented_copy(*aniso, "PLI")
    rot90 = reoriented_copy(data, affine, "ALS")  # 90 degrees about the S axis
    return {
        "canonical": (data, affine, affine),
        "lps": (*lps, lps[1]),
        "rot90": (*rot90, rot90[1]),
        # 12 degrees about x in world space: oblique, closest canonical orientation LPS.
        "oblique": (lps[0], rotation(12, 0) @ lps[1], lps[1]),
        "aniso": (*aniso, aniso[1]),
        "aniso_moved_oblique": (moved_aniso[0], rotation(-9, 1) @ moved_aniso[1], moved_aniso[1]),
    }


def write_case(folder, name, data, affine):
    """One case as four NIfTI files, qform code 1 and sform code 2 (both ``affine``)."""
    ref = nib.Nifti1Image(data[..., 0], affine)
    ref.set_qform(affine, code=1)
    ref.set_sform(affine, code=2)
    files = [write_nifti(folder / name / f"{name}_{m}.nii.gz", data[..., c], affine, ref.header)
             for c, m in enumerate(MODALITIES)]
    return files


def threshold_net():
    """Class 1 where FLAIR exceeds 190 (15 mm from the blob's centre), else background: a smooth, deterministic function of intensity (softmax of
    a fixed 1x1x1 convolution; the contract leaves intensities as they are, so a z-score
    shifted by partial volume at the brain's edge does not move the threshold)."""
    inputs = keras.Input((*PATCH, 4))
    conv = keras.layers.Conv3D(4, 1, activation="softmax")
    net = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 1, 4, 4), np.float32)
    kernel[0, 0, 0, 0, 1] = 0.1
    conv.set_weights([kernel, np.array([0.0, -19.0, -50.0, -50.0], np.float32)])
    return net


def contract(**overrides):
    return PreprocessingConfig.brats(patch_size=PATCH, **{"orientation": "RAS",
                                                          "normalization": "none", **overrides})


def on_grid(labels, affine, grid_affine, grid_shape, order=0):
    """``labels`` (on ``affine``) sampled by nearest neighbour (``order=1``: linearly) at
    the voxel centres of another grid (world coordinates)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in grid_shape], indexing="ij"), 0).reshape(3, -1)
    source = np.linalg.inv(affine) @ grid_affine @ np.vstack([idx, np.ones(idx.shape[1])])
    out = ndimage.map_coordinates(labels, source[:3], order=order, mode="nearest")
    return out.reshape(grid_shape)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def assert_same_geometry(written_path, input_path):
    written, source = nib.load(str(written_path)), nib.load(str(input_path))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    for coded in ("get_qform", "get_sform"):
        got, want = getattr(written, coded)(coded=True), getattr(source, coded)(coded=True)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
    assert written.header["qform_code"] == source.header["qform_code"] == 1
    assert written.header["sform_code"] == source.header["sform_code"] == 2
    np.testing.assert_array_equal(written.header.get_zooms(), source.header.get_zooms())


# ------------------------------------------------------------------- reorientation --


def all_axis_codes():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            yield "".join(("RL", "AP", "SI")[a][s] for a, s in zip(perm, signs))


def test_reorientation_is_exact_both_ways_for_all_48_orientations():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 5, 6, 2)).astype(np.float32)
    codes = list(all_axis_codes())
    assert len(set(codes)) == 48
    base = canonical_affine((4, 5, 6), (0.9, 1.1, 2.5))
    for stored in codes:
        array, affine = reoriented_copy(data, base, stored)
        for target in ("RAS", "LPS", stored):
            moved = geometry.reorient(array, affine, target)
            assert geometry.axis_codes(moved.affine) == tuple(target)
            # Every voxel keeps its world position.
            for i in ((0, 0, 0), (1, 2, 3), tuple(s - 1 for s in array.shape[:3])):
                j = np.linalg.inv(moved.affine) @ affine @ [*i, 1]
                np.testing.assert_allclose(j, np.round(j), atol=1e-9)
                np.testing.assert_array_equal(moved.array[tuple(np.round(j[:3]).astype(int))], array[i])
            np.testing.assert_array_equal(geometry.undo_orientation(moved.array, moved), array)
            back = geometry.reorient(moved.array, moved.affine, stored)
            np.testing.assert_array_equal(back.array, array)
            np.testing.assert_allclose(back.affine, affine, atol=1e-12)
        ras = geometry.reorient(array, affine, "RAS")
        np.testing.assert_array_equal(ras.array, data)
        np.testing.assert_allclose(ras.affine, base, atol=1e-12)
        assert ras.spacing == (0.9, 1.1, 2.5)


def test_an_oblique_affine_goes_to_its_closest_canonical_orientation():
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    array, affine = reoriented_copy(data, np.eye(4), "LPS")
    oblique = rotation(20, 2) @ affine
    moved = geometry.reorient(array, oblique, "RAS")
    np.testing.assert_array_equal(moved.array, data)  # flips only, no interpolation
    np.testing.assert_allclose(moved.affine, rotation(20, 2), atol=1e-12)
    np.testing.assert_array_equal(geometry.undo_orientation(moved.array, moved), array)
    with pytest.raises(ValueError, match="orientation must be 3 axis codes.*'RAX'"):
        geometry.reorient(array, oblique, "RAX")


# ---------------------------------------------------------------------- resampling --


def test_nearest_resampling_keeps_the_label_set_and_a_no_op_spacing_is_bit_identical():
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=(20, 18, 7))
    out = geometry.resample(labels, (0.8, 0.8, 3.0), (1.0, 1.0, 1.0), "nearest")
    assert out.shape == (16, 14, 21) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 2, 3}
    image = rng.standard_normal((20, 18, 7, 2)).astype(np.float32)
    for spacing in ((1.0, 1.0, 1.0), (1.0, 0.9995, 1.0004)):  # within 0.1 %: untouched
        same = geometry.resample(image, spacing, (1.0, 1.0, 1.0))
        assert same.tobytes() == image.tobytes()
    linear = geometry.resample(image, (0.5, 0.5, 2.0), (1.0, 1.0, 1.0))
    assert linear.shape == (10, 9, 14, 2)
    # Linear on a linear ramp along an unchanged axis is exact.
    np.testing.assert_array_equal(geometry.resample(image, (1, 1, 2), (1, 1, 1))[:, :, ::2].shape,
                                  (20, 18, 7, 2))


def test_brats_at_1mm_lps_is_untouched_by_the_new_contract():
    rng = np.random.default_rng(2)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # how BraTS files are stored
    image = np.zeros((30, 28, 20, 4), np.float32)
    image[4:26, 5:22, 3:17] = rng.uniform(1, 9, (22, 17, 14, 4))
    labels = np.zeros((30, 28, 20), np.uint8)
    labels[10:15, 10:14, 6:9] = 4
    loaded = LoadedCase("c", image, labels, affine, (1.0, 1.0, 1.0), MODALITIES, "brats")
    new = preprocess_case(loaded, PreprocessingConfig.brats())
    old = preprocess_case(loaded, PreprocessingConfig.brats(orientation=None, target_spacing=None))
    assert new.image.tobytes() == old.image.tobytes()
    np.testing.assert_array_equal(new.classes, old.classes)
    assert new.box == old.box
    # The same case at 0.8 x 0.8 x 3 mm: labels follow the image's resampled grid.
    loaded = dataclasses.replace(loaded, affine=np.diag([-0.8, -0.8, 3.0, 1.0]))
    aniso = preprocess_case(loaded, PreprocessingConfig.brats())
    assert aniso.image.shape[:3] == aniso.classes.shape == (21, 17, 54)  # box 26 x 21 x 18 (margin 2)
    assert set(np.unique(aniso.classes)) == {0, 3}


def test_contracts_saved_before_issue_15_load_and_the_median_is_filled_in(tmp_path):
    old = PreprocessingConfig.brats().to_dict()
    for key in ("orientation", "target_spacing", "image_interpolation"):
        old.pop(key)
    loaded = PreprocessingConfig.from_dict(old)
    assert loaded.orientation is None and loaded.target_spacing is None
    assert PreprocessingConfig.chaos().target_spacing is None  # paper: the native grid
    cases = []
    for i, spacing in enumerate([(0.8, 0.8, 3.0), (1.0, 0.7, 5.0), (0.9, 0.9, 4.0)]):
        path = write_nifti(tmp_path / f"c{i}.nii.gz", np.zeros((2, 2, 2), np.float32),
                           np.diag([-spacing[0], spacing[1], spacing[2], 1.0]))
        cases.append(types.SimpleNamespace(reference_path=path))
    cfg = with_median_spacing(PreprocessingConfig.brats(orientation="RAS", target_spacing="median"), cases)
    assert cfg.target_spacing == (0.9, 0.8, 4.0)
    # Reoriented first: a case stored with x and z swapped counts along the right axes.
    swap = write_nifti(tmp_path / "s.nii.gz", np.zeros((2, 2, 2), np.float32),
                       np.array([[0, 0, 9.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]]))
    cfg = with_median_spacing(PreprocessingConfig.brats(orientation="RAS", target_spacing="median"),
                              [types.SimpleNamespace(reference_path=swap)])
    assert cfg.target_spacing == (9.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="target_spacing must be 3 positive numbers"):
        PreprocessingConfig.brats(target_spacing=(1.0, 0.0, 1.0))


# ---------------------------------------------- the issue's test: same segmentation --


@pytest.fixture(scope="module")
def written_variants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    return {name: (data, affine, write_case(folder, name, data, affine), head_affine)
            for name, (data, affine, head_affine) in variants().items()}


def test_moved_and_resampled_copies_segment_like_the_canonical_one(written_variants, tmp_path):
    net, prep = threshold_net(), contract()
    outputs = {}
    for name, (data, _, files, head_affine) in written_variants.items():
        written = predict(files, tmp_path / name, model=net, preprocessing=prep, log=None,
                          save_probabilities=name == "canonical")
        assert_same_geometry(written[0], files[0])
        outputs[name] = (np.asarray(nib.load(str(written[0])).dataobj), head_affine)
    canonical = outputs["canonical"][0]
    assert 10000 < (canonical == 1).sum() < 0.5 * (head(canonical_affine(), SHAPE)[..., 0] > 0).sum()
    probs = nib.load(str(tmp_path / "canonical" / "canonical_probabilities.nii.gz")).get_fdata()
    scores = {}
    for name, (labels, affine) in outputs.items():
        if name in ("lps", "rot90", "oblique"):  # flips and permutations only: exact
            expected = on_grid(canonical, canonical_affine(), affine, labels.shape)
            np.testing.assert_array_equal(labels, expected, err_msg=name)
        # One grid: the copy's own; the canonical probabilities resampled onto it
        # linearly (labels by nearest neighbour would move a boundary by up to half a
        # voxel, a Dice error of its own of about 0.02 here).
        expected = np.argmax(np.stack([on_grid(probs[..., k], canonical_affine(), affine, labels.shape,
                                               order=1) for k in range(2)], -1), -1)
        scores[name] = dice(labels == 1, expected == 1)
    assert min(scores.values()) >= 0.98, scores
    assert scores["canonical"] == scores["lps"] == scores["rot90"] == scores["oblique"] == 1


def test_the_real_predict_path_keeps_the_input_geometry(written_variants, tmp_path):
    model = missu_keras.MISSU.from_preset("tiny", **TINY, preprocessing=PreprocessingConfig.brats(
        patch_size=TINY["image_size"]).to_dict())
    data, _, files, _ = written_variants["aniso_moved_oblique"]
    written = predict(files, tmp_path / "out", model=model, log=None, save_probabilities=True)
    assert_same_geometry(written[0], files[0])
    labels = np.asarray(nib.load(str(written[0])).dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    probs = nib.load(str(tmp_path / "out" / "aniso_moved_oblique_probabilities.nii.gz"))
    assert probs.shape == (*data.shape[:3], 4)
    np.testing.assert_array_equal(probs.affine, nib.load(str(files[0])).affine)


def test_savedmodel_and_python_path_agree_on_an_anisotropic_case(written_variants, tmp_path):
    model = missu_keras.MISSU.from_preset("tiny", **TINY, preprocessing=PreprocessingConfig.brats(
        patch_size=TINY["image_size"]).to_dict())
    net = model.inference_model()
    kernel = [w for w in net.weights if "kernel" in w.path][-1]
    # Stands in for training: a last layer that makes the argmax depend on the input.
    kernel.assign(kernel.numpy() * 40)
    result = export_savedmodel(model, tmp_path / "export", log=None)
    assert result.metadata["orientation"] == "LPS" and result.metadata["target_spacing"] == [1, 1, 1]
    served = tf.saved_model.load(str(result.path))
    data, affine, _, _ = written_variants["aniso"]
    loaded = LoadedCase("aniso", data, None, affine, geometry.voxel_spacing(affine), MODALITIES, "brats")
    expected = Segmenter.from_model(model).segment(loaded).labels
    moved = geometry.reorient(data, affine, "LPS")
    got = served.signatures[SCAN_SIGNATURE](
        volume=tf.constant(np.ascontiguousarray(moved.array)),
        spacing=tf.constant(moved.spacing, tf.float32))["labels"].numpy()
    got = geometry.undo_orientation(got, moved)
    assert got.shape == data.shape[:3] and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(got, expected)
    # Without the spacing (segment_volume, as exports before issue 15) nothing is resampled.
    plain = served.signatures["segment_volume"](volume=tf.constant(moved.array))["labels"]
    assert plain.shape == moved.array.shape[:3]


def test_the_cache_is_rebuilt_when_orientation_or_spacing_change(tmp_path):
    from missu_keras.data import build_cache, find_brats_cases, write_synthetic_brats

    write_synthetic_brats(tmp_path / "data", num_cases=1, seed=0, shape=(24, 24, 16))
    cases, cache_dir = find_brats_cases(tmp_path / "data"), tmp_path / "cache"
    before = PreprocessingConfig.brats(patch_size=16, orientation=None, target_spacing=None)
    assert build_cache(cases, cache_dir, before).processed
    assert build_cache(cases, cache_dir, before).reused  # unchanged: reused
    # The brats preset's LPS / 1 mm leaves these (LPS, 1 mm) voxels as they were, but the
    # contract differs, so the cache is rebuilt once, then reused.
    first = build_cache(cases, cache_dir, PreprocessingConfig.brats(patch_size=16))
    assert first.processed and not first.reused
    box = first.cache.load_image(cases[0].case_id).shape[:3]
    again = build_cache(cases, cache_dir, PreprocessingConfig.brats(patch_size=16, target_spacing=(2, 2, 2)))
    assert again.processed and not again.reused
    assert again.cache.load_image(cases[0].case_id).shape[:3] == tuple(round(s / 2) for s in box)


def test_the_serving_client_reorients_and_sends_the_spacing():
    from missu_keras.serving import _scan_request

    data, affine, _ = variants()["aniso"]  # RAS, 0.8 x 0.8 x 3 mm
    loaded = LoadedCase("c", data, None, affine, (0.8, 0.8, 3.0), MODALITIES, "brats")
    meta = {"signatures": {"segment_volume": {}, SCAN_SIGNATURE: {}}, "orientation": "LPS"}
    signature, inputs, moved = _scan_request(loaded, meta)
    assert signature == SCAN_SIGNATURE
    np.testing.assert_array_equal(inputs["volume"], data[::-1, ::-1])
    np.testing.assert_array_equal(inputs["spacing"], np.float32([0.8, 0.8, 3.0]))
    labels = (inputs["volume"][..., 0] > 190).astype(np.int32)  # what a server might answer
    np.testing.assert_array_equal(geometry.undo_orientation(labels, moved), data[..., 0] > 190)
    # An export from before issue 15 (no segment_scan): the scan as stored, no spacing.
    signature, inputs, moved = _scan_request(loaded, {"signatures": {"segment_volume": {}}})
    assert signature == "segment_volume" and set(inputs) == {"volume"} and moved is None

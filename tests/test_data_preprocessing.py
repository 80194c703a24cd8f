"""Normalisation, crop / uncrop, restoring predictions, and the saved preprocessing config."""

import json

import numpy as np
import pytest

from missu_keras.data import (
    CropBox,
    PreprocessingConfig,
    crop,
    find_brats_cases,
    foreground_box,
    normalize_nonzero,
    pad_to_multiple,
    preprocess_case,
    restore_labels,
    uncrop,
    unpad,
    write_synthetic_brats,
)

SHAPE = (40, 44, 32)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, num_cases=1, seed=21, shape=SHAPE)
    return find_brats_cases(root)[0].load()


def test_zscore_over_brain_mask_background_zero(loaded):
    cfg = PreprocessingConfig.brats(crop_to_nonzero=False)
    pre = preprocess_case(loaded, cfg)
    brain = np.any(loaded.image != 0, axis=-1)
    assert 0 < brain.sum() < brain.size
    for c in range(4):
        vals = pre.image[..., c][brain].astype(np.float64)
        assert abs(vals.mean()) < 1e-5 and abs(vals.std() - 1.0) < 1e-5
        assert np.all(pre.image[..., c][~brain] == 0)
    assert pre.image.dtype == np.float32


def test_normalisation_is_per_modality_and_mask_is_any_modality():
    rng = np.random.default_rng(0)
    image = np.zeros((6, 6, 6, 2), np.float32)
    image[1:5, 1:5, 1:5, 0] = rng.uniform(100, 200, (4, 4, 4))
    image[1:5, 1:5, 1:5, 1] = rng.uniform(0, 3, (4, 4, 4))
    image[1, 1, 1, 1] = 0.0  # zero in one modality only: still brain
    image[0, 0, 0, 1] = 5.0  # non-zero in one modality only: brain as well
    out = normalize_nonzero(image)
    mask = np.any(image != 0, axis=-1)
    assert mask.sum() == 65
    for c in range(2):
        np.testing.assert_allclose(out[..., c][mask].mean(), 0, atol=1e-5)
        np.testing.assert_allclose(out[..., c][mask].std(), 1, atol=1e-5)
    assert np.all(out[~mask] == 0)


def test_crop_uncrop_restores_the_original_grid_exactly(loaded):
    pre = preprocess_case(loaded, PreprocessingConfig.brats(crop_margin=(1, 2, 3)))
    box = pre.box
    assert box.original_shape == SHAPE and pre.image.shape[:3] == box.shape
    brain = np.any(loaded.image != 0, axis=-1)
    idx = np.argwhere(brain)
    np.testing.assert_array_equal(box.start, np.maximum(idx.min(0) - (1, 2, 3), 0))
    np.testing.assert_array_equal(box.stop, np.minimum(idx.max(0) + 1 + (1, 2, 3), SHAPE))
    # Everything non-zero is inside the box, so crop -> uncrop is the identity.
    np.testing.assert_array_equal(uncrop(crop(loaded.image, box), box), loaded.image)
    np.testing.assert_array_equal(uncrop(crop(loaded.labels, box), box), loaded.labels)
    # A prediction in training classes, padded to a multiple of 8 for the network,
    # goes back to dataset labels on the original grid.
    padded, hwd = pad_to_multiple(pre.classes, 8)
    assert all(s % 8 == 0 for s in padded.shape) and hwd == box.shape
    np.testing.assert_array_equal(unpad(padded, hwd), pre.classes)
    np.testing.assert_array_equal(restore_labels(padded, box, "brats"), loaded.labels)
    # The box survives JSON (it is stored in the cache manifest).
    assert CropBox.from_dict(json.loads(json.dumps(box.to_dict()))) == box


def test_crop_box_edge_cases():
    empty = np.zeros((4, 5, 6))
    assert foreground_box(empty) == CropBox.full((4, 5, 6))
    vol = np.zeros((4, 5, 6))
    vol[0, 4, 5] = 1
    box = foreground_box(vol, margin=2)
    assert box.start == (0, 2, 3) and box.stop == (3, 5, 6)
    with pytest.raises(ValueError, match="does not match the box"):
        crop(np.zeros((3, 3, 3)), box)
    with pytest.raises(ValueError, match="expected a volume of the box shape"):
        uncrop(np.zeros((2, 2, 2)), box)


def test_preprocessing_config_round_trip_and_checks():
    cfg = PreprocessingConfig.brats(label_convention="brats2023", crop_margin=3, patch_size=(64, 64, 32))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["patch_size"] == [64, 64, 32] and d["crop_margin"] == [3, 3, 3]
    assert PreprocessingConfig.from_dict(d) == cfg
    chaos = PreprocessingConfig.chaos(sequence="T2SPIR")
    assert chaos.modalities == ("t2spir",) and chaos.num_classes == 2
    assert PreprocessingConfig.from_dict(chaos.to_dict()) == chaos
    with pytest.raises(ValueError, match="Unknown preprocessing settings"):
        PreprocessingConfig.from_dict(dict(d, spacing=1))
    with pytest.raises(ValueError, match="label_convention must be one of"):
        PreprocessingConfig(label_convention="kits")
    with pytest.raises(ValueError, match="normalization must be one of"):
        PreprocessingConfig(normalization="minmax")
    with pytest.raises(ValueError, match=r"patch_size must be positive multiples of 8.*\(128, 128, 30\)"):
        PreprocessingConfig(patch_size=(128, 128, 30))


def test_channel_order_must_match_config(loaded):
    cfg = PreprocessingConfig.brats(modalities=("t1", "t2", "flair", "t1ce"))
    with pytest.raises(ValueError, match="channel order mismatch"):
        preprocess_case(loaded, cfg)

"""Metrics on hand-made masks with known answers."""

import json
import math

import keras
import numpy as np
import pytest

from missu_keras import metrics
from missu_keras.labels import get_label_convention
from missu_keras.metrics import (CONVENTION, EMPTY_MASK_DISTANCE_MM, METRIC_NAMES,
                                 RegionDice, binary_metrics, region_dice_metrics,
                                 score_case, summarize, write_scores)


def cube(shape=(24, 24, 24), start=(6, 6, 6), size=8):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_empty_mask_distance_is_the_brats_box_diagonal():
    assert EMPTY_MASK_DISTANCE_MM == 373.13
    assert math.isclose(math.sqrt(240**2 + 240**2 + 155**2), 373.13, abs_tol=0.005)


def test_dice_of_two_known_cubes():
    a = cube(start=(6, 6, 6), size=8)
    b = cube(start=(10, 6, 6), size=8)  # overlap 4 x 8 x 8 = 256 of 512 each
    m = binary_metrics(b, a, spacing=(1, 1, 1))
    assert m["dice"] == pytest.approx(2 * 256 / (512 + 512))
    assert m["sensitivity"] == pytest.approx(256 / 512)
    n = a.size
    assert m["specificity"] == pytest.approx((n - 768) / (n - 512))
    assert m["accuracy"] == pytest.approx((n - 512) / n)  # 256 FP + 256 FN wrong


def test_identical_masks_are_perfect():
    a = cube()
    m = binary_metrics(a, a, spacing=(0.5, 1.0, 3.0))
    assert m == {"dice": 1.0, "hd95": 0.0, "hausdorff": 0.0, "sensitivity": 1.0,
                 "specificity": 1.0, "accuracy": 1.0}


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_hd95_and_hausdorff_of_shifted_cubes_with_anisotropic_spacing(axis, k):
    spacing = (2.0, 0.5, 1.25)
    gt = cube()
    start = [6, 6, 6]
    start[axis] += k
    pred = cube(start=tuple(start))
    m = binary_metrics(pred, gt, spacing)
    expected = k * spacing[axis]
    assert m["hausdorff"] == pytest.approx(expected)
    assert m["hd95"] == pytest.approx(expected)


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # A cube plus one far outlier voxel: Hausdorff sees the outlier, HD95 mostly not.
    gt = cube(shape=(40, 24, 24))
    pred = gt.copy()
    pred[36, 10, 10] = True  # 36 - 13 = 23 voxels beyond the cube's last face
    spacing = (1.5, 1.0, 1.0)
    m = binary_metrics(pred, gt, spacing)
    assert m["hausdorff"] == pytest.approx(23 * 1.5)
    pred_to_gt, gt_to_pred = metrics.surface_distances(pred, gt, spacing)
    directed = max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))
    assert m["hd95"] == pytest.approx(directed)
    assert m["hd95"] < m["hausdorff"]
    # The crop to the masks' bounding box must not change any distance.
    from scipy import ndimage
    structure = ndimage.generate_binary_structure(3, 1)
    surf_p = pred ^ ndimage.binary_erosion(pred, structure)
    surf_g = gt ^ ndimage.binary_erosion(gt, structure)
    full = ndimage.distance_transform_edt(~surf_g, sampling=spacing)[surf_p]
    np.testing.assert_allclose(np.sort(pred_to_gt), np.sort(full))


def test_mask_touching_the_volume_border():
    gt = np.zeros((10, 10, 10), bool)
    gt[:4, :4, :4] = True
    pred = np.zeros_like(gt)
    pred[:6, :4, :4] = True
    m = binary_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert m["hausdorff"] == pytest.approx(2.0)


@pytest.mark.parametrize("gt_empty,pred_empty", [(True, True), (True, False), (False, True)])
def test_empty_mask_conventions(gt_empty, pred_empty):
    full = cube()
    empty = np.zeros_like(full)
    gt = empty if gt_empty else full
    pred = empty if pred_empty else full
    m = binary_metrics(pred, gt, spacing=(1.0, 1.0, 1.0))
    if gt_empty and pred_empty:
        assert (m["dice"], m["hd95"], m["hausdorff"]) == (1.0, 0.0, 0.0)
        assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0
        assert m["accuracy"] == 1.0
    else:
        assert m["dice"] == 0.0
        assert m["hd95"] == EMPTY_MASK_DISTANCE_MM == m["hausdorff"]
        assert m["sensitivity"] == 0.0  # GT empty + prediction: 0 (else TP = 0)
        assert m["accuracy"] == pytest.approx(1 - 512 / full.size)
    assert all(math.isfinite(v) for v in m.values())


def test_specificity_when_gt_covers_every_voxel():
    gt = np.ones((4, 4, 4), bool)
    assert binary_metrics(gt, gt, (1, 1, 1))["specificity"] == 1.0
    pred = gt.copy()
    pred[0, 0, 0] = False
    assert binary_metrics(pred, gt, (1, 1, 1))["specificity"] == 0.0


def test_convention_text_states_the_rules():
    for phrase in ("373.13", "95th percentile", "medpy", "both empty", "sensitivity",
                   "erosion", "distance_transform_edt"):
        assert phrase.lower() in CONVENTION.lower(), phrase


def test_bad_inputs_name_the_value():
    a = cube()
    with pytest.raises(ValueError, match=r"\(24, 24, 24\).*\(24, 24, 23\)"):
        binary_metrics(a, a[..., :-1], (1, 1, 1))
    with pytest.raises(ValueError, match=r"spacing.*\(1.0, 1.0\)"):
        binary_metrics(a, a, (1, 1))
    with pytest.raises(ValueError, match=r"0.0"):
        binary_metrics(a, a, (1, 0, 1))


def brats_case():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[4:16, 4:16, 4:16] = 2  # edema
    gt[7:13, 7:13, 7:13] = 1  # core
    gt[9:11, 9:11, 9:11] = 4  # enhancing
    return gt


def test_score_case_regions_and_keys():
    gt = brats_case()
    pred = gt.copy()
    pred[pred == 4] = 1  # misses ET entirely, TC and WT unchanged
    row = score_case(pred, gt, (1.0, 1.0, 1.0), "brats")
    assert list(row) == [f"{r}_{m}" for r in ("WT", "TC", "ET") for m in METRIC_NAMES]
    assert row["WT_dice"] == 1.0 and row["TC_dice"] == 1.0
    assert row["ET_dice"] == 0.0 and row["ET_hd95"] == EMPTY_MASK_DISTANCE_MM
    # Accepts a LabelConvention too; regions come from labels.py.
    row2 = score_case(pred, gt, (1.0, 1.0, 1.0), get_label_convention("brats"))
    assert row2 == row
    chaos = score_case(gt > 0, gt > 0, (1, 1, 1), "chaos")
    assert list(chaos)[0] == "liver_dice" and chaos["liver_dice"] == 1.0


def test_summarize_shape_and_values():
    rows = [{"case": "a", "WT_dice": 0.5, "WT_hd95": 2.0},
            {"case": "b", "WT_dice": 1.0, "WT_hd95": 4.0},
            {"case": "c", "WT_dice": 0.0, "WT_hd95": 9.0}]
    s = summarize(rows)
    assert set(s) == {"WT"} and list(s["WT"]) == ["dice", "hd95"]
    assert s["WT"]["dice"] == {"mean": 0.5, "std": pytest.approx(np.std([0.5, 1, 0])),
                               "median": 0.5}
    assert s["WT"]["hd95"]["median"] == 4.0
    full = summarize([score_case(brats_case(), brats_case(), (1, 1, 1), "brats")])
    assert list(full) == ["WT", "TC", "ET"]
    for region in full.values():
        assert list(region) == list(METRIC_NAMES)
        for stats in region.values():
            assert set(stats) == {"mean", "std", "median"}
    json.dumps(full)
    with pytest.raises(ValueError, match="none"):
        summarize([])


def test_write_scores(tmp_path):
    rows = [{"case": "x", **score_case(brats_case(), brats_case(), (1, 1, 1))}]
    paths = write_scores(tmp_path / "out", rows)
    header = (tmp_path / "out" / "cases.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["case", "WT_dice", "WT_hd95"]
    assert json.loads(open(paths["summary"]).read())["ET"]["dice"]["mean"] == 1.0
    assert "373.13" in open(paths["convention"]).read()
    assert "WT" in metrics.format_summary_table(summarize(rows))


# ------------------------------------------------------------------ Keras metrics --


def one_hot_probs(classes, num_classes=4):
    return np.eye(num_classes, dtype="float32")[classes]


def test_region_dice_matches_numpy_dice_accumulated_over_batches():
    rng = np.random.default_rng(0)
    conv = get_label_convention("brats")
    gt_labels = rng.choice(conv.labels, size=(4, 6, 6, 6))
    pred_labels = np.where(rng.random(gt_labels.shape) < 0.7, gt_labels,
                           rng.choice(conv.labels, size=gt_labels.shape))
    y_true = conv.to_classes(gt_labels).astype("int32")
    y_pred = one_hot_probs(conv.to_classes(pred_labels)) * 0.9 + 0.025
    dice_metrics = {m.name: m for m in region_dice_metrics(conv)}
    assert list(dice_metrics) == ["dice_WT", "dice_TC", "dice_ET"]
    for i in (0, 2):  # two batches of 2, the second with a trailing channel axis
        for m in dice_metrics.values():
            yt = y_true[i:i + 2] if i == 0 else y_true[i:i + 2, ..., None]
            m.update_state(yt, y_pred[i:i + 2])
    for region in ("WT", "TC", "ET"):
        expected = binary_metrics(np.isin(pred_labels, conv.regions[region]),
                                  np.isin(gt_labels, conv.regions[region]),
                                  (1, 1, 1, 1))["dice"]  # the batch as a 4D volume
        assert float(dice_metrics[f"dice_{region}"].result()) == pytest.approx(expected,
                                                                              rel=1e-5)
    m = dice_metrics["dice_WT"]
    m.reset_state()
    assert float(m.result()) == 1.0  # empty region in both: 1, as in evaluation


def test_region_dice_sample_weight_and_config_round_trip():
    y_true = np.zeros((2, 2, 2, 2), "int32")
    y_true[0] = 1
    y_pred = one_hot_probs(np.zeros((2, 2, 2, 2), "int32"), 2)
    y_pred[1] = [0.0, 1.0]  # sample 1 predicts foreground where there is none
    m = RegionDice((1,), name="dice_fg")
    m.update_state(y_true, y_pred, sample_weight=np.array([1.0, 0.0]))
    assert float(m.result()) == pytest.approx(0.0)  # only sample 0 (a miss) counts
    config = m.get_config()
    assert json.loads(json.dumps(config)) == config
    clone = RegionDice.from_config(config)
    assert (clone.name, clone.class_ids) == ("dice_fg", (1,))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(restored, RegionDice) and restored.class_ids == (1,)
    with pytest.raises(ValueError, match=r"-1"):
        RegionDice((-1,))


def test_region_dice_in_fit_equals_binary_metrics():
    """Inside ``fit`` the metric reports the Dice of the step's own predictions over the
    batch, as `binary_metrics` computes it on the same predictions (learning rate 0, so
    the step does not move them; one batch of two samples, one step)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 6, 1))
    probs = keras.layers.Conv3D(3, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, probs)
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "sparse_categorical_crossentropy",
                  metrics=[RegionDice((1, 2), name="dice_fg")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=(2, 6, 6, 6)).astype("int32")
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    expected = binary_metrics(np.isin(predicted, (1, 2)), np.isin(y, (1, 2)), (1, 1, 1, 1))["dice"]
    assert 0.05 < expected < 0.95  # a non-trivial value, so agreement means something
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert history.history["dice_fg"][0] == pytest.approx(expected, rel=1e-6)


def test_lesion_and_nsd_columns_are_summarised_and_documented():
    # "ET_lesion_dice" is region ET, metric lesion_dice (not region "ET_lesion").
    rows = [{"case": "a", "ET_lesion_dice": 0.5, "ET_lesion_hd95": 187.0, "ET_nsd": 1.0,
             "ET_dice": 0.9}, {"case": "b", "ET_lesion_dice": 1.0, "ET_lesion_hd95": 0.0,
                               "ET_nsd": 0.5, "ET_dice": 1.0}]
    s = summarize(rows)
    assert list(s) == ["ET"] and list(s["ET"]) == ["dice", "nsd", "lesion_dice", "lesion_hd95"]
    assert s["ET"]["lesion_hd95"]["mean"] == 93.5 and s["ET"]["nsd"]["median"] == 0.75
    assert "lesion_dice" in metrics.format_summary_table(s)
    for phrase in ("26-connected", "374 mm", "50 mm^3", "20 mm^3", "dilated by 3", "Nikolov",
                   "at a tolerance of 1 mm", "surfel", "false positive"):
        assert phrase in CONVENTION, phrase
    assert "at a tolerance of 2 mm" in metrics.convention_text(2.0)
    with pytest.raises(ValueError, match="tolerance.*nan"):
        metrics.convention_text(float("nan"))
    chaos = score_case(brats_case() > 0, brats_case() > 0, (1, 1, 1), "chaos")
    assert list(chaos) == [f"liver_{m}" for m in METRIC_NAMES if "lesion" not in m]

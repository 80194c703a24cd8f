"""BraTS 2023 lesion-wise Dice / HD95, NSD and label conventions by tissue, on hand-made
masks whose answers are worked out in the comments."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from missu_keras.labels import LABEL_CONVENTIONS, get_label_convention, label_mapping, relabel
from missu_keras.lesionwise import (BRATS_2023_GLI, MISS_DISTANCE_MM, LesionCriteria,
                                    criteria_for, lesion_wise)
from missu_keras.metrics import score_case
from missu_keras.surface import hausdorff_percentile, normalized_surface_dice

ONE_MM = (1.0, 1.0, 1.0)


def cubes(*starts, size=4, shape=(40, 16, 16)):
    """Cubes of ``size`` voxels a side at the given (x, y, z) corners."""
    mask = np.zeros(shape, bool)
    for start in starts:
        mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def counts(result):
    return result.true_positives, result.false_negatives, result.false_positives


def test_two_gt_lesions_one_missed():
    # Two 64 mm^3 lesions (> 50) 20 voxels apart; the prediction finds the first exactly:
    # Dice (1 + 0) / 2, HD95 (0 + 374) / 2.
    gt = cubes((2, 2, 2), (24, 2, 2))
    r = lesion_wise(cubes((2, 2, 2)), gt, ONE_MM)
    assert (r.dice, r.hd95, counts(r)) == (0.5, 187.0, (1, 1, 0))


def test_a_spurious_blob_counts_as_a_lesion_of_dice_0():
    # One lesion found exactly, plus a 2x2x2 blob far from it (any size counts):
    # Dice 1 / (1 lesion + 1 false positive), HD95 (0 + 374) / 2; the whole-volume Dice
    # barely notices it: 2 * 64 / (72 + 64).
    gt = cubes((2, 2, 2))
    pred = gt | cubes((30, 10, 10), size=2)
    r = lesion_wise(pred, gt, ONE_MM)
    assert (r.dice, r.hd95, counts(r)) == (0.5, 187.0, (1, 0, 1))
    legacy = score_case(pred.astype(np.uint8) * 4, gt.astype(np.uint8) * 4, ONE_MM, "brats")
    assert legacy["ET_dice"] == pytest.approx(128 / 136)
    assert legacy["ET_lesion_dice"] == 0.5 and legacy["ET_lesion_hd95"] == 187.0


def test_lesions_closer_than_the_dilation_merge():
    # Cubes at x 2..5 and 10..13 (a gap of 4 voxels): each dilated by 3 voxels they
    # touch, so they are ONE lesion of 128 voxels. The prediction is the first cube only:
    # Dice 2 * 64 / (64 + 128) = 2/3, no lesion missed. HD95: the second cube's surface
    # voxels lie 5 (16 voxels), 6 (12), 7 (12) and 8 mm (16) from the first cube's face
    # at x = 5, the other 56 at 0; the 95th percentile of those 112 distances is 8.
    gt = cubes((2, 2, 2), (10, 2, 2))
    r = lesion_wise(cubes((2, 2, 2)), gt, ONE_MM)
    assert (r.dice, r.hd95, counts(r)) == (pytest.approx(2 / 3), 8.0, (1, 0, 0))
    # A gap of 7 voxels (x 2..5 and 13..16) is beyond 3 + 3: two lesions, one missed.
    apart = lesion_wise(cubes((2, 2, 2)), cubes((2, 2, 2), (13, 2, 2)), ONE_MM)
    assert (apart.dice, apart.hd95, counts(apart)) == (0.5, 187.0, (1, 1, 0))
    # Without dilation the touching cubes of the first case are two lesions too.
    undilated = lesion_wise(cubes((2, 2, 2)), gt, ONE_MM, LesionCriteria(dilation=0))
    assert counts(undilated) == (1, 1, 0)


def test_one_prediction_touching_two_lesions_matches_both():
    # One predicted bar over both far-apart lesions (x 2..29): it is each lesion's match,
    # so no lesion is missed and nothing is a false positive; each lesion's Dice is
    # 2 * 64 / (64 + 448).
    gt = cubes((2, 2, 2), (26, 2, 2))
    pred = np.zeros_like(gt)
    pred[2:30, 2:6, 2:6] = True
    r = lesion_wise(pred, gt, ONE_MM)
    assert counts(r) == (2, 0, 0) and r.dice == pytest.approx(128 / 512)


def test_small_lesions_are_left_out_by_volume_in_mm3():
    # A missed 27-voxel lesion: 27 mm^3 <= 50 at 1 mm, so it is not counted (nothing
    # counted at all: Dice 1, HD95 0); at 2 mm voxels it is 216 mm^3 and counts as missed.
    gt = cubes((2, 2, 2), size=3)
    empty = np.zeros_like(gt)
    assert lesion_wise(empty, gt, ONE_MM) == lesion_wise(empty, empty, ONE_MM)
    assert (lesion_wise(empty, empty, ONE_MM).dice, lesion_wise(empty, empty, ONE_MM).hd95) == (1.0, 0.0)
    big = lesion_wise(empty, gt, (2.0, 2.0, 2.0))
    assert (big.dice, big.hd95, counts(big)) == (0.0, MISS_DISTANCE_MM, (0, 1, 0))


@pytest.mark.parametrize("gt_empty,pred_empty,dice,hd95", [
    (True, True, 1.0, 0.0), (True, False, 0.0, 374.0), (False, True, 0.0, 374.0)])
def test_empty_gt_and_empty_prediction_per_region(gt_empty, pred_empty, dice, hd95):
    # A BraTS case whose ET is present or absent in each of GT and prediction; WT and TC
    # are identical in both.
    gt = np.zeros((30, 30, 30), np.uint8)
    gt[5:25, 5:25, 5:25] = 2
    gt[10:20, 10:20, 10:20] = 1
    pred = gt.copy()
    if not gt_empty:
        gt[12:17, 12:17, 12:17] = 4
    if not pred_empty:
        pred[12:17, 12:17, 12:17] = 4
    row = score_case(pred, gt, ONE_MM, "brats")
    assert (row["ET_lesion_dice"], row["ET_lesion_hd95"]) == (dice, hd95)
    assert row["WT_lesion_dice"] == 1.0 and row["WT_lesion_hd95"] == 0.0
    assert row["ET_nsd"] == dice  # NSD follows the Dice rule for empty masks


def brats2024_case():
    """A BraTS 2024 label map: SNFH 2 around NETC 1 and ET 3, a resection cavity 4 apart."""
    gt = np.zeros((40, 30, 30), np.uint8)
    gt[4:24, 5:25, 5:25] = 2
    gt[8:20, 9:21, 9:21] = 1
    gt[11:17, 12:18, 12:18] = 3
    gt[28:36, 10:18, 10:18] = 4
    return gt


def test_a_2024_label_map_with_resection_cavity_is_scored():
    gt = brats2024_case()
    pred = gt.copy()
    pred[pred == 4] = 0
    pred[30:36, 10:18, 10:18] = 4  # RC: the cavity's 6 of 8 slices
    row = score_case(pred, gt, ONE_MM, "brats2024")
    regions = ("WT", "TC", "ET", "NETC", "SNFH", "RC")
    assert [k[:-5] for k in row if k.endswith("_dice") and "lesion" not in k] == list(regions)
    assert row["RC_dice"] == pytest.approx(2 * 384 / (384 + 512))  # 6x8x8 vs 8x8x8
    assert row["RC_lesion_dice"] == row["RC_dice"]  # one lesion, one match
    assert row["WT_dice"] == row["NETC_dice"] == row["SNFH_dice"] == row["ET_dice"] == 1.0
    # RC (label 4) is neither whole tumour nor tumour core.
    assert np.array_equal(get_label_convention("brats2024").region_masks(gt)["WT"], (gt > 0) & (gt < 4))
    # BraTS 2024 counts ET lesions above 10 mm^3, BraTS 2023 above 50: a missed ET
    # lesion of 3x2x2 = 12 voxels only counts in 2024.
    small = np.zeros((20, 20, 20), np.uint8)
    small[5:8, 5:7, 5:7] = 3
    assert score_case(np.zeros_like(small), small, ONE_MM, "brats2024")["ET_lesion_dice"] == 0.0
    assert score_case(np.zeros_like(small), small, ONE_MM, "brats2023")["ET_lesion_dice"] == 1.0
    assert criteria_for("brats2023", "ET") == BRATS_2023_GLI and criteria_for("chaos", "liver") is None


def test_nsd_known_values():
    # A 4-voxel cube against itself shifted by one voxel: of the 56 surface voxels of
    # each, 36 coincide with the other's surface and 20 lie one voxel from it.
    gt = cubes((4, 4, 4), shape=(12, 12, 12))
    pred = np.roll(gt, 1, axis=0)
    assert normalized_surface_dice(pred, gt, ONE_MM, 1.0) == 1.0
    assert normalized_surface_dice(pred, gt, ONE_MM, 0.5) == pytest.approx(72 / 112)
    # With 2 mm voxels along the shift, of those 20 the 16 of the end face are 2 mm away,
    # but the 4 inner voxels of the other end face are 1 mm (one voxel sideways) from
    # the other cube's side: (36 + 4) of 56 on each side within 1 mm.
    assert normalized_surface_dice(pred, gt, (2.0, 1.0, 1.0), 1.0) == pytest.approx(80 / 112)
    assert normalized_surface_dice(pred, gt, (2.0, 1.0, 1.0), 2.0) == 1.0
    empty = np.zeros_like(gt)
    assert normalized_surface_dice(empty, empty, ONE_MM, 1.0) == 1.0
    assert normalized_surface_dice(pred, empty, ONE_MM, 1.0) == 0.0
    row = score_case(pred.astype(np.uint8) * 4, gt.astype(np.uint8) * 4, ONE_MM, "brats",
                     nsd_tolerance_mm=0.5)
    assert row["ET_nsd"] == pytest.approx(72 / 112)
    with pytest.raises(ValueError, match="tolerance.*-1"):
        normalized_surface_dice(pred, gt, ONE_MM, -1.0)


def all_labels(name):
    conv = get_label_convention(name)
    return np.array(conv.labels * 3, dtype=np.uint8).reshape(-1, 1)


@pytest.mark.parametrize("source,target", list(itertools.permutations(sorted(LABEL_CONVENTIONS), 2)))
def test_relabel_by_tissue_between_every_pair_of_conventions(source, target):
    src, dst = get_label_convention(source), get_label_convention(target)
    labels = all_labels(source)
    missing = [src.tissues[lab] for lab in src.labels if src.tissues[lab] not in dst.tissues.values()]
    if missing:  # e.g. brats2024's RC as brats2021, any BraTS tissue as chaos
        with pytest.raises(ValueError, match=rf"'{src.name}' labels cannot be mapped to "
                                             rf"'{dst.name}': .*\({missing[0]}"):
            relabel(labels, source, target)
        return
    out = relabel(labels, source, target)
    for lab, new in zip(labels.ravel(), out.ravel()):
        assert dst.tissues[int(new)] == src.tissues[int(lab)]  # the same tissue
    if all(t in src.tissues.values() for t in dst.tissues.values()):
        np.testing.assert_array_equal(relabel(out, target, source), labels)  # round trip


def test_relabel_known_tables_and_dataset_conventions():
    assert label_mapping("brats2021", "brats2023") == {0: 0, 1: 1, 2: 2, 4: 3}
    assert label_mapping("brats2021", "brats2024") == {0: 0, 1: 1, 2: 2, 4: 3}  # RC never occurs
    assert label_mapping("brats2023", "msd_brats") == {0: 0, 1: 2, 2: 1, 3: 3}
    x = np.array([0, 1, 2, 4, 4, 1], np.uint8)
    np.testing.assert_array_equal(relabel(relabel(x, "brats2021", "brats2023"), "brats2023", "brats2021"), x)
    with pytest.raises(ValueError, match="label 4 .*resection_cavity.*'brats'"):
        label_mapping("brats2024", "brats2021")
    with pytest.raises(ValueError, match=r"found label values \[3\]"):
        relabel(np.array([0, 3]), "brats2021", "brats2023")
    # A dataset-defined convention (no tissue table): itself, or class by class when the
    # class counts agree; else an error.
    spleen = {"name": "Dataset009_Spleen", "labels": [0, 1], "regions": {"spleen": [1]}}
    assert get_label_convention(spleen).to_dict() == spleen  # stored form unchanged
    np.testing.assert_array_equal(relabel(np.array([0, 1]), spleen, spleen), [0, 1])
    np.testing.assert_array_equal(relabel(np.array([0, 1]), spleen, "chaos"), [0, 1])
    with pytest.raises(ValueError, match="cannot be mapped to 'brats'"):
        relabel(np.array([0, 1]), spleen, "brats")
    assert get_label_convention("brats2021") is get_label_convention("brats")


def brute_force_lesion_wise(pred, gt, spacing, dilation, min_volume_mm3):
    """The organisers' procedure done the slow way (whole volume per lesion), as a check
    of the bounding-box implementation; HD95 by our percentile rule."""
    s26, s18 = np.ones((3, 3, 3), bool), ndimage.generate_binary_structure(3, 2)
    dilate = (lambda m: ndimage.binary_dilation(m, s18, iterations=dilation)) if dilation else (lambda m: m)
    pred_cc, n_pred = ndimage.label(pred, s26)
    lesions = np.where(gt, ndimage.label(dilate(gt), s26)[0], 0)
    matched, kept = set(), []
    for k in range(1, lesions.max() + 1):
        g = lesions == k
        hits = set(np.unique(pred_cc[dilate(g)]).tolist()) - {0}
        matched |= hits
        p = np.isin(pred_cc, list(hits))
        if g.sum() * np.prod(spacing) > min_volume_mm3:
            hd = hausdorff_percentile(p, g, spacing, 95.0) if hits else MISS_DISTANCE_MM
            kept.append((2 * (p & g).sum() / (p.sum() + g.sum()), hd, bool(hits)))
    fp = n_pred - len(matched)
    n = len(kept) + fp
    if n == 0:
        return 1.0, 0.0, 0, 0, 0
    return (sum(d for d, _, _ in kept) / n, (sum(h for _, h, _ in kept) + fp * MISS_DISTANCE_MM) / n,
            sum(hit for _, _, hit in kept), sum(not hit for _, _, hit in kept), fp)


@pytest.mark.parametrize("seed", range(6))
def test_lesion_wise_equals_the_brute_force_procedure_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 28, 24)
    gt = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.3
    pred = np.roll(gt, rng.integers(-2, 3), axis=int(rng.integers(3)))
    pred = (pred | (ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.4)) & (rng.random(shape) > 0.05)
    spacing = tuple(float(s) for s in rng.choice([1.0, 1.5, 2.0], 3))
    criteria = LesionCriteria(int(rng.integers(0, 4)), float(rng.choice([2.0, 10.0, 50.0])))
    r = lesion_wise(pred, gt, spacing, criteria)
    want = brute_force_lesion_wise(pred, gt, spacing, criteria.dilation, criteria.min_volume_mm3)
    assert (r.dice, r.hd95) == (pytest.approx(want[0]), pytest.approx(want[1]))
    assert counts(r) == want[2:]

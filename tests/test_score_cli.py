"""``missu-keras score`` on small NIfTI files written in tmp_path."""

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from missu_keras import scoring
from missu_keras.cli import main
from missu_keras.labels import relabel
from missu_keras.metrics import EMPTY_MASK_DISTANCE_MM, METRIC_NAMES, score_case

SPACING = (1.0, 1.5, 2.0)


def save(path, data, zooms=SPACING):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.asarray(data, np.uint8), affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def brats_labels(shift=0, with_et=True):
    seg = np.zeros((16, 14, 12), np.uint8)
    seg[3 + shift:12 + shift, 3:11, 2:10] = 2
    seg[5 + shift:10 + shift, 5:9, 4:8] = 1
    if with_et:
        seg[6 + shift:8 + shift, 6:8, 5:7] = 4
    return seg


def run(argv):
    return main(argv)


def digests(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    cases = {
        "BraTS2021_00001": (brats_labels(), brats_labels(shift=1)),
        "BraTS2021_00002": (brats_labels(), brats_labels()),
        "BraTS2021_00003": (brats_labels(with_et=False), brats_labels()),
    }
    for i, (case, (g, p)) in enumerate(cases.items()):
        # BraTS layout with modalities next to the seg file.
        save(gt / case / f"{case}_seg.nii.gz", g)
        save(gt / case / f"{case}_flair.nii.gz", np.ones_like(g))
        # Three prediction namings: flat <case>.nii.gz, flat _seg, <case>/ folder.
        name = [f"{case}.nii.gz", f"{case}_seg.nii.gz", f"{case}/{case}.nii.gz"][i]
        save(pred / name, p)
    return gt, pred, cases


def test_score_writes_csv_and_summary_and_leaves_inputs_alone(dataset, tmp_path, capsys):
    gt, pred, cases = dataset
    before = {**digests(gt), **digests(pred)}
    out = tmp_path / "out"
    assert run(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    assert {**digests(gt), **digests(pred)} == before

    with open(out / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    expected_columns = ["case"] + [f"{r}_{m}" for r in ("WT", "TC", "ET") for m in METRIC_NAMES]
    assert list(rows[0]) == expected_columns
    assert [r["case"] for r in rows] == sorted(cases)
    by_case = {r["case"]: r for r in rows}
    for case, (g, p) in cases.items():
        expected = score_case(p, g, SPACING, "brats")
        for key, value in expected.items():
            assert float(by_case[case][key]) == pytest.approx(value), (case, key)
    assert float(by_case["BraTS2021_00001"]["WT_hausdorff"]) == pytest.approx(1.0)
    assert float(by_case["BraTS2021_00002"]["ET_dice"]) == 1.0
    assert float(by_case["BraTS2021_00003"]["ET_hd95"]) == EMPTY_MASK_DISTANCE_MM

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["WT", "TC", "ET"]
    for region in summary.values():
        assert list(region) == list(METRIC_NAMES)
        for stats in region.values():
            assert set(stats) == {"mean", "std", "median"}
    assert summary["ET"]["dice"]["median"] == pytest.approx(
        np.median([float(r["ET_dice"]) for r in rows]))

    printed = capsys.readouterr().out
    assert "Scored 3 case(s)" in printed
    assert "373.13" in printed and "95th percentile" in printed  # the convention
    assert "WT" in printed and "hd95" in printed  # the table
    assert (out / "convention.txt").exists()


def test_unmatched_prediction_is_an_error_naming_the_file(dataset, tmp_path, capsys):
    gt, pred, _ = dataset
    save(pred / "BraTS2021_99999.nii.gz", brats_labels())
    code = run(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "BraTS2021_99999" in err and "no ground truth" in err
    assert not (tmp_path / "o").exists()


def test_missing_prediction_is_reported_or_an_error_with_require_all(dataset, tmp_path,
                                                                     capsys):
    gt, pred, _ = dataset
    save(gt / "BraTS2021_00004" / "BraTS2021_00004_seg.nii.gz", brats_labels())
    args = ["score", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o")]
    assert run(args) == 0
    assert "1 ground-truth case(s) without a prediction" in capsys.readouterr().out
    assert run(args + ["--require-all", "--overwrite"]) == 2  # the earlier results: replaced
    assert "BraTS2021_00004" in capsys.readouterr().err


def test_shape_mismatch_names_both_files(dataset, tmp_path, capsys):
    gt, pred, _ = dataset
    save(pred / "BraTS2021_00002_seg.nii.gz", brats_labels()[:, :, :-1])
    code = run(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "BraTS2021_00002_seg.nii.gz" in err and "(16, 14, 11)" in err
    assert "BraTS2021_00002/BraTS2021_00002_seg.nii.gz" in err and "(16, 14, 12)" in err


def test_labels_outside_the_convention_name_the_file(tmp_path, capsys):
    save(tmp_path / "gt" / "c1_seg.nii.gz", brats_labels())
    bad = brats_labels()
    bad[bad == 4] = 3  # a BraTS 2023 prediction scored with the 2021 convention
    save(tmp_path / "pred" / "c1.nii.gz", bad)
    code = run(["score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "c1.nii.gz" in err and "[3]" in err
    code = run(["score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                "--out", str(tmp_path / "o"), "--convention", "brats2023"])
    assert code == 2  # now the GT's label 4 is the one out of place
    assert "c1_seg.nii.gz" in capsys.readouterr().err


def test_index_segmentations_layouts(tmp_path):
    seg = brats_labels()
    # BraTS 2019 nesting, BraTS 2023 hyphen naming, a folder with seg.nii.gz.
    save(tmp_path / "HGG" / "A" / "A_seg.nii.gz", seg)
    save(tmp_path / "HGG" / "A" / "A_t1ce.nii.gz", seg)
    save(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz", seg)
    save(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz", seg)
    save(tmp_path / "C" / "seg.nii", seg)
    save(tmp_path / "D" / "D.nii.gz", seg)
    save(tmp_path / "D" / "D_probabilities.nii.gz", seg)
    save(tmp_path / "flat" / "E.nii.gz", seg)
    save(tmp_path / "flat" / "E_prob.nii.gz", seg)
    (tmp_path / "flat" / "notes.txt").write_text("not a volume")
    found = scoring.index_segmentations(tmp_path)
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in found.items()} == {
        "A": "HGG/A/A_seg.nii.gz",
        "BraTS-GLI-00000-000": "BraTS-GLI-00000-000/BraTS-GLI-00000-000-seg.nii.gz",
        "C": "C/seg.nii",
        "D": "D/D.nii.gz",
        "E": "flat/E.nii.gz",
    }
    save(tmp_path / "flat" / "E_seg.nii.gz", seg)
    with pytest.raises(ValueError, match=r"two segmentation files for case 'E'"):
        scoring.index_segmentations(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scoring.index_segmentations(tmp_path / "nowhere")


def test_a_2023_relabelled_output_scores_like_the_2021_one(dataset, tmp_path):
    # The same predictions and ground truths written in the 2023 labels (ET = 3, through
    # labels.relabel) and scored with --convention brats2023 give the 2021 numbers.
    gt, pred, cases = dataset
    for case, (g, p) in cases.items():
        save(tmp_path / "gt23" / f"{case}-seg.nii.gz", relabel(g, "brats2021", "brats2023"))
        save(tmp_path / "pred23" / f"{case}.nii.gz", relabel(p, "brats2021", "brats2023"))
    assert run(["score", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o21"),
                "--convention", "brats2021"]) == 0
    assert run(["score", "--pred", str(tmp_path / "pred23"), "--gt", str(tmp_path / "gt23"),
                "--out", str(tmp_path / "o23"), "--convention", "brats2023"]) == 0
    scores21 = (tmp_path / "o21" / "cases.csv").read_text()
    assert (tmp_path / "o23" / "cases.csv").read_text() == scores21
    assert "ET_lesion_dice" in scores21 and "ET_nsd" in scores21
    # BraTS2021_00001's prediction is shifted by one voxel: not perfect, lesion-wise too.
    row = next(r for r in csv.DictReader(open(tmp_path / "o21" / "cases.csv"))
               if r["case"] == "BraTS2021_00001")
    assert 0 < float(row["WT_lesion_dice"]) < 1 and float(row["WT_nsd"]) == 1.0  # 1 voxel = 1 mm


def test_brats2024_labels_are_scored_with_their_convention(tmp_path, capsys):
    # A 2024 label map (ET = 3, RC = 4): refused by the 2021 convention (3 is no label
    # there), scored with --convention brats2024, RC included.
    seg = brats_labels()
    seg[seg == 4] = 3
    seg[13:16, 10:14, 8:12] = 4  # a resection cavity
    save(tmp_path / "gt" / "c1_seg.nii.gz", seg)
    save(tmp_path / "pred" / "c1.nii.gz", seg)
    args = ["score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert run(args + ["--out", str(tmp_path / "o")]) == 2  # brats: label 3 out of place
    assert "[3]" in capsys.readouterr().err
    assert run(args + ["--out", str(tmp_path / "o"), "--convention", "brats2024",
                       "--nsd-tolerance", "2.5"]) == 0
    row = next(csv.DictReader(open(tmp_path / "o" / "cases.csv")))
    assert float(row["RC_dice"]) == 1.0 and float(row["RC_lesion_dice"]) == 1.0
    assert float(row["NETC_nsd"]) == 1.0 and "SNFH_lesion_hd95" in row
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(summary) == ["WT", "TC", "ET", "NETC", "SNFH", "RC"]
    assert list(summary["RC"]) == list(METRIC_NAMES)
    convention = (tmp_path / "o" / "convention.txt").read_text()
    assert "at a tolerance of 2.5 mm" in convention and "374 mm" in convention
    printed = capsys.readouterr().out
    assert "lesion_dice" in printed and "at a tolerance of 2.5 mm" in printed

"""`missu-keras predict` / `evaluate` and the `Segmenter` behind them."""

import dataclasses
import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import missu_keras
from missu_keras import cli
from missu_keras.data import (PreprocessingConfig, find_brats_cases, preprocess_case,
                              restore_labels, write_synthetic_brats)
from missu_keras.inference import SlidingWindowInferer
from missu_keras.labels import relabel
from missu_keras.metrics import score_case
from missu_keras.prediction import Segmenter, load_segmenter
from tests.conftest import NO_DROPOUT, TINY

SHAPE = (40, 36, 28)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    write_synthetic_brats(root / "data", num_cases=2, seed=4, shape=SHAPE)
    preprocessing = PreprocessingConfig.brats(patch_size=32)
    model = missu_keras.MISSU.from_preset("tiny", **TINY, **NO_DROPOUT,
                                          preprocessing=preprocessing.to_dict())
    model.save(root / "model.keras")
    return root, model, preprocessing


def test_predict_a_case_folder_keeps_grid_affine_and_header(setup, tmp_path):
    root, model, _ = setup
    before = _digest(root / "data")
    case = find_brats_cases(root / "data")[0]
    assert cli.main(["predict", str(case.directory), "--out", str(tmp_path / "pred"),
                     "--model", str(root / "model.keras"), "--probabilities"]) == 0
    out = nib.load(tmp_path / "pred" / f"{case.case_id}.nii.gz")
    ref = nib.load(case.reference_path)
    labels = np.asarray(out.dataobj)
    assert labels.shape == ref.shape == SHAPE
    np.testing.assert_allclose(out.affine, ref.affine)
    assert out.header.get_data_dtype() == np.uint8
    assert out.header["pixdim"].tolist() == ref.header["pixdim"].tolist()
    assert out.header.get_xyzt_units() == ref.header.get_xyzt_units()
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    prob_img = nib.load(tmp_path / "pred" / f"{case.case_id}_probabilities.nii.gz")
    assert prob_img.header.get_data_dtype() == np.uint16  # 16 bits a value, read as floats
    probs = np.asarray(prob_img.dataobj)
    assert probs.shape == SHAPE + (4,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[probs.argmax(-1)], labels)
    # The same labels as the sliding window run by hand on the preprocessed case.
    pre = preprocess_case(case.load(), PreprocessingConfig.brats(patch_size=32))
    probs_ref = SlidingWindowInferer(32, overlap=0.5)(model.inference_model(), pre.image)
    np.testing.assert_array_equal(restore_labels(probs_ref.argmax(-1), pre.box, "brats"), labels)
    assert _digest(root / "data") == before  # inputs untouched


def test_predict_never_overwrites_unless_asked(setup, tmp_path, capsys):
    root, _, _ = setup
    args = ["predict", str(root / "data"), "--out", str(tmp_path), "--model", str(root / "model.keras")]
    assert cli.main(args) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 2
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp
    assert cli.main(args + ["--overwrite"]) == 0


def test_predict_a_nifti_file_list(setup, tmp_path):
    root, _, preprocessing = setup
    case = find_brats_cases(root / "data")[1]
    files = [str(case.image_paths[m]) for m in preprocessing.modalities]
    written = missu_keras.prediction.predict(files, tmp_path, root / "model.keras", log=None)
    assert [p.name for p in written] == [f"{case.case_id}.nii.gz"]
    with pytest.raises(ValueError, match="expected 4 NIfTI files, one per modality"):
        missu_keras.prediction.predict(files[:3], tmp_path / "x", root / "model.keras", log=None)


def test_missing_modality_fails_naming_the_file(setup, tmp_path, capsys):
    root, _, _ = setup
    case = find_brats_cases(root / "data")[0]
    broken = tmp_path / "case"
    shutil.copytree(case.directory, broken / case.case_id)
    missing = broken / case.case_id / case.image_paths["t1"].name
    missing.unlink()
    assert cli.main(["predict", str(broken), "--out", str(tmp_path / "out"),
                     "--model", str(root / "model.keras")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "'t1'" in err
    assert not (tmp_path / "out" / f"{case.case_id}.nii.gz").exists()


def test_evaluate_writes_scores_and_summary(setup, tmp_path, capsys):
    root, _, _ = setup
    assert cli.main(["evaluate", str(root / "data"), "--out", str(tmp_path),
                     "--model", str(root / "model.keras"), "--save-predictions"]) == 0
    printed = capsys.readouterr().out
    assert "Scoring convention" in printed and "WT" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"WT", "TC", "ET"}
    for region in summary.values():
        assert set(region) == {"dice", "hd95", "hausdorff", "sensitivity", "specificity", "accuracy",
                               "nsd", "lesion_dice", "lesion_hd95"}
        for stats in region.values():
            assert set(stats) == {"mean", "std", "median"}
    header = (tmp_path / "cases.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["case", "WT_dice", "WT_hd95"]
    assert len((tmp_path / "cases.csv").read_text().splitlines()) == 3
    assert len(list((tmp_path / "predictions").glob("*.nii.gz"))) == 2


def test_segmenter_checks_the_model_against_the_preprocessing(setup):
    _, model, preprocessing = setup
    with pytest.raises(ValueError, match="takes 4 channels but the preprocessing lists 2"):
        Segmenter(model.inference_model(), PreprocessingConfig.chaos(patch_size=32))
    with pytest.raises(ValueError, match="precision must be"):
        Segmenter(model.inference_model(), preprocessing, precision="float16")
    with pytest.raises(FileNotFoundError, match="expected a missu-keras train output folder"):
        load_segmenter("no/such/model")
    seg = load_segmenter(model)
    assert seg.patch_size == (32, 32, 32) and seg.preprocessing == preprocessing


def test_prediction_ignores_a_broken_ground_truth(setup, tmp_path):
    root, model, _ = setup
    case = find_brats_cases(root / "data")[0]
    loaded = case.load()
    bad = dataclasses.replace(loaded, labels=np.full(loaded.labels.shape, 7, np.uint8))
    labels = Segmenter.from_model(model).segment(bad).labels
    assert labels.shape == SHAPE


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_segmenter_refuses_a_non_finite_image_naming_the_case(setup, bad, kind):
    """The same in-graph check as the SavedModel's signatures (tests/test_export.py),
    turned into a ValueError naming the case and its files."""
    root, model, _ = setup
    case = find_brats_cases(root / "data")[0]
    loaded = case.load()
    image = loaded.image.copy()
    image[5, 6, 7, 2] = bad
    with pytest.raises(ValueError, match=rf"case '{case.case_id}' \(.*flair.*\): image holds NaN "
                                         rf"or Inf values \(found {kind}\)"):
        Segmenter.from_model(model).segment(dataclasses.replace(loaded, image=image))


def test_predict_refuses_a_non_finite_file_naming_it(setup, tmp_path):
    root, _, _ = setup
    case = find_brats_cases(root / "data")[0]
    broken = tmp_path / "data" / case.case_id
    shutil.copytree(case.directory, broken)
    path = broken / case.image_paths["t1"].name
    img = nib.load(path)
    data = np.asarray(img.dataobj, np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)
    with pytest.raises(ValueError, match=rf"{path}.*non-finite.*NaN"):
        missu_keras.prediction.predict(broken, tmp_path / "out", root / "model.keras", log=None)
    assert not (tmp_path / "out" / f"{case.case_id}.nii.gz").exists()


def test_predict_output_labels_writes_another_convention_and_refuses_an_impossible_one(
        setup, tmp_path, capsys, monkeypatch):
    root, _, _ = setup
    case = find_brats_cases(root / "data")[0]
    args = ["predict", str(case.directory), "--model", str(root / "model.keras")]
    assert cli.main(args + ["--out", str(tmp_path / "p21")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "p23"), "--output-labels", "brats2023"]) == 0
    labels21 = np.asarray(nib.load(tmp_path / "p21" / f"{case.case_id}.nii.gz").dataobj)
    labels23 = np.asarray(nib.load(tmp_path / "p23" / f"{case.case_id}.nii.gz").dataobj)
    assert set(np.unique(labels23).tolist()) <= {0, 1, 2, 3}  # ET written as 3, not 4
    np.testing.assert_array_equal(relabel(labels23, "brats2023", "brats2021"), labels21)
    # Scored in its own convention, the 2023 output gives the 2021 output's numbers.
    gt = case.load().labels
    assert score_case(labels23, relabel(gt, "brats2021", "brats2023"), (1, 1, 1), "brats2023") == \
        score_case(labels21, gt, (1, 1, 1), "brats2021")
    # An impossible mapping (BraTS tissues as CHAOS liver) fails before any case is segmented.
    monkeypatch.setattr(missu_keras.prediction, "_predict_case",
                        lambda *a, **k: pytest.fail("a case was segmented"))
    assert cli.main(args + ["--out", str(tmp_path / "pc"), "--output-labels", "chaos"]) == 2
    err = capsys.readouterr().err
    assert "'brats' labels cannot be mapped to 'chaos'" in err and "necrosis" in err
    assert not (tmp_path / "pc").exists()

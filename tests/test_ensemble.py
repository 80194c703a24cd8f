"""Issue 16 items 1 and 6: an ensemble of models through ``predict``, ``evaluate`` and
``export`` (one SavedModel), the saved probabilities (16 bits a value in NIfTI) and the
voxelwise entropy (``--uncertainty``)."""

import csv
import json
import math

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import missu_keras
from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.data.io import (PROBABILITY_SCALE, quantize_probabilities, read_nifti,
                                 write_nifti)
from missu_keras.export import export_savedmodel, read_export_metadata
from missu_keras.inference import SegmenterEnsemble, labels_from_probabilities
from missu_keras.inference.uncertainty import (UNCERTAINTY_COLUMNS, entropy,
                                               entropy_by_correctness, max_entropy)
from missu_keras.evaluation import evaluate
from missu_keras.inference import Segmenter
from missu_keras.prediction import load_segmenter, predict
from tests.conftest import NO_DROPOUT, TINY
from tests.helpers import run_command

SHAPE = (40, 36, 28)
LABELS = np.array([0, 1, 2, 4])


def tiny_model(seed, **contract):
    """A tiny BraTS model whose last layer is scaled up (stands in for training: its
    argmax depends on the input, its probabilities are not all near 1/4)."""
    prep = PreprocessingConfig.from_dict({**PreprocessingConfig.brats(patch_size=32).to_dict(),
                                          **contract})
    keras.utils.set_random_seed(seed)
    model = missu_keras.MISSU.from_preset("tiny", **TINY, **NO_DROPOUT, preprocessing=prep.to_dict())
    kernel = [w for w in model.weights if "kernel" in w.path][-1]
    kernel.assign(kernel.numpy() * 30)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two cases; two models (in memory and saved as .keras files); their ensemble
    (each Segmenter traces its graphs once, ~8 s, so every test reuses these); the
    members' probabilities of the first case, each member run on its own."""
    root = tmp_path_factory.mktemp("ensemble")
    write_synthetic_brats(root / "data", num_cases=2, seed=6, shape=SHAPE)
    models = [tiny_model(seed) for seed in (1, 2)]
    paths = [str(root / f"m{i}.keras") for i in range(2)]
    for model, path in zip(models, paths):
        model.save(path)
    ensemble = SegmenterEnsemble([Segmenter.from_model(m) for m in models], paths)
    case = find_brats_cases(root / "data")[0]
    loaded = case.load()
    probs = [m.segment(loaded, return_probabilities=True).probabilities for m in ensemble.members]
    assert not np.allclose(probs[0], probs[1], atol=1e-3)  # two different models
    return root, models, paths, ensemble, case, loaded, (probs[0] + probs[1]) / np.float32(2)


# ------------------------------------------------------------------ pure NumPy --

def test_entropy_has_its_known_values_and_the_error_mask_is_the_dilated_foreground():
    for k in (2, 4):
        assert entropy(np.full((3, k), 1.0 / k)) == pytest.approx([math.log(k)] * 3, rel=1e-6)
        assert max_entropy(k) == pytest.approx(math.log(k))
    one_hot = np.eye(4)[[0, 3, 1]]
    assert entropy(one_hot).tolist() == [0.0, 0.0, 0.0]
    p = np.array([0.7, 0.2, 0.1, 0.0])
    assert entropy(p) == pytest.approx(-sum(x * math.log(x) for x in p if x > 0), rel=1e-6)
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[4:7, 4:7, 4:7] = 2
    pred = truth.copy()
    pred[4, 4, 4] = 0  # a missed voxel
    pred[4, 4, 8] = 4  # a spurious one, 2 voxels off the truth
    h = np.full(truth.shape, 0.2, np.float32)
    h[pred != truth] = 1.0
    h[0, 0, 0] = 50.0  # far from any foreground: outside the mask, never averaged
    out = entropy_by_correctness(h, pred, truth, dilation=1)
    assert set(out) == set(UNCERTAINTY_COLUMNS)
    assert out["entropy_wrong_mean"] == pytest.approx(1.0) and out["entropy_wrong_voxels"] == 2
    assert out["entropy_correct_mean"] == pytest.approx(0.2)
    union = (truth > 0) | (pred > 0)
    assert union.sum() < out["entropy_mask_voxels"] < truth.size
    empty = entropy_by_correctness(h, np.zeros_like(truth), np.zeros_like(truth))
    assert math.isnan(empty["entropy_correct_mean"]) and empty["entropy_mask_voxels"] == 0
    # summary.json: a column with no case to average is null, never a bare NaN (not JSON)
    import json

    from missu_keras.evaluation import _log_scores
    from missu_keras.inference.uncertainty import summarize_uncertainty

    summary = summarize_uncertainty([out, empty])
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["entropy_wrong_mean"] == {"mean": 1.0, "std": 0.0, "median": 1.0, "n": 1}
    none = summarize_uncertainty([empty])
    assert json.loads(json.dumps(none, allow_nan=False))["entropy_wrong_mean"]["mean"] is None
    logged = []
    _log_scores(logged.append, {}, {"cases": "c.csv", "summary": "s.json"}, none)
    assert any("mean entropy: n/a on correct voxels, n/a on wrong" in line for line in logged)


def test_probabilities_in_16_bits_keep_their_sum_and_argmax(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(20, 20, 20)).astype(np.float32)
    p[0, 0, 0] = [0.5, 0.5, 0.0, 0.0]  # an exact tie: argmax is the first class
    p[1, 0, 0] = [0.3, 0.30000001, 0.2, 0.19999999]  # rounds to a tie
    q = quantize_probabilities(p)
    assert q.dtype == np.uint16
    np.testing.assert_array_equal(q.argmax(-1), p.argmax(-1))
    path = write_nifti(tmp_path / "p.nii.gz", q, np.diag([2.0, 1, 1, 1]), slope=PROBABILITY_SCALE)
    img = nib.load(path)
    assert img.header.get_data_dtype() == np.uint16 and img.shape == (20, 20, 20, 4)
    read = img.get_fdata()
    np.testing.assert_allclose(read, p, atol=1.6 / 65535)  # half a step, one more where a tie is broken
    np.testing.assert_allclose(read.sum(-1), 1.0, atol=4 / 65535)
    np.testing.assert_array_equal(read.argmax(-1), p.argmax(-1))
    with pytest.raises(ValueError, match="a slope is for integer data; received float32"):
        write_nifti(tmp_path / "f.nii.gz", p, np.eye(4), slope=PROBABILITY_SCALE)


# ------------------------------------------------------- predict and evaluate --

def test_the_commands_pass_several_models_and_the_new_flags(monkeypatch, tmp_path):
    import missu_keras.evaluation
    import missu_keras.prediction

    calls = {}
    for module, name in ((missu_keras.prediction, "predict"), (missu_keras.evaluation, "evaluate")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: calls.setdefault(_name, (a, k)))
    run_command(["predict", "case", "--out", "o", "--model", "A", "--model", "B", "--tta",
                 "--probabilities", "--uncertainty"])
    run_command(["evaluate", "data", "--out", "o", "--model", "A", "--model", "B", "--tta",
                 "--uncertainty"])
    assert calls["predict"][0][2] == ["A", "B"] and calls["evaluate"][0][0] == ["A", "B"]
    for name in ("predict", "evaluate"):
        assert calls[name][1]["uncertainty"] is True and calls[name][1]["flip_tta"] is True
    assert calls["predict"][1]["save_probabilities"] is True
    calls.clear()
    run_command(["evaluate", "data", "--out", "o", "--model", "RUN"])  # one: as it always was
    assert calls["evaluate"][0][0] == "RUN" and calls["evaluate"][1]["uncertainty"] is False


def test_tta_reaches_every_member_and_a_built_segmenter_keeps_its_settings(setup):
    _, models, _, ensemble, _, _, _ = setup
    with_tta = load_segmenter(models, flip_tta=True)
    assert isinstance(with_tta, SegmenterEnsemble) and len(with_tta.members) == 2
    assert all(m.inferer.flip_tta for m in with_tta.members)
    assert load_segmenter(ensemble) is ensemble
    with pytest.raises(ValueError, match=r"SegmenterEnsemble already built keeps its own settings"):
        load_segmenter(ensemble, flip_tta=True)


def test_predict_an_ensemble_writes_the_mean_probabilities_and_their_entropy(setup, tmp_path):
    root, _, paths, ensemble, case, _, mean = setup
    predict(case.directory, tmp_path, model=ensemble, save_probabilities=True, uncertainty=True,
            log=None)
    ref = nib.load(case.reference_path)
    labels = np.asarray(nib.load(tmp_path / f"{case.case_id}.nii.gz").dataobj)
    np.testing.assert_array_equal(labels, labels_from_probabilities(mean, "brats").numpy())
    assert len(np.unique(labels)) > 1
    img = nib.load(tmp_path / f"{case.case_id}_probabilities.nii.gz")
    assert img.shape == SHAPE + (4,) and img.header.get_data_dtype() == np.uint16
    np.testing.assert_allclose(img.affine, ref.affine)
    probs = img.get_fdata()
    # the members' mean, within half a 1/65535 step (one more where a tie is broken)
    np.testing.assert_allclose(probs, mean, atol=1.6 / 65535)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=4 / 65535)
    np.testing.assert_array_equal(LABELS[probs.argmax(-1)], labels)
    h_img = nib.load(tmp_path / f"{case.case_id}_entropy.nii.gz")
    assert h_img.shape == SHAPE and h_img.header.get_data_dtype() == np.float32
    np.testing.assert_allclose(h_img.affine, ref.affine)
    h = h_img.get_fdata()
    np.testing.assert_allclose(h, entropy(mean), atol=1e-5)
    assert 0 <= h.min() and h.max() <= math.log(4) + 1e-6 and h.max() > 0.1


def test_evaluate_an_ensemble_reports_entropy_on_right_and_wrong_voxels(setup, tmp_path):
    root, _, paths, ensemble, case, loaded, mean = setup
    out = tmp_path / "scores"
    evaluate(ensemble, root / "data", out, uncertainty=True, save_predictions=True, log=None)
    with open(out / "cases.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert len(rows) == 2 and set(UNCERTAINTY_COLUMNS) <= set(next(iter(rows.values())))
    predicted = read_nifti(out / "predictions" / f"{case.case_id}.nii.gz", dtype=None)[0]
    np.testing.assert_array_equal(predicted, labels_from_probabilities(mean, "brats").numpy())
    expected = entropy_by_correctness(entropy(mean), predicted, loaded.labels)
    row = rows[case.case_id]
    assert int(row["entropy_wrong_voxels"]) == expected["entropy_wrong_voxels"] > 0
    assert int(row["entropy_mask_voxels"]) == expected["entropy_mask_voxels"]
    for column in ("entropy_correct_mean", "entropy_wrong_mean"):
        assert float(row[column]) == pytest.approx(expected[column], abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert "WT" in summary and summary["uncertainty"]["entropy_wrong_mean"]["n"] == 2
    values = [float(r["entropy_correct_mean"]) for r in rows.values()]
    assert summary["uncertainty"]["entropy_correct_mean"]["mean"] == pytest.approx(np.mean(values))
    assert "nats" in summary["uncertainty"]["convention"]


# ----------------------------------------------------- contracts and the export --

def test_members_with_different_contracts_are_refused_by_evaluate_and_export(setup, tmp_path):
    root, models, _, ensemble, _, _, _ = setup
    other_prep = PreprocessingConfig.from_dict({**models[0].preprocessing.to_dict(),
                                                "normalization": "zscore"})
    other = Segmenter(ensemble.members[1].model, other_prep)
    message = "disagree on the preprocessing field 'normalization'"
    with pytest.raises(ValueError, match=message + ": model 0 has 'zscore_nonzero', model 1 has 'zscore'"):
        evaluate([ensemble.members[0], other], root / "data", tmp_path / "scores", log=None)
    assert not (tmp_path / "scores").exists()  # refused before any work
    kept = models[1].preprocessing
    try:
        models[1].preprocessing = other_prep.to_dict()
        with pytest.raises(ValueError, match=message + ": A has 'zscore_nonzero', B has 'zscore'"):
            export_savedmodel(models, tmp_path / "export", member_names=["A", "B"], log=None)
    finally:
        models[1].preprocessing = kept
    assert not (tmp_path / "export").exists()
def test_an_ensemble_savedmodel_equals_the_python_ensemble(setup, tmp_path):
    _, models, paths, _, _, loaded, mean = setup
    assert run_command(["export", "--model", paths[0], "--model", paths[1], "--out",
                        str(tmp_path)]) == 0
    meta = read_export_metadata(tmp_path / "missu" / "1")
    assert meta["ensemble"]["members"] == paths and meta["preset"] is None
    assert meta["parameters"] == sum(m.inference_model().count_params() for m in models)
    # Grappler's optimisation of each loaded signature's first call costs ~8 s here and
    # changes nothing this test checks.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        check_signatures(tf.saved_model.load(str(tmp_path / "missu" / "1")), models, loaded, mean)
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


def check_signatures(served, models, loaded, mean):
    """Every signature of the exported ensemble gives what the Python ensemble gives."""
    expected = labels_from_probabilities(mean, "brats").numpy()
    volume = tf.constant(loaded.image.astype(np.float32))
    for name, inputs in (("segment_volume", {}), ("segment_scan", {"spacing": tf.ones([3])})):
        got = served.signatures[name](volume=volume, **inputs)["labels"].numpy()
        np.testing.assert_array_equal(got, expected, err_msg=name)
    patch = tf.random.stateless_normal([1, 32, 32, 32, 4], seed=[1, 2])
    both = [m.inference_model()(patch, training=False) for m in models]
    both = [b["probabilities"] if isinstance(b, dict) else b for b in both]
    np.testing.assert_allclose(served.signatures["serving_default"](image=patch)["probabilities"],
                               (both[0] + both[1]) / 2, atol=1e-5)

"""Issue 15 item 3, cross-validation: the split by case ID (``splits.json``), one run folder
per fold (resumed on its own, one shared cache), the out-of-fold evaluation, and
``predict`` over several models (their probabilities averaged)."""

import csv
import json
import types

import nibabel
import numpy as np
import pytest
import yaml

from missu_keras import cli
from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.evaluation import evaluate
from missu_keras.inference import SegmenterEnsemble, labels_from_probabilities
from missu_keras.prediction import load_segmenter
from missu_keras.training import TrainConfig, fold_models, fold_splits, make_splits, train
from tests.helpers import Crash, CrashAfter, run_command

EPOCHS, FOLDS = 2, 2
# The tiny network without the MSF branch: its training step compiles 20 % faster, and
# folds do not depend on what the network is.
MODEL = {"base_width": 8, "embed_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64,
         "msf_mode": "none", "self_distill": False}


# ------------------------------------------------------------------------ the split --

def test_the_split_is_deterministic_disjoint_and_covers_every_case_once():
    ids = [f"case{i}" for i in range(7)]
    splits = make_splits(ids, folds=5)
    assert make_splits(ids[::-1], folds=5) == splits == make_splits(ids[3:] + ids[:3], folds=5)
    vals = [s["val"] for s in splits]
    assert sorted(len(v) for v in vals) == [1, 1, 1, 2, 2]  # sizes differ by at most one
    assert sorted(c for v in vals for c in v) == ids  # every case once as validation
    for split in splits:
        assert sorted(split["train"] + split["val"]) == ids and not set(split["train"]) & set(split["val"])
    # nnU-Net's rule: sorted IDs, positions shuffled by RandomState(12345), consecutive folds
    # (RandomState(12345) shuffles range(7) to 6 3 4 0 1 5 2).
    assert vals == [["case3", "case6"], ["case0", "case4"], ["case1"], ["case5"], ["case2"]]
    assert make_splits(ids, folds=5, seed=1) != splits
    with pytest.raises(ValueError, match=r"between 2 and the number of cases \(7\)"):
        make_splits(ids, folds=8)
    with pytest.raises(ValueError, match="repeated: \\['case1'\\]"):
        make_splits(ids + ["case1"], folds=2)


def test_splits_json_is_reused_and_a_changed_data_set_is_refused_naming_the_cases(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    splits = fold_splits(tmp_path, ids, 2)
    path = tmp_path / "splits.json"
    assert json.loads(path.read_text()) == splits  # nnU-Net's splits_final.json shape
    # A hand-made split is used as it is, never re-made.
    custom = [{"train": ["a", "b", "c"], "val": ["d", "e"]}, {"train": ["d", "e"], "val": ["a", "b", "c"]}]
    path.write_text(json.dumps(custom))
    assert fold_splits(tmp_path, ids[::-1], 2) == custom
    with pytest.raises(ValueError, match=r"not in the data: \['e'\].*no fold lists: \['f'\]"):
        fold_splits(tmp_path, ["a", "b", "c", "d", "f"], 2)
    with pytest.raises(ValueError, match="holds 2 folds but --folds is 5"):
        fold_splits(tmp_path, ids, 5)
    assert json.loads(path.read_text()) == custom  # the file was not touched
    path.write_text(json.dumps([{"train": ["a"], "val": ["a"]}]))
    with pytest.raises(ValueError, match=r"fold 0 lists cases for training and validation: \['a'\]"):
        fold_splits(tmp_path, ids, 1)


def test_train_refuses_a_splits_json_that_no_longer_matches_the_data(tmp_path):
    write_synthetic_brats(tmp_path / "data", num_cases=3, seed=0, shape=(16, 16, 16))
    ids = sorted(c.case_id for c in find_brats_cases(tmp_path / "data"))
    stale = make_splits(ids[:2] + ["BraTS2021_GONE"], folds=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "splits.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match=rf"not in the data: \['BraTS2021_GONE'\].*no fold lists: \['{ids[2]}'\]"):
        train(data=str(tmp_path / "data"), out=str(tmp_path / "run"), preset="tiny", patch_size=16,
              folds=2, fold=0, log=None)
    assert json.loads((tmp_path / "run" / "splits.json").read_text()) == stale  # never re-made
    assert not (tmp_path / "run" / "cache").exists()  # refused before any preprocessing


def test_fold_settings_are_checked(tmp_path):
    base = dict(data="d", out="o")
    assert TrainConfig.from_dict({**base, "folds": "5", "fold": "4"}).fold == 4  # flag text
    with pytest.raises(ValueError, match="folds and fold go together"):
        TrainConfig.from_dict({**base, "folds": 5})
    with pytest.raises(ValueError, match="fold in 0 ... folds-1"):
        TrainConfig.from_dict({**base, "folds": 5, "fold": 5})
    for extra in ({"val_data": "v"}, {"val_fraction": 0.3}):
        with pytest.raises(ValueError, match="--folds conflicts with --val-data / --val-fraction"):
            TrainConfig.from_dict({**base, "folds": 5, "fold": 0, **extra})
    with pytest.raises(ValueError, match="folds and fold go together"):  # before any work
        run_command(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--folds", "5"])
    assert not (tmp_path / "o").exists()


def test_a_missing_fold_model_is_named(tmp_path):
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    (run / "splits.json").write_text(json.dumps(make_splits("abcd", folds=2)))
    with pytest.raises(FileNotFoundError, match=r"2 of 2 fold models missing: .*fold_0, .*fold_1"):
        fold_models(run, require_all=True)
    with pytest.raises(FileNotFoundError, match="fold_1"):
        evaluate(str(run), str(tmp_path), str(tmp_path / "scores"), log=None)
    assert not (tmp_path / "scores").exists()


def test_ensemble_members_with_different_contracts_are_refused():
    brats = PreprocessingConfig.brats(patch_size=32)
    member = lambda prep: types.SimpleNamespace(preprocessing=prep)  # noqa: E731
    # Another patch size only changes a member's own window: accepted.
    SegmenterEnsemble([member(brats), member(PreprocessingConfig.brats(patch_size=16))])
    other = PreprocessingConfig.from_dict({**brats.to_dict(), "normalization": "zscore"})
    with pytest.raises(ValueError, match="disagree on the preprocessing field 'normalization': "
                                         "run/fold_0 has 'zscore_nonzero', run/fold_1 has 'zscore'"):
        SegmenterEnsemble([member(brats), member(other)], ["run/fold_0", "run/fold_1"])


# ------------------------------------------------------------------ a 2-fold run --

@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """Four 32^3 cases; fold 0 trained from the command line, fold 1 from Python, killed
    in its second epoch and resumed. Returns ``(data, run, fold-1 resumption, fold-0 log
    before fold 1 ran)``."""
    root = tmp_path_factory.mktemp("cv")
    write_synthetic_brats(root / "data", num_cases=4, seed=2, shape=(32, 32, 32))
    settings = dict(data=str(root / "data"), out=str(root / "run"), preset="tiny", patch_size=32,
                    epochs=EPOCHS, steps_per_epoch=1, batch_size=1, image_every=0, verbose=0,
                    seed=3, workers=1, model=MODEL)
    (root / "train.yaml").write_text(yaml.safe_dump(settings))
    assert cli.main(["train", "--config", str(root / "train.yaml"), "--folds", "2", "--fold", "0"]) == 0
    fold0_log = (root / "run" / "fold_0" / "log.csv").read_text()
    with pytest.raises(Crash, match="stopped after 2 batches"):
        train(settings, folds=FOLDS, fold=1, callbacks=[CrashAfter(2)], log=None)
    resumed = train(settings, folds=FOLDS, fold=1, log=None)
    return root / "data", root / "run", resumed, fold0_log


@pytest.mark.slow
def test_each_fold_is_a_run_folder_resumed_on_its_own(cv_run):
    data, run, resumed, fold0_log = cv_run
    splits = json.loads((run / "splits.json").read_text())
    assert splits == make_splits([c.case_id for c in find_brats_cases(data)], folds=FOLDS)
    assert resumed.out == run / "fold_1" and resumed.initial_epoch == 1  # from its backup
    for k in range(FOLDS):
        fold = run / f"fold_{k}"
        assert {"config.json", "split.json", "log.csv", "checkpoints", "backup"} <= {p.name for p in fold.iterdir()}
        assert (fold / "checkpoints" / "best.keras").is_file()
        assert len((fold / "log.csv").read_text().splitlines()) == 1 + EPOCHS
        split = json.loads((fold / "split.json").read_text())
        assert split == {"train": splits[k]["train"], "validation": splits[k]["val"]}
        assert json.loads((fold / "config.json").read_text())["train"]["fold"] == k
    assert (run / "fold_0" / "log.csv").read_text() == fold0_log  # fold 1 left fold 0 alone
    assert (run / "cache").is_dir() and not list(run.glob("fold_*/cache"))  # one shared cache


@pytest.mark.slow
def test_evaluate_over_the_run_scores_every_case_once_out_of_fold(cv_run, tmp_path):
    data, run, _, _ = cv_run
    assert run_command(["evaluate", str(data), "--model", str(run), "--out", str(tmp_path / "cv"),
                        "--quiet"]) == 0
    with open(tmp_path / "cv" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(r["case"] for r in rows) == sorted(c.case_id for c in find_brats_cases(data))
    assert {r["case"]: int(r["fold"]) for r in rows} == {
        c: k for k, s in enumerate(splits) for c in s["val"]}  # each by the fold that never saw it
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    dice = [float(r["WT_dice"]) for r in rows]
    assert summary["WT"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert sorted(summary["folds"]) == ["0", "1"] and (tmp_path / "cv" / "convention.txt").is_file()


@pytest.mark.slow
def test_predict_with_several_models_averages_their_probabilities(cv_run, tmp_path):
    data, run, _, _ = cv_run
    case = find_brats_cases(data)[0]
    loaded = case.load()
    ensemble = load_segmenter(str(run))  # a cross-validation run: every fold found
    assert [str(p) for p in ensemble.names] == [str(run / "fold_0"), str(run / "fold_1")]
    probs = [m.segment(loaded, return_probabilities=True).probabilities for m in ensemble.members]
    assert not np.array_equal(probs[0], probs[1])  # two different models
    mean = (probs[0] + probs[1]) / np.float32(2)
    result = ensemble.segment(loaded, return_probabilities=True)
    np.testing.assert_array_equal(result.labels, labels_from_probabilities(mean, "brats").numpy())
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-6)
    assert run_command(["predict", str(case.directory), "--model", str(run / "fold_0"), "--model",
                        str(run / "fold_1"), "--out", str(tmp_path), "--quiet"]) == 0
    written = nibabel.load(tmp_path / f"{case.case_id}.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), result.labels)

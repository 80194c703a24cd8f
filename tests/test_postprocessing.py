"""Issue 16 item 2, post-processing stored with the model: the steps on hand-made label
maps, TensorFlow's connected components against scipy's, ``postprocess choose`` (on
label maps, and once from the command line), ``predict`` with a stored
``postprocessing.json`` and the SavedModel applying the same."""

import json
import shutil

import keras
import nibabel
import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

import missu_keras
from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.export import export_savedmodel
from missu_keras.inference import (PostprocessingConfig, apply_postprocessing,
                                   connected_components, read_postprocessing)
from missu_keras.postprocess_choice import CHOICE_FILE, choose_postprocessing
from tests.conftest import NO_DROPOUT, TINY
from tests.helpers import run_command

CUBE = np.ones((3, 3, 3), int)  # scipy's 26-connectivity


def post(labels, convention="brats", **steps):
    return apply_postprocessing(tf.constant(labels, tf.int32), PostprocessingConfig(**steps),
                                convention).numpy()


def same_partition(ids, reference):
    """Whether two labellings split the same voxels into the same components."""
    inside = reference > 0
    if not np.array_equal(ids > 0, inside):
        return False
    pairs = set(zip(ids[inside].tolist(), reference[inside].tolist()))
    return len(pairs) == len(np.unique(ids[inside])) == len(np.unique(reference[inside]))


# ------------------------------------------------------------------ the steps --

@pytest.mark.parametrize("convention,et,core", [("brats", 4, 1), ("brats2023", 3, 1)])
def test_a_small_enhancing_tumour_becomes_necrosis_below_the_threshold(convention, et, core):
    labels = np.zeros((12, 12, 12), np.int32)
    labels[2:9, 2:9, 2:9] = 2
    labels[4:6, 4:9, 5] = et  # 10 voxels of ET
    relabelled = post(labels, convention, et_min_voxels=50)
    assert not (relabelled == et).any()
    np.testing.assert_array_equal(relabelled[labels == et], core)
    np.testing.assert_array_equal(relabelled[labels != et], labels[labels != et])
    np.testing.assert_array_equal(post(labels, convention, et_min_voxels=5), labels)
    np.testing.assert_array_equal(post(labels, convention, et_min_voxels=10), labels)  # not below


def test_components_below_the_size_are_dropped_per_region():
    labels = np.zeros((20, 20, 20), np.int32)
    labels[1:3, 1:3, 1:3] = 2          # 8 voxels of WT
    labels[10:13, 10:13, 10:13] = 2    # 27 voxels of WT, 1 voxel of it core
    labels[11, 11, 11] = 1
    labels[17, 17, 17] = 4             # 1 voxel of ET (and WT, TC), alone
    out = post(labels, min_component_voxels={"WT": 9})
    expected = labels.copy()
    expected[1:3, 1:3, 1:3] = 0
    expected[17, 17, 17] = 0
    np.testing.assert_array_equal(out, expected)
    out = post(labels, min_component_voxels={"TC": 2})  # TC components: 1 voxel each
    expected = labels.copy()
    expected[11, 11, 11] = expected[17, 17, 17] = 0
    np.testing.assert_array_equal(out, expected)
    expected = labels.copy()
    expected[17, 17, 17] = 0           # 8 voxels are not below 8
    np.testing.assert_array_equal(post(labels, min_component_voxels={"WT": 8}), expected)


def test_only_the_largest_liver_component_is_kept():
    labels = np.zeros((16, 16, 16), np.int32)
    labels[0:2, 0:2, 0:2] = 1          # 8
    labels[5:10, 5:10, 5:10] = 1       # 125: the liver
    labels[12:15, 0:3, 12:15] = 1      # 27
    out = post(labels, "chaos", largest_component_only=("liver",))
    expected = np.zeros_like(labels)
    expected[5:10, 5:10, 5:10] = 1
    np.testing.assert_array_equal(out, expected)
    empty = np.zeros((4, 4, 4), np.int32)
    np.testing.assert_array_equal(post(empty, "chaos", largest_component_only=("liver",)), empty)


def test_the_empty_config_adds_nothing_and_unknown_regions_are_refused():
    labels = tf.constant(np.arange(8, dtype=np.int32).reshape(2, 2, 2) % 3)
    assert apply_postprocessing(labels, PostprocessingConfig(), "brats") is labels
    assert apply_postprocessing(labels, None, "brats") is labels
    with pytest.raises(ValueError, match=r"regions \['ET'\] are not regions of the label convention 'chaos'"):
        apply_postprocessing(labels, PostprocessingConfig(et_min_voxels=5), "chaos")
    with pytest.raises(ValueError, match="Unknown post-processing settings"):
        PostprocessingConfig.from_dict({"et_threshold": 5})


def test_connected_components_equal_scipys_labelling():
    found = []
    for seed in range(4):
        noise = np.random.default_rng(seed).standard_normal((24, 20, 16))
        mask = ndi.gaussian_filter(noise, 1.2) > 0.1
        reference, count = ndi.label(mask, structure=CUBE)
        found.append(count)
        assert same_partition(connected_components(tf.constant(mask)).numpy(), reference)
    assert max(found) > 5  # many components, not one blob
    # voxels touching only by corners: one 26-connected component (6-connected: five)
    diagonal = np.zeros((6, 6, 6), bool)
    for voxel in [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 1), (4, 4, 0), (5, 0, 5)]:
        diagonal[voxel] = True
    ids = connected_components(tf.constant(diagonal)).numpy()
    reference, count = ndi.label(diagonal, structure=CUBE)
    assert count == 2 and same_partition(ids, reference)
    assert ndi.label(diagonal)[1] == 6  # face-connected it would be six: the test can tell


# ------------------------------------------------------------------ the choice --

def _tumour_case(shape=(24, 24, 24)):
    gt = np.zeros(shape, np.uint8)
    gt[2:7, 2:7, 2:7] = 2
    gt[3:5, 3:5, 3:5] = 4              # 8 voxels of true ET
    gt[14:19, 14:19, 14:19] = 2        # a second tumour
    return gt


def test_choose_keeps_the_steps_that_help_and_rejects_those_that_hurt():
    case_a = _tumour_case()
    pred_a = case_a.copy()
    pred_a[22, 22, 1] = 2              # a spurious voxel: dropping it helps WT
    case_b = np.zeros((24, 24, 24), np.uint8)
    case_b[5:10, 5:10, 5:10] = 2
    pred_b = case_b.copy()
    pred_b[6:8, 6:8, 6] = 4            # 4 voxels of spurious ET: relabelling them helps ET
    case_c = np.zeros((24, 24, 24), np.uint8)
    case_c[5:12, 5:12, 5:12] = 2
    case_c[7:10, 7:10, 7:10] = 4       # 27 voxels of true ET, found
    cases = [("a", pred_a, case_a), ("b", pred_b, case_b), ("c", case_c.copy(), case_c)]
    config, report = choose_postprocessing(cases, "brats", et_grid=(0, 5, 50), component_grid=(2, 5))
    assert config.et_min_voxels == 5       # 50 would also relabel the true ET of a and c
    assert config.min_component_voxels == {"WT": 2}
    assert config.largest_component_only == ()  # it would drop case a's second tumour
    steps = {(s["step"], s["region"]): s for s in report["steps"]}
    et = steps["et_min_voxels", "ET"]
    assert et["kept"] and [t["value"] for t in et["tried"]] == [5, 50]
    assert et["tried"][1]["dice"]["ET"] < et["without"]["ET"] < et["tried"][0]["dice"]["ET"]
    largest = steps["largest_component_only", "WT"]
    assert not largest["kept"] and largest["tried"][0]["dice"]["WT"] < largest["without"]["WT"]
    assert report["after"]["WT"] > report["baseline"]["WT"] and report["after"]["ET"] == 1.0


# ------------------------------------------------- predict, choose and the export --

@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    write_synthetic_brats(root / "data", num_cases=2, seed=5, shape=(32, 32, 32))
    prep = PreprocessingConfig.brats(patch_size=32)
    keras.utils.set_random_seed(5)  # one model every run: its scattered labels are the test's input
    model = missu_keras.MISSU.from_preset("tiny", **TINY, **NO_DROPOUT, preprocessing=prep.to_dict())
    return root, model


# Enhancing-tumour components under 20 voxels dropped, then the largest whole-tumour
# component only (the untrained tiny model's ET is scattered in many small blobs).
STEPS = PostprocessingConfig(min_component_voxels={"ET": 20}, largest_component_only=("WT",))


def _scipy_steps(labels):
    """`STEPS` with scipy as the oracle."""
    ids, _ = ndi.label(labels == 4, structure=CUBE)
    sizes = np.bincount(ids.ravel())
    out = np.where((ids > 0) & (sizes[ids] < 20), 0, labels)
    ids, count = ndi.label(out > 0, structure=CUBE)
    if count > 1:
        out = np.where((ids > 0) & (ids != 1 + int(np.argmax(np.bincount(ids.ravel())[1:]))), 0, out)
    return out


@pytest.mark.slow
def test_predict_and_the_saved_model_apply_the_stored_postprocessing(brats, tmp_path):
    """``predict`` with a preset folder's postprocessing.json (and without, told not
    to); then one export with the same steps gives the same labels in both volume
    signatures."""
    root, model = brats
    model.save_to_preset(tmp_path / "model", postprocessing=STEPS)
    assert read_postprocessing(tmp_path / "model") == STEPS
    case = find_brats_cases(root / "data")[0]
    out = {}
    for name, flags in (("with", []), ("without", ["--no-postprocessing"])):
        assert run_command(["predict", str(case.directory), "--model", str(tmp_path / "model"),
                            "--out", str(tmp_path / name), "--quiet", *flags]) == 0
        out[name] = np.asanyarray(nibabel.load(tmp_path / name / f"{case.case_id}.nii.gz").dataobj)
    raw = out["without"]
    assert not np.array_equal(_scipy_steps(raw), raw)  # the steps have work to do
    np.testing.assert_array_equal(out["with"], _scipy_steps(raw))

    result = export_savedmodel(model, tmp_path / "export", log=None, postprocessing=STEPS)
    assert result.metadata["postprocessing"]["largest_component_only"] == ["WT"]
    served = tf.saved_model.load(str(result.path))
    volume = tf.constant(case.load().image)
    for got in (served.signatures["segment_volume"](volume=volume)["labels"].numpy(),
                served.signatures["segment_scan"](volume=volume, spacing=tf.ones([3]))["labels"].numpy()):
        np.testing.assert_array_equal(got, out["with"])


def test_postprocess_choose_on_a_runs_validation_cases(brats, tmp_path):
    """One end-to-end run: a run folder as train leaves it (its config, split and
    checkpoint), chosen on its validation case, then used by the loader."""
    root, model = brats
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model.save(run / "checkpoints" / "best.keras")
    ids = [c.case_id for c in find_brats_cases(root / "data")]
    (run / "config.json").write_text(json.dumps({"train": {"data": str(root / "data"), "val_data": None},
                                                 "preprocessing": model.preprocessing.to_dict()}))
    (run / "split.json").write_text(json.dumps({"train": ids[:1], "validation": ids[1:]}))
    assert run_command(["postprocess", "choose", "--run", str(run), "--quiet", "--et-grid", "0", "100",
                        "--component-grid", "10"]) == 0
    choice = json.loads((run / CHOICE_FILE).read_text())
    assert choice["cases"] == ids[1:] and choice["et_grid"] == [0, 100]
    chosen = read_postprocessing(run)
    assert chosen.to_dict() == choice["chosen"]
    assert {(s["step"], s["region"]) for s in choice["steps"]} >= {
        ("et_min_voxels", "ET"), ("min_component_voxels", "TC"), ("largest_component_only", "WT")}
    assert (run / "postprocessing_validation" / "predictions" / f"{ids[1]}.nii.gz").is_file()
    with pytest.raises(FileExistsError, match="postprocessing_choice.json already exists"):
        run_command(["postprocess", "choose", "--run", str(run)])
    from missu_keras.prediction import load_segmenter

    assert load_segmenter(str(run)).postprocessing == chosen
    assert load_segmenter(str(run), postprocessing=None).postprocessing.is_empty
    # a prediction an earlier choice left for a training case (as `choose --data` would) is
    # not paired when choosing again on the validation split
    predictions = run / "postprocessing_validation" / "predictions"
    shutil.copy(predictions / f"{ids[1]}.nii.gz", predictions / f"{ids[0]}.nii.gz")
    assert run_command(["postprocess", "choose", "--run", str(run), "--quiet", "--et-grid", "0",
                        "--component-grid", "10", "--overwrite"]) == 0
    assert json.loads((run / CHOICE_FILE).read_text())["cases"] == ids[1:]

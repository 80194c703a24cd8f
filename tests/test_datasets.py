"""Decathlon and nnU-Net raw datasets: readers, layout detection, label conventions carried
in the contract, ``synth --layout msd|nnunet``, ``inspect``, and a tiny train -> predict."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.data.datasets import dataset_of_layout, detect_layout, find_cases
from missu_keras.data.io import write_nifti
from missu_keras.data.msd import find_msd_cases
from missu_keras.data.nnunet import find_nnunet_cases
from missu_keras.data.synthetic import write_synthetic_msd, write_synthetic_nnunet
from missu_keras.labels import convert_labels, get_label_convention
from missu_keras.metrics import score_case
from tests.helpers import run_command

SHAPE = (24, 24, 16)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same 2 synthetic tumours (seed 5) as BraTS 2021, Decathlon and nnU-Net (regions)."""
    root = tmp_path_factory.mktemp("layouts")
    write_synthetic_brats(root / "brats", num_cases=2, seed=5, shape=SHAPE)
    write_synthetic_msd(root / "Task01_BrainTumour", num_cases=2, seed=5, shape=SHAPE, num_test=1)
    write_synthetic_nnunet(root / "Dataset007_Synth", num_cases=2, seed=5, shape=SHAPE, num_test=1,
                           regions=True)
    return root


def test_readers_give_the_brats_cases_in_every_layout(datasets):
    brats = [c.load() for c in find_brats_cases(datasets / "brats")]
    msd = find_msd_cases(datasets / "Task01_BrainTumour")
    nnunet = find_nnunet_cases(datasets / "Dataset007_Synth")
    assert [c.case_id for c in msd] == [c.case_id for c in nnunet] == ["BRATS_SYNTH_000", "BRATS_SYNTH_001"]
    # Decathlon files hold FLAIR, T1w, t1gd, T2w: loaded in the package's BraTS order
    assert msd[0].channel_names == nnunet[0].channel_names == ("flair", "t1ce", "t1", "t2")
    assert msd[0].channel_indices == (0, 2, 1, 3)
    assert nib.load(msd[0].image_path).shape == SHAPE + (4,)
    for ref, cases in ((brats, msd), (brats, nnunet)):
        for want, case in zip(ref, cases):
            got = case.load()
            np.testing.assert_array_equal(got.image, want.image)
            np.testing.assert_array_equal(got.affine, want.affine)
            # the Decathlon / nnU-Net labels are other numbers for the same training classes
            classes = get_label_convention(got.label_convention).to_classes(got.labels)
            np.testing.assert_array_equal(classes, get_label_convention("brats").to_classes(want.labels))
    assert msd[0].label_convention == "msd_brats"
    # test images: listed / found, without labels; an images folder reads alone
    for finder, name in ((find_msd_cases, "Task01_BrainTumour"), (find_nnunet_cases, "Dataset007_Synth")):
        test = finder(datasets / name / "imagesTs")
        assert [(c.case_id, c.has_seg) for c in test] == [("BRATS_SYNTH_TEST_000", False)]
        assert test[0].load().labels is None
        assert len(finder(datasets / name, subset="all")) == 3


def test_layouts_are_detected_and_dispatched(datasets):
    expect = {"brats": "2021", "Task01_BrainTumour": "msd", "Dataset007_Synth": "nnunet"}
    for folder, layout in expect.items():
        assert detect_layout(datasets / folder) == layout
        assert len(find_cases(datasets / folder)) == 2
    assert detect_layout(datasets / "Dataset007_Synth" / "imagesTs") == "nnunet"
    assert [dataset_of_layout(x) for x in ("2023", "msd", "nnunet")] == ["brats", "msd", "nnunet"]
    with pytest.raises(FileNotFoundError, match="no dataset found.*nnU-Net"):
        detect_layout(_empty(datasets))


def _empty(root):
    folder = root / "empty"
    folder.mkdir(exist_ok=True)
    return folder


def test_msd_task01_is_scored_in_brats_regions(datasets):
    brats = find_brats_cases(datasets / "brats")[0].load()
    msd = find_msd_cases(datasets / "Task01_BrainTumour")[0].load()
    # MSD 1 edema / 2 non-enhancing / 3 enhancing are BraTS 2 / 1 / 4
    np.testing.assert_array_equal(convert_labels(msd.labels, "msd_brats", "brats"), brats.labels)
    masks_msd = get_label_convention("msd_brats").region_masks(msd.labels)
    masks_brats = get_label_convention("brats").region_masks(brats.labels)
    assert set(masks_msd) == {"WT", "TC", "ET"}
    for region in masks_brats:
        np.testing.assert_array_equal(masks_msd[region], masks_brats[region])
    shifted = np.roll(msd.labels, 1, axis=0)
    in_msd = score_case(shifted, msd.labels, msd.spacing, "msd_brats")
    in_brats = score_case(convert_labels(shifted, "msd_brats", "brats"), brats.labels, brats.spacing, "brats")
    assert {k for k in in_msd if k.endswith("_dice")} == {
        f"{r}_{m}" for r in ("WT", "TC", "ET") for m in ("dice", "lesion_dice")}
    assert in_msd == in_brats and 0 < in_msd["WT_dice"] < 1
    with pytest.raises(ValueError, match="cannot be mapped to 'chaos'"):
        convert_labels(msd.labels, "msd_brats", "chaos")


def test_nnunet_region_labels_are_scoring_regions(datasets):
    case = find_nnunet_cases(datasets / "Dataset007_Synth")[0]
    conv = case.label_convention
    assert conv.name == "Dataset007_Synth" and conv.labels == (0, 1, 2, 3)
    assert dict(conv.regions) == {"whole tumor": (1, 2, 3), "tumor core": (1, 3), "enhancing tumor": (3,)}
    labels = case.load().labels
    scores = score_case(labels, labels, (1, 1, 1), conv)
    assert scores["whole tumor_dice"] == scores["tumor core_dice"] == scores["enhancing tumor_dice"] == 1.0
    # the contract carries the dataset's convention and survives JSON (and old contracts load)
    cfg = PreprocessingConfig.from_cases("nnunet", [case], patch_size=32)
    assert cfg.label_convention == "Dataset007_Synth" and cfg.label_definition == conv.to_dict()
    back = PreprocessingConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.convention == conv and back.num_classes == 4
    old = PreprocessingConfig.brats().to_dict()
    del old["label_definition"]
    assert PreprocessingConfig.from_dict(old).convention == get_label_convention("brats")
    with pytest.raises(ValueError, match="name of label_definition"):
        cfg.replace(label_convention="brats")
    msd_cfg = PreprocessingConfig.from_cases("msd", find_msd_cases(datasets / "Task01_BrainTumour"))
    assert msd_cfg.label_convention == "msd_brats" and msd_cfg.label_definition is None


def test_inspect_names_each_damaged_case(tmp_path):
    root = tmp_path / "Dataset009_Damaged"
    run_command(["synth", "brats", str(root), "--layout", "nnunet", "--cases", "6",
                 "--shape", *map(str, SHAPE)])
    cases = find_nnunet_cases(root)
    # case 1: every file 3 mm apart along z; case 2: a channel file gone;
    # case 3: label 7; case 4: a NaN in the T1 file; case 5: its T2 file shifted 5 mm
    for path in cases[1].source_files():
        img = nib.load(path)
        write_nifti(path, np.asarray(img.dataobj), img.affine @ np.diag([1.0, 1.0, 3.0, 1.0]))
    cases[2].image_paths["t1"].unlink()
    seg = nib.load(cases[3].seg_path)
    labels = np.asarray(seg.dataobj).copy()
    labels[0, 0, 0] = 7
    write_nifti(cases[3].seg_path, labels, seg.affine)
    t1 = nib.load(cases[4].image_paths["t1"])
    data = np.asarray(t1.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    write_nifti(cases[4].image_paths["t1"], data, t1.affine)
    t2 = nib.load(cases[5].image_paths["t2"])
    shifted = t2.affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(cases[5].image_paths["t2"], np.asarray(t2.dataobj), shifted)

    out = tmp_path / "fingerprint.json"
    assert run_command(["inspect", str(root), "--out", str(out)]) == 0
    fp = json.loads(out.read_text())
    problems = {(p["case"], p["file"]): p["problem"] for p in fp["problems"]}
    ids = [c.case_id for c in cases]
    expect = {
        ids[1]: (cases[1].image_paths["flair"], "spacing"),
        ids[2]: (cases[2].image_paths["t1"], "missing channel file"),
        ids[3]: (cases[3].seg_path, "unexpected label value"),
        ids[4]: (cases[4].image_paths["t1"], "non-finite"),
        ids[5]: (cases[5].image_paths["t2"], "affine mismatch"),
    }
    for case_id, (path, text) in expect.items():
        assert text in problems[(case_id, str(path))], fp["problems"]
    assert ids[0] not in {case for case, _ in problems}
    assert fp["num_cases"] == 6 and fp["spacing"]["max"] == [1.0, 1.0, 3.0]
    assert fp["labels_found"]["per_case"][ids[3]] == [0, 1, 2, 3, 7]
    assert set(fp["intensity"]) == {"flair", "t1ce", "t1", "t2"}
    with pytest.raises(FileExistsError):
        run_command(["inspect", str(root), "--out", str(out)])


def test_inspect_does_not_load_tensorflow(datasets):
    # as the installed command runs it (importing the package itself loads the API)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "missu_keras.cli", "inspect",
                             str(datasets / "Task01_BrainTumour")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "layout msd" in result.stdout and "msd_brats" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "missu_keras.data.fingerprint" in imported
    assert not {"tensorflow", "keras"} & imported


@pytest.mark.slow
def test_train_and_predict_on_an_nnunet_dataset(tmp_path):
    from missu_keras.evaluation import evaluate
    from missu_keras.prediction import find_cases as find_prediction_cases, predict
    from missu_keras.training import train

    data = write_synthetic_nnunet(tmp_path / "Dataset003_Tiny", num_cases=2, seed=2, shape=(32, 32, 32),
                                  num_test=1)
    result = train(data=str(data), out=str(tmp_path / "run"), preset="tiny", patch_size=32, epochs=1,
                   steps_per_epoch=1, batch_size=1, val_fraction=0, image_every=0, verbose=0,
                   layout="nnunet", model={"base_width": 8, "embed_dim": 32, "num_heads": 4,
                                           "num_layers": 1, "mlp_dim": 64, "msf_mode": "none",
                                           "self_distill": False}, log=None)  # a faster trace
    prep = result.model.preprocessing
    assert prep.dataset == "nnunet" and prep.label_convention == "Dataset003_Tiny"
    assert prep.label_definition["regions"]["enhancing tumor"] == [3]
    written = predict(data / "imagesTs", tmp_path / "out", tmp_path / "run", log=None)
    assert [p.name for p in written] == ["BRATS_SYNTH_TEST_000.nii.gz"]
    ref = nib.load(data / "imagesTs" / "BRATS_SYNTH_TEST_000_0000.nii.gz")
    out = nib.load(written[0])
    assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}
    # the same case as a file list, in any order: CASE_XXXX is the model's channel XXXX
    files = sorted((data / "imagesTs").iterdir(), reverse=True)
    (listed,) = find_prediction_cases(files, prep)
    (folder,) = find_prediction_cases([data / "imagesTs"], prep)
    assert listed.case_id == "BRATS_SYNTH_TEST_000" and dict(listed.image_paths) == dict(folder.image_paths)
    # evaluated on a Decathlon copy: its labels are scored in the model's convention
    task = write_synthetic_msd(tmp_path / "Task01", num_cases=1, seed=2, shape=(32, 32, 32))
    rows, _ = evaluate(tmp_path / "run", task, tmp_path / "eval", save_predictions=True, log=None)
    pred = np.asarray(nib.load(tmp_path / "eval" / "predictions" / "BRATS_SYNTH_000.nii.gz").dataobj)
    gt = find_msd_cases(task)[0].load()
    want = score_case(pred, convert_labels(gt.labels, "msd_brats", prep.convention), gt.spacing, prep.convention)
    assert {k: v for k, v in rows[0].items() if k != "case"} == want
    assert "enhancing tumor_dice" in want


def test_predict_inputs_of_each_layout_match_the_model_channels(datasets):
    from missu_keras.prediction import find_cases as find_prediction_cases, reference_geometry

    prep = PreprocessingConfig.brats(patch_size=32)  # a BraTS model: flair, t1ce, t1, t2
    task = datasets / "Task01_BrainTumour"
    (case,) = find_prediction_cases([task / "imagesTs"], prep)
    assert case.channel_indices == (0, 2, 1, 3) and not case.has_seg
    # the labels are written in the 4-D image's grid (its affine and header, 3-D)
    affine, header = reference_geometry(case)
    out = write_nifti(datasets / "pred" / "case.nii.gz", np.zeros(SHAPE, np.uint8), affine, header)
    written, ref = nib.load(out), nib.load(case.image_path)
    assert written.shape == SHAPE and np.array_equal(written.affine, ref.affine)
    assert written.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
    # one 4-D Decathlon file: its channels are named in file order
    image = task / "imagesTr" / "BRATS_SYNTH_000.nii.gz"
    (listed,) = find_prediction_cases([image], prep, modalities="FLAIR,T1w,t1gd,T2w")
    np.testing.assert_array_equal(listed.load().image, find_msd_cases(task)[0].load().image)
    with pytest.raises(ValueError, match="--modalities"):
        find_prediction_cases([image], prep)
    with pytest.raises(ValueError, match="4 channel.*lists 3"):
        find_prediction_cases([image], prep, modalities="FLAIR,T1w,t1gd")

"""The README's main job runs end to end (shortened: 1 epoch of 2 steps)."""

import json

import nibabel as nib

from missu_keras.cli import main


def test_demo_writes_every_artifact(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "2"]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert 0.0 <= report["wt_dice"] <= 1.0
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert set(summary) == {"WT", "TC", "ET"} and set(summary["WT"]["dice"]) == {"mean", "std", "median"}
    pred = nib.load(report["prediction"])
    case = report["prediction"].rsplit("/", 1)[1].replace(".nii.gz", "")
    ref = nib.load(tmp_path / "data" / "heldout" / case / f"{case}_flair.nii.gz")
    assert pred.shape == ref.shape and (pred.affine == ref.affine).all()
    assert set(map(int, set(pred.get_fdata().ravel()))) <= {0, 1, 2, 4}
    for name in ("checkpoints/last.keras", "checkpoints/best.keras", "log.csv", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    assert (tmp_path / "serving" / "missu" / "1" / "saved_model.pb").is_file()
    assert report["savedmodel"] == str(tmp_path / "serving" / "missu" / "1")

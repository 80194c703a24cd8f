"""The README's main job runs end to end, as documented: its default length (10 x 12
steps, about 2.5 minutes on 2 cores) and the held-out quality the README states."""

import json

import nibabel as nib

from missu_keras.cli import main


def test_demo_writes_every_artifact_and_reaches_the_documented_quality(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["wt_dice"] >= 0.80, report  # README: held-out WT Dice 0.96
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

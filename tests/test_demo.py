"""The README's main job runs end to end, as documented: its default length (10 x 12
steps, about 2.5 minutes on 2 cores) and the held-out quality the README states; its data
in each layout it offers."""

import argparse
import json
from pathlib import Path

import nibabel as nib
import pytest

from missu_keras.cli import main
from missu_keras.cli.demo import register
from missu_keras.data import detect_layout, find_cases
from missu_keras.demo import DEMO_LAYOUTS, write_demo_data


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


@pytest.mark.parametrize("layout", DEMO_LAYOUTS)
def test_demo_data_in_each_layout_goes_through_the_same_readers(tmp_path, layout):
    train, heldout, to_predict = write_demo_data(tmp_path / "data", layout, train_cases=2,
                                                 heldout_cases=1, shape=(24, 24, 16))
    assert detect_layout(train) == ("2021" if layout == "brats" else layout)
    train_cases, heldout_cases = find_cases(train), find_cases(heldout)
    assert len(train_cases) == 2 and len(heldout_cases) == 1
    assert all(c.has_seg for c in train_cases + heldout_cases)
    assert train_cases[0].channel_names == ("flair", "t1ce", "t1", "t2")
    assert all(Path(p).exists() for p in to_predict)
    stamp = [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.nii.gz"))]
    assert write_demo_data(tmp_path / "data", layout, train_cases=2, heldout_cases=1,
                           shape=(24, 24, 16)) == (train, heldout, to_predict)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.nii.gz"))] == stamp  # kept


def test_demo_command_offers_the_demo_layouts():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    action = next(a for a in parser._subparsers._group_actions[0].choices["demo"]._actions
                  if a.dest == "layout")
    assert tuple(action.choices) == DEMO_LAYOUTS

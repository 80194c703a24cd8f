import json

from missu_keras.cli import main


def test_summary_prints_params_and_flops(capsys):
    assert main(["summary", "--preset", "tiny", "--image-size", "32", "--json"]) == 0
    out = capsys.readouterr().out
    assert "training" in out and "exported" in out and "How counted" in out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["exported"]["macs"] < report["training"]["macs"]
    assert report["input_shape"] == [1, 32, 32, 32, 4]


def test_summary_brats_matches_the_hand_count(capsys):
    # 274 GMACs for the exported brats graph at 128^3, +186 for the MSF branch
    assert main(["summary", "--preset", "brats", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(report["exported"]["macs"] / 1e9 - 273.9) < 0.5
    assert abs((report["training"]["macs"] - report["exported"]["macs"]) / 1e9 - 186.2) < 0.5


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["summary", "--preset", "kits"]) == 2
    assert "Accepted presets" in capsys.readouterr().err

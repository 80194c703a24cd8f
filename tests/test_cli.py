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


def test_export_set_parses_booleans_and_builds_no_transformer(tmp_path):
    """`--set use_transformer=False` (YAML reading: a boolean) exports a network without
    the Transformer; the string "False" once passed as truthy."""
    import tensorflow as tf

    from missu_keras.export import read_export_metadata

    assert main(["export", "--preset", "tiny", "--weights", "none", "--image-size", "32",
                 "--set", "embed_dim=32", "--set", "use_transformer=False",
                 "--out", str(tmp_path)]) == 0
    meta = read_export_metadata(tmp_path / "missu" / "1")
    assert meta["model_config"]["use_transformer"] is False
    loaded = tf.saved_model.load(str(tmp_path / "missu" / "1"))
    names = [v.name for v in loaded.variables]
    assert names and not [n for n in names if "transformer" in n or "position" in n], names


def test_a_wrong_setting_is_one_line_naming_it(capsys):
    assert main(["summary", "--preset", "tiny", "--set", "use_transformer=maybe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use_transformer must be true or false" in err and "'maybe'" in err


def test_python_dash_m_runs_the_command(tmp_path):
    """``python -m missu_keras.cli`` is the same command (for a scripts folder not on PATH)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "missu_keras.cli", "synth", "brats", str(tmp_path / "d"),
                           "--cases", "1", "--shape", "16", "16", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "d").rglob("*.nii.gz"))) == 5  # 4 modalities + seg
    bad = subprocess.run([sys.executable, "-m", "missu_keras.cli", "synth", "brats", str(tmp_path / "d"),
                          "--cases", "1", "--shape", "16", "16", "8"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr  # not empty: refused

"""Bad inputs and bad disks for predict, evaluate, score, synth, export and serve-request
(issue 14, items 5-8): every error a user can cause is one line naming the file or
field, exit code 2; output folders are checked before any work; a full disk leaves
nothing behind and the same command succeeds once space is back."""

import builtins
import errno
import io
import json
import os
import pathlib
import shutil
import types

import nibabel as nib
import numpy as np
import pytest

import missu_keras
import missu_keras.evaluation  # noqa: F401  (imported before forbid_work patches what it imports)
import missu_keras.export  # noqa: F401
import missu_keras.pretrained  # noqa: F401
import missu_keras.scoring  # noqa: F401
from missu_keras import cli, serving
from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.data.brats import BRATS_LAYOUTS, detect_brats_layout
from missu_keras.prediction import match_modalities
from tests.conftest import NO_DROPOUT, TINY

SHAPE = (40, 36, 28)
MODALITIES = ("flair", "t1ce", "t1", "t2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model (.keras, its weights) and one labelled synthetic case."""
    root = tmp_path_factory.mktemp("bad_inputs")
    write_synthetic_brats(root / "data", num_cases=1, seed=5, shape=SHAPE)
    model = missu_keras.MISSU.from_preset("tiny", **TINY, **NO_DROPOUT,
                                          preprocessing=PreprocessingConfig.brats(patch_size=32).to_dict())
    model.save(root / "model.keras")
    model.save_weights(root / "tiny.weights.h5")
    return root, find_brats_cases(root / "data")[0]


def run(argv, capsys):
    """``missu-keras ARGV``: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.startswith(f"missu-keras {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def score_inputs(tmp_path, pred_labels=None, pred_affine=None):
    """A ground-truth folder and a prediction folder with one case ``c1``."""
    seg = np.zeros((16, 14, 12), np.uint8)
    seg[3:12, 3:11, 2:10] = 2
    seg[5:10, 5:9, 4:8] = 1
    seg[6:8, 6:8, 5:7] = 4
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for folder in (gt / "c1", pred):
        folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(seg, affine), str(gt / "c1" / "c1_seg.nii.gz"))
    labels = seg if pred_labels is None else pred_labels
    nib.save(nib.Nifti1Image(labels, affine if pred_affine is None else pred_affine),
             str(pred / "c1.nii.gz"))
    return gt, pred


# ------------------------------------------------ item 5: output folders, full disks --

def command_argv(command, root, case, out):
    """The argv of each writing command, reading the fixture's data."""
    return {
        "predict": ["predict", case.directory, "--out", out, "--model", root / "model.keras",
                    "--probabilities"],
        "evaluate": ["evaluate", root / "data", "--out", out, "--model", root / "model.keras",
                     "--save-predictions"],
        "score": ["score", "--pred", root / "pred", "--gt", root / "data", "--out", out],
        "export": ["export", "--preset", "tiny", "--weights", "none", "--image-size", "32",
                   *sum((["--set", f"{k}={v}"] for k, v in TINY.items() if k != "image_size"), []),
                   "--out", out],
    }[command]


NOT_READ = types.SimpleNamespace(directory="never-read")  # a case whose files are never read


def forbid_work(monkeypatch):
    """Makes the first expensive step of every command fail the test if it is reached."""
    def computed(*args, **kwargs):
        raise AssertionError("computation started before the output folder was checked")
    monkeypatch.setattr("missu_keras.prediction.load_segmenter", computed)
    monkeypatch.setattr("missu_keras.evaluation.load_segmenter", computed)
    monkeypatch.setattr("missu_keras.scoring.score_directories", computed)
    monkeypatch.setattr("missu_keras.pretrained.load_pretrained", computed)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder: chmod 555, and (root ignores modes) every attempt to create
    something under it fails with EROFS."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    inside = str(folder) + os.sep
    real = {"os_open": os.open, "mkdir": os.mkdir, "open": builtins.open}

    def refuse(path):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    def os_open(path, flags, *args, **kwargs):
        if str(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real["os_open"](path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(inside):
            refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def open_(path, mode="r", *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and str(path).startswith(inside) and set(mode) & set("wax+"):
            refuse(path)
        return real["open"](path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    yield folder
    monkeypatch.undo()
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["predict", "evaluate", "score", "export"])
def test_read_only_out_fails_before_any_work(command, read_only, monkeypatch, capsys, tmp_path):
    forbid_work(monkeypatch)
    out = read_only / "out"
    argv = command_argv(command, tmp_path / "never-read", NOT_READ, out)  # --out comes first
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, command)
    assert str(out) in line and "--out is not writable" in line and "Read-only" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "score", "export"])
def test_out_pointing_at_a_file_is_one_line(command, monkeypatch, capsys, tmp_path):
    forbid_work(monkeypatch)
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    argv = command_argv(command, tmp_path / "never-read", NOT_READ, out)
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, command)
    assert f"{out}: --out is a file; expected a folder" in line and "Errno" not in line
    assert out.read_text() == "not a folder"


def fill_disk(monkeypatch, folder):
    """Every file write under ``folder`` writes half its bytes, then fails with ENOSPC
    (a disk that fills up mid-write)."""
    inside = str(folder) + os.sep
    real_bytes, real_text = pathlib.Path.write_bytes, pathlib.Path.write_text

    def write_bytes(self, data):
        if str(self).startswith(inside):
            real_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_bytes(self, data)

    def write_text(self, data, *args, **kwargs):
        if str(self).startswith(inside):
            real_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_text(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def fill_disk_for_export(monkeypatch, folder):
    """TensorFlow writes the SavedModel itself: it fails with its own error type after
    writing part of the files."""
    import keras
    import tensorflow as tf

    def write_out(self, filepath, **kwargs):
        os.makedirs(filepath, exist_ok=True)
        pathlib.Path(filepath, "saved_model.pb").write_bytes(b"\x08\x01")  # a partial file
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    archive_class = type(keras.export.ExportArchive())  # the backend's class, not the factory
    monkeypatch.setattr(archive_class, "write_out", write_out)


@pytest.mark.parametrize("command", ["predict", "evaluate", "score", "export"])
def test_full_disk_leaves_nothing_and_the_rerun_succeeds(command, setup, monkeypatch, capsys, tmp_path):
    root, case = setup
    if command == "score":  # predictions of the case to score
        shutil.rmtree(root / "pred", ignore_errors=True)
        assert cli.main(["predict", str(case.directory), "--out", str(root / "pred"),
                         "--model", str(root / "model.keras")]) == 0
    out = tmp_path / "out"
    argv = command_argv(command, root, case, out)
    with monkeypatch.context() as patch:
        (fill_disk_for_export if command == "export" else fill_disk)(patch, out)
        code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, command)
    assert "No space left on device" in line and str(out) in line and ".tmp-" not in line
    assert files_under(out) == []  # nothing partial, nothing that blocks the re-run
    code, _, err = run(argv, capsys)  # space is back: the same command
    assert code == 0, err
    written = files_under(out)
    assert written and not any(".tmp-" in name for name in written)
    if command == "export":  # the metadata records where the weights came from
        assert missu_keras.export.read_export_metadata(out / "missu" / "1")["weights"] == "none"


def test_evaluate_refuses_earlier_results_unless_overwrite(setup, capsys, tmp_path):
    root, case = setup
    out = tmp_path / "evaluation"
    (out / "predictions").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    argv = ["evaluate", root / "data", "--out", out, "--model", root / "model.keras"]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, "evaluate")
    assert f"{out / 'summary.json'} already exists" in line and "--overwrite" in line
    assert (out / "summary.json").read_text() == "{}"
    code, _, err = run(argv + ["--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["WT"]["dice"]["mean"] >= 0


def test_score_refuses_earlier_results_unless_overwrite(capsys, tmp_path):
    gt, pred = score_inputs(tmp_path)
    argv = ["score", "--pred", pred, "--gt", gt, "--out", tmp_path / "o"]
    assert run(argv, capsys)[0] == 0
    before = (tmp_path / "o" / "cases.csv").read_bytes()
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "cases.csv already exists" in one_error_line(err, "score")
    assert (tmp_path / "o" / "cases.csv").read_bytes() == before
    assert run(argv + ["--overwrite"], capsys)[0] == 0


# ------------------------------------------------------ item 6: predict inputs by name --

def predicted_labels(folder, case_id):
    return np.asarray(nib.load(str(folder / f"{case_id}.nii.gz")).dataobj)


@pytest.fixture(scope="module")
def reference_labels(setup, tmp_path_factory):
    """The prediction of the case from its folder (the files found by the reader)."""
    root, case = setup
    out = tmp_path_factory.mktemp("reference")
    missu_keras.prediction.predict(case.directory, out, root / "model.keras", log=None)
    return predicted_labels(out, case.case_id)


def test_predict_files_matched_by_suffix(setup, reference_labels, capsys, tmp_path):
    root, case = setup
    files = [case.image_paths[m] for m in ("t2", "t1", "flair", "t1ce")]  # not the model's order
    code, out, err = run(["predict", *files, "--out", tmp_path, "--model", root / "model.keras"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(predicted_labels(tmp_path, case.case_id), reference_labels)


def test_predict_files_matched_by_2023_names():
    files = ["x/B-t2w.nii.gz", "x/B-t1n.nii.gz", "x/B-t2f.nii.gz", "x/B-t1c.nii.gz"]
    matched = match_modalities(files, MODALITIES)
    assert list(matched) == list(MODALITIES)
    assert [p.name for p in matched.values()] == ["B-t2f.nii.gz", "B-t1c.nii.gz", "B-t1n.nii.gz",
                                                  "B-t2w.nii.gz"]
    with pytest.raises(ValueError, match=r"two files for modality 't1'.*B_t1.nii"):
        match_modalities(["B-t1n.nii.gz", "B_t1.nii", "B_t2.nii", "B_flair.nii"], MODALITIES)


def test_predict_modalities_flag_for_files_without_names(setup, reference_labels, capsys, tmp_path):
    root, case = setup
    order = ("t1", "flair", "t2", "t1ce")
    files = []
    for i, modality in enumerate(order):
        files.append(tmp_path / f"scan{i}.nii.gz")
        shutil.copy(case.image_paths[modality], files[-1])
    argv = ["predict", *files, "--out", tmp_path / "out", "--model", root / "model.keras"]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, "predict")
    assert f"{files[0]}: cannot tell its modality from the name" in line and "--modalities" in line
    code, _, err = run(argv + ["--modalities", ",".join(order)], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(predicted_labels(tmp_path / "out", "scan0"), reference_labels)


def test_predict_refuses_seg_among_images(setup, capsys, tmp_path):
    root, case = setup
    files = [case.image_paths[m] for m in ("flair", "t1ce", "t1")] + [case.seg_path]
    code, _, err = run(["predict", *files, "--out", tmp_path / "out", "--model", root / "model.keras"],
                       capsys)
    assert code == 2
    line = one_error_line(err, "predict")
    assert f"{case.seg_path}: this is a segmentation" in line
    assert not (tmp_path / "out").exists()


def test_predict_modalities_flag_contradicting_a_name_is_refused(setup, capsys, tmp_path):
    root, case = setup
    files = [case.image_paths[m] for m in MODALITIES]
    code, _, err = run(["predict", *files, "--out", tmp_path, "--model", root / "model.keras",
                        "--modalities", "t1ce,flair,t1,t2"], capsys)
    assert code == 2
    assert "its name says 'flair' but --modalities gives 't1ce'" in one_error_line(err, "predict")


# ------------------------------------------------------------------- item 7: synth --

def test_synth_refuses_non_empty_folder(capsys, tmp_path):
    data = tmp_path / "data"
    (data / "BraTS2021_00000").mkdir(parents=True)
    real = data / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    real.write_bytes(b"a real scan")
    argv = ["synth", "brats", data, "--cases", "1", "--shape", "16", "16", "16"]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, "synth")
    assert f"{data} is not empty" in line and "--overwrite" in line
    assert files_under(data) == ["BraTS2021_00000/BraTS2021_00000_flair.nii.gz"]
    assert run(argv + ["--overwrite"], capsys)[0] == 0
    assert real.read_bytes() == b"a real scan"  # a synthetic id never equals a real one
    code, _, err = run(["synth", "chaos", data, "--cases", "1"], capsys)
    assert code == 2 and "is not empty" in one_error_line(err, "synth")


@pytest.mark.parametrize("layout", BRATS_LAYOUTS)
def test_synth_case_ids_are_marked_synthetic(layout, tmp_path):
    write_synthetic_brats(tmp_path, num_cases=2, seed=0, shape=(16, 16, 16), layout=layout)
    assert detect_brats_layout(tmp_path) == layout
    cases = find_brats_cases(tmp_path)
    assert len(cases) == 2 and all("SYNTH" in c.case_id for c in cases)
    assert all(c.has_seg and not c.missing_modalities for c in cases)


# ------------------------------------------------------------------- item 8: score --

def test_score_refuses_affine_mismatch(capsys, tmp_path):
    shifted = np.diag([1.0, 1.5, 2.0, 1.0])
    shifted[0, 3] = 20.0  # 20 mm off
    gt, pred = score_inputs(tmp_path, pred_affine=shifted)
    argv = ["score", "--pred", pred, "--gt", gt, "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, "score")
    assert str(pred / "c1.nii.gz") in line and str(gt / "c1" / "c1_seg.nii.gz") in line
    assert "affine" in line and "--ignore-affine" in line
    assert not (tmp_path / "o").exists()
    code, out, err = run(argv + ["--ignore-affine"], capsys)
    assert code == 0, err and "Scored 1 case(s)" in out


def test_score_corrupt_prediction_one_line(capsys, tmp_path):
    gt, pred = score_inputs(tmp_path)
    path = pred / "c1.nii.gz"
    path.write_bytes(path.read_bytes()[:-40])  # truncated, as by a full disk or a kill
    code, _, err = run(["score", "--pred", pred, "--gt", gt, "--out", tmp_path / "o"], capsys)
    assert code == 2
    line = one_error_line(err, "score")
    assert line.startswith(f"missu-keras score: error: {path}: cannot read NIfTI")


def test_score_nan_prediction_names_the_file(capsys, tmp_path):
    labels = np.zeros((16, 14, 12), np.float32)
    labels[1, 2, 3] = np.nan
    gt, pred = score_inputs(tmp_path, pred_labels=labels)
    code, _, err = run(["score", "--pred", pred, "--gt", gt, "--out", tmp_path / "o"], capsys)
    assert code == 2
    line = one_error_line(err, "score")
    assert f"{pred / 'c1.nii.gz'}: expected finite values" in line and "(1, 2, 3)" in line


# ------------------------------------------------------ item 8: models and weights --

def test_corrupt_keras_file_is_reported_as_corrupt(setup, capsys, tmp_path):
    root, case = setup
    broken = tmp_path / "model.keras"
    broken.write_bytes((root / "model.keras").read_bytes()[:5000])  # a truncated copy
    code, _, err = run(["predict", case.directory, "--out", tmp_path / "out", "--model", broken], capsys)
    assert code == 2
    line = one_error_line(err, "predict")
    assert str(broken) in line and "corrupt" in line and "not found" not in line.lower()


def test_weights_for_another_preset_report_shapes_briefly(setup, capsys, tmp_path):
    root, _ = setup
    weights = root / "tiny.weights.h5"  # saved with TINY's widths, not the tiny preset's
    code, _, err = run(["export", "--preset", "tiny", "--weights", weights, "--out", tmp_path], capsys)
    assert code == 2
    line = one_error_line(err, "export")
    assert str(weights) in line and "has shape" in line and "in the file" in line
    assert len(line) < 500 and "SafeConv3D" not in line
    assert files_under(tmp_path) == []


def test_export_refuses_weights_of_another_configuration(setup, capsys, tmp_path):
    root, _ = setup
    code, _, err = run(["export", "--preset", "brats", "--weights", root / "model.keras",
                        "--out", tmp_path / "models"], capsys)
    assert code == 2
    line = one_error_line(err, "export")
    assert f"--weights {root / 'model.keras'}" in line and "preset 'brats'" in line
    assert "base_width=8 (preset: " in line and f"--preset {root / 'model.keras'}" in line
    assert not (tmp_path / "models").exists()


# ------------------------------------------------------- item 8: serving, all zeros --

def test_serve_request_non_json_reply_names_it(monkeypatch):
    class Reply(io.BytesIO):
        def __enter__(self):
            return self

    monkeypatch.setattr(serving.urllib.request, "urlopen", lambda *a, **k: Reply(b"<html>busy</html>"))
    with pytest.raises(ValueError, match=r"reply of http://h:8501/v1/models/missu:predict: expected "
                                         r"TF-Serving's JSON reply .* not JSON: '<html>busy</html>'"):
        serving.rest_predict("h:8501", np.zeros((1, 2, 2, 2, 4), np.float32))


@pytest.mark.parametrize("body", [b'{"error": "volume holds NaN or Inf values"}', b'["not", "an", "object"]',
                                  b"<html>bad request</html>"])
def test_serve_request_refused_by_the_server_is_one_line(setup, capsys, tmp_path, monkeypatch, body):
    """A server that refuses the request (HTTP 400 with TF-Serving's JSON error, another
    JSON value, or HTML): exit 2, one line with the URL, the status and the server's words."""
    _, case = setup

    def refuse(request, timeout=None):
        raise serving.urllib.error.HTTPError(request.full_url, 400, "Bad Request", {}, io.BytesIO(body))

    monkeypatch.setattr(serving.urllib.request, "urlopen", refuse)
    out = tmp_path / "x.nii.gz"
    code, _, err = run(["serve-request", case.directory, "--server", "h:8501", "--out", out], capsys)
    assert code == 2
    line = one_error_line(err, "serve-request")
    assert "http://h:8501/v1/models/missu:predict answered HTTP 400" in line
    assert ("NaN or Inf" in line) if b"error" in body else (body.decode()[:8] in line)
    assert not out.exists()


def test_serve_request_bad_metadata_file_names_it(setup, capsys, tmp_path):
    _, case = setup
    metadata = tmp_path / "missu_export.json"
    metadata.write_text("modalities: flair")
    argv = ["serve-request", case.directory, "--server", "127.0.0.1:9", "--out", tmp_path / "x.nii.gz",
            "--metadata", metadata]
    code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err, "serve-request")
    assert f"{metadata}: expected the JSON metadata of a missu-keras export" in line
    metadata.write_text('{"modalities": ["flair"]}')
    code, _, err = run(argv, capsys)
    assert code == 2 and "['label_map']" in one_error_line(err, "serve-request")


@pytest.mark.parametrize("labels,message", [
    (np.full(SHAPE, 7, np.int32), r"expected labels in \[0, 1, 2, 4\] .*found \[7\]"),
    (np.zeros((4, 4, 4), np.int32), r"expected labels of the case's shape \(40, 36, 28\)"),
])
def test_serve_request_checks_returned_labels(setup, monkeypatch, tmp_path, labels, message):
    _, case = setup
    monkeypatch.setattr(serving, "rest_predict", lambda *a, **k: {"labels": labels})
    out = tmp_path / "labels.nii.gz"
    with pytest.raises(ValueError, match=message):
        serving.segment_case_rest(case.directory, "h:8501", out, log=None)
    assert not out.exists()


def test_all_zero_modality_warns_naming_the_file(setup, capsys, tmp_path):
    root, case = setup
    folder = tmp_path / case.case_id
    shutil.copytree(case.directory, folder)
    blank = folder / case.image_paths["t1"].name
    img = nib.load(str(blank))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine), str(blank))
    code, out, err = run(["predict", folder, "--out", tmp_path / "out", "--model", root / "model.keras"],
                         capsys)
    assert code == 0, err
    assert f"warning: {blank}: modality 't1' of case '{case.case_id}' is all zeros" in out

"""The TF-Serving export: signatures, no MSF, graph-mode loading, a fresh process
without missu_keras, segment_volume against the Python path, bad inputs, versions,
the CLI and serve-request against a stand-in REST server.

No registry ships the ``tensorflow_model_server`` binary and there is no Docker here,
so ``saved_model_cli run`` (the same graph-mode SavedModel loader TF-Serving uses) and a
small HTTP server that answers like TF-Serving's REST API stand in for the server.
"""

import dataclasses
import http.server
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import threading

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import missu_keras
from missu_keras.data import find_brats_cases, preprocess_case, restore_labels, write_synthetic_brats
from missu_keras.data.preprocessing import PreprocessingConfig, foreground_box, pad_to_multiple
from missu_keras.data.validation import LoadedCase
from missu_keras.export import (METADATA_ASSET, export_savedmodel, next_version,
                                read_export_metadata)
from missu_keras.inference import SlidingWindowInferer, segment_volume
from missu_keras.presets import get_preset_preprocessing
from tests.conftest import REPO, TINY
from tests.helpers import run_command

PATCH = 32
CASE_SHAPE = (48, 48, 40)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS's stored orientation, the brats contract's
SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def tiny_model(**overrides):
    prep = dataclasses.replace(PreprocessingConfig.brats(), patch_size=(PATCH,) * 3)
    return missu_keras.MISSU.from_preset("tiny", **{**TINY, **overrides},
                                         preprocessing=prep.to_dict())


def move_off_init(model, seed=0):
    """Stands in for training: every float weight and BatchNorm statistic moves off its
    initial value (a real training step costs ~35 s of Conv3D backward on this CPU),
    so the export must carry all of them."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if value.dtype.kind != "f":
            continue
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 1.5, value.shape)
        elif "kernel" in variable.path:
            value = value * rng.uniform(0.7, 1.3, value.shape)
        else:
            value = value + 0.1 * rng.standard_normal(value.shape)
        variable.assign(value.astype(value.dtype))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with every weight moved off its initialisation, exported once."""
    model = move_off_init(tiny_model())
    out = tmp_path_factory.mktemp("models")
    logs = []
    result = export_savedmodel(model, out, preset="tiny", log=logs.append)
    return model, result, logs


@pytest.fixture(scope="module")
def served(exported):
    return tf.saved_model.load(str(exported[1].path))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One generated BraTS case (2021 layout) of CASE_SHAPE and its loaded volume."""
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, num_cases=1, seed=3, shape=CASE_SHAPE)
    found = find_brats_cases(root)[0]
    return found, dataclasses.replace(found, seg_path=None).load()


def python_labels(inference, loaded, prep, sw_batch_size=1, pad=False):
    """The Python path: preprocess_case + SlidingWindowInferer + restore_labels."""
    pre = preprocess_case(loaded, prep)
    image = pad_to_multiple(pre.image, prep.pad_multiple)[0] if pad else pre.image
    inferer = SlidingWindowInferer(roi_size=prep.patch_size, overlap=0.5,
                                   sw_batch_size=sw_batch_size, divisible_by=8)
    return restore_labels(np.argmax(inferer(inference, image), axis=-1), pre.box,
                          prep.label_convention)


def saved_model_cli(*args):
    # TensorFlow's console script of the Python running the tests (a virtual environment's
    # bin/ need not be on PATH)
    program = pathlib.Path(sysconfig.get_path("scripts")) / "saved_model_cli"
    return subprocess.run([str(program), *args], capture_output=True, text=True,
                          env=SUBPROCESS_ENV, timeout=300)


# --------------------------------------------------------------- the export itself --


def test_layout_metadata_and_log(exported):
    model, result, logs = exported
    assert result.version == 1 and result.path == result.path.parent / "1"
    assert result.path.parent.name == "missu"
    assert {"saved_model.pb", "variables", "assets"} <= set(os.listdir(result.path))
    assert not [p for p in os.listdir(result.path.parent) if p.startswith(".tmp")]
    meta = read_export_metadata(result.path)
    assert meta == json.loads((result.path / "assets" / METADATA_ASSET).read_text())
    assert meta["preset"] == "tiny"
    assert meta["patch_size"] == [PATCH] * 3
    assert meta["modalities"] == ["flair", "t1ce", "t1", "t2"]
    assert meta["label_map"] == {"0": 0, "1": 1, "2": 2, "3": 4}
    assert meta["preprocessing"] == model.preprocessing.to_dict()
    assert meta["preprocessing_source"] == "model"
    assert meta["missu_keras_version"] == missu_keras.__version__
    assert meta["msf_in_graph"] is False and meta["msf_layers"] == []
    assert meta["parameters"] == model.inference_model().count_params()
    assert any("no MSF variable or op" in line for line in logs)


def test_saved_model_cli_show_lists_both_signatures(exported):
    shown = saved_model_cli("show", "--dir", str(exported[1].path), "--all")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "signature_def['serving_default']" in out
    assert "signature_def['segment_volume']" in out
    serving = out.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    volume = out.split("signature_def['segment_volume']")[1].split("signature_def[")[0]
    assert "inputs['image']" in serving and "shape: (-1, 32, 32, 32, 4)" in serving
    assert "outputs['probabilities']" in serving and "outputs['labels']" in serving
    assert "DT_INT32" in serving and "shape: (-1, 32, 32, 32)" in serving
    assert "inputs['volume']" in volume and "shape: (-1, -1, -1, 4)" in volume
    assert "outputs['labels']" in volume and "outputs['probabilities']" not in volume


def test_no_msf_variable_or_op(exported, served):
    from tensorflow.core.protobuf import saved_model_pb2

    model, result, _ = exported
    # Positive control: the training model does hold MSF variables.
    assert [w.path for w in model.weights if "msf" in w.path]
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((result.path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    variables = [n.variable.name for n in graph.object_graph_def.nodes
                 if n.WhichOneof("kind") == "variable"]
    assert "init_conv/conv/kernel" in variables and "endconv/kernel" in variables
    assert not [v for v in variables if "msf" in v.lower()]
    assert not [v.name for v in served.variables if "msf" in v.name.lower()]
    trainable = {w.path for w in model.inference_model().weights}
    assert {v.name.split(":")[0] for v in served.trainable_variables} <= trainable
    # Each value is stored once: the variables take parameters x 4 bytes (+ index).
    stored = sum(p.stat().st_size for p in (result.path / "variables").rglob("*") if p.is_file())
    assert stored < 1.05 * 4 * model.inference_model().count_params() + 100_000
    nodes = [n.name for f in graph.graph_def.library.function for n in f.node_def]
    assert [n for n in nodes if "enblock1" in n]  # layer names do reach the op names
    assert not [n for n in nodes if "msf" in n.lower()]


def test_saved_model_cli_run_matches_keras(exported, tmp_path):
    model, result, _ = exported
    x = np.random.default_rng(1).standard_normal((2, PATCH, PATCH, PATCH, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run = saved_model_cli("run", "--dir", str(result.path), "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"image={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr[-3000:]
    probs = np.load(tmp_path / "out" / "probabilities.npy")
    labels = np.load(tmp_path / "out" / "labels.npy")
    expected = model.inference_model().predict(x, verbose=0)
    assert probs.shape == expected.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert labels.dtype == np.int32 and labels.shape == x.shape[:4]
    np.testing.assert_array_equal(labels, np.array([0, 1, 2, 4])[np.argmax(probs, axis=-1)])


def test_saved_model_cli_run_names_the_expected_shape(exported, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, PATCH, PATCH, PATCH, 3), "float32"))
    run = saved_model_cli("run", "--dir", str(exported[1].path), "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"image={tmp_path / 'bad.npy'}")
    assert run.returncode != 0
    assert "(None, 32, 32, 32, 4)" in run.stderr


FRESH_PROCESS = r"""
import json, sys
sys.modules["missu_keras"] = None          # any import of missu_keras now fails
try:
    import missu_keras
    raise SystemExit("missu_keras was importable")
except ImportError:
    pass
import numpy as np, tensorflow as tf
path, folder = sys.argv[1], sys.argv[2]
served = tf.saved_model.load(path)
meta = json.load(open(served.missu_metadata.asset_path.numpy().decode()))
x = np.load(folder + "/x.npy")
out = served.signatures["serving_default"](image=tf.constant(x))
np.save(folder + "/probabilities.npy", out["probabilities"].numpy())
volume = np.load(folder + "/volume.npy")
labels = served.signatures["segment_volume"](volume=tf.constant(volume))["labels"].numpy()
np.save(folder + "/labels.npy", labels)
print(json.dumps({"modalities": meta["modalities"], "modules": sorted(
    m for m in sys.modules if m.startswith("missu") and sys.modules[m] is not None)}))
"""


def test_loads_and_runs_in_a_fresh_process_without_missu_keras(exported, case, tmp_path):
    model, result, _ = exported
    x = np.random.default_rng(2).standard_normal((1, PATCH, PATCH, PATCH, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "volume.npy", case[1].image)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    run = subprocess.run([sys.executable, str(script), str(result.path), str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=SUBPROCESS_ENV,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"modalities": ["flair", "t1ce", "t1", "t2"], "modules": []}
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"),
                               model.inference_model().predict(x, verbose=0), atol=1e-5)
    expected = python_labels(model.inference_model(), case[1], model.preprocessing)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


def test_segment_volume_equals_the_python_path(exported, served, case):
    model, _, _ = exported
    loaded = case[1]
    assert loaded.image.shape == (*CASE_SHAPE, 4)
    expected = python_labels(model.inference_model(), loaded, model.preprocessing)
    got = served.signatures["segment_volume"](volume=tf.constant(loaded.image))["labels"].numpy()
    assert got.dtype == np.int32 and got.shape == CASE_SHAPE
    assert set(np.unique(got).tolist()) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(got, expected)
    # ... which is what `missu-keras predict` runs.
    from missu_keras.prediction import Segmenter

    np.testing.assert_array_equal(got, Segmenter.from_model(model).segment(loaded).labels)
    # Outside the foreground box (plus the crop margin) everything is background.
    box = foreground_box(loaded.image, margin=2)
    outside = np.ones(CASE_SHAPE, bool)
    outside[box.slices] = False
    assert outside.any() and not got[outside].any()


@pytest.mark.parametrize("signature,value,pattern", [
    ("serving_default", tf.zeros([1, PATCH, PATCH, PATCH, 3]),
     r"serving_default: image must be float32 \[batch, 32, 32, 32, 4\] with the 4 channels \(flair, t1ce, t1, t2\)"),
    ("serving_default", tf.zeros([PATCH, PATCH, PATCH, 4]), r"expected shape \[\?,32,32,32,4\]"),
    ("serving_default", tf.zeros([1, 40, PATCH, PATCH, 4]), r"expected shape \[\?,32,32,32,4\]"),
    ("segment_volume", tf.zeros([40, 40, 24, 2]),
     r"segment_volume: volume must be float32 \[H, W, D, 4\] with the 4 channels \(flair"),
    ("segment_volume", tf.zeros([1, 40, 40, 24, 4]), r"expected shape \[\?,\?,\?,4\]"),
])
def test_bad_inputs_say_what_was_expected(served, signature, value, pattern):
    # Signature functions (what a server runs) check inside the graph...
    name = "image" if signature == "serving_default" else "volume"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        served.signatures[signature](**{name: value})
    # ...and the restored tf.functions already when binding the arguments.
    with pytest.raises((TypeError, ValueError), match=r"TensorSpec\(shape=\("):
        getattr(served, signature)(value)


@pytest.mark.parametrize("signature,bad", [("serving_default", np.nan), ("serving_default", np.inf),
                                           ("segment_volume", np.nan), ("segment_volume", -np.inf)])
def test_non_finite_input_fails_with_an_error_status(served, case, signature, bad):
    # Before issue 13, segment_volume answered an all-background volume for a NaN voxel.
    if signature == "serving_default":
        name, value = "image", np.ones((1, PATCH, PATCH, PATCH, 4), np.float32)
    else:
        name, value = "volume", case[1].image.copy()
    value[(0,) * (value.ndim - 1) + (1,)] = bad  # one voxel, one channel
    value[(slice(None),) * (value.ndim - 4) + (20, 20, 20, 2)] = bad  # and one inside the brain
    pattern = f"{signature}: {name} holds NaN or Inf values"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        served.signatures[signature](**{name: tf.constant(value)})
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        getattr(served, signature)(tf.constant(value))


# ----------------------------------------------------- the in-graph pipeline, alone --


def graph_pipeline(net, prep, sw_batch_size=1, pad=False):
    """`missu_keras.inference.segment_volume` in a tf.function, as the export runs it."""
    inferer = SlidingWindowInferer(prep.patch_size, overlap=0.5, sw_batch_size=sw_batch_size)
    return tf.function(lambda volume: segment_volume(
        volume, lambda x: net(x, training=False), prep, inferer, num_classes=4,
        pad_to_multiple=pad)["labels"])


@pytest.fixture(scope="module")
def small_net():
    """A cheap translation-equivariant predictor for the pipeline checks."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 8, 4))
    hidden = keras.layers.Conv3D(8, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Conv3D(4, 1, activation="softmax")(hidden))


@pytest.mark.parametrize("shape,settings,pad", [
    ((30, 21, 13), {}, False),                                   # crop + brain z-score
    ((30, 21, 13), {}, True),                                    # + pad to a multiple of 8
    ((10, 40, 5), {"normalization": "zscore"}, False),           # axes shorter than the window
    ((33, 17, 20), {"normalization": "none", "crop_to_nonzero": False}, False),
    ((24, 24, 12), {"crop_margin": (0, 5, 1)}, False),
])
def test_in_graph_preprocessing_and_window_equal_numpy(small_net, shape, settings, pad):
    prep = PreprocessingConfig.brats(patch_size=(16, 16, 8), **settings)
    rng = np.random.default_rng(sum(shape))
    volume = np.zeros(shape + (4,), np.float32)
    inside = tuple(slice(2, s - 3) for s in shape)
    volume[inside] = rng.uniform(1, 900, volume[inside].shape).round()
    volume[inside][..., 1] *= rng.uniform(0, 1, volume[inside].shape[:3]) > 0.3  # holes in one channel
    segment = graph_pipeline(small_net, prep, sw_batch_size=3, pad=pad)
    got = segment(tf.constant(volume)).numpy()
    loaded = LoadedCase("case", volume, None, LPS, (1.0, 1.0, 1.0), prep.modalities, "brats")
    expected = python_labels(small_net, loaded, prep, sw_batch_size=3, pad=pad)
    assert got.shape == shape
    np.testing.assert_array_equal(got, expected)


def test_in_graph_pipeline_on_an_empty_volume(small_net):
    prep = PreprocessingConfig.brats(patch_size=(16, 16, 8))
    segment = graph_pipeline(small_net, prep)
    volume = np.zeros((20, 18, 9, 4), np.float32)
    loaded = LoadedCase("case", volume, None, LPS, (1.0, 1.0, 1.0), prep.modalities, "brats")
    np.testing.assert_array_equal(segment(tf.constant(volume)).numpy(),
                                  python_labels(small_net, loaded, prep))


# ------------------------------------------------------------ versions, ms_output --


def test_next_version_and_refusal_to_overwrite(exported, tmp_path):
    model, result, _ = exported
    base = tmp_path / "missu"
    assert next_version(base) == 1
    for name in ("1", "7", "notaversion", ".tmp-export-9-x"):
        (base / name).mkdir(parents=True)
    assert next_version(base) == 8
    with pytest.raises(FileExistsError, match=r"version 1 of model 'missu'.*overwrite"):
        export_savedmodel(model, tmp_path, version=1, log=None)
    with pytest.raises(ValueError, match="version must be an integer"):
        export_savedmodel(model, tmp_path, version=-1, log=None)
    with pytest.raises(ValueError, match="plain folder name"):
        export_savedmodel(model, tmp_path, name="a/b", log=None)
    with pytest.raises(ValueError, match="needs a missu_keras.MISSU"):
        export_savedmodel(model.inference_model(), tmp_path, log=None)


def test_ms_output_keeps_the_msf_and_says_so(tmp_path):
    model = tiny_model(msf_mode="ms_output")
    logs = []
    result = export_savedmodel(model, tmp_path, preset="tiny", log=logs.append)
    assert result.metadata["msf_in_graph"] is True and result.metadata["msf_layers"]
    assert any("ms_output" in line and "stays" in line for line in logs)
    served = tf.saved_model.load(str(result.path))
    assert [v.name for v in served.variables if "msf" in v.name]
    x = np.random.default_rng(4).standard_normal((1, PATCH, PATCH, PATCH, 4)).astype("float32")
    np.testing.assert_allclose(served.signatures["serving_default"](image=x)["probabilities"],
                               model.inference_model().predict(x, verbose=0), atol=1e-5)


# ------------------------------------------------------------------ command line --


def run_cli(argv):
    return run_command(argv)


def test_export_command_and_script_keep_versions(tmp_path, capsys):
    preset_dir = missu_keras.save_preset(tiny_model(), tmp_path / "preset")
    (tmp_path / "out" / "missu" / "1").mkdir(parents=True)
    (tmp_path / "out" / "missu" / "1" / "keep.txt").write_text("an older version")
    assert run_cli(["export", "--preset", str(preset_dir), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "missu" / "1" / "keep.txt").exists()  # never overwritten
    assert (tmp_path / "out" / "missu" / "2" / "saved_model.pb").is_file()
    assert "exported 'missu' version 2" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="already exists"):
        run_cli(["export", "--preset", str(preset_dir), "--out", str(tmp_path / "out"),
                 "--version", "2"])
    # The stand-alone script, told to overwrite version 1.
    script = REPO / "export" / "export_savedmodel.py"
    run = subprocess.run(
        [sys.executable, str(script), "--preset", "tiny", "--weights", "none", "--image-size", "32",
         "--set", "embed_dim=32", "--set", "num_layers=1", "--out", str(tmp_path / "out"),
         "--version", "1", "--overwrite", "--name", "missu"],
        capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "out" / "missu" / "1" / "keep.txt").exists()
    meta = read_export_metadata(tmp_path / "out" / "missu" / "1")
    assert meta["preset"] == "tiny" and meta["model_config"]["embed_dim"] == 32
    assert meta["preprocessing"] == get_preset_preprocessing("tiny", patch_size=32)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from missu_keras.cli import main

    assert main(["export", "--preset", "tiny", "--weights", "published", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No published weights for preset 'tiny'" in err and ".pth" in err


# ------------------------------------------------- serve-request, stand-in server --


class _TFServingLike(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/models/<name>[/versions/<n>]:predict like TF-Serving's REST API
    (columnar "inputs" -> "outputs", single outputs unnamed), from a loaded SavedModel."""

    served = None
    requests = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body.get("signature_name")))
        signature = self.server.served.signatures[body.get("signature_name", "serving_default")]
        inputs = {k: tf.constant(np.asarray(v, np.float32)) for k, v in body["inputs"].items()}
        try:
            outputs = {k: v.numpy().tolist() for k, v in signature(**inputs).items()}
            answer, code = {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}, 200
        except tf.errors.InvalidArgumentError as err:
            answer, code = {"error": err.message}, 400
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def rest_server(served):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TFServingLike)
    server.served = served
    _TFServingLike.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_serve_request_writes_the_labels_in_the_original_grid(exported, case, rest_server,
                                                              tmp_path, capsys):
    model, result, _ = exported
    found, loaded = case
    out = tmp_path / "pred" / f"{found.case_id}.nii.gz"
    assert run_cli(["serve-request", str(found.directory), "--server", rest_server,
                    "--out", str(out), "--metadata", str(result.path), "--version", "1"]) == 0
    # With the metadata the client reorients and sends the spacing (issue 15).
    assert _TFServingLike.requests == [("/v1/models/missu/versions/1:predict", "segment_scan")]
    written = nib.load(str(out))
    reference = nib.load(str(found.reference_path))
    np.testing.assert_array_equal(written.affine, reference.affine)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == CASE_SHAPE
    expected = python_labels(model.inference_model(), loaded, model.preprocessing)
    np.testing.assert_array_equal(labels, expected)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="already exists"):  # never overwrites
        run_cli(["serve-request", str(found.directory), "--server", rest_server, "--out", str(out)])


def test_serve_request_reports_an_unreachable_server(case, tmp_path):
    with pytest.raises(ConnectionError, match="cannot reach TF-Serving at http://127.0.0.1:9/"):
        run_cli(["serve-request", str(case[0].directory), "--server", "127.0.0.1:9",
                 "--out", str(tmp_path / "x.nii.gz"), "--timeout", "5"])

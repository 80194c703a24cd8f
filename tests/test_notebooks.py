"""The notebooks in ``notebooks/`` run top to bottom on tiny settings, and are committed
without outputs.

Each notebook starts with a code cell tagged ``parameters`` (papermill's convention).
The run test inserts a cell tagged ``injected-parameters`` right after it with the CI
values below (tiny volumes and networks, a few steps, ``WORK_DIR`` in ``tmp_path``),
executes the notebook with ``nbclient`` in a fresh kernel whose working directory is
``tmp_path``, and fails on the first cell error. To run one by hand with other values,
edit its parameters cell, or use papermill (``papermill nb.ipynb out.ipynb -p EPOCHS 2``).
"""

import ast
import json
import time

import pytest

from tests.conftest import PARITY_FIXTURE, REPO

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = REPO / "notebooks"

# A network small enough for a few CPU steps (as tests/conftest.py's TINY).
TINY_MODEL = {"embed_dim": 32, "num_layers": 1}

# Seconds one cell may run (the slowest cell of each notebook trains a model).
CELL_TIMEOUT_S = 300

CI_PARAMETERS = {
    "01_quickstart.ipynb": dict(
        NUM_TRAIN_CASES=3, NUM_TEST_CASES=1, VOLUME_SHAPE=(32, 32, 32), PATCH_SIZE=32,
        EPOCHS=1, STEPS_PER_EPOCH=2, BATCH_SIZE=1, MODEL_OVERRIDES=TINY_MODEL, RUN_EAGERLY=True,
    ),
    "02_train_brats.ipynb": dict(
        BRATS_DIR="/nonexistent/MICCAI_BraTS_2019_Data_Training", SYNTHETIC_CASES=4,
        SYNTHETIC_SHAPE=(32, 32, 32),
        SYNTHETIC_SETTINGS=dict(preset="tiny", epochs=2, steps_per_epoch=2, batch_size=1,
                                patch_size=32, loss="dice_ce", learning_rate=3e-3,
                                val_fraction=0.25, validation_every=1, image_every=1,
                                foreground_oversample=0.5, model=TINY_MODEL),
        STOP_AFTER_EPOCHS=1, SHOW_TENSORBOARD=False,
    ),
    "03_chaos_liver.ipynb": dict(
        CHAOS_DIR="/nonexistent/CHAOS_Train_Sets", SYNTHETIC_CASES=4, SYNTHETIC_SHAPE=(48, 48, 16),
        SYNTHETIC_SETTINGS=dict(preset="tiny", epochs=1, steps_per_epoch=2, batch_size=1,
                                patch_size=[32, 32, 16], loss="dice_ce", learning_rate=3e-3,
                                validation_every=1, image_every=1, foreground_oversample=0.5,
                                model=TINY_MODEL),
        SHOW_TENSORBOARD=False,
    ),
    "04_export_and_serve.ipynb": dict(
        MODEL_SOURCE="/nonexistent/run", PRESET="tiny",
        PRESET_OVERRIDES=dict(image_size=32, **TINY_MODEL), SCAN_SHAPE=(40, 40, 32),
        TORCH_STATE_DICT=str(PARITY_FIXTURE),
    ),
    "05_ablation.ipynb": dict(
        NUM_TRAIN_CASES=2, NUM_TEST_CASES=1, VOLUME_SHAPE=(24, 24, 24), PATCH_SIZE=16, EPOCHS=1,
        STEPS_PER_EPOCH=2, BATCH_SIZE=1, MODEL_OVERRIDES=TINY_MODEL, RUN_EAGERLY=True,
    ),
}

# A few words each executed notebook must print: the step the notebook is about happened.
EXPECTED_OUTPUT = {
    "01_quickstart.ipynb": ["sd_loss", "WT", "missu_tiny.keras"],
    "02_train_brats.ipynb": ["not found: using 4 synthetic cases", "replica(s)",
                             "resuming from epoch 1", "resumed at epoch 1", "best checkpoint",
                             "started at epoch 2: 0 epoch(s) trained"],
    "03_chaos_liver.ipynb": ["not found: using 4 synthetic cases", "in_channels 2, num_classes 2",
                             "liver Dice"],
    "04_export_and_serve.ipynb": ["serving_default", "segment_volume", "agrees with the Python path",
                                  "saved preset folder", "No published weights"],
    "05_ablation.ipynb": ["SYNTHETIC DATA", "MISSU: +MSF (local) +SD", "+MSF (MS-output) +SD"],
}


def notebook_paths():
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def parameters_index(nb):
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def assigned_names(source):
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_every_notebook_has_ci_parameters():
    names = {p.name for p in notebook_paths()}
    assert names, f"no notebook found in {NOTEBOOK_DIR}"
    assert names == set(CI_PARAMETERS), "every notebook needs CI values here, and only those"
    assert set(EXPECTED_OUTPUT) <= names


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts in git; one ``parameters`` cell, the first code cell,
    defining ``WORK_DIR`` and every name CI overrides."""
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
            assert "execution" not in cell.metadata, f"{path.name} cell {i} carries run timings"
    index = parameters_index(nb)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert index == first_code, "the parameters cell must be the first code cell"
    defined = assigned_names(nb.cells[index].source)
    missing = ({"WORK_DIR"} | set(CI_PARAMETERS.get(path.name, {}))) - defined
    assert not missing, f"{path.name}: parameters cell does not define {sorted(missing)}"


def outputs_text(nb):
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(str(out.data.get("text/plain", "")))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    nb = nbformat.read(str(path), as_version=4)
    overrides = dict(CI_PARAMETERS[path.name], WORK_DIR=str(tmp_path / "work"))
    source = "# Injected by tests/test_notebooks.py\n" + "\n".join(
        f"{name} = {value!r}" for name, value in overrides.items())
    nb.cells.insert(parameters_index(nb) + 1,
                    nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.time()
    client.execute()  # raises CellExecutionError (with the traceback) on a cell error
    seconds = time.time() - start
    text = outputs_text(nb)
    for expected in EXPECTED_OUTPUT.get(path.name, []):
        assert expected in text, f"{path.name}: {expected!r} not in the outputs"
    images = sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))
    assert images >= 1, f"{path.name} drew no figure"
    produced = sorted(p.name for p in tmp_path.iterdir())
    assert produced == ["work"], f"{path.name} wrote outside WORK_DIR: {produced}"
    print(json.dumps({"notebook": path.name, "seconds": round(seconds, 1), "figures": images}))

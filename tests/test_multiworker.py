"""MultiWorkerMirroredStrategy with real worker processes on 127.0.0.1.

Two workers run the same `missu_keras.training.train` call with their own ``TF_CONFIG``
(global batch 2: one sample per worker per step); a single process runs it once on the
same global batches. The per-epoch losses must agree within 1e-3, the chief must write
the run's files and the other worker nothing there.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from missu_keras.distribute import local_tf_configs
from tests.conftest import REPO

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from missu_keras.training import train
    settings = json.loads(sys.argv[1])
    result = train(settings, log=None)
    print(json.dumps({"loss": result.history.history["loss"],
                      "replicas": result.model.distribute_strategy.num_replicas_in_sync}))
    """
)


def _settings(data, out):
    return {"data": str(data), "out": str(out), "preset": "tiny", "patch_size": 32, "epochs": 2,
            "steps_per_epoch": 2, "batch_size": 2, "val_fraction": 0.34, "validation_every": 2,
            "image_every": 0, "verbose": 0, "seed": 7, "foreground_oversample": 0.5,
            "model": {"base_width": 8, "embed_dim": 32, "num_heads": 4, "num_layers": 1,
                      "mlp_dim": 64, "dropout_rate": 0.0, "attn_dropout_rate": 0.0,
                      "stem_dropout_rate": 0.0}}


def _start(settings, tf_config=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(settings)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=900):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not finish in {timeout} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path):
    from missu_keras.data import write_synthetic_brats

    data = tmp_path / "data"
    write_synthetic_brats(data, num_cases=3, seed=2, shape=(32, 32, 32))
    configs = local_tf_configs(2)
    workers = [_start(_settings(data, tmp_path / "multi"), c) for c in configs]
    results = [_finish(w) for w in workers]
    single = _finish(_start(_settings(data, tmp_path / "single")))

    assert [r["replicas"] for r in results] == [2, 2] and single["replicas"] == 1
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-6)
    assert results[0]["loss"] == pytest.approx(single["loss"], abs=1e-3)

    run = tmp_path / "multi"
    with open(run / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    assert (run / "checkpoints" / "last.keras").is_file()
    assert (run / "config.json").is_file() and (run / "tensorboard").is_dir()
    assert (run / "backup").is_dir() and (run / "backup-worker1").is_dir()
    assert not list(run.glob("scratch-*"))  # the other worker's scratch files are gone

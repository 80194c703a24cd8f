"""Issue 14, training: a killed, corrupted, moved or starved run never loses or repeats
anything, and says what happened.

The runs are ``missu-keras train`` subprocesses killed with a real SIGKILL at the points
where the test hook (`missu_keras.training.callbacks.pause_for_test`) pauses them. One
chain of kills in one run folder (module fixture ``killed_chain``) serves the tests of
the first items; each test checks its own part of it against an uninterrupted run
(fixture ``reference``), bit for bit, with dropout on.
"""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import yaml

from missu_keras import cli
from missu_keras.data import write_synthetic_brats
from missu_keras.training import TrainConfig, train

EPOCHS, STEPS, BATCH = 3, 1, 1
# The tiny network with its dropout on (the MISSUConfig defaults: 0.1, 0.1, 0.2).
MODEL = {"base_width": 8, "embed_dim": 32, "num_heads": 4, "num_layers": 1, "mlp_dim": 64}
CLI = [sys.executable, "-c", "import sys; from missu_keras.cli import main; sys.exit(main())"]
PAUSE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, num_cases=3, seed=1, shape=(32, 32, 32))
    return root


def _settings(data_dir, out, **extra):
    settings = dict(data=str(data_dir), out=str(out), preset="tiny", patch_size=32, epochs=EPOCHS,
                    steps_per_epoch=STEPS, batch_size=BATCH, validation_every=1, image_every=0,
                    verbose=0, seed=3, workers=1, model=MODEL)
    return {**settings, **extra}


def _config_file(folder, data_dir, out, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(_settings(data_dir, out, **extra)))
    return path


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSU_KERAS_TEST_PAUSE")}
    env.update(PYTHONUNBUFFERED="1", **extra)  # a killed run's output is not lost in a buffer
    return env


def _train(config_path, cwd=None):
    """The train command, to its end; returns its stdout."""
    done = subprocess.run([*CLI, "train", "--config", str(config_path)], capture_output=True,
                          text=True, env=_env(), cwd=cwd, timeout=PAUSE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _train_killed_at(config_path, point, marker):
    """The train command, killed with SIGKILL once it pauses at ``point`` ("name@epoch")."""
    env = _env(MISSU_KERAS_TEST_PAUSE_AT=point, MISSU_KERAS_TEST_PAUSE_FILE=str(marker))
    with open(str(marker) + ".log", "w") as log:
        proc = subprocess.Popen([*CLI, "train", "--config", str(config_path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + PAUSE_TIMEOUT_S
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        paused = marker.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert paused, f"the run never paused at {point}: {open(str(marker) + '.log').read()[-3000:]}"
    return open(str(marker) + ".log").read()


def _weights(keras_file):
    """Every array of a .keras file's weights, by its path in the archive."""
    arrays = {}
    with zipfile.ZipFile(keras_file) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def _assert_same_run(out, ref):
    """log.csv and the best checkpoint equal the uninterrupted run's, bit for bit."""
    assert (out / "log.csv").read_text() == (ref / "log.csv").read_text()
    assert (json.loads((out / "checkpoints" / "best.keras.json").read_text())
            == json.loads((ref / "checkpoints" / "best.keras.json").read_text()))
    a, b = _weights(out / "checkpoints" / "best.keras"), _weights(ref / "checkpoints" / "best.keras")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not [p for p in out.rglob(".tmp-*")], "a temporary file was left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    _train(_config_file(root, data_dir, root / "run"))
    return root / "run"


def _listing(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if "cache" not in p.parts)


@pytest.fixture(scope="module")
def killed_chain(tmp_path_factory, data_dir):
    """One run folder killed three times, each time followed by the same command:
    during the first backup write, between epochs 1 and 2, during the validation of
    epoch 3; the fourth command finishes. Returns ``(out, {point name: (the killed
    run's output, the folder's files right after the kill, the next command's output)})``."""
    root = tmp_path_factory.mktemp("killed")
    out, config_path = root / "run", _config_file(root, data_dir, root / "run")
    points = ["backup@0", "between_epochs@1", "validation@2"]
    steps = {}
    output = _train_killed_at(config_path, points[0], root / "paused-0")
    for i, point in enumerate(points):
        listing = _listing(out)
        if i + 1 < len(points):
            following = _train_killed_at(config_path, points[i + 1], root / f"paused-{i + 1}")
        else:
            following = _train(config_path)
        steps[point.split("@")[0]] = (output, listing, following)
        output = following
    return out, steps


@pytest.mark.slow
def test_a_kill_while_writing_the_backup_leaves_a_resumable_run(killed_chain, reference):
    out, steps = killed_chain
    _, listing, resumed = steps["backup"]
    # Killed with the epoch's weights half-written: only a temporary file, no backup.
    assert any(p.startswith("backup/.tmp-epoch-0001.weights.h5") for p in listing), listing
    assert not any(p.startswith("backup/epoch-") for p in listing), listing
    assert "removed 1 unfinished file(s) of an interrupted run" in resumed
    assert "resuming" not in resumed  # nothing was complete: epoch 0 again
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_a_truncated_latest_backup_falls_back_to_the_previous_one(tmp_path, reference, data_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    latest = out / "backup" / "epoch-0003.weights.h5"
    latest.write_bytes(latest.read_bytes()[:1000])
    settings = _settings(data_dir, out)
    assert cli.main(["train", "--config", str(_config_file(tmp_path, data_dir, out))]) == 0
    said = capsys.readouterr().out
    assert f"{latest} is truncated or corrupt" in said and "falling back to the previous backup" in said
    assert "resuming from epoch 2" in said
    _assert_same_run(out, reference)
    assert train(settings, log=None).initial_epoch == EPOCHS  # the latest backup is whole again


@pytest.mark.slow
def test_a_kill_during_validation_keeps_the_epoch(killed_chain, reference):
    out, steps = killed_chain
    killed, listing, resumed = steps["validation"]
    assert "backup/epoch-0002.json" in listing and "backup/epoch-0003.json" not in listing
    assert "resuming from epoch 2" in resumed
    _assert_same_run(out, reference)  # epoch 3's row and its chance at best.keras are there


@pytest.mark.slow
def test_resume_is_exact_with_dropout_on(killed_chain, reference):
    out, steps = killed_chain
    assert "resuming from epoch 1" in steps["between_epochs"][2]
    assert TrainConfig.from_dict(_settings("d", "o")).model == MODEL  # dropout: the defaults
    _assert_same_run(out, reference)
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + EPOCHS
    # The dropout seed states went on: the last backup's are those of the reference.
    ours = json.loads((out / "backup" / "epoch-0003.json").read_text())
    theirs = json.loads((reference / "backup" / "epoch-0003.json").read_text())
    assert ours["seed_states"] == theirs["seed_states"] and ours["sha256"] == theirs["sha256"]


@pytest.mark.slow
def test_resume_compares_content_not_path_text(tmp_path, reference, data_dir, monkeypatch, capsys):
    moved = tmp_path / "moved" / "run"
    shutil.copytree(reference, moved)  # the run folder moved elsewhere
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(moved) + "/"  # relative, with a trailing '/'
    config_path = _config_file(tmp_path / "cfg", os.path.relpath(data_dir) + "/", relative)
    assert cli.main(["train", "--config", str(config_path)]) == 0
    assert "resuming from epoch 3" in capsys.readouterr().out
    _assert_same_run(moved, reference)
    # A changed dataset is refused, naming the case that differs.
    changed = tmp_path / "changed"
    shutil.copytree(data_dir, changed)
    case, other = sorted(p for p in changed.iterdir() if p.is_dir())[:2]
    next(case.glob("*flair*")).write_bytes(next(other.glob("*flair*")).read_bytes())
    with pytest.raises(ValueError, match=rf"data: cases whose files changed \['{case.name}'\]"):
        train(_settings(changed, moved), log=None)


def test_steps_per_epoch_true_is_refused(tmp_path, data_dir, capsys):
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer or null. Received: "
                                         "steps_per_epoch=True"):
        TrainConfig.from_dict({**_settings(data_dir, tmp_path / "run"), "steps_per_epoch": True})
    config_path = _config_file(tmp_path, data_dir, tmp_path / "run")
    config_path.write_text(config_path.read_text().replace("steps_per_epoch: 1", "steps_per_epoch: true"))
    assert cli.main(["train", "--config", str(config_path)]) == 2
    assert "steps_per_epoch must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _mount_read_only(folder):
    """A read-only folder: a read-only tmpfs where this user may mount one, else mode 555
    (which root ignores); None where neither works."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True)
    return "mount" if done.returncode == 0 else None


def test_write_errors_end_with_one_line_and_exit_2_read_only(tmp_path, data_dir, capsys,
                                                              monkeypatch):
    import missu_keras.training.run as run

    folder = tmp_path / "ro"
    how = _mount_read_only(folder)
    if how is None:
        pytest.skip("cannot make a read-only folder here (root without mount)")

    def no_computation(*args, **kwargs):
        raise AssertionError("the data were prepared before the output folder was checked")

    monkeypatch.setattr(run, "_prepare_data", no_computation)
    try:
        config_path = _config_file(tmp_path, data_dir, folder / "run")
        assert cli.main(["train", "--config", str(config_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{folder / 'run'}: --out is not writable" in err[0], err
    finally:
        if how == "mount":
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.mark.slow
def test_write_errors_end_with_one_line_and_exit_2_disk_full(tmp_path, reference, data_dir,
                                                              monkeypatch, capsys):
    """The disk fills up (ENOSPC) while the last epoch's backup is written: exit 2, one line
    naming the file, nothing half-written; once there is space again the same command
    trains that epoch again and the run equals the uninterrupted one."""
    import missu_keras.files as files

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for path in (out / "backup").glob("epoch-0003.*"):  # as if killed before epoch 3's backup
        path.unlink()
    config_path = _config_file(tmp_path, data_dir, out)
    real_fsync = files._fsync

    def full_disk(path):
        if "backup" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_fsync(path)

    monkeypatch.setattr(files, "_fsync", full_disk)
    assert cli.main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    target = out / "backup" / "epoch-0003.weights.h5"
    assert err == [f"missu-keras train: error: {target}: could not write the file "
                   f"(No space left on device)"], err
    assert not list(out.rglob(".tmp-*")) and not list((out / "backup").glob("epoch-0003.*"))
    monkeypatch.setattr(files, "_fsync", real_fsync)  # space is back
    assert cli.main(["train", "--config", str(config_path)]) == 0
    assert "resuming from epoch 2" in capsys.readouterr().out
    _assert_same_run(out, reference)


def test_find_backup_falls_back_and_names_the_file(tmp_path):
    """Without training: the newest record whose weights match wins; a corrupt, missing or
    unreadable one is skipped with a line naming it; a Keras BackupAndRestore folder of
    an earlier version is refused, not silently restarted."""
    from missu_keras.files import sha256_file
    from missu_keras.training.backup import find_backup

    backup = tmp_path / "backup"
    backup.mkdir()
    for epoch in (1, 2, 3):
        weights = backup / f"epoch-{epoch:04d}.weights.h5"
        weights.write_bytes(bytes([epoch]) * 100)
        (backup / f"epoch-{epoch:04d}.json").write_text(json.dumps({
            "epoch": epoch, "weights": weights.name, "sha256": sha256_file(weights),
            "seed_states": [[epoch, 0]], "best": None}))
    said = []
    assert find_backup(backup, said.append).epoch == 3 and said == []
    (backup / "epoch-0003.weights.h5").write_bytes(b"\1" * 10)
    (backup / "epoch-0002.json").write_text("{")
    record = find_backup(backup, said.append)
    assert record.epoch == 1 and record.seed_states == [[1, 0]]
    assert "epoch-0003.weights.h5 is truncated or corrupt" in said[0]
    assert "unreadable backup record" in said[1] and "epoch-0002.json" in said[1]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "training_metadata.json").write_text('{"epoch": 4}')
    with pytest.raises(ValueError, match="training_metadata.json: a backup of an earlier missu-keras"):
        find_backup(legacy)


def test_log_rows_past_the_backup_are_dropped(tmp_path):
    """A resumed run's log.csv keeps the rows of the epochs its backup covers (a row
    written after the last backup, or half a row, is dropped) and says what is missing."""
    from missu_keras.training.callbacks import CSVLog

    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.5\n1,1.25\n2,1.0\n3,0.")
    said = []
    log = CSVLog(path, initial_epoch=2, warn=said.append)
    log.on_train_begin()
    assert path.read_text() == "epoch,loss\n0,1.5\n1,1.25\n" and said == []
    log.on_epoch_end(2, {"loss": np.float32(0.75)})
    assert path.read_text() == "epoch,loss\n0,1.5\n1,1.25\n2,0.75\n"
    CSVLog(path, initial_epoch=5, warn=said.append).on_train_begin()
    assert "holds 3 rows for the 5 epochs done" in said[0]

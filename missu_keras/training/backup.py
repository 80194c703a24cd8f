"""Per-epoch backups of a training run, written so that a kill at any moment leaves a
run that resumes exactly.

A backup of epoch ``N`` (``N`` epochs finished) is two files in ``OUT/backup/``:

- ``epoch-NNNN.weights.h5``: the model's weights and the optimizer's state (its
  iteration count, which drives the poly learning-rate schedule), `keras.Model.save_weights`;
- ``epoch-NNNN.json``: the record that marks the epoch done: the epoch, the sha256 of
  the weights file, the states of the model's dropout seed generators
  (`keras.random.SeedGenerator`, which ``save_weights`` leaves out) and the best
  validation score so far.

Both are written through `missu_keras.files.atomic_path` (temporary name in the same
folder, fsync, rename), the weights first, the record last. The two newest complete
backups are kept; older ones are deleted only after a new one is complete. On
resumption `find_backup` takes the newest record whose weights file still has the
recorded sha256; a truncated or corrupt one is skipped with a warning naming the
file, and the previous backup is used. The training data need no state of their own:
the crops and augmentations of sample ``i`` are a function of ``(seed, i)``
(`missu_keras.data.pipeline`), so the stream restarts ``epoch x steps x batch``
samples in.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable, List, Optional

import keras
import numpy as np

from missu_keras.files import atomic_path, sha256_file, write_json_atomic
from missu_keras.training.callbacks import pause_for_test

RECORD_VERSION = 1
KEEP = 2  # complete backups kept: the newest, and the one before it as a fallback
_RECORD = re.compile(r"^epoch-(\d+)\.json$")


@dataclasses.dataclass
class BackupRecord:
    """One complete backup: ``epoch`` epochs done; ``weights`` is its weights file."""

    epoch: int
    weights: Path
    seed_states: List[List[int]]
    best: Optional[dict]


def seed_state_variables(model) -> list:
    """The state variables of the model's `keras.random.SeedGenerator` objects (the
    dropout masks): every variable of ``model.variables`` that is not a weight, in the
    model's (construction) order."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def backup_name(epoch: int) -> str:
    """``epoch-0003`` for the backup after 3 epochs."""
    return f"epoch-{int(epoch):04d}"


def _read_record(path: Path, warn) -> Optional[BackupRecord]:
    """The record at ``path`` if it and its weights file are intact, else None (warned)."""
    try:
        data = json.loads(path.read_text())
        weights = path.parent / data["weights"]
        expected = data["sha256"]
        record = BackupRecord(int(data["epoch"]), weights, data["seed_states"], data.get("best"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn(f"warning: ignoring the unreadable backup record {path} ({exc}); "
             "falling back to the previous backup")
        return None
    if not weights.is_file():
        warn(f"warning: {weights} is missing (named by {path.name}); falling back to the previous backup")
        return None
    found = sha256_file(weights)
    if found != expected:
        warn(f"warning: {weights} is truncated or corrupt (sha256 {found[:12]}..., the record "
             f"{path.name} expects {expected[:12]}...); falling back to the previous backup")
        return None
    return record


def find_backup(backup_dir, warn=print) -> Optional[BackupRecord]:
    """The newest intact backup in ``backup_dir``, or None (no backup: start at epoch 0).

    Raises ``ValueError`` for a backup written by an earlier missu-keras (Keras'
    ``BackupAndRestore``: ``training_metadata.json``), which holds no dropout state.
    """
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return None
    records = sorted((int(m.group(1)), p) for p in backup_dir.iterdir()
                     if (m := _RECORD.match(p.name)))
    for _, path in reversed(records):
        record = _read_record(path, warn)
        if record is not None:
            return record
    legacy = backup_dir / "training_metadata.json"
    if not records and legacy.is_file():
        raise ValueError(
            f"{legacy}: a backup of an earlier missu-keras (Keras BackupAndRestore), which this "
            f"version cannot resume exactly; finish that run with the version that started it, "
            f"or delete {backup_dir} (and log.csv) to start again")
    return None


class EpochBackup(keras.callbacks.Callback):
    """Writes the backup of each finished epoch (see the module docstring) and, when
    given a ``restore`` record, loads it when training begins.

    Put it last among the callbacks: its record marks the epoch done, so validation, the
    log row and the best checkpoint of that epoch must already be written.

    Args:
        backup_dir: the folder (created).
        restore: the `BackupRecord` to resume from (`find_backup`), or None.
        best: returns the best-checkpoint record to store (or None).
    """

    def __init__(self, backup_dir, restore: Optional[BackupRecord] = None,
                 best: Callable[[], Optional[dict]] = lambda: None):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.restore = restore
        self.best = best

    def on_train_begin(self, logs=None):
        if self.restore is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # Keras builds the optimizer lazily, at the first step (outside a strategy):
            # build it now, or load_weights skips its state (and the step count).
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.restore.weights)
        states = seed_state_variables(self.model)
        if len(states) != len(self.restore.seed_states):
            raise ValueError(
                f"{self.restore.weights}: the backup holds {len(self.restore.seed_states)} dropout "
                f"seed states, the model has {len(states)}; the model changed since the backup")
        for variable, value in zip(states, self.restore.seed_states):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        pause_for_test("between_epochs", epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.write(epoch + 1)

    def write(self, epoch: int) -> Path:
        """Writes the backup after ``epoch`` finished epochs; returns its record's path."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = backup_name(epoch)
        weights = self.backup_dir / f"{name}.weights.h5"
        record = self.backup_dir / f"{name}.json"
        # A write error names the backup file, not the temporary one (files.atomic_path).
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
            pause_for_test("backup", epoch - 1)
        write_json_atomic(record, {
            "version": RECORD_VERSION, "epoch": int(epoch), "weights": weights.name,
            "sha256": sha256_file(weights),
            "seed_states": [np.asarray(v.numpy()).tolist() for v in seed_state_variables(self.model)],
            "best": self.best(),
        })
        self._prune(epoch)
        return record

    def _prune(self, epoch: int):
        """Deletes the backups older than the ``KEEP`` newest (a record before its
        weights file: "epoch-N.json" sorts before "epoch-N.weights.h5")."""
        for path in sorted(self.backup_dir.iterdir()):
            m = re.match(r"^epoch-(\d+)\.(json|weights\.h5)$", path.name)
            if m and int(m.group(1)) <= epoch - KEEP:
                path.unlink(missing_ok=True)

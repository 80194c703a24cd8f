"""Training runs: `train` from Python and ``missu-keras train`` (`missu_keras.cli.train`).

- `config`: `TrainConfig` (every setting; no TensorFlow);
- `callbacks`: whole-case validation, TensorBoard images, the CSV log, the best and last
  checkpoints (all written atomically), the test hook `pause_for_test`;
- `backup`: the per-epoch backups a killed run resumes from;
- `finetune`: starting a run from existing weights (``init_weights``), ``freeze``, the
  head's own learning rate;
- `run`: `train`, in stages (data, model, run folder, callbacks, fit).
- `folds`: cross-validation: the split by case ID (``splits.json``) and the fold folders.

One run = one output folder::

    OUT/config.json            every setting used (TrainConfig + model + preprocessing)
                               and the data fingerprint (sha256 of each case's files)
    OUT/split.json             training / validation case ids
    OUT/cache/                 the preprocessed cases (reused by later runs)
    OUT/checkpoints/last.keras the model after the last epoch
    OUT/checkpoints/best.keras the model with the best validation mean Dice (best.keras.json)
    OUT/log.csv                one row per epoch (loss, seg_loss, sd_loss, learning
                               rate, training-patch Dice, validation Dice per region)
    OUT/tensorboard/           scalars, and the middle axial slice of a validation
                               case with ground truth and prediction every N epochs
    OUT/backup/                epoch-NNNN.weights.h5 + epoch-NNNN.json: the two newest
                               per-epoch backups (`missu_keras.training.backup`)

Every file is written under a temporary name in its folder, synced, then renamed, so a
kill or a full disk never leaves half a file under a real name (a resumed run deletes
the temporary files a killed one left).

An epoch ends in this order: validation, the learning rate, the ``log.csv`` row, the
best checkpoint, the last checkpoint, TensorBoard, the caller's callbacks, and last the
backup that marks the epoch done. A kill before the backup is complete costs that epoch,
which the next run trains again, identically.

Running the same command again after an interruption resumes from the newest intact
backup (a truncated or corrupt one is skipped with a warning naming it): weights,
optimizer state and step count (so the poly learning rate goes on where it was), the
dropout seed-generator states, the epoch, the best score so far, and the data stream
(its crops and augmentations are a function of the seed and the sample index, so it
restarts ``epoch x steps x batch`` samples in); ``log.csv`` is cut back to the epochs
the backup covers. On CPU with a fixed seed the resumed run's ``log.csv`` equals an
uninterrupted run's, bit for bit, dropout on. A finished run started again does nothing.

Cross-validation (`folds`): ``train(..., folds=K, fold=k)`` (``--folds K --fold k``)
writes ``OUT/splits.json`` (made once, then only read and checked against the data),
trains fold k into ``OUT/fold_k/`` (a run folder as above, resumed on its own) and
shares ``OUT/cache/`` between the folds; `missu_keras.evaluation.evaluate` on ``OUT``
scores the out-of-fold predictions, ``predict --model OUT`` averages the folds.

The run is identified by content: the folder may move, and paths may be written
relative or with a trailing ``/``; a different configuration, model or data (by the
fingerprint, naming the cases that differ) in the same folder is refused. The output
folder is created and checked for writability before any computation.

Validation segments whole validation cases with the sliding window (as ``evaluate``
does, on the preprocessed cases) every ``validation_every`` epochs and at the end.
"""

from missu_keras._lazy import lazy_exports

# Loaded on first use (PEP 562): `missu_keras.training.config` is light (the command line
# builds its flags from it for --help) and must not pull in TensorFlow through this file.
_EXPORTS = {
    "BackupRecord": "missu_keras.training.backup",
    "EpochBackup": "missu_keras.training.backup",
    "find_backup": "missu_keras.training.backup",
    "BestCheckpoint": "missu_keras.training.callbacks",
    "CSVLog": "missu_keras.training.callbacks",
    "DropNaN": "missu_keras.training.callbacks",
    "LastCheckpoint": "missu_keras.training.callbacks",
    "LogLearningRate": "missu_keras.training.callbacks",
    "SlidingWindowValidation": "missu_keras.training.callbacks",
    "case_dice": "missu_keras.training.callbacks",
    "overlay_slice": "missu_keras.training.callbacks",
    "region_classes": "missu_keras.training.callbacks",
    "LAYOUTS": "missu_keras.training.config",
    "PRECISIONS": "missu_keras.training.config",
    "TrainConfig": "missu_keras.training.config",
    "SPLITS_FILE": "missu_keras.training.folds",
    "fold_models": "missu_keras.training.folds",
    "fold_splits": "missu_keras.training.folds",
    "is_cross_validation_run": "missu_keras.training.folds",
    "make_splits": "missu_keras.training.folds",
    "read_splits": "missu_keras.training.folds",
    "load_train_config": "missu_keras.training.config",
    "load_initial_weights": "missu_keras.training.finetune",
    "TrainResult": "missu_keras.training.run",
    "resolve_precision": "missu_keras.training.run",
    "train": "missu_keras.training.run",
    # Where a notebook reaches for them beside `train` (defined in missu_keras.distribute).
    "choose_strategy": "missu_keras.distribute",
    "is_chief": "missu_keras.distribute",
    "worker_tag": "missu_keras.distribute",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

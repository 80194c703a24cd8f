"""Training runs: `train` from Python and ``missu-keras train`` (`missu_keras.cli.train`).

- `config`: `TrainConfig` (every setting; no TensorFlow);
- `callbacks`: whole-case validation with the best checkpoint, TensorBoard images, logs;
- `run`: `train`, in stages (data, model, run folder, callbacks, fit).

One run = one output folder::

    OUT/config.json            every setting used (TrainConfig + model + preprocessing)
    OUT/split.json             training / validation case ids
    OUT/cache/                 the preprocessed cases (reused by later runs)
    OUT/checkpoints/last.keras the model after the last epoch
    OUT/checkpoints/best.keras the model with the best validation mean Dice (best.json)
    OUT/log.csv                one row per epoch (loss, seg_loss, sd_loss, learning
                               rate, training-patch Dice, validation Dice per region)
    OUT/tensorboard/           scalars, and the middle axial slice of a validation
                               case with ground truth and prediction every N epochs
    OUT/backup/                `keras.callbacks.BackupAndRestore` state

Running the same command again after an interruption resumes from the last finished
epoch: weights, optimizer state (so the poly learning rate goes on where it was),
epoch counter, the data stream (the crops an uninterrupted run would have drawn
next), the CSV log and the best score so far. A finished run started again does
nothing. A different configuration in the same folder is refused.

Validation segments whole validation cases with the sliding window (as ``evaluate``
does, on the preprocessed cases) every ``validation_every`` epochs and at the end.
"""

import importlib

# Loaded on first use (PEP 562): `missu_keras.training.config` is light (the command line
# builds its flags from it for --help) and must not pull in TensorFlow through this file.
_EXPORTS = {
    "DropNaN": "missu_keras.training.callbacks",
    # Where a notebook reaches for them beside `train` (defined in missu_keras.distribute).
    "choose_strategy": "missu_keras.distribute",
    "is_chief": "missu_keras.distribute",
    "worker_tag": "missu_keras.distribute",
    "LogLearningRate": "missu_keras.training.callbacks",
    "SlidingWindowValidation": "missu_keras.training.callbacks",
    "case_dice": "missu_keras.training.callbacks",
    "overlay_slice": "missu_keras.training.callbacks",
    "region_classes": "missu_keras.training.callbacks",
    "LAYOUTS": "missu_keras.training.config",
    "PRECISIONS": "missu_keras.training.config",
    "TrainConfig": "missu_keras.training.config",
    "load_train_config": "missu_keras.training.config",
    "TrainResult": "missu_keras.training.run",
    "resolve_precision": "missu_keras.training.run",
    "train": "missu_keras.training.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'missu_keras.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

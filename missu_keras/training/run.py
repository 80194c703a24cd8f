"""`train`: one training run, in stages (data -> model -> run folder -> callbacks -> fit).
See `missu_keras.training` for what a run folder holds and how it resumes."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import keras

from missu_keras.config import int_or_triple
from missu_keras.data.cache import build_cache
from missu_keras.data.datasets import dataset_of_layout, detect_layout, find_cases
from missu_keras.data.pipeline import make_training_dataset
from missu_keras.data.preprocessing import PreprocessingConfig, with_median_spacing
from missu_keras.distribute import choose_strategy, is_chief, worker_tag
from missu_keras.files import prepare_output_dir, write_json_atomic
from missu_keras.hardware import resolve_precision
from missu_keras.metrics import region_dice_metrics
from missu_keras.models import MISSU
from missu_keras.presets import get_preset_config
from missu_keras.training import finetune
from missu_keras.training.backup import EpochBackup, find_backup
from missu_keras.training.callbacks import (BestCheckpoint, CSVLog, DropNaN, LastCheckpoint,
                                            LogLearningRate, SlidingWindowValidation)
from missu_keras.training.config import RESUMABLE_CHANGES, TrainConfig
from missu_keras.training.folds import fold_folder, fold_splits
from missu_keras.version import __version__

logger = logging.getLogger("missu_keras.training")
# Settings that name where things are, not what the run is: compared by content (the data
# fingerprint) or not at all (the run folder itself is the run's identity; it may move).
_PATH_SETTINGS = ("data", "val_data", "out", "cache_dir")
# Paths that are part of the run's identity: stored and compared as absolute paths.
_IDENTITY_PATHS = ("init_weights",)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the trained `missu_keras.MISSU`, ``fit``'s History, the
    output folder and the epoch training started from (> 0 after a resumption)."""

    model: Any
    history: Any
    out: Path
    initial_epoch: int


@dataclasses.dataclass
class _Data:
    """The training data of a run: the cache, the split, the contract, the patch."""

    cache: Any
    train_ids: List[str]
    val_ids: List[str]
    preprocessing: PreprocessingConfig
    patch: tuple
    steps: int


@dataclasses.dataclass
class _Folders:
    """Where a worker writes: the chief writes the run folder, other workers (under
    MultiWorkerMirroredStrategy) a scratch folder of their own, deleted at the end."""

    out: Path
    write_dir: Path
    backup_dir: Path
    chief: bool

    @property
    def checkpoints(self) -> Path:
        return self.write_dir / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.write_dir / "tensorboard"


def _split(ids: Sequence[str], fraction: float, seed: int):
    ids = sorted(ids)
    if fraction <= 0 or len(ids) < 2:
        return ids, []
    n_val = min(len(ids) - 1, max(1, int(round(len(ids) * fraction))))
    order = ids[:]
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    return [i for i in ids if i not in set(val)], val


def _find(data, config: TrainConfig):
    """``(layout, cases)`` of a data folder (`missu_keras.data.datasets`)."""
    layout = detect_layout(data) if config.layout == "auto" else config.layout
    return layout, find_cases(data, layout=layout, sequence=config.sequence, require_seg=False)


def _preprocessing(layout: str, cases, patch) -> PreprocessingConfig:
    """The run's contract: THE factory, from the layout and the cases found."""
    return PreprocessingConfig.from_cases(dataset_of_layout(layout), cases, patch_size=patch)


def _prepare_data(config: TrainConfig, patch, cache_tag: str, say) -> _Data:
    """Finds the cases, preprocesses them into the cache, splits them."""
    layout, cases = _find(config.data, config)
    val_cases = _find(config.val_data, config)[1] if config.val_data else []
    # target_spacing "median" becomes the training cases' median (stored with the model).
    preprocessing = with_median_spacing(_preprocessing(layout, cases, patch), cases)
    cache_dir = Path(config.cache_dir) if config.cache_dir else Path(config.out) / "cache"
    if cache_tag:
        cache_dir = cache_dir.with_name(f"{cache_dir.name}-{cache_tag}")
    labelled = [c for c in cases + val_cases if c.has_seg]
    if not labelled:
        raise FileNotFoundError(f"{config.data}: no case with a segmentation to train on")
    fold_split = _fold_split(config, labelled)  # before the cache: a stale splits.json fails at once
    say(f"preprocessing {len(labelled)} cases into {cache_dir}")
    cache = build_cache(labelled, cache_dir, preprocessing, workers=config.workers,
                        skip_invalid=config.skip_invalid,
                        progress=config.verbose not in (0, "0")).cache
    available = set(cache.case_ids)
    if config.val_data:
        val_ids = [c.case_id for c in val_cases if c.case_id in available]
        train_ids = [c.case_id for c in cases if c.case_id in available]
    elif fold_split is not None:
        train_ids, val_ids = ([i for i in fold_split[part] if i in available] for part in ("train", "val"))
    else:
        train_ids, val_ids = _split([c.case_id for c in cases if c.case_id in available],
                                    config.val_fraction, config.seed)
    if not train_ids:
        raise ValueError(f"no training cases left after the validation split of {config.data}")
    steps = config.steps_per_epoch or max(1, math.ceil(len(train_ids) / config.batch_size))
    return _Data(cache, train_ids, val_ids, preprocessing, patch, steps)


def _fold_split(config: TrainConfig, labelled):
    """``{"train": [...], "val": [...]}`` of fold ``config.fold`` (``out/splits.json``,
    made or checked by `missu_keras.training.folds.fold_splits`), or ``None`` outside a
    cross-validation."""
    if config.folds is None:
        return None
    return fold_splits(config.out, [c.case_id for c in labelled], config.folds)[config.fold]


def run_folder(config: TrainConfig) -> Path:
    """Where a run writes: ``out``, or ``out/fold_<fold>`` for a cross-validation fold."""
    return fold_folder(config.out, config.fold) if config.folds is not None else Path(config.out)


def _model_overrides(config: TrainConfig, preset: dict, data: _Data) -> Dict[str, Any]:
    """The MISSUConfig overrides of a run: the patch, the data's channels and classes (a
    contradicting override is an error), the loss settings."""
    patch, preprocessing = data.patch, data.preprocessing
    overrides = dict(config.model)
    overrides["image_size"] = list(patch) if len(set(patch)) > 1 else patch[0]
    for key, value in (("in_channels", preprocessing.num_channels),
                       ("num_classes", preprocessing.num_classes)):
        given = overrides.get(key, preset[key])
        if key in overrides and int(given) != value:
            raise ValueError(f"model {key}={given} does not match the data ({value}: "
                             f"{list(preprocessing.modalities)} / {preprocessing.label_convention})")
        overrides[key] = value
    if config.loss is not None:
        overrides["seg_loss"] = config.loss
    if config.distill_weight is not None:
        overrides["distill_weight"] = float(config.distill_weight)
    return overrides


def _build_model(config: TrainConfig, overrides: dict, data: _Data, precision: str, strategy) -> MISSU:
    """The compiled MISSU (seeded, under the precision policy and the strategy's scope)."""
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        with strategy.scope():
            model = MISSU.from_preset(config.preset, preprocessing=data.preprocessing, **overrides)
            finetune.freeze(model.backbone, config.freeze)
            model.compile(
                optimizer=finetune.run_optimizer(config, config.epochs * data.steps),
                metrics=region_dice_metrics(data.preprocessing.convention),
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model


def _resolved_paths(train: Dict[str, Any]) -> Dict[str, Any]:
    """The training settings with the path settings made absolute (as stored in config.json)."""
    return {k: (str(Path(v).resolve()) if k in _PATH_SETTINGS + _IDENTITY_PATHS and v else v)
            for k, v in train.items()}


def _setting_diffs(old_train: Dict[str, Any], new_train: Dict[str, Any]) -> List[str]:
    old, new = dict(old_train), dict(new_train)
    for k in RESUMABLE_CHANGES + _PATH_SETTINGS:
        old.pop(k, None), new.pop(k, None)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _data_diffs(old: Dict[str, str], new: Dict[str, str]) -> List[str]:
    """What changed in the data between two fingerprints (`DataCache.fingerprint`), by case."""
    if old is None:  # a run folder of an earlier version, without a fingerprint
        return []
    changes = (("cases whose files changed", sorted(k for k in set(old) & set(new) if old[k] != new[k])),
               ("cases no longer there", sorted(set(old) - set(new))),
               ("new cases", sorted(set(new) - set(old))))
    return [f"data: {what} {ids}" for what, ids in changes if ids]


def _check_resumable(out: Path, stored: Dict[str, Any]):
    """Refuses a run folder holding another run: other settings (paths aside: the folder
    may move, a relative path or a trailing '/' is the same folder), another model, or
    other data (compared by content, the fingerprint of the cases' files)."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected the config.json of a "
                         "missu-keras train run") from None
    diffs = _setting_diffs(previous.get("train", {}), stored["train"])
    if previous.get("model") != stored["model"]:
        diffs.append("model configuration")
    diffs += _data_diffs(previous.get("data_fingerprint"), stored["data_fingerprint"])
    if diffs:
        raise ValueError(
            f"{out} holds a run with a different configuration ({'; '.join(diffs)}); resume "
            "it with its own settings and data or choose a new --out"
        )


def _remove_temporaries(folders: _Folders, say) -> None:
    """Deletes the temporary files (``.tmp-*``) a killed run left half-written."""
    found = [p for d in (folders.write_dir, folders.checkpoints, folders.backup_dir) if d.is_dir()
             for p in sorted(d.glob(".tmp-*")) if p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        say(f"removed {len(found)} unfinished file(s) of an interrupted run: "
            f"{', '.join(str(p) for p in found)}")


def _backup_dir(out: Path, tag: str) -> Path:
    return out / ("backup" if not tag else f"backup-{tag}")


def _initialise(config: TrainConfig, model: MISSU, overrides: dict, strategy, say) -> None:
    """Loads ``init_weights`` into a fresh run's model (before ``config.json`` is written,
    so a source that does not fit leaves no run behind); a run with a backup resumes
    from it instead (`missu_keras.training.finetune`)."""
    if config.init_weights and find_backup(_backup_dir(Path(config.out), worker_tag(strategy)),
                                           lambda *a: None) is None:
        finetune.initialise_run(model, config, overrides, say)
    say(finetune.trainable_summary(model))


def _open_run_folder(config: TrainConfig, data: _Data, model: MISSU, precision: str, strategy,
                     say, warn) -> tuple:
    """Checks that ``out`` holds no other run, writes ``config.json`` and ``split.json``
    (chief only) and returns ``(folders, the backup to resume from or None)``."""
    out, tag = run_folder(config), worker_tag(strategy)
    stored = {"train": _resolved_paths(config.to_dict()), "model": model.config.to_dict(),
              "preprocessing": data.preprocessing.to_dict(), "precision": precision,
              "steps_per_epoch": data.steps, "version": __version__,
              "data_fingerprint": data.cache.fingerprint(data.train_ids + data.val_ids)}
    stored = json.loads(json.dumps(stored))  # tuples -> lists, as read back from disk
    _check_resumable(out, stored)
    chief = is_chief(strategy)
    folders = _Folders(out, out if chief else out / f"scratch-{tag}", _backup_dir(out, tag), chief)
    _remove_temporaries(folders, say)
    backup = find_backup(folders.backup_dir, warn)
    if backup is not None:
        say(f"resuming from epoch {backup.epoch} (backup {backup.weights})")
    if chief:
        write_json_atomic(out / "config.json", stored)
        write_json_atomic(out / "split.json", {"train": data.train_ids, "validation": data.val_ids})
    folders.checkpoints.mkdir(parents=True, exist_ok=True)
    return folders, backup


def _callbacks(config: TrainConfig, data: _Data, folders: _Folders, backup, extra, say, warn) -> list:
    """In the order an epoch must end: validation, the learning rate, the log row, the
    best and last checkpoints, TensorBoard, the caller's callbacks, and last the backup
    that marks the epoch done (it also restores a resumed run when training begins)."""
    cbs: List[keras.callbacks.Callback] = []
    if data.val_ids:
        cbs.append(SlidingWindowValidation(
            data.cache, data.val_ids, data.patch, data.preprocessing.convention,
            every=config.validation_every, overlap=config.overlap, image_every=config.image_every,
            log_dir=str(folders.tensorboard)))
    else:
        say("no validation cases: no best checkpoint, only the last one")
    cbs += [LogLearningRate(), CSVLog(folders.write_dir / "log.csv", backup.epoch if backup else 0, warn)]
    best = None
    if data.val_ids:
        best = BestCheckpoint(folders.checkpoints / "best.keras", backup.best if backup else None)
        cbs.append(best)
    return cbs + [
        LastCheckpoint(folders.checkpoints / "last.keras"),
        DropNaN(),
        keras.callbacks.TensorBoard(str(folders.tensorboard), update_freq="epoch", write_graph=False),
        keras.callbacks.TerminateOnNaN(),
        *extra,
        EpochBackup(folders.backup_dir, backup, (lambda: best.record) if best else (lambda: None)),
    ]


def _dataset(config: TrainConfig, data: _Data, initial_epoch: int):
    """The training stream, started where an uninterrupted run would be after
    ``initial_epoch`` epochs (every crop and augmentation is a function of the seed and the
    sample index, so skipping samples restores the data position exactly)."""
    return make_training_dataset(
        data.cache, batch_size=config.batch_size, patch_size=data.patch, case_ids=data.train_ids,
        seed=config.seed, foreground_oversample=config.foreground_oversample,
        skip_samples=initial_epoch * data.steps * config.batch_size)


def train(config: Union[TrainConfig, Dict[str, Any], None] = None, *, strategy=None,
          callbacks: Sequence[keras.callbacks.Callback] = (), log=print, **settings) -> TrainResult:
    """Trains MISSU on a data folder (see `missu_keras.training` for what is written).

    Args:
        config: a `TrainConfig`, a dict of its fields, or ``None``.
        strategy: a ``tf.distribute`` strategy; default `choose_strategy`.
        callbacks: extra Keras callbacks (run after the built-in ones).
        log: where progress lines go (``print``; ``None`` for silence).
        **settings: `TrainConfig` fields overriding ``config`` (``folds=K, fold=k``: fold
            k of a cross-validation, in ``out/fold_k/``; `missu_keras.training.folds`).

    Returns:
        A `TrainResult`.

    Example (a few steps on generated data; ``missu-keras demo`` does it in full):

    >>> import tempfile
    >>> from missu_keras.data import write_synthetic_brats
    >>> root = tempfile.mkdtemp()
    >>> _ = write_synthetic_brats(root + "/data", num_cases=3, seed=0, shape=(32, 32, 32))
    >>> result = train(data=root + "/data", out=root + "/run", preset="tiny", patch_size=32,
    ...                epochs=1, steps_per_epoch=2, batch_size=1, verbose=0, log=None,
    ...                model={"embed_dim": 32, "num_layers": 1})
    >>> sorted(p.name for p in (result.out / "checkpoints").iterdir())
    ['best.keras', 'best.keras.json', 'last.keras']
    """
    base = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
    config = TrainConfig.from_dict({**base, **settings})
    say = log or (lambda *a, **k: None)
    warn = log or logger.warning
    prepare_output_dir(run_folder(config), "--out")  # before any computation
    strategy = strategy or choose_strategy()
    preset = get_preset_config(config.preset)
    patch = int_or_triple(config.patch_size if config.patch_size is not None else preset["image_size"],
                          "patch_size", minimum=1)
    # Under MultiWorkerMirroredStrategy every worker runs this function, with a cache,
    # backup and scratch folder of its own (worker_tag), so nothing is written twice.
    data = _prepare_data(config, patch, worker_tag(strategy), say)
    precision = resolve_precision(config.precision, "training", log=log)
    overrides = _model_overrides(config, preset, data)
    model = _build_model(config, overrides, data, precision, strategy)
    _initialise(config, model, overrides, strategy, say)
    folders, backup = _open_run_folder(config, data, model, precision, strategy, say, warn)
    initial_epoch = backup.epoch if backup is not None else 0
    dataset = _dataset(config, data, initial_epoch)
    say(f"training {config.preset} ({precision}) on {len(data.train_ids)} cases, validating on "
        f"{len(data.val_ids)}: {config.epochs} epochs x {data.steps} steps, batch "
        f"{config.batch_size}, patch {patch}, {strategy.num_replicas_in_sync} replica(s)")
    t0 = time.time()
    history = model.fit(dataset, epochs=config.epochs, steps_per_epoch=data.steps,
                        initial_epoch=initial_epoch, verbose=config.verbose, shuffle=False,
                        callbacks=_callbacks(config, data, folders, backup, callbacks, say, warn))
    say(f"trained in {time.time() - t0:.0f} s; outputs in {folders.out}")
    if not folders.chief:
        shutil.rmtree(folders.write_dir, ignore_errors=True)
    elif config.save_preset:
        model.save_to_preset(config.save_preset)
        say(f"saved the preset folder {config.save_preset}")
    return TrainResult(model, history, folders.out, initial_epoch)


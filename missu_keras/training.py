"""Training runs: ``missu-keras train`` and `train` from Python.

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

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import keras
import numpy as np

from missu_keras.distribute import choose_strategy, is_chief, worker_tag

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
LAYOUTS = ("auto", "2019", "2020", "2021", "2023", "chaos")
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("verbose", "workers", "save_preset")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the names are the ``missu-keras train`` flags.

    Args:
        data: folder of labelled cases (BraTS layouts or CHAOS).
        out: output folder (see the module docstring).
        preset: model preset (`missu_keras.list_presets`).
        layout: BraTS layout (``"auto"``, ``"2019"`` ... ``"2023"``) or ``"chaos"``.
        sequence: CHAOS MR sequence, ``"T1DUAL"`` (2 channels) or ``"T2SPIR"``.
        epochs: epochs (the paper: 1000).
        steps_per_epoch: default ``ceil(training cases / batch_size)``.
        batch_size: global batch (the paper: 4), split across replicas.
        patch_size: training crop / model input (int or 3 ints, multiples of 8);
            default the preset's ``image_size``.
        loss: ``"ce"``, ``"dice"``, ``"dice_ce"`` or ``"released_dice"``; default the preset's.
        distill_weight: lambda of ``L_seg + lambda L_sd``; default the preset's (0.3).
        precision: ``"float32"``, ``"mixed_float16"`` (GPU, with loss scaling),
            ``"mixed_bfloat16"`` (CPU with bf16 units, TPU) or ``"auto"`` (mixed_float16
            on GPU, float32 otherwise).
        learning_rate: peak of the poly schedule (the paper: 4e-4).
        val_data: a separate folder of labelled validation cases; default: hold out
            ``val_fraction`` of ``data`` (seeded).
        val_fraction: fraction of the cases held out when ``val_data`` is not given
            (0 disables validation and the best checkpoint).
        validation_every: validate every N epochs (and after the last one).
        image_every: TensorBoard image every N epochs (0: never).
        overlap: sliding-window overlap of validation.
        foreground_oversample: probability that a crop is centred on foreground.
        seed: seeds the split, the crops and the weights.
        cache_dir: default ``OUT/cache``.
        workers: threads that preprocess the cache.
        skip_invalid: leave out cases that fail validation instead of stopping.
        save_preset: also save the final model as a preset folder
            (`missu_keras.save_preset`).
        verbose: ``fit`` verbosity (``"auto"``, 0, 1, 2).
        model: other `missu_keras.MISSUConfig` overrides, e.g. ``{"embed_dim": 256}``.
    """

    data: Optional[str] = None
    out: Optional[str] = None
    preset: str = "brats"
    layout: str = "auto"
    sequence: str = "T1DUAL"
    epochs: int = 1000
    steps_per_epoch: Optional[int] = None
    batch_size: int = 4
    patch_size: Optional[Union[int, List[int]]] = None
    loss: Optional[str] = None
    distill_weight: Optional[float] = None
    precision: str = "float32"
    learning_rate: float = 4e-4
    val_data: Optional[str] = None
    val_fraction: float = 0.2
    validation_every: int = 10
    image_every: int = 10
    overlap: float = 0.5
    foreground_oversample: float = 0.33
    seed: int = 0
    cache_dir: Optional[str] = None
    workers: int = 2
    skip_invalid: bool = False
    save_preset: Optional[str] = None
    verbose: Union[int, str] = "auto"
    model: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Accepts flag spellings too (``steps-per-epoch``)."""
        d = {str(k).replace("-", "_"): v for k, v in dict(d).items()}
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"Unknown training settings {unknown}; accepted: {cls.field_names()}")
        config = cls(**d)
        config.validate()
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self):
        from missu_keras.presets import list_presets

        if self.data is None:
            raise ValueError("data is required: the folder of labelled training cases (--data)")
        if self.out is None:
            raise ValueError("out is required: the output folder of the run (--out)")
        if self.preset not in list_presets():
            raise ValueError(f"Unknown preset {self.preset!r}; available: {list_presets()}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}. Received: layout={self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={self.precision!r}")
        for name in ("epochs", "batch_size", "validation_every", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int)
                                                 or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be an integer >= 1. Received: {self.steps_per_epoch!r}")
        if not isinstance(self.image_every, int) or self.image_every < 0:
            raise ValueError(f"image_every must be an integer >= 0. Received: {self.image_every!r}")
        for name in ("val_fraction", "foreground_oversample"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value!r}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1). Received: overlap={self.overlap!r}")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate!r}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of MISSUConfig overrides. Received: {self.model!r}")


def load_train_config(path) -> Dict[str, Any]:
    """Reads a YAML (``.yaml`` / ``.yml``) or JSON training configuration as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training configuration not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        raise ValueError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def _resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"


# ------------------------------------------------------------------- callbacks --

def case_dice(pred_classes: np.ndarray, gt_classes: np.ndarray, region_classes: Dict[str, Sequence[int]]):
    """Dice per region of one case from training classes, with the BraTS empty rule
    (both empty -> 1, one empty -> 0).

    >>> gt = np.zeros((4, 4, 4), int); gt[:2] = 1
    >>> case_dice(gt, gt, {"fg": (1,)}), case_dice(np.zeros_like(gt), np.zeros_like(gt), {"fg": (1,)})
    ({'fg': 1.0}, {'fg': 1.0})
    """
    out = {}
    for region, classes in region_classes.items():
        p, g = np.isin(pred_classes, classes), np.isin(gt_classes, classes)
        denom = int(p.sum()) + int(g.sum())
        out[region] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom
    return out


def region_classes(label_convention: str) -> Dict[str, tuple]:
    """Regions as training-class indices (BraTS: WT = (1, 2, 3), ET = (3,))."""
    from missu_keras.labels import get_label_convention

    conv = get_label_convention(label_convention)
    return {r: tuple(conv.labels.index(v) for v in labels) for r, labels in conv.regions.items()}


_OVERLAY_COLOURS = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 64], [255, 220, 0],
                             [64, 128, 255]], np.float32) / 255.0


def overlay_slice(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB ``(W, H, 3)`` float in [0, 1]: a grey image slice ``(H, W)`` with the class
    slice ``(H, W)`` coloured on top (class 0 transparent), rotated so the first axis
    runs left to right (radiological display of an axial slice)."""
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    classes = np.asarray(classes).astype(int)
    colours = _OVERLAY_COLOURS[np.clip(classes, 0, len(_OVERLAY_COLOURS) - 1)]
    mask = (classes > 0)[..., None]
    rgb = np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)
    return np.rot90(rgb)


class SlidingWindowValidation(keras.callbacks.Callback):
    """Whole-case validation Dice during ``fit``, the best checkpoint, and images.

    Every ``every`` epochs (and after the last) it segments each validation case of the
    cache with the sliding window (inference model, no MSF) and adds ``val_dice_<region>``
    and ``val_dice_mean`` (mean over regions of the mean over cases) to the epoch logs,
    so the CSV log, TensorBoard and History see them; on other epochs the values are
    NaN (and dropped before TensorBoard). When ``val_dice_mean`` improves, the model is
    saved to ``best_path`` and ``best_path`` + ``.json`` records the epoch and score;
    the record is read back on resumption. Every ``image_every`` epochs the middle
    axial slice of the first validation case, ground truth | prediction, goes to
    TensorBoard under ``validation/overlay``.
    """

    def __init__(self, cache, case_ids: Sequence[str], roi_size, label_convention: str,
                 every: int = 1, overlap: float = 0.5, image_every: int = 0,
                 log_dir: Optional[str] = None, best_path: Optional[str] = None,
                 sw_batch_size: int = 1):
        super().__init__()
        from missu_keras.inference import SlidingWindowInferer

        self.cache = cache
        self.case_ids = list(case_ids)
        self.every = int(every)
        self.image_every = int(image_every)
        self.log_dir = log_dir
        self.best_path = best_path
        self.regions = region_classes(label_convention)
        self.inferer = SlidingWindowInferer(roi_size=roi_size, overlap=overlap,
                                            sw_batch_size=sw_batch_size, divisible_by=8)
        self.best = -math.inf
        self._writer = None
        self._inference = None
        self.keys = [f"val_dice_{r}" for r in self.regions] + ["val_dice_mean"]

    def on_train_begin(self, logs=None):
        record = self._best_record()
        if record is not None:
            self.best = float(record["val_dice_mean"])

    def _best_record(self):
        if self.best_path and os.path.isfile(self.best_path + ".json"):
            with open(self.best_path + ".json") as f:
                return json.load(f)
        return None

    def _due(self, epoch: int, every: int) -> bool:
        last = self.params.get("epochs") if self.params else None
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == last)

    def _inference_model(self):
        if self._inference is None:
            self._inference = self.model.inference_model()
        return self._inference

    def validate(self):
        """Returns ``({region: mean Dice}, {case_id: predicted classes})``."""
        model = self._inference_model()
        per_case, predictions = [], {}
        for case_id in self.case_ids:
            probs = self.inferer(model, self.cache.load_image(case_id))
            pred = np.argmax(probs, axis=-1).astype(np.uint8)
            per_case.append(case_dice(pred, self.cache.load_label(case_id), self.regions))
            predictions[case_id] = pred
        scores = {r: float(np.mean([c[r] for c in per_case])) for r in self.regions}
        return scores, predictions

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._due(epoch, self.every):
            logs.update({k: float("nan") for k in self.keys})
            return
        scores, predictions = self.validate()
        for r, v in scores.items():
            logs[f"val_dice_{r}"] = v
        mean = float(np.mean(list(scores.values())))
        logs["val_dice_mean"] = mean
        if self.best_path and mean > self.best:
            self.best = mean
            os.makedirs(os.path.dirname(self.best_path) or ".", exist_ok=True)
            self.model.save(self.best_path)
            with open(self.best_path + ".json", "w") as f:
                json.dump({"epoch": epoch + 1, "val_dice_mean": mean, **scores}, f, indent=2)
        if self.log_dir and self._due(epoch, self.image_every):
            self._write_image(epoch, predictions)

    def _write_image(self, epoch, predictions):
        import tensorflow as tf

        case_id = self.case_ids[0]
        image = self.cache.load_image(case_id)
        gt = self.cache.load_label(case_id)
        z = image.shape[2] // 2
        panel = np.concatenate([overlay_slice(image[:, :, z, 0], gt[:, :, z]),
                                overlay_slice(image[:, :, z, 0], predictions[case_id][:, :, z])],
                               axis=1)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        with self._writer.as_default():
            tf.summary.image("overlay", panel[None], step=epoch,
                             description=f"{case_id}, middle axial slice: ground truth | prediction")
        self._writer.flush()


class _LogLearningRate(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs (CSV log)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _DropNaN(keras.callbacks.Callback):
    """Removes NaN placeholders (epochs without validation) before TensorBoard."""

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            for k in [k for k, v in logs.items() if isinstance(v, float) and math.isnan(v)]:
                del logs[k]


# ------------------------------------------------------------------------ train --

@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the trained `missu_keras.MISSU`, ``fit``'s History, the
    output folder and the epoch training started from (> 0 after a resumption)."""

    model: Any
    history: Any
    out: Path
    initial_epoch: int


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
    from missu_keras.data import find_brats_cases, find_chaos_cases

    if config.layout == "chaos":
        return find_chaos_cases(data, sequence=config.sequence)
    return find_brats_cases(data, layout=config.layout, require_seg=False)


def _preprocessing(config: TrainConfig, cases, patch):
    from missu_keras.data import PreprocessingConfig

    if config.layout == "chaos":
        return PreprocessingConfig.chaos(config.sequence, patch_size=patch)
    convention = cases[0].label_convention if cases else "brats"
    return PreprocessingConfig.brats(label_convention=convention, patch_size=patch)


def _check_resumable(out: Path, stored: Dict[str, Any]):
    path = out / "config.json"
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    old, new = dict(previous.get("train", {})), dict(stored["train"])
    for k in RESUMABLE_CHANGES:
        old.pop(k, None), new.pop(k, None)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    if previous.get("model") != stored["model"]:
        diffs.append("model configuration")
    if diffs:
        raise ValueError(
            f"{out} holds a run with a different configuration ({'; '.join(diffs)}); resume "
            "it with its own settings or choose a new --out"
        )


def train(config: Union[TrainConfig, Dict[str, Any], None] = None, *, strategy=None,
          callbacks: Sequence[keras.callbacks.Callback] = (), log=print, **settings) -> TrainResult:
    """Trains MISSU on a data folder (see the module docstring for what is written).

    Args:
        config: a `TrainConfig`, a dict of its fields, or ``None``.
        strategy: a ``tf.distribute`` strategy; default `choose_strategy`.
        callbacks: extra Keras callbacks (run after the built-in ones).
        log: where progress lines go (``print``; ``None`` for silence).
        **settings: `TrainConfig` fields overriding ``config``.

    Returns:
        A `TrainResult`.

    Example (a few steps on generated data; ``missu-keras demo`` does it in full):

    >>> import tempfile, missu_keras
    >>> from missu_keras.data import write_synthetic_brats
    >>> root = tempfile.mkdtemp()
    >>> _ = write_synthetic_brats(root + "/data", num_cases=3, seed=0, shape=(32, 32, 32))
    >>> result = train(data=root + "/data", out=root + "/run", preset="tiny", patch_size=32,
    ...                epochs=1, steps_per_epoch=2, batch_size=1, verbose=0, log=None,
    ...                model={"embed_dim": 32, "num_layers": 1})
    >>> sorted(p.name for p in (result.out / "checkpoints").iterdir())
    ['best.keras', 'best.keras.json', 'last.keras']
    """
    import tensorflow as tf

    import missu_keras
    from missu_keras.data import build_cache, make_training_dataset
    from missu_keras.metrics import region_dice_metrics
    from missu_keras.presets import get_preset_config

    base = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
    base.update(settings)
    config = TrainConfig.from_dict(base)
    say = log or (lambda *a, **k: None)
    out = Path(config.out)
    strategy = strategy or choose_strategy()
    chief = is_chief(strategy)
    # Under MultiWorkerMirroredStrategy every worker runs this function. Only the chief
    # writes the run's files; the others keep their own cache, backup and a scratch
    # folder (deleted at the end), so nothing is written twice to one path, whether
    # or not the workers share a file system.
    tag = worker_tag(strategy)

    # --- data -----------------------------------------------------------------------
    preset = get_preset_config(config.preset)
    patch = config.patch_size if config.patch_size is not None else preset["image_size"]
    patch = (int(patch),) * 3 if isinstance(patch, (int, np.integer)) else tuple(int(p) for p in patch)
    cases = _find(config.data, config)
    val_cases = _find(config.val_data, config) if config.val_data else []
    preprocessing = _preprocessing(config, cases, patch)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"
    if tag:
        cache_dir = cache_dir.with_name(f"{cache_dir.name}-{tag}")
    labelled = [c for c in cases + val_cases if c.has_seg]
    if not labelled:
        raise FileNotFoundError(f"{config.data}: no case with a segmentation to train on")
    say(f"preprocessing {len(labelled)} cases into {cache_dir}")
    built = build_cache(labelled, cache_dir, preprocessing, workers=config.workers,
                        skip_invalid=config.skip_invalid, progress=config.verbose not in (0, "0"))
    cache = built.cache
    available = set(cache.case_ids)
    if config.val_data:
        val_ids = [c.case_id for c in val_cases if c.case_id in available]
        train_ids = [c.case_id for c in cases if c.case_id in available]
    else:
        train_ids, val_ids = _split([c.case_id for c in cases if c.case_id in available],
                                    config.val_fraction, config.seed)
    if not train_ids:
        raise ValueError(f"no training cases left after the validation split of {config.data}")
    steps = config.steps_per_epoch or max(1, math.ceil(len(train_ids) / config.batch_size))

    # --- model ----------------------------------------------------------------------
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
    precision = _resolve_precision(config.precision)
    stored = {"train": config.to_dict(), "model": None, "preprocessing": preprocessing.to_dict(),
              "precision": precision, "steps_per_epoch": steps,
              "version": missu_keras.__version__}
    total_steps = config.epochs * steps

    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        with strategy.scope():
            model = missu_keras.MISSU.from_preset(config.preset, preprocessing=preprocessing.to_dict(),
                                                  **overrides)
            model.compile(
                optimizer=missu_keras.paper_optimizer(total_steps, learning_rate=config.learning_rate),
                metrics=region_dice_metrics(preprocessing.label_convention),
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
    stored["model"] = model.config.to_dict()
    stored = json.loads(json.dumps(stored))  # tuples -> lists, as read back from disk
    _check_resumable(out, stored)

    # --- resumption -----------------------------------------------------------------
    backup_dir = out / ("backup" if not tag else f"backup-{tag}")
    meta = backup_dir / "training_metadata.json"
    initial_epoch = json.loads(meta.read_text())["epoch"] if meta.is_file() else 0
    if initial_epoch:
        say(f"resuming from epoch {initial_epoch} (backup in {backup_dir})")
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(stored, indent=2) + "\n")
        (out / "split.json").write_text(json.dumps({"train": train_ids, "validation": val_ids},
                                                   indent=2) + "\n")
    write_dir = out if chief else out / f"scratch-{tag}"

    dataset = make_training_dataset(
        cache, batch_size=config.batch_size, patch_size=patch, case_ids=train_ids,
        seed=config.seed, foreground_oversample=config.foreground_oversample,
        skip_samples=initial_epoch * steps * config.batch_size,
    )

    ckpt_dir = write_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tb_dir = write_dir / "tensorboard"
    cbs: List[keras.callbacks.Callback] = [keras.callbacks.BackupAndRestore(str(backup_dir),
                                                                            delete_checkpoint=False)]
    if val_ids:
        cbs.append(SlidingWindowValidation(
            cache, val_ids, patch, preprocessing.label_convention, every=config.validation_every,
            overlap=config.overlap, image_every=config.image_every, log_dir=str(tb_dir),
            best_path=str(ckpt_dir / "best.keras")))
    else:
        say("no validation cases: no best checkpoint, only the last one")
    cbs += [
        _LogLearningRate(),
        keras.callbacks.CSVLogger(str(write_dir / "log.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(ckpt_dir / "last.keras")),
        _DropNaN(),
        keras.callbacks.TensorBoard(str(tb_dir), update_freq="epoch", write_graph=False),
        keras.callbacks.TerminateOnNaN(),
        *callbacks,
    ]
    say(f"training {config.preset} ({precision}) on {len(train_ids)} cases, validating on "
        f"{len(val_ids)}: {config.epochs} epochs x {steps} steps, batch {config.batch_size}, "
        f"patch {patch}, {strategy.num_replicas_in_sync} replica(s)")
    t0 = time.time()
    history = model.fit(dataset, epochs=config.epochs, steps_per_epoch=steps, callbacks=cbs,
                        verbose=config.verbose, shuffle=False)
    say(f"trained in {time.time() - t0:.0f} s; outputs in {out}")
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    if chief and config.save_preset:
        missu_keras.save_preset(model, config.save_preset)
        say(f"saved the preset folder {config.save_preset}")
    return TrainResult(model, history, out, initial_epoch)


# -------------------------------------------------------------------------- CLI --

_FLAG_TYPES = {
    "data": str, "out": str, "preset": str, "layout": str, "sequence": str, "epochs": int,
    "steps_per_epoch": int, "batch_size": int, "loss": str, "distill_weight": float,
    "precision": str, "learning_rate": float, "val_data": str, "val_fraction": float,
    "validation_every": int, "image_every": int, "overlap": float,
    "foreground_oversample": float, "seed": int, "cache_dir": str, "workers": int,
    "save_preset": str,
}


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="train MISSU on a data folder (resumable)",
        description="Trains MISSU with self-distillation. Settings come from the preset, then "
                    "--config (YAML or JSON with the same names), then the flags. Running the "
                    "same command again resumes an interrupted run.")
    p.add_argument("--config", help="YAML or JSON file of training settings")
    for name, kind in _FLAG_TYPES.items():
        flag = "--" + name.replace("_", "-")
        help_ = {"loss": "ce | dice | dice_ce | released_dice", "precision": "|".join(PRECISIONS),
                 "layout": "|".join(LAYOUTS)}.get(name)
        p.add_argument(flag, dest=name, type=kind, default=None, help=help_)
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N", default=None,
                   help="training crop: N or H W D (multiples of 8)")
    p.add_argument("--skip-invalid", action="store_true", default=None,
                   help="leave out cases that fail validation")
    p.add_argument("--verbose", default=None, help="fit verbosity: auto, 0, 1, 2")
    p.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a MISSUConfig override, e.g. --set embed_dim=256 (repeatable)")
    p.set_defaults(func=_handle)
    return p


def settings_from_args(args) -> Dict[str, Any]:
    import yaml

    settings = load_train_config(args.config) if args.config else {}
    settings = {str(k).replace("-", "_"): v for k, v in settings.items()}
    for name in list(_FLAG_TYPES) + ["skip_invalid"]:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.patch_size is not None:
        settings["patch_size"] = args.patch_size[0] if len(args.patch_size) == 1 else args.patch_size
    if args.verbose is not None:
        settings["verbose"] = int(args.verbose) if args.verbose.isdigit() else args.verbose
    model = dict(settings.get("model") or {})
    for item in args.model_overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE; received {item!r}")
        model[key.strip()] = yaml.safe_load(value)
    if model:
        settings["model"] = model
    return settings


def _handle(args) -> int:
    train(settings_from_args(args))
    return 0

"""`TrainConfig`: every setting of a training run (the ``missu-keras train`` flags and the
names of a ``--config`` YAML / JSON file). Light: no TensorFlow, so the command line can
build its flags for ``--help`` without loading it."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Union

from missu_keras.config import StrictConfig, read_settings_file
from missu_keras.data.datasets import LAYOUTS
from missu_keras.presets import list_presets

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
# Parts of the network that fine-tuning may freeze (``--freeze``, repeatable).
FREEZE_PARTS = ("encoder", "transformer", "msf")
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("verbose", "workers", "save_preset")


@dataclasses.dataclass
class TrainConfig(StrictConfig):
    """Everything a training run needs; the names are the ``missu-keras train`` flags.

    Args:
        data: folder of labelled cases (BraTS layouts, CHAOS, a Decathlon task or an
            nnU-Net raw dataset).
        out: output folder (see the module docstring).
        preset: model preset (`missu_keras.list_presets`).
        layout: ``"auto"`` (detected), a BraTS layout (``"2019"`` ... ``"2023"``),
            ``"chaos"``, ``"msd"`` or ``"nnunet"`` (`missu_keras.data.datasets`).
        sequence: CHAOS MR sequence, ``"T1DUAL"`` (2 channels) or ``"T2SPIR"``.
        epochs: epochs (the paper: 1000).
        steps_per_epoch: default ``ceil(training cases / batch_size)``.
        batch_size: global batch (the paper: 4), split across replicas.
        patch_size: training crop / model input (int or 3 ints, multiples of 8);
            default the preset's ``image_size``.
        loss: ``"ce"``, ``"dice"``, ``"dice_ce"`` or ``"released_dice"``; default the preset's.
        distill_weight: lambda of ``L_seg + lambda L_sd``; default the preset's (0.3).
        precision: ``"float32"``, ``"mixed_float16"`` (GPU, with loss scaling),
            ``"mixed_bfloat16"`` (CPU with bf16 units, TPU) or ``"auto"``
            (`missu_keras.hardware`: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with
            AVX512-BF16 or AMX, float32 otherwise; the run's log says which).
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
        folds, fold: cross-validation (`missu_keras.training.folds`): train fold ``fold``
            (0 ... ``folds`` - 1) of a ``folds``-fold split of ``data`` into
            ``out/fold_<fold>/``, the split in ``out/splits.json`` and the cache in
            ``out/cache`` shared by the folds. Both or neither; not with ``val_data``
            or ``val_fraction`` (each fold validates on its own cases).
        init_weights: fine-tuning (`missu_keras.training.finetune`): start a fresh run
            from these weights: a ``.weights.h5``, a ``.keras`` file, a saved preset
            folder, a train output folder, a PyTorch-layout ``.npz`` or a released-code
            ``.pth`` / ``.pt`` (what `missu_keras.load_pretrained` accepts). Every layer is loaded; when the
            number of classes differs, the classification head (the last 1x1x1
            convolution) is re-initialised; any other shape difference is an error
            naming the layers. A resumed run restores its backup instead, but the path
            stays part of the run's identity (another one is refused).
        freeze: parts not trained, any of ``"encoder"``, ``"transformer"`` (with the
            bottleneck convolution and the position embedding), ``"msf"``; their
            dropout still acts in training.
        head_learning_rate: peak rate of the classification head (same poly schedule);
            default ``learning_rate``. 0 keeps the head as loaded.

    Fine-tuning a 2-class run from a 4-class one of the same channels (the head is
    re-initialised, the encoder kept as loaded):

    >>> config = TrainConfig(data="liver", out="run", init_weights="runs/brats",
    ...                      freeze=["encoder"], head_learning_rate=1e-3)
    >>> config.freeze, config.head_learning_rate
    (['encoder'], 0.001)
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
    # Cross-validation (checked by _validate_folds).
    folds: Optional[int] = None
    fold: Optional[int] = None
    init_weights: Optional[str] = None
    # None (not []) by default, as every fine-tuning setting: a run folder written before
    # these settings existed stores none of them and still resumes (`_check_resumable`).
    freeze: Optional[List[str]] = None
    head_learning_rate: Optional[float] = None

    SETTINGS_NAME = "training settings"

    def validate(self):
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
            if value < 1:
                raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an integer >= 1. Received: {self.steps_per_epoch!r}")
        if self.image_every < 0:
            raise ValueError(f"image_every must be an integer >= 0. Received: {self.image_every!r}")
        for name in ("val_fraction", "foreground_oversample"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1). Received: overlap={self.overlap!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate!r}")
        self._validate_finetuning()
        _validate_folds(self)

    def _validate_finetuning(self):
        unknown = [part for part in self.freeze or () if part not in FREEZE_PARTS]
        if unknown:
            raise ValueError(f"freeze must list parts of {FREEZE_PARTS}. Received: freeze={self.freeze!r}")
        if self.head_learning_rate is not None and not self.head_learning_rate >= 0:
            raise ValueError(f"head_learning_rate must be >= 0. Received: {self.head_learning_rate!r}")


def _validate_folds(config: TrainConfig) -> None:
    """``folds`` and ``fold`` together, in range, and without the other validation
    settings (a fold's validation cases are its split's)."""
    if config.folds is None and config.fold is None:
        return
    if config.folds is None or config.fold is None:
        raise ValueError(
            "folds and fold go together: --folds K --fold N trains fold N (0 ... K-1) of a K-fold "
            f"cross-validation (one command per fold). Received: folds={config.folds!r}, "
            f"fold={config.fold!r}")
    if config.folds < 2 or not 0 <= config.fold < config.folds:
        raise ValueError(f"folds must be >= 2 and fold in 0 ... folds-1. Received: "
                         f"folds={config.folds!r}, fold={config.fold!r}")
    default_fraction = TrainConfig.__dataclass_fields__["val_fraction"].default
    if config.val_data is not None or config.val_fraction != default_fraction:
        raise ValueError(
            "--folds conflicts with --val-data / --val-fraction: each fold validates on the "
            f"cases its split holds out. Received: val_data={config.val_data!r}, "
            f"val_fraction={config.val_fraction!r}")


def load_train_config(path) -> Dict[str, Any]:
    """Reads a YAML (``.yaml`` / ``.yml``) or JSON training configuration as a dict."""
    return read_settings_file(path, what="training configuration")



"""``missu-keras train``: train MISSU on a data folder, resumably
(`missu_keras.training.train`).

Settings come from the preset, then ``--config`` (a YAML or JSON file with the
`missu_keras.training.TrainConfig` names), then the flags; ``--set NAME=VALUE`` sets a
`missu_keras.MISSUConfig` name (the config file's ``model:`` mapping, overridden).
Every value is checked by the configuration classes, which name the setting.
"""

from __future__ import annotations

import dataclasses

from missu_keras.cli.common import add_set_option, int_or_triple_arg, set_options
from missu_keras.training.config import (FREEZE_PARTS, LAYOUTS, PRECISIONS, TrainConfig,  # light
                                         load_train_config)

# Fields with a flag of another form than --name VALUE.
_SPECIAL = ("model", "patch_size", "skip_invalid", "verbose", "freeze")
_HELP = {
    "data": "folder of labelled training cases",
    "out": "output folder of the run (the same command resumes it)",
    "loss": "ce | dice | dice_ce | released_dice (default: the preset's)",
    "precision": " | ".join(PRECISIONS),
    "layout": " | ".join(LAYOUTS),
    "learning_rate": "peak of the poly schedule (the paper: 4e-4)",
    "save_preset": "also save the final model as a preset folder",
    "folds": "cross-validation: split the cases into FOLDS folds (OUT/splits.json, nnU-Net's "
             "rule); needs --fold; not with --val-data / --val-fraction",
    "fold": "the fold to train (0 ... FOLDS-1) into OUT/fold_FOLD/; one command per fold",
    "init_weights": "start a fresh run from these weights (.weights.h5, .keras, preset or run "
                    "folder, .npz, .pth); the classification head is re-initialised when the "
                    "number of classes differs",
    "head_learning_rate": "peak learning rate of the classification head (default: --learning-rate)",
}


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="train MISSU on a data folder (resumable)",
        description="Trains MISSU with self-distillation. Settings come from the preset, then "
                    "--config (YAML or JSON with the same names), then the flags. Running the "
                    "same command again resumes an interrupted run.")
    p.add_argument("--config", help="YAML or JSON file of training settings")
    for field in dataclasses.fields(TrainConfig):
        if field.name not in _SPECIAL:
            p.add_argument("--" + field.name.replace("_", "-"), dest=field.name, default=None,
                           metavar=field.name.upper(), help=_HELP.get(field.name))
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N", default=None,
                   help="training crop: N or H W D (multiples of 8)")
    p.add_argument("--skip-invalid", action="store_true", default=None,
                   help="leave out cases that fail validation")
    p.add_argument("--verbose", default=None, help="fit verbosity: auto, 0, 1, 2")
    _add_finetuning_flags(p)
    add_set_option(p)
    p.set_defaults(func=run)
    return p


def _add_finetuning_flags(p):
    p.add_argument("--freeze", action="append", choices=FREEZE_PARTS, default=None,
                   help="do not train this part (repeatable): " + " | ".join(FREEZE_PARTS))


def settings_from_args(args) -> dict:
    """The settings of a ``train`` command line: ``--config`` file, then the flags."""
    settings = load_train_config(args.config) if args.config else {}
    settings = {str(k).replace("-", "_"): v for k, v in settings.items()}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if field.name != "model" and value is not None:
            settings[field.name] = value
    if args.patch_size is not None:
        settings["patch_size"] = int_or_triple_arg(args.patch_size)
    model = dict(settings.get("model") or {})
    model.update(set_options(args))
    if model:
        settings["model"] = model
    return settings


def run(args) -> int:
    from missu_keras.training import train  # loads TensorFlow: at run time, not for --help

    train(settings_from_args(args))
    return 0

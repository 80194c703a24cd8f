"""Flags shared by several commands, and their translation into library arguments."""

from __future__ import annotations

import logging
import os
import sys

from missu_keras.config import parse_set_options  # light: no TensorFlow
from missu_keras.data.datasets import LAYOUTS  # light: no TensorFlow

# Errors a user can cause (bad flags, settings or files, a missing extra, an unreachable
# server, a full or read-only disk: OSError covers the last three): one line, exit 2.
USER_ERRORS = (ValueError, OSError, ImportError)


def one_line(err: BaseException) -> str:
    """A user error as one line: an ``OSError`` with a file as ``FILE: what``."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hides TensorFlow's C++ start-up lines ("oneDNN custom operations are on", "Could
    not find cuda drivers", ...) unless ``verbose``. Takes effect when TensorFlow has not
    been imported yet (the command modules import it when they run); a value the user
    set in ``TF_CPP_MIN_LOG_LEVEL`` wins."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


INFERENCE_PRECISIONS = ("float32", "mixed_bfloat16", "auto")


def add_set_option(parser, what: str = "MISSUConfig") -> None:
    """``--set NAME=VALUE`` (repeatable), read by `missu_keras.config.parse_set_options`."""
    parser.add_argument("--set", dest="set_options", action="append", default=[], metavar="NAME=VALUE",
                        help=f"a {what} setting, e.g. --set embed_dim=256 --set use_transformer=false "
                             "(repeatable; values are read as YAML)")


def set_options(args) -> dict:
    return parse_set_options(args.set_options)


def int_or_triple_arg(values):
    """``--image-size N`` or ``--image-size H W D`` as an int or a list."""
    if values is None:
        return None
    return values[0] if len(values) == 1 else list(values)


def add_inference_arguments(parser, several_models: bool = False) -> None:
    """Flags shared by ``predict`` and ``evaluate`` (``several_models``: ``--model`` may
    repeat, a list)."""
    if several_models:
        parser.add_argument("--model", required=True, action="append",
                            help="a train output folder, a .keras file, a saved preset folder or a "
                                 "preset name; repeat it to average the models' probabilities (an "
                                 "ensemble, with --tta each model's over the 8 flips too). A "
                                 "cross-validation run folder (train --folds) stands for its folds; "
                                 "given alone to evaluate, it is scored out of fold")
    else:
        parser.add_argument("--model", required=True,
                            help="a train output folder (a cross-validation run: scored out of "
                                 "fold), a .keras file, a saved preset folder or a preset name")
    parser.add_argument("--weights", default="published",
                        help="weights for a preset name: 'published' (default), 'none' (random), or a "
                             "file (see load_pretrained)")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS,
                        help="dataset layout: auto (detected), a BraTS layout (2019, 2020, 2021, "
                             "2023), chaos, msd (Decathlon) or nnunet (nnU-Net raw)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--tta", action="store_true", help="average the 8 flips (8x the compute)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                        help="float32 (default), mixed_bfloat16, or auto: mixed_bfloat16 where the "
                             "CPU has bf16 units (avx512_bf16 / amx_bf16), else float32; says which")
    parser.add_argument("--sw-batch-size", type=int, default=1, help="windows per model call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar over the windows")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help="do not apply the post-processing stored with the model "
                             "(postprocessing.json, chosen by 'missu-keras postprocess choose')")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def weights_argument(text):
    """A ``--weights`` text as `load_pretrained`'s ``weights``: ``"none"`` is None (random)."""
    return None if text is not None and text.lower() == "none" else text


def segmenter_kwargs(args) -> dict:
    """The `Segmenter` settings of the inference flags (``--precision auto`` resolved
    here, at run time, and the choice printed); ``postprocessing``: ``"stored"`` (the
    model's postprocessing.json) unless --no-postprocessing."""
    from missu_keras.hardware import resolve_precision  # reads the GPUs through TensorFlow: at run time

    precision = resolve_precision(args.precision, "inference", log=_say)
    return dict(overlap=args.overlap, flip_tta=args.tta, precision=precision,
                sw_batch_size=args.sw_batch_size, progress=not args.quiet,
                postprocessing=None if getattr(args, "no_postprocessing", False) else "stored")

"""``missu-keras export``: the inference-only SavedModel for TF-Serving (OUT/NAME/VERSION),
`missu_keras.export.export_savedmodel`. ``export/export_savedmodel.py`` runs the same
command on its own (`export_main`)."""

from __future__ import annotations

import argparse
import sys

from missu_keras.cli.common import (USER_ERRORS, add_set_option, int_or_triple_arg, one_line,
                                    quiet_tensorflow, set_options, weights_argument)
from missu_keras.files import output_folder


def add_export_arguments(p) -> None:
    p.add_argument("--preset", "--model", dest="preset", action="append", required=True,
                   help="preset name (brats, chaos, tiny), a saved preset folder, a .keras file or a "
                        "train output folder; repeat it, or give a cross-validation run folder "
                        "(train --folds), to export an ensemble as one SavedModel (the models' "
                        "probabilities averaged before the argmax)")
    p.add_argument("--weights", default="published",
                   help="'published' (default: a preset name's published weights, a saved preset "
                        "folder's or .keras file's own), 'none' (random initialisation), or a "
                        ".weights.h5, .keras, preset folder, .npz or .pth/.pt file of that "
                        "preset's configuration (another configuration is refused: pass such a "
                        "file as --preset); recorded in the metadata as 'weights'")
    p.add_argument("--out", required=True, help="folder that receives <name>/<version>/")
    p.add_argument("--name", default="missu", help="model name (TF-Serving MODEL_NAME; default missu)")
    p.add_argument("--version", type=int, default=None, help="integer version (default: the next free one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N",
                   help="patch size override: N or H W D (multiples of 8)")
    add_set_option(p)
    p.add_argument("--overlap", type=float, default=0.5,
                   help="segment_volume sliding-window overlap (default 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=1,
                   help="segment_volume windows per model call (default 1)")
    p.add_argument("--pad-to-multiple", action="store_true",
                   help="segment_volume: pad the cropped scan to the preprocessing's pad_multiple "
                        "before the sliding window, as whole-volume validation does (default: "
                        "off, as missu-keras predict)")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="do not bake the post-processing stored with a --preset folder "
                        "(postprocessing.json) into segment_volume / segment_scan")
    p.set_defaults(func=run)


def register(subparsers):
    p = subparsers.add_parser("export", help="inference-only SavedModel for TF-Serving (OUT/NAME/VERSION)")
    add_export_arguments(p)


def run(args) -> int:
    # The library loads TensorFlow: imported when the command runs, not for --help.
    from missu_keras.export import check_weights_fit_preset, export_savedmodel
    from missu_keras.prediction import ensemble_references, stored_ensemble_postprocessing
    from missu_keras.pretrained import load_pretrained

    overrides = set_options(args)
    if args.image_size:
        overrides["image_size"] = int_or_triple_arg(args.image_size)

    weights = weights_argument(args.weights)
    refs = ensemble_references(args.preset)  # a cross-validation run: its folds
    if len(refs) > 1 and weights not in (None, "published"):
        raise ValueError(f"--weights {args.weights}: one weights file for {len(refs)} models; an "
                         "ensemble's members carry their own weights (leave --weights out)")
    with output_folder(args.out, "--out"):  # checked before the model is built
        models = [load_pretrained(ref, weights=weights, training_model=True, **overrides)
                  for ref in refs]
        if weights not in (None, "published"):
            check_weights_fit_preset(models[0], refs[0], args.weights, overrides)
        export_savedmodel(models if len(models) > 1 else models[0], args.out, name=args.name,
                          version=args.version, overwrite=args.overwrite,
                          preset=refs[0] if len(refs) == 1 else None, overlap=args.overlap,
                          sw_batch_size=args.sw_batch_size, pad_to_multiple=args.pad_to_multiple,
                          weights=args.weights, member_names=[str(r) for r in refs],
                          postprocessing=None if args.no_postprocessing
                          else stored_ensemble_postprocessing(refs))  # a preset or run folder's
    return 0


def export_main(argv=None) -> int:
    """``python export/export_savedmodel.py ...``: the ``export`` command on its own."""
    parser = argparse.ArgumentParser(
        prog="export_savedmodel.py",
        description="Export an inference-only MISSU SavedModel for TF-Serving (OUT/NAME/VERSION).")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    quiet_tensorflow()
    try:
        return run(args)
    except USER_ERRORS as err:
        print(f"export_savedmodel.py: error: {one_line(err)}", file=sys.stderr)
        return 2

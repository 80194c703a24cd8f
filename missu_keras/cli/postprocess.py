"""``missu-keras postprocess choose``: choose a run's post-processing on predictions of
cases it was not trained on (`missu_keras.postprocess_choice.choose_for_run`)."""

from __future__ import annotations

from missu_keras.cli.common import INFERENCE_PRECISIONS, segmenter_kwargs
from missu_keras.data.datasets import LAYOUTS  # light: no TensorFlow


def register(subparsers):
    p = subparsers.add_parser("postprocess", help="post-processing of a trained model",
                              description="Post-processing stored with a model (postprocessing.json).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser(
        "choose", help="choose the post-processing on validation predictions",
        description="Segments (once, without post-processing) the out-of-fold cases of a "
                    "cross-validation run, the validation cases of a single run, or every "
                    "labelled case of --data, then keeps each step (small-ET relabelling, small "
                    "components dropped, largest component only) that raises its region's mean "
                    "Dice and lowers no other's. Writes RUN/postprocessing.json (used by predict, "
                    "evaluate and export from then on) and RUN/postprocessing_choice.json (the "
                    "numbers); predictions go to RUN/postprocessing_validation/.")
    c.add_argument("--run", required=True, help="a train output folder or cross-validation run folder")
    c.add_argument("--data", default=None,
                   help="labelled cases: a cross-validation run's training data (default: the "
                        "folder it recorded); for a single run, cases to use instead of its "
                        "validation split")
    c.add_argument("--layout", default="auto", choices=LAYOUTS, help="dataset layout (default auto)")
    c.add_argument("--et-grid", type=int, nargs="+", default=None, metavar="N",
                   help="ET thresholds in voxels to try (default 0 50 100 200 300 500 750 1000)")
    c.add_argument("--component-grid", type=int, nargs="+", default=None, metavar="N",
                   help="minimum component sizes in voxels to try (default 10 50 100 200 500 1000)")
    c.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    c.add_argument("--tta", action="store_true", help="average the 8 flips (8x the compute)")
    c.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32")
    c.add_argument("--sw-batch-size", type=int, default=1, help="windows per model call")
    c.add_argument("--quiet", action="store_true", help="no progress bar over the windows")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an earlier choice (postprocessing.json, postprocessing_choice.json)")
    c.set_defaults(func=run)
    return p


def run(args) -> int:
    # loads TensorFlow: at run time, not for --help
    from missu_keras.postprocess_choice import COMPONENT_GRID, ET_GRID, choose_for_run

    kwargs = segmenter_kwargs(args)
    kwargs.pop("postprocessing")  # choose segments without any
    choose_for_run(args.run, data=args.data, layout=args.layout, overwrite=args.overwrite,
                   et_grid=args.et_grid if args.et_grid is not None else ET_GRID,
                   component_grid=args.component_grid if args.component_grid is not None
                   else COMPONENT_GRID, **kwargs)
    return 0

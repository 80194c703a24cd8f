"""``missu-keras evaluate``: segment labelled cases and score them
(`missu_keras.evaluation.evaluate`)."""

from __future__ import annotations

from missu_keras.cli.common import add_inference_arguments, segmenter_kwargs, weights_argument


def register(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="segment labelled cases and score them (Dice, HD95, ...)",
        description="Segments every case with a ground truth under DATA and writes cases.csv, "
                    "summary.json, convention.txt and report.html to --out (checked before any "
                    "work; earlier results are refused unless --overwrite). Several --model: an "
                    "ensemble (their probabilities averaged; different preprocessing contracts "
                    "are refused). One --model that is a cross-validation run folder (train "
                    "--folds): each fold segments its own validation cases and one summary "
                    "covers them all.")
    p.add_argument("data", help="folder of labelled cases (any --layout)")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p, several_models=True)
    p.add_argument("--cases", nargs="+", help="only these case ids")
    p.add_argument("--save-predictions", action="store_true", help="also write predictions/<case>.nii.gz")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave out cases that fail validation instead of stopping")
    p.add_argument("--uncertainty", action="store_true",
                   help="also report the mean entropy of the (averaged) probabilities on correctly "
                        "and wrongly labelled voxels near the foreground (cases.csv, summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from missu_keras.evaluation import evaluate  # loads TensorFlow: at run time, not for --help

    model = args.model[0] if len(args.model) == 1 else args.model  # one --model: as it always was
    evaluate(model, args.data, args.out, weights=weights_argument(args.weights), layout=args.layout,
             case_ids=args.cases, save_predictions=args.save_predictions,
             skip_invalid=args.skip_invalid, overwrite=args.overwrite, uncertainty=args.uncertainty,
             **segmenter_kwargs(args))
    return 0

"""``missu-keras predict``: segment cases to NIfTI in their original grid
(`missu_keras.prediction.predict`)."""

from __future__ import annotations

from missu_keras.cli.common import add_inference_arguments, segmenter_kwargs, weights_argument
from missu_keras.labels import LABEL_CONVENTIONS  # light: no TensorFlow


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment cases to NIfTI in their original grid",
        description="Segments one case folder, a folder of cases, or one case given as NIfTI "
                    "files (in any order: matched to the model's modalities by their names, "
                    "_flair/_t1ce/_t1/_t2 or -t2f/-t1c/-t1n/-t2w, or by --modalities), and "
                    "writes <case>.nii.gz per case. Several --model (or a cross-validation run "
                    "folder, train --folds) average their probabilities. --out is checked before "
                    "any work; existing outputs are refused unless --overwrite.")
    p.add_argument("inputs", nargs="+", help="case folder, folder of cases, or NIfTI files")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p, several_models=True)
    p.add_argument("--modalities", default=None, metavar="M1,M2,...",
                   help="the modality of each listed NIfTI file, in the order given (e.g. "
                        "flair,t1ce,t1,t2), for files whose names carry none")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <case>_probabilities.nii.gz: the (averaged) probabilities, one "
                        "channel per class on the 4th axis, 16 bits a value (uint16 x 1/65535)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <case>_entropy.nii.gz: the voxelwise entropy (float32, nats, at "
                        "most ln K) of the probabilities averaged over the models and --tta flips")
    p.add_argument("--output-labels", default=None, choices=sorted(LABEL_CONVENTIONS), metavar="NAME",
                   help="write the labels in this convention (one of %(choices)s; e.g. brats2023: "
                        "ET = 3), whatever the model was trained on; an impossible mapping is an "
                        "error before any case is segmented (default: the model's own)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from missu_keras.prediction import predict  # loads TensorFlow: at run time, not for --help

    modalities = args.modalities.split(",") if args.modalities else None
    model = args.model[0] if len(args.model) == 1 else args.model  # one --model: as it always was
    predict(args.inputs, args.out, model, weights=weights_argument(args.weights), layout=args.layout,
            overwrite=args.overwrite, save_probabilities=args.probabilities, modalities=modalities,
            output_labels=args.output_labels, uncertainty=args.uncertainty,
            **segmenter_kwargs(args))
    return 0

"""``missu-keras predict``: segment cases to NIfTI in their original grid
(`missu_keras.prediction.predict`)."""

from __future__ import annotations

from missu_keras.cli.common import add_inference_arguments, segmenter_kwargs, weights_argument


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment cases to NIfTI in their original grid",
        description="Segments one case folder, a folder of cases, or one case given as NIfTI "
                    "files in the model's modality order, and writes <case>.nii.gz per case.")
    p.add_argument("inputs", nargs="+", help="case folder, folder of cases, or NIfTI files")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p)
    p.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from missu_keras.prediction import predict  # loads TensorFlow: at run time, not for --help

    predict(args.inputs, args.out, args.model, weights=weights_argument(args.weights), layout=args.layout,
            overwrite=args.overwrite, save_probabilities=args.probabilities, **segmenter_kwargs(args))
    return 0

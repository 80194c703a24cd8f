"""``missu-keras score``: score existing segmentations (any method's NIfTI) against ground
truth.

    missu-keras score --pred PRED_DIR --gt GT_DIR --out OUT_DIR [--convention brats]
                      [--nsd-tolerance MM] [--ignore-affine] [--overwrite]

Writes ``OUT_DIR/cases.csv`` (``case, WT_dice, WT_hd95, ..., WT_nsd, WT_lesion_dice,
WT_lesion_hd95, ...``: whole-volume metrics, the normalised surface Dice and, for the BraTS
conventions, the BraTS 2023 lesion-wise Dice and HD95), ``OUT_DIR/summary.json``
(``{region: {metric: {mean, std, median}}}``), ``OUT_DIR/convention.txt`` and
``OUT_DIR/report.html`` (one self-contained page: `missu_keras.reports`), and prints a
table and the scoring convention. ``OUT_DIR`` is checked before any case is scored, and
earlier results in it are refused unless ``--overwrite``. Each prediction must have its
ground truth's shape and affine (``--ignore-affine`` skips the affine check). How files
are paired by case name: `missu_keras.scoring`.
"""

from __future__ import annotations

import argparse

from missu_keras.labels import LABEL_CONVENTIONS  # light: no TensorFlow


def register(subparsers):
    p = subparsers.add_parser(
        "score", help="score existing NIfTI segmentations against ground truth",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="folder of predicted segmentations")
    p.add_argument("--gt", required=True, help="folder of ground-truth segmentations")
    p.add_argument("--out", required=True, help="output folder for cases.csv, summary.json, convention.txt, report.html")
    p.add_argument("--convention", default="brats", choices=sorted(LABEL_CONVENTIONS),
                   help="label convention of both folders (default: brats, the 2012-2021 "
                        "labels 0/1/2/4; brats2023: ET = 3; brats2024: also RC = 4)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                   help="tolerance of the normalised surface Dice (<region>_nsd) in mm "
                        "(default: 1, one voxel of the BraTS grid)")
    p.add_argument("--require-all", action="store_true",
                   help="fail if a ground-truth case has no prediction")
    p.add_argument("--ignore-affine", action="store_true",
                   help="score a prediction whose affine differs from its ground truth's "
                        "(default: an error naming both files)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    # scipy / Keras metrics: imported when the command runs, not for --help.
    from missu_keras.metrics import convention_text, format_summary_table
    from missu_keras.scoring import score_to_folder

    rows, summary, missing, paths = score_to_folder(
        args.pred, args.gt, args.out, args.convention, require_all=args.require_all,
        ignore_affine=args.ignore_affine, overwrite=args.overwrite, log=print,
        nsd_tolerance_mm=args.nsd_tolerance)
    print()
    print(f"Scored {len(rows)} case(s): predictions {args.pred} vs ground truth {args.gt} "
          f"({args.convention} convention)")
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        print(f"{len(missing)} ground-truth case(s) without a prediction were not scored: {shown}")
    print(format_summary_table(summary))
    print()
    print(convention_text(args.nsd_tolerance))
    print()
    print(f"Wrote {paths['cases']}, {paths['summary']}, {paths['convention']} and {paths['report']}")
    return 0

"""``missu-keras view``: one case's page, its image with the prediction (and ground
truth, when the case has one) in three planes (`missu_keras.reports.view_case`).

    missu-keras view CASE_DIR --pred SEG.nii.gz [--out page.html] [--overwrite]
    missu-keras view CASE_flair.nii.gz [CASE_seg.nii.gz ...] --pred SEG.nii.gz
"""

from __future__ import annotations

import argparse

from missu_keras.data.datasets import LAYOUTS  # light: no TensorFlow
from missu_keras.labels import LABEL_CONVENTIONS  # light: no TensorFlow


def register(subparsers):
    p = subparsers.add_parser(
        "view", help="one case's self-contained HTML page: image, ground truth and prediction",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", nargs="+", help="a case folder (any --layout), or the case's NIfTI "
                                           "files (images; a _seg file is the ground truth)")
    p.add_argument("--pred", required=True, help="the predicted label NIfTI, on the case's grid")
    p.add_argument("--out", default=None, help="the page to write (default: <case>_view.html here)")
    p.add_argument("--convention", default=None, choices=sorted(LABEL_CONVENTIONS),
                   help="label convention of --pred (default: the case's)")
    p.add_argument("--case-convention", default=None, choices=sorted(LABEL_CONVENTIONS),
                   help="label convention of the case's _seg file when the case is given as NIfTI "
                        "files (default: brats2023 for 2023 file names, else brats)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="layout of a case folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from missu_keras.reports import view_case  # loads TensorFlow: at run time, not for --help

    case = args.case[0] if len(args.case) == 1 else args.case
    path = view_case(case, args.pred, args.out, convention=args.convention, layout=args.layout,
                     overwrite=args.overwrite, case_convention=args.case_convention)
    print(f"Wrote {path}")
    return 0

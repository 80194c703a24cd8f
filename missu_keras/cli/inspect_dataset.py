"""``missu-keras inspect DATASET [--layout ...] [--out FILE.json]``: the dataset fingerprint
(`missu_keras.data.fingerprint`): cases, channels, labels, shapes, spacings, orientations,
intensities and problems, printed as a table and optionally written as JSON. No
TensorFlow is loaded."""

from __future__ import annotations

from pathlib import Path

from missu_keras.data.datasets import LAYOUTS  # light: no TensorFlow
from missu_keras.files import refuse_existing


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="what a dataset holds before training on it (cases, channels, labels, "
                        "shapes, spacings, orientations, intensities, problems)")
    p.add_argument("dataset", help="dataset folder (any layout)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="auto (detected), a BraTS layout, chaos, msd or nnunet")
    p.add_argument("--sequence", default="T1DUAL", choices=("T1DUAL", "T2SPIR"),
                   help="CHAOS MR sequence (default T1DUAL)")
    p.add_argument("--out", help="also write the fingerprint to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when a problem is found")
    p.set_defaults(func=run)


def run(args) -> int:
    # NumPy + nibabel only; imported when the command runs
    from missu_keras.data.fingerprint import dataset_fingerprint, format_fingerprint, write_fingerprint

    if args.out:
        if not str(args.out).endswith(".json"):
            raise ValueError(f"--out {args.out}: expected a .json file name")
        if not args.overwrite:
            refuse_existing([args.out])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fp = dataset_fingerprint(args.dataset, layout=args.layout, sequence=args.sequence)
    print(format_fingerprint(fp))
    if args.out:
        print(f"wrote {write_fingerprint(fp, args.out)}")
    return 1 if args.strict and fp["problems"] else 0

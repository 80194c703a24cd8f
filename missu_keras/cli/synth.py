"""``missu-keras synth``: write synthetic BraTS (NIfTI) or CHAOS (DICOM + PNG) cases.

``missu-keras synth brats OUT --cases N --seed S [--shape H W D] [--layout 2019|2020|2021|2023] [--nii] [--no-seg]``
``missu-keras synth brats OUT --layout msd|nnunet [--test-cases N] [--regions]`` (the same
brain tumours as a Decathlon Task01 folder or an nnU-Net raw dataset, written into OUT)
``missu-keras synth chaos OUT --cases N --seed S [--shape H W D] [--no-t2spir]``

OUT must be empty or new (``--overwrite`` writes into a non-empty folder, replacing files
of the same names). BraTS case ids are marked synthetic (``BraTS2021_SYNTH_00000``, ...),
so they never equal real BraTS ids.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from missu_keras.data.brats import BRATS_LAYOUTS  # light: no TensorFlow
from missu_keras.files import prepare_output_dir

DATASET_LAYOUTS = ("msd", "nnunet")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers) -> None:
    synth = subparsers.add_parser(
        "synth", help="write synthetic BraTS (NIfTI) or CHAOS (DICOM + PNG) cases in the real layouts")
    kinds = synth.add_subparsers(dest="dataset", required=True)

    p = kinds.add_parser("brats", help="BraTS-layout NIfTI cases (brain, 4 modalities, tumour labels)")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=_positive, default=4, help="number of cases (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    p.add_argument("--shape", type=_positive, nargs=3, metavar=("H", "W", "D"),
                   help="volume size (default the full 240 240 155)")
    p.add_argument("--layout", choices=BRATS_LAYOUTS + DATASET_LAYOUTS, default="2021",
                   help="file layout (default 2021; 2023 uses t2f/t1c/t1n/t2w and ET label 3; msd: "
                        "a Decathlon Task01_BrainTumour folder; nnunet: an nnU-Net raw dataset, "
                        "best named DatasetXXX_Name)")
    p.add_argument("--test-cases", type=int, default=0,
                   help="msd / nnunet: also write this many unlabelled cases to imagesTs (default 0)")
    p.add_argument("--regions", action="store_true",
                   help="nnunet: declare the labels region-based (whole tumor, tumor core, enhancing tumor)")
    p.add_argument("--nii", action="store_true", help="write uncompressed .nii instead of .nii.gz")
    p.add_argument("--no-seg", action="store_true", help="omit the seg files (prediction-only cases)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder (files of the same names are replaced)")
    p.set_defaults(func=run_brats)

    c = kinds.add_parser("chaos", help="CHAOS-layout MR cases: T1DUAL / T2SPIR DICOM + Ground PNG masks")
    c.add_argument("out", help="output folder (Train_Sets/MR/<id>/... is created inside)")
    c.add_argument("--cases", type=_positive, default=4, help="number of cases (default 4)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--shape", type=_positive, nargs=3, metavar=("H", "W", "D"),
                   help="rows, columns, slices (default 256 256 32)")
    c.add_argument("--no-t2spir", action="store_true", help="write only the T1DUAL series")
    c.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder (files of the same names are replaced)")
    c.set_defaults(func=run_chaos)


def check_empty_output(out: str, overwrite: bool) -> None:
    """Refuses a non-empty ``out`` unless ``overwrite`` (synth never mixes its cases into
    a data folder by accident), after checking that it is a writable folder."""
    folder = Path(out)
    entries = sorted(os.listdir(folder)) if folder.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FileExistsError(
            f"{folder} is not empty ({len(entries)} entries: {shown}); expected an empty or "
            "new folder for synthetic cases: choose another, or pass --overwrite to write "
            "into it (files of the same names are replaced)"
        )
    prepare_output_dir(folder, "OUT")


def run_brats(args) -> int:
    from missu_keras.data.synthetic import write_synthetic_brats  # NumPy + nibabel, at run time

    check_empty_output(args.out, args.overwrite)
    shape = tuple(args.shape) if args.shape else (240, 240, 155)
    if args.layout in DATASET_LAYOUTS:
        return _run_dataset(args, shape)
    if args.test_cases or args.regions:
        raise ValueError("--test-cases and --regions are for --layout msd or nnunet; "
                         f"received --layout {args.layout}")
    dirs = write_synthetic_brats(
        args.out, num_cases=args.cases, seed=args.seed, shape=shape, layout=args.layout,
        extension=".nii" if args.nii else ".nii.gz", with_seg=not args.no_seg,
    )
    print(f"wrote {len(dirs)} synthetic BraTS {args.layout} case(s) of shape "
          f"{'x'.join(map(str, shape))} to {args.out}")
    return 0


def _run_dataset(args, shape) -> int:
    from missu_keras.data.synthetic import (write_synthetic_msd,  # NumPy + nibabel, at run time
                                            write_synthetic_nnunet)

    if args.regions and args.layout != "nnunet":
        raise ValueError(f"--regions is for --layout nnunet; received --layout {args.layout}")
    if args.test_cases < 0:
        raise ValueError(f"--test-cases must be >= 0; received {args.test_cases}")
    if args.nii or args.no_seg:
        raise ValueError(f"--nii and --no-seg are for the BraTS layouts; --layout {args.layout} "
                         "writes .nii.gz, with labels for imagesTr (use --test-cases for unlabelled ones)")
    kwargs = dict(num_cases=args.cases, seed=args.seed, shape=shape, num_test=args.test_cases)
    if args.layout == "msd":
        root = write_synthetic_msd(args.out, **kwargs)
    else:
        root = write_synthetic_nnunet(args.out, regions=args.regions, **kwargs)
    print(f"wrote {args.cases} training and {args.test_cases} test case(s) of shape "
          f"{'x'.join(map(str, shape))} as a{'n nnU-Net' if args.layout == 'nnunet' else ' Decathlon'} "
          f"dataset to {root}")
    return 0


def run_chaos(args) -> int:
    from missu_keras.data.synthetic import write_synthetic_chaos  # pydicom + Pillow, at run time

    check_empty_output(args.out, args.overwrite)
    shape = tuple(args.shape) if args.shape else (256, 256, 32)
    dirs = write_synthetic_chaos(args.out, num_cases=args.cases, seed=args.seed, shape=shape,
                                 t2spir=not args.no_t2spir)
    print(f"wrote {len(dirs)} synthetic CHAOS MR case(s) of shape {'x'.join(map(str, shape))} "
          f"to {args.out}/Train_Sets/MR")
    return 0

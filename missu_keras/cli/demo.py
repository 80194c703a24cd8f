"""``missu-keras demo``: synthetic BraTS data (any of three layouts) -> train -> evaluate -> predict -> export
(`missu_keras.demo.run_demo`)."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> export")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    # missu_keras.demo.DEMO_LAYOUTS (that module loads TensorFlow, not wanted for --help)
    p.add_argument("--layout", choices=("brats", "msd", "nnunet"), default="brats",
                   help="write the synthetic data as BraTS 2021 folders (default), a Decathlon "
                        "Task01 or an nnU-Net raw dataset; the same readers as real data")
    p.set_defaults(func=run)


def run(args) -> int:
    from missu_keras.demo import run_demo  # loads TensorFlow: at run time, not for --help

    run_demo(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
             layout=args.layout)
    return 0

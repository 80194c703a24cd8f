"""``missu-keras demo``: synthetic BraTS data -> train -> evaluate -> predict -> export
(`missu_keras.demo.run_demo`)."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> export")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from missu_keras.demo import run_demo  # loads TensorFlow: at run time, not for --help

    run_demo(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    return 0

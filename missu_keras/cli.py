"""The ``missu-keras`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _summary(args) -> int:
    from missu_keras.complexity import complexity_report, format_report
    from missu_keras.models import MISSU

    overrides = {}
    if args.image_size:
        overrides["image_size"] = args.image_size[0] if len(args.image_size) == 1 else args.image_size
    if args.msf_mode:
        overrides["msf_mode"] = args.msf_mode
        if args.msf_mode == "none":
            overrides["self_distill"] = False
    model = MISSU.from_preset(args.preset, **overrides)
    report = complexity_report(model)
    report["preset"] = args.preset
    print(format_report(report, title=f"MISSU preset {args.preset!r} (msf_mode={model.config.msf_mode})"))
    if args.json:
        print(json.dumps(report))
    return 0


def _register_summary(subparsers):
    p = subparsers.add_parser(
        "summary", help="parameters and FLOPs of the training and exported graphs"
    )
    p.add_argument("--preset", default="brats", help="preset name (default: brats)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N",
                   help="override the input size: N or H W D (multiples of 8)")
    p.add_argument("--msf-mode", choices=["none", "local", "ms_output"])
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=_summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="missu-keras", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_summary(subparsers)
    from missu_keras.data.cli import register as register_synth
    from missu_keras.scoring_cli import register as register_score

    register_synth(subparsers)
    register_score(subparsers)
    from missu_keras.demo import register as register_demo

    register_demo(subparsers)
    from missu_keras.export_cli import register as register_export

    register_export(subparsers)
    from missu_keras import evaluation, prediction, training

    training.register(subparsers)
    evaluation.register(subparsers)
    prediction.register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"missu-keras {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

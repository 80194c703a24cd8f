"""``missu-keras summary``: parameters and FLOPs of the training and exported graphs."""

from __future__ import annotations

import json

from missu_keras.cli.common import add_set_option, int_or_triple_arg, set_options


def register(subparsers):
    p = subparsers.add_parser("summary", help="parameters and FLOPs of the training and exported graphs")
    p.add_argument("--preset", default="brats", help="preset name (default: brats)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N",
                   help="override the input size: N or H W D (multiples of 8)")
    p.add_argument("--msf-mode", choices=["none", "local", "ms_output"])
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # The library loads TensorFlow: imported when the command runs, not for --help.
    from missu_keras.complexity import complexity_report, format_report
    from missu_keras.models import MISSU

    overrides = set_options(args)
    if args.image_size:
        overrides["image_size"] = int_or_triple_arg(args.image_size)
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

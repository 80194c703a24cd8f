"""``missu-keras``: the entry point. Parses the command line, keeps TensorFlow's C++
start-up log quiet unless ``--verbose``, runs the command, and turns the errors a user
can cause into one line and exit code 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import importlib
import sys

from missu_keras.cli.common import USER_ERRORS, one_line, quiet_tensorflow

# Command name -> module of this package (each has `register(subparsers)`).
COMMANDS = {
    "summary": "summary",
    "synth": "synth",
    "inspect": "inspect_dataset",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "score": "score",
    "view": "view",
    "postprocess": "postprocess",
    "export": "export",
    "serve-request": "serve_request",
    "publish": "publish",
    "demo": "demo",
}

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="missu-keras",
        description="MISSU (self-distilling TransUNet) for 3D medical image segmentation.")
    # dest names of their own: a command may have a --verbose of its own (train: fit's)
    parser.add_argument("--verbose", dest="show_tf_log", action="store_true",
                        help="show TensorFlow's start-up log (hidden by default); before COMMAND")
    parser.add_argument("--debug", dest="show_traceback", action="store_true",
                        help="show the full traceback of an error; before COMMAND")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"missu_keras.cli.{module}").register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.show_tf_log)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if args.show_traceback:
            raise
        print(f"missu-keras {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``missu-keras`` command line: `main` and one module per command.

Only this package parses arguments; each command turns its flags into calls of the
library (`missu_keras.training.train`, `missu_keras.prediction.predict`, ...). Command
modules import the library when the command runs, so ``missu-keras --help`` and
``missu-keras COMMAND --help`` answer without loading TensorFlow.
"""

from missu_keras.cli.main import build_parser, main

__all__ = ["build_parser", "main"]

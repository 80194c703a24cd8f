"""``python -m missu_keras.cli COMMAND ...``: the ``missu-keras`` command, for an
environment whose scripts folder is not on ``PATH``."""

import sys

from missu_keras.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

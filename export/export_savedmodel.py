"""Export an inference-only MISSU SavedModel for TF-Serving.

    python export/export_savedmodel.py --preset brats --weights run/model.weights.h5 --out models
    python export/export_savedmodel.py --preset tiny --image-size 32 --out models --version 2

writes ``models/missu/<version>/`` (see export/README.md). The same as
``missu-keras export ...``; a thin wrapper around `missu_keras.export.export_savedmodel`.
"""

import os
import sys

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from missu_keras.cli.export import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())

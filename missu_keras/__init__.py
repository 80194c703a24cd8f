"""missu-keras: MISSU (self-distilling TransUNet) for 3D medical image segmentation.

>>> import missu_keras
>>> missu_keras.list_presets()
['brats', 'chaos', 'tiny']
"""

import importlib as _importlib
import os as _os
import sys as _sys

# TensorFlow turns its oneDNN kernels on by default only for CPUs with AVX-512 VNNI /
# bf16 / AMX; on others (e.g. AVX2-only AMD EPYC) a 3D convolution then runs 3x slower
# forward and 5.6x slower forward + backward (benchmarks/NOTES.md). The setting is read
# when TensorFlow loads, so it applies when missu_keras is imported first; set
# TF_ENABLE_ONEDNN_OPTS=0 to opt out, or =1 yourself before importing TensorFlow.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from missu_keras._lazy import lazy_exports as _lazy_exports  # noqa: E402
from missu_keras.version import __version__  # noqa: E402

# The public API: name -> the module that defines it.
_EXPORTS = {
    "LabelConvention": "missu_keras.labels",
    "MISSU": "missu_keras.models",
    "MISSUBackbone": "missu_keras.models",
    "MISSUConfig": "missu_keras.config",
    "get_label_convention": "missu_keras.labels",
    "get_preset_config": "missu_keras.presets",
    "list_presets": "missu_keras.presets",
    "load_pretrained": "missu_keras.pretrained",
    "paper_optimizer": "missu_keras.optimizers",
    "poly_schedule": "missu_keras.optimizers",
    "publish": "missu_keras.weights.publishing",
    "save_preset": "missu_keras.saving",
}
# Imported with the API: its Keras classes (RegionDice) must be registered before
# keras.saving reads a training checkpoint that was compiled with them.
_REGISTERS_KERAS_OBJECTS = ("missu_keras.metrics",)

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())


def _load_api():
    for module in _REGISTERS_KERAS_OBJECTS:
        _importlib.import_module(module)
    for name in _EXPORTS:
        __getattr__(name)


def _is_the_command() -> bool:
    """Whether this process is the ``missu-keras`` command (the console script, or
    ``python -m missu_keras.cli``)."""
    if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "missu-keras":
        return True
    argv = list(getattr(_sys, "orig_argv", ()))
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "missu_keras.cli"


# `import missu_keras` loads the API (and TensorFlow) at once, so every custom Keras class
# is registered and keras.saving.load_model reads our .keras files. The `missu-keras`
# command is the exception: each command imports what it runs (missu_keras/cli/), so
# `missu-keras --help` answers without loading TensorFlow, and TensorFlow's start-up
# lines stay hidden unless --verbose.
if not _is_the_command():
    _load_api()

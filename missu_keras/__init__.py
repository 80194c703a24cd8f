"""missu-keras: MISSU (self-distilling TransUNet) for 3D medical image segmentation.

>>> import missu_keras
>>> missu_keras.list_presets()
['brats', 'chaos', 'tiny']
"""

import os as _os

# TensorFlow turns its oneDNN kernels on by default only for CPUs with AVX-512 VNNI /
# bf16 / AMX; on others (e.g. AVX2-only AMD EPYC) a 3D convolution then runs 3x slower
# forward and 5.6x slower forward + backward (benchmarks/NOTES.md). The setting is read
# when TensorFlow loads, so it applies when missu_keras is imported first; set
# TF_ENABLE_ONEDNN_OPTS=0 to opt out, or =1 yourself before importing TensorFlow.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from missu_keras.config import MISSUConfig  # noqa: E402
from missu_keras.labels import LabelConvention, get_label_convention
from missu_keras.models import MISSU, MISSUBackbone
from missu_keras import metrics as _metrics  # noqa: F401,E402 (registers RegionDice for .keras loading)
from missu_keras.optimizers import paper_optimizer, poly_schedule
from missu_keras.pretrained import load_pretrained
from missu_keras.presets import get_preset_config, list_presets
from missu_keras.saving import save_preset
from missu_keras.version import __version__

__all__ = [
    "MISSU",
    "MISSUBackbone",
    "MISSUConfig",
    "LabelConvention",
    "get_label_convention",
    "get_preset_config",
    "list_presets",
    "load_pretrained",
    "paper_optimizer",
    "poly_schedule",
    "save_preset",
    "__version__",
]

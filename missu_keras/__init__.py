"""missu-keras: MISSU (self-distilling TransUNet) for 3D medical image segmentation.

>>> import missu_keras
>>> missu_keras.list_presets()
['brats', 'chaos', 'tiny']
"""

from missu_keras.config import MISSUConfig
from missu_keras.labels import LabelConvention, get_label_convention
from missu_keras.models import MISSU, MISSUBackbone
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

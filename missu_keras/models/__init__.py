from missu_keras.models.backbone import MISSUBackbone
from missu_keras.models.missu import MISSU

__all__ = ["MISSU", "MISSUBackbone"]

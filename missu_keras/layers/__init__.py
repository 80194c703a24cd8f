"""Custom layers of MISSU, channels-last, each registered under ``missu_keras``."""

from missu_keras.layers.decoder import DeBlock, UpCat
from missu_keras.layers.distillation import AttentionMap, SelfDistillationLoss
from missu_keras.layers.encoder import DownSample, EncoderBlock, InitConv
from missu_keras.layers.normalization import GroupNormalization
from missu_keras.layers.msf import MultiScaleFusion, PyramidFusion
from missu_keras.layers.transformer import Bottleneck, PositionEmbedding, TransformerLayer

__all__ = [
    "AttentionMap",
    "Bottleneck",
    "DeBlock",
    "DownSample",
    "EncoderBlock",
    "GroupNormalization",
    "InitConv",
    "MultiScaleFusion",
    "PositionEmbedding",
    "PyramidFusion",
    "SelfDistillationLoss",
    "TransformerLayer",
    "UpCat",
]

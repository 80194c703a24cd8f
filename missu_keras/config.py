"""MISSU configuration: the constructor arguments of `MISSUBackbone` / `MISSU`, checked early.

>>> cfg = MISSUConfig(image_size=32, base_width=8, embed_dim=64, num_heads=4)
>>> cfg.image_size
(32, 32, 32)
>>> cfg.token_grid, cfg.num_tokens
((4, 4, 4), 64)
>>> MISSUConfig(image_size=30)
Traceback (most recent call last):
...
ValueError: image_size must be divisible by 8 on every axis (three stride-2 downsamplings). Received: image_size=(30, 30, 30); e.g. 128 -> 16 tokens per axis.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple, Union

MSF_MODES = ("none", "local", "ms_output")
SEG_LOSSES = ("ce", "dice", "dice_ce", "released_dice")


def normalize_image_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int, int]:
    if isinstance(image_size, int):
        return (image_size,) * 3
    try:
        size = tuple(int(s) for s in image_size)
    except TypeError:
        raise ValueError(
            f"image_size must be an int or a 3-tuple of ints. Received: image_size={image_size!r}"
        ) from None
    if len(size) != 3:
        raise ValueError(
            f"image_size must be an int or a 3-tuple (H, W, D). Received: image_size={image_size!r}"
        )
    return size


@dataclasses.dataclass
class MISSUConfig:
    """Every hyper-parameter of the network and of its training loss.

    Names follow the paper's notation (`../shared/docs/missu-architecture.md`):
    ``base_width`` is b, ``embed_dim`` is E, ``num_layers`` is L, ``distill_weight``
    is lambda of Eq. 6. The ablation switches of Table IV / Fig. 5 are
    ``use_transformer``, ``msf_mode``, ``self_distill`` and ``num_skip_connections``.

    Two ablations from the paper's sources: ``attention_map_power`` is p in
    ``phi(F) = sum_c |F_c|^p`` (1 in the paper's Eq. 4, 2 in attention transfer, which the
    paper cites) and ``msf_shared_weights`` makes the four MSF branches share their
    convolutions as in CE-Net's DAC block. Three switches reproduce the released code
    where it differs from the paper (README, "Differences from the released code"):
    ``released_stem_dropout`` (init_conv's channel dropout also at evaluation),
    ``released_attention_dropout`` (the attention output dropped twice) and
    ``seg_loss="released_dice"`` (the sum of three batch-level Dice terms).
    """

    image_size: Union[int, Tuple[int, int, int]] = 128
    in_channels: int = 4
    num_classes: int = 4
    base_width: int = 16
    embed_dim: int = 512
    num_heads: int = 8
    num_layers: int = 4
    mlp_dim: int = 1024
    dropout_rate: float = 0.1
    attn_dropout_rate: float = 0.1
    stem_dropout_rate: float = 0.2
    use_transformer: bool = True
    msf_mode: str = "local"
    self_distill: bool = True
    distill_weight: float = 0.3
    num_skip_connections: int = 3
    teacher_stop_gradient: bool = False
    seg_loss: str = "ce"
    attention_map_power: float = 1.0
    msf_shared_weights: bool = False
    released_stem_dropout: bool = False
    released_attention_dropout: bool = False

    def __post_init__(self):
        self.image_size = normalize_image_size(self.image_size)
        self.validate()

    # Checks run before any layer is built, so a bad value fails with its name.
    def validate(self):
        if any(s <= 0 or s % 8 for s in self.image_size):
            raise ValueError(
                "image_size must be divisible by 8 on every axis (three stride-2 "
                f"downsamplings). Received: image_size={self.image_size}; "
                "e.g. 128 -> 16 tokens per axis."
            )
        for name in ("in_channels", "num_classes", "base_width", "embed_dim",
                     "num_heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        if self.num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (background + at least one class). "
                f"Received: num_classes={self.num_classes}"
            )
        if not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0. Received: num_layers={self.num_layers!r}")
        if self.base_width % 8:
            raise ValueError(
                "base_width must be divisible by 8 (GroupNorm with 8 groups). "
                f"Received: base_width={self.base_width}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                "embed_dim must be divisible by num_heads. "
                f"Received: embed_dim={self.embed_dim}, num_heads={self.num_heads}"
            )
        for name in ("dropout_rate", "attn_dropout_rate", "stem_dropout_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value!r}")
        if self.msf_mode not in MSF_MODES:
            raise ValueError(f"msf_mode must be one of {MSF_MODES}. Received: msf_mode={self.msf_mode!r}")
        if self.self_distill and self.msf_mode == "none":
            raise ValueError(
                "self_distill=True needs the MSF branch (its pyramid is the teacher); "
                "use msf_mode='local' or 'ms_output'. Received: msf_mode='none', self_distill=True"
            )
        if float(self.distill_weight) < 0:
            raise ValueError(f"distill_weight must be >= 0. Received: distill_weight={self.distill_weight!r}")
        if self.num_skip_connections not in (0, 1, 2, 3):
            raise ValueError(
                "num_skip_connections must be 0, 1, 2 or 3. "
                f"Received: num_skip_connections={self.num_skip_connections!r}"
            )
        if self.seg_loss not in SEG_LOSSES:
            raise ValueError(f"seg_loss must be one of {SEG_LOSSES}. Received: seg_loss={self.seg_loss!r}")
        power = self.attention_map_power
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power >= 1:
            raise ValueError(f"attention_map_power must be a number >= 1 (1: the paper's Eq. 4, 2: "
                             f"attention transfer). Received: attention_map_power={power!r}")
        for name in ("msf_shared_weights", "released_stem_dropout", "released_attention_dropout"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False. Received: {name}={getattr(self, name)!r}")

    @property
    def token_grid(self) -> Tuple[int, int, int]:
        return tuple(s // 8 for s in self.image_size)

    @property
    def num_tokens(self) -> int:
        h, w, d = self.token_grid
        return h * w * d

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "MISSUConfig":
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"Unknown MISSU configuration names {unknown}; accepted names: {cls.field_names()}"
            )
        return cls(**d)

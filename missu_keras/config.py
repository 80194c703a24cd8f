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

import collections.abc
import dataclasses
import json
import numbers
import operator
import pathlib
import typing
from typing import Any, Dict, Iterable, Sequence, Tuple, Union

import yaml

MSF_MODES = ("none", "local", "ms_output")
SEG_LOSSES = ("ce", "dice", "dice_ce", "released_dice")


# ------------------------------------------------------------ the strict base ------

def int_or_triple(value, name: str, minimum: int = 0) -> Tuple[int, int, int]:
    """``value`` (an int, or 3 ints for H, W, D) as a 3-tuple of ints >= ``minimum``;
    integral numeric strings are accepted (``"32"``, as a YAML or flag value).

    >>> int_or_triple(32, "patch_size"), int_or_triple([128, 128, "32"], "patch_size")
    ((32, 32, 32), (128, 128, 32))
    >>> int_or_triple([1, 2], "crop_margin")
    Traceback (most recent call last):
    ...
    ValueError: crop_margin must be an int or 3 ints (H, W, D). Received: crop_margin=[1, 2]
    """
    items = [value] * 3 if _is_scalar(value) else value
    try:
        triple = tuple(_as_int(v) for v in items)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (H, W, D). Received: {name}={value!r}")
    if min(triple) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on every axis. Received: {name}={value!r}")
    return triple


def _is_scalar(value) -> bool:
    return isinstance(value, (numbers.Number, str))


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an int")
    if isinstance(value, str):
        value = _parse_number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    return operator.index(value)


def _parse_number(text: str):
    """A number written as text (``"4e-4"``: PyYAML reads exponents without a dot as
    strings), else the text unchanged."""
    try:
        number = float(text.strip())
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence, collections.abc.Iterable):
        if len(args) == 2 and args[1] is Ellipsis or origin is not tuple:
            return f"a list of {_describe(args[0]) if args else 'values'}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict or annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value, annotation):
    """``value`` converted to ``annotation`` where that is unambiguous (numeric strings to
    numbers, lists to tuples), else ``TypeError``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        return _as_int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            value = _parse_number(value)
            if isinstance(value, str):
                raise TypeError
        return float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin in (tuple, list, collections.abc.Sequence) or annotation in (tuple, list):
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, collections.abc.Iterable):
            raise TypeError
        items = list(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise TypeError
            return tuple(_coerce(v, a) for v, a in zip(items, args))
        element = args[0] if args else Any
        coerced = [_coerce(v, element) for v in items]
        return coerced if origin is list or annotation is list else tuple(coerced)
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise TypeError
    return value


class StrictConfig:
    """The base of every configuration dataclass (model, training, preprocessing,
    augmentation): one way to check, read and write settings.

    - Every field is type-checked against its annotation when the object is made,
      whether from Python, a YAML / JSON file or ``--set``: booleans must be booleans
      (the string ``"False"`` is refused, not read as true), integers integers, and
      numbers written as text where YAML misreads them (``learning_rate: 4e-4``) are
      accepted as numbers. A wrong type raises ``ValueError`` naming the class, the
      field, the value and what is accepted.
    - ``normalize()`` (optional) then puts fields in canonical form, and ``validate()``
      checks ranges and combinations.
    - ``from_dict`` refuses unknown names, listing the accepted ones (flag spellings
      with ``-`` are accepted); ``to_dict`` is JSON-safe and ``from_dict(to_dict())``
      gives an equal object.
    """

    # How unknown-name errors call this class's settings.
    SETTINGS_NAME = "settings"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                coerced = _coerce(value, hints[field.name])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{type(self).__name__}: {field.name} must be {_describe(hints[field.name])}. "
                    f"Received: {field.name}={value!r} ({type(value).__name__})"
                ) from None
            object.__setattr__(self, field.name, coerced)
        self.normalize()
        self.validate()

    def normalize(self):
        """Canonical forms (e.g. an int size to a 3-tuple); runs before `validate`."""

    def validate(self):
        """Range and consistency checks; raise ``ValueError`` naming the field."""

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        """From a mapping of field names (``-`` or ``_`` spellings); unknown names refused."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping of settings, received {type(d).__name__}")
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"Unknown {cls.SETTINGS_NAME} {unknown}; accepted names: {cls.field_names()}")
        return cls(**d)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe: tuples become lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_set_options(items: Iterable[str]) -> Dict[str, Any]:
    """``--set NAME=VALUE`` options (every command parses them this way) as a dict.
    VALUE is read as YAML: ``False``/``true`` are booleans, ``null`` is None, ``[1, 2]``
    a list, ``4e-4`` text that the configuration's type check reads as a number.

    >>> parse_set_options(["use_transformer=False", "embed_dim=256", "image_size=[64, 64, 32]"])
    {'use_transformer': False, 'embed_dim': 256, 'image_size': [64, 64, 32]}
    >>> parse_set_options(["embed_dim"])
    Traceback (most recent call last):
    ...
    ValueError: --set expects NAME=VALUE; received 'embed_dim'
    """
    out = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE; received {item!r}")
        try:
            out[name] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"--set {name}: cannot read the value {text!r}: {err}") from None
    return out


def read_settings_file(path, what: str = "settings file") -> Dict[str, Any]:
    """A YAML (``.yaml`` / ``.yml``) or JSON file of settings, as a dict (names as in
    the file; the configuration class checks them). ``what`` names the file in errors."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    text = path.read_text()
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        data = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (yaml.YAMLError, ValueError) as err:
        raise ValueError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def normalize_image_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int, int]:
    return int_or_triple(image_size, "image_size", minimum=1)


@dataclasses.dataclass
class MISSUConfig(StrictConfig):
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

    def normalize(self):
        self.image_size = normalize_image_size(self.image_size)

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
            if value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        if self.num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (background + at least one class). "
                f"Received: num_classes={self.num_classes}"
            )
        if self.num_layers < 0:
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
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value!r}")
        if self.msf_mode not in MSF_MODES:
            raise ValueError(f"msf_mode must be one of {MSF_MODES}. Received: msf_mode={self.msf_mode!r}")
        if self.self_distill and self.msf_mode == "none":
            raise ValueError(
                "self_distill=True needs the MSF branch (its pyramid is the teacher); "
                "use msf_mode='local' or 'ms_output'. Received: msf_mode='none', self_distill=True"
            )
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0. Received: distill_weight={self.distill_weight!r}")
        if self.num_skip_connections not in (0, 1, 2, 3):
            raise ValueError(
                "num_skip_connections must be 0, 1, 2 or 3. "
                f"Received: num_skip_connections={self.num_skip_connections!r}"
            )
        if self.seg_loss not in SEG_LOSSES:
            raise ValueError(f"seg_loss must be one of {SEG_LOSSES}. Received: seg_loss={self.seg_loss!r}")
        if not self.attention_map_power >= 1:
            raise ValueError(f"attention_map_power must be a number >= 1 (1: the paper's Eq. 4, 2: "
                             f"attention transfer). Received: attention_map_power={self.attention_map_power!r}")

    @property
    def token_grid(self) -> Tuple[int, int, int]:
        return tuple(s // 8 for s in self.image_size)

    @property
    def num_tokens(self) -> int:
        h, w, d = self.token_grid
        return h * w * d

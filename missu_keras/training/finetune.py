"""Fine-tuning: a training run that starts from existing weights (``train --init-weights``),
with parts of the network frozen (``--freeze``) and the classification head at its own
rate (``--head-learning-rate``).

- `load_initial_weights` reads any source `missu_keras.load_pretrained` accepts (a
  ``.weights.h5``, a ``.keras`` file, a saved preset folder, a train output folder, a
  PyTorch-layout ``.npz`` or a released-code ``.pth`` / ``.pt``) through the loaders of
  `missu_keras.pretrained` and `missu_keras.weights.preset_io`, then copies it layer by
  layer into the run's network. Every layer must match in shape, except the
  classification head (`HEAD_LAYERS`: the decoder's last 1x1x1 convolution, the only
  layer whose shape follows ``num_classes``; the MSF branch and the self-distillation
  loss work on features, not classes) when the number of classes differs: the head
  then keeps its fresh (seeded) initialisation. Any other difference is one
  ``ValueError`` naming every layer and both shapes (e.g. the stem convolution reading
  2 channels in the source and 4 in the run). Layers a source does not hold (the MSF
  branch of a released PyTorch checkpoint or of an inference model) keep their
  initialisation; the summary names them.
- `freeze` sets ``trainable=False`` on the layers of the named parts (`PARTS`). Their
  weights are then outside ``model.trainable_weights``, so the optimizer never touches
  them. GroupNorm (the encoder) has no statistics; a frozen BatchNormalization (the
  bottleneck's, in ``"transformer"``) normalises with its moving statistics and stops
  updating them (Keras' rule for ``trainable=False``). Dropout is not switched off in
  frozen parts: the stem's channel dropout and the Transformer's dropouts still drop
  during training (they have no weights; ``training=True`` reaches every layer), as in
  an unfrozen run, so a frozen part's output is noisy in training and exact at inference.
- `run_optimizer`: the paper's Adam, or with a head rate a `missu_keras.optimizers.HeadRateAdam`
  (one optimizer, two rates over disjoint variable sets; its state is saved in the
  per-epoch backups like any Adam's, so a resumed run continues exactly).

Only a fresh run loads ``init_weights``; a resumed run restores its own backup (the
source may even be gone), while the run's ``config.json`` keeps the source's absolute
path as part of the run's identity. Freezing and the head rate apply to resumed runs too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from missu_keras.layers import (Bottleneck, DownSample, EncoderBlock, InitConv, MultiScaleFusion,
                                PositionEmbedding, PyramidFusion, TransformerLayer)
from missu_keras.models import MISSU
from missu_keras.optimizers import paper_optimizer
from missu_keras.pretrained import load_missu
from missu_keras.training.config import FREEZE_PARTS
from missu_keras.weights import preset_io
from missu_keras.weights.torch_convert import (is_state_dict_file, read_state_dict,
                                               state_dict_channels)

# The layers producing class logits (models/backbone.py `_decoder`: the 1x1x1 "endconv").
HEAD_LAYERS = ("endconv",)
# The parts `freeze` knows, by layer type (models/backbone.py builds them).
PARTS = {
    "encoder": (InitConv, DownSample, EncoderBlock),
    "transformer": (Bottleneck, PositionEmbedding, TransformerLayer),
    "msf": (MultiScaleFusion, PyramidFusion),
}
assert tuple(PARTS) == FREEZE_PARTS
_MSF = PARTS["msf"]


@dataclasses.dataclass
class Transfer:
    """What `load_initial_weights` did, by layer name."""

    source: str
    loaded: List[str]
    reinitialised: Dict[str, str]  # head layer -> "4 -> 2 classes"
    not_in_source: List[str]

    def summary(self) -> str:
        """One line for the run's log."""
        text = f"initialised from {self.source}: {len(self.loaded)} layers loaded"
        if self.reinitialised:
            text += "; re-initialised (other number of classes): " + ", ".join(
                f"{k} ({v})" for k, v in self.reinitialised.items())
        if self.not_in_source:
            text += "; not in the source, kept at initialisation: " + ", ".join(self.not_in_source)
        return text


def run_optimizer(config, total_steps: int):
    """The run's optimizer: the paper's Adam at ``config.learning_rate``, with the head
    (`HEAD_LAYERS`) at ``config.head_learning_rate`` when that is set."""
    return paper_optimizer(total_steps, learning_rate=config.learning_rate,
                           head_learning_rate=config.head_learning_rate, head_layers=HEAD_LAYERS)


def freeze(backbone, parts: Optional[Sequence[str]]) -> List[str]:
    """Sets ``trainable=False`` on the layers of ``parts`` (names of `PARTS`) in a
    `missu_keras.MISSUBackbone`; returns their names.

    >>> from missu_keras.models import MISSUBackbone
    >>> net = MISSUBackbone(image_size=16, base_width=8, embed_dim=32, num_heads=4,
    ...                     num_layers=1, mlp_dim=64)
    >>> freeze(net, ["transformer"])
    ['bottleneck', 'position_embedding', 'transformer_0']
    >>> freeze(net, ["decoder"])
    Traceback (most recent call last):
    ...
    ValueError: freeze: unknown part 'decoder'; the parts are ('encoder', 'transformer', 'msf')
    """
    frozen = []
    for part in parts or ():
        if part not in PARTS:
            raise ValueError(f"freeze: unknown part {part!r}; the parts are {FREEZE_PARTS}")
        found = [layer for layer in backbone.layers if isinstance(layer, PARTS[part])]
        if not found:
            raise ValueError(f"freeze: the network has no {part} layers to freeze "
                             f"(msf_mode={backbone.config.msf_mode!r})")
        for layer in found:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


def trainable_summary(model) -> str:
    """``"parameters: N trainable of M (frozen layers: ...)"``."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    frozen = [layer.name for layer in model.backbone.layers if layer.weights and not layer.trainable]
    text = f"parameters: {trainable:,} trainable of {total:,}"
    return text + (f" (frozen layers: {', '.join(frozen)})" if frozen else "")


def load_initial_weights(model, source, *, preset: str, overrides: Optional[dict] = None) -> Transfer:
    """Fills ``model`` (a `MISSU`) with the weights of ``source`` (see the module
    docstring); ``preset`` and ``overrides`` are the run's (they describe the network a
    ``.weights.h5`` / ``.npz`` / ``.pth`` holds, whose channels and classes are read
    from the file). Raises ``ValueError`` naming every layer that does not fit and
    ``FileNotFoundError`` for a missing source."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"init_weights {path!r} not found; expected a .weights.h5, .keras, .npz, .pth / .pt "
            "file, a saved preset folder or a train output folder")
    network, absent = _source_network(path, preset, dict(overrides or {}))
    return _transfer(network, model.backbone, path, absent)


def _source_network(path: str, preset: str, overrides: dict):
    """The source as a network whose layers carry the backbone's names, and the names of
    the layers it does not really hold (left at their initialisation)."""
    if os.path.isdir(path) or path.endswith(".keras"):
        loaded = MISSU.from_preset(path) if os.path.isdir(path) else preset_io.load_keras_file(path)
        return (loaded.backbone if isinstance(loaded, MISSU) else loaded), set()
    overrides = {k: v for k, v in overrides.items() if k != "preprocessing"}
    if path.endswith(".weights.h5"):
        channels = preset_io.h5_channels(path)
    elif is_state_dict_file(path):
        channels = state_dict_channels(read_state_dict(path))
    else:
        raise ValueError(f"init_weights {path!r}: unsupported source; expected a .weights.h5, "
                         ".keras, .npz, .pth / .pt file, a saved preset folder or a train output folder")
    overrides.update({k: int(v) for k, v in channels.items() if v is not None})
    backbone = load_missu(preset, path, registry="", overrides=overrides).backbone
    # A released-code state dict (weights/torch_convert.py) or the weights of an inference
    # model hold no MSF weights (unless the MSF feeds the decoder, msf_mode="ms_output").
    holds_msf = (backbone.config.msf_mode == "ms_output" or
                 (path.endswith(".weights.h5") and preset_io.h5_holds_msf(path)))
    absent = set() if holds_msf else {layer.name for layer in backbone.layers if isinstance(layer, _MSF)}
    return backbone, absent


def _transfer(source_net, target, source: str, absent) -> Transfer:
    """Copies ``source_net``'s layers into ``target`` by name (all checked before any is
    copied)."""
    available = {layer.name: layer for layer in source_net.layers
                 if layer.weights and layer.name not in absent}
    copies, reinitialised, missing, problems = [], {}, [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = available.pop(layer.name, None)
        if src is None:
            if isinstance(layer, _MSF):
                missing.append(layer.name)
            else:
                problems.append(f"layer {layer.name!r} is not in the source")
            continue
        values = src.get_weights()
        have = [tuple(v.shape) for v in values]
        want = [tuple(v.shape) for v in layer.weights]
        if have == want:
            copies.append((layer, values))
        elif layer.name in HEAD_LAYERS and [s[:-1] for s in have[:1]] == [s[:-1] for s in want[:1]]:
            reinitialised[layer.name] = f"{have[0][-1]} -> {want[0][-1]} classes"
        else:
            problems.append(_mismatch(layer, have, want))
    problems += [f"the source's layer {name!r} has no counterpart in the run's network"
                 for name, layer in available.items() if not isinstance(layer, _MSF)]
    if problems:
        raise ValueError(
            f"init_weights {source!r} does not fit the run's network: " + "; ".join(problems)
            + ". Use the source's configuration (in_channels, image_size / patch_size, "
            "base_width, embed_dim, num_layers, ...) for the run; only num_classes may differ")
    for layer, values in copies:
        layer.set_weights(values)
    return Transfer(source, [layer.name for layer, _ in copies], reinitialised, missing)


def _mismatch(layer, have, want) -> str:
    """One layer's shape difference, said in the network's terms where it has them."""
    if isinstance(layer, InitConv):
        return (f"the stem convolution {layer.name!r} reads {have[0][3]} input channels in the "
                f"source but {want[0][3]} in the run (kernel {have[0]} vs {want[0]})")
    if isinstance(layer, PositionEmbedding):
        return (f"the position embedding {layer.name!r} holds {have[0][1]} tokens in the source "
                f"but {want[0][1]} in the run (the patch size fixes the token count; shapes "
                f"{have[0]} vs {want[0]})")
    return f"layer {layer.name!r} has shapes {have} in the source but {want} in the run"


def initialise_run(model, config, overrides: dict, say) -> Optional[Transfer]:
    """The fresh-run step of `missu_keras.training.train`: loads ``config.init_weights``
    (if set) into ``model`` and says what was loaded."""
    if not config.init_weights:
        return None
    transfer = load_initial_weights(model, config.init_weights, preset=config.preset,
                                    overrides=overrides)
    say(transfer.summary())
    return transfer

"""The authors' released PyTorch checkpoints (TransBTS-based) in the Keras network.

A state dict of the released code (names like ``Unet.EnBlock2_1.conv1.weight``, PyTorch
layouts) maps onto `missu_keras.MISSUBackbone` tensor by tensor: `load_torch_state_dict`
copies one in, checking every shape. `read_state_dict` reads one from a ``.npz`` (no
torch needed) or from the ``.pth`` / ``.pt`` checkpoint itself (``torch.load(...,
weights_only=True)``; ``pip install "missu-keras[torch]"``).

>>> import numpy as np
>>> from missu_keras.models import MISSUBackbone
>>> net = MISSUBackbone(image_size=16, base_width=8, embed_dim=32, num_heads=4,
...                     num_layers=1, mlp_dim=64)
>>> names = [prefix for _, prefix in _pairs(net)]
>>> names[0], "transformer.net.0.fn.fn.qkv" in names
('Unet.InitConv.conv', True)
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Tuple

import numpy as np
from keras import layers

from missu_keras.layers import (Bottleneck, DeBlock, DownSample, EncoderBlock, InitConv,
                                MultiScaleFusion, PositionEmbedding, PyramidFusion,
                                TransformerLayer, UpCat)

# Tensors of the released code that do not reach the output (an unused linear
# encoding and a final LayerNorm whose output the decoder never reads).
IGNORED_TORCH_PREFIXES = ("linear_encoding.", "pre_head_ln.")
# Buffers every PyTorch checkpoint carries that are not weights: BatchNorm's step counter
# (used by PyTorch only with momentum=None; Keras' BatchNormalization has no counterpart).
IGNORED_TORCH_SUFFIXES = (".num_batches_tracked",)

TORCH_SUFFIXES = (".pth", ".pt")
NPZ_SUFFIX = ".npz"
STATE_DICT_SUFFIXES = (NPZ_SUFFIX,) + TORCH_SUFFIXES


def is_state_dict_file(path) -> bool:
    """Whether ``path`` names a state dict this module reads (``.npz``, ``.pth``, ``.pt``)."""
    return os.fspath(path).endswith(STATE_DICT_SUFFIXES)


def read_state_dict(path) -> Dict[str, np.ndarray]:
    """``{name: array}`` from a ``.npz`` state dict or a ``.pth`` / ``.pt`` checkpoint."""
    path = os.fspath(path)
    if path.endswith(NPZ_SUFFIX):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.endswith(TORCH_SUFFIXES):
        return read_torch_checkpoint(path)
    raise ValueError(f"{path!r} is not a state dict file; expected one of {list(STATE_DICT_SUFFIXES)}")


def state_dict_channels(state) -> dict:
    """``in_channels`` / ``num_classes`` of a released-code state dict (``None`` when
    the stem or head tensor is missing)."""
    clean = _clean_state_dict(state)
    stem = clean.get("Unet.InitConv.conv.weight")
    head = clean.get("endconv.weight")
    return {
        "in_channels": int(stem.shape[1]) if stem is not None and stem.ndim == 5 else None,
        "num_classes": int(head.shape[0]) if head is not None and head.ndim == 5 else None,
    }


def read_torch_checkpoint(path) -> Dict[str, np.ndarray]:
    """A released-code ``.pth`` / ``.pt`` checkpoint as ``{name: numpy array}``.

    Reads with ``torch.load(..., map_location="cpu", weights_only=True)`` (no pickled
    code runs). Accepts a bare state dict or a training checkpoint holding one under
    ``"state_dict"`` (the released code's ``{"epoch", "state_dict", "optim_dict"}``),
    ``"model"`` or ``"net"``; non-tensor entries are dropped.
    """
    try:
        import torch  # lazy: torch is the optional extra "torch", needed only here
    except ImportError as err:
        raise ImportError(
            f"Reading the PyTorch checkpoint {os.fspath(path)!r} needs torch: "
            'pip install "missu-keras[torch]" (or convert it to a .npz state dict '
            f"elsewhere). ({err})"
        ) from err
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Could not read {os.fspath(path)!r} with torch.load(weights_only=True): {err}. "
            "Expected a state dict of the released MISSU/TransBTS code"
        ) from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(
            f"{os.fspath(path)!r} holds a {type(obj).__name__}; expected a state dict "
            "({name: tensor}) or a checkpoint with one under 'state_dict'"
        )
    state = {str(k): v.detach().cpu().numpy() for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{os.fspath(path)!r} holds no tensors; expected a state dict")
    return state


def _clean_state_dict(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    clean = {}
    for key, value in state.items():
        name = key
        for prefix in ("state_dict/", "module."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in ("input", "output"):
            continue
        clean[name] = np.asarray(value)
    return clean


def _torch_layout(keras_layer, weight_name, array):
    """PyTorch layout -> Keras layout for one tensor."""
    if isinstance(keras_layer, (layers.Conv3D, layers.Conv3DTranspose)) and weight_name == "weight":
        # Conv3d (out, in, kH, kW, kD) -> (kH, kW, kD, in, out);
        # ConvTranspose3d (in, out, kH, kW, kD) -> (kH, kW, kD, out, in).
        return np.transpose(array, (2, 3, 4, 1, 0))
    if isinstance(keras_layer, layers.Dense) and weight_name == "weight":
        return array.T
    return array


_TORCH_NAMES = {
    layers.Conv3D: ("weight", "bias"),
    layers.Conv3DTranspose: ("weight", "bias"),
    layers.Dense: ("weight", "bias"),
    layers.GroupNormalization: ("weight", "bias"),
    layers.LayerNormalization: ("weight", "bias"),
    layers.BatchNormalization: ("weight", "bias", "running_mean", "running_var"),
}


def _pairs(backbone) -> List[Tuple[object, str]]:
    """(Keras leaf layer, PyTorch module prefix) for every weight-carrying layer."""
    pairs = []
    msf_in_output = backbone.config.msf_mode == "ms_output"
    for layer in backbone.layers:
        name = layer.name
        if isinstance(layer, InitConv):
            pairs.append((layer.conv, "Unet.InitConv.conv"))
        elif isinstance(layer, EncoderBlock):
            torch = "Unet.EnBlock" + name[len("enblock"):]
            pairs += [(layer.norm1, f"{torch}.bn1"), (layer.conv1, f"{torch}.conv1"),
                      (layer.norm2, f"{torch}.bn2"), (layer.conv2, f"{torch}.conv2")]
        elif isinstance(layer, DownSample):
            pairs.append((layer.conv, "Unet.EnDown" + name[len("endown"):] + ".conv"))
        elif isinstance(layer, Bottleneck):
            pairs += [(layer.bn, "bn"), (layer.conv, "conv_x")]
        elif isinstance(layer, PositionEmbedding):
            pairs.append((layer, "position_encoding"))
        elif isinstance(layer, TransformerLayer):
            i = int(name.rsplit("_", 1)[1])
            attn, ffn = f"transformer.net.{2 * i}.fn", f"transformer.net.{2 * i + 1}.fn"
            pairs += [(layer.norm1, f"{attn}.norm"), (layer.qkv, f"{attn}.fn.qkv"),
                      (layer.proj, f"{attn}.fn.proj"), (layer.norm2, f"{ffn}.norm"),
                      (layer.fc1, f"{ffn}.fn.net.0"), (layer.fc2, f"{ffn}.fn.net.3")]
        elif isinstance(layer, DeBlock):
            if name.startswith("decoder_bottleneck"):
                torch = "Enblock8_" + name[len("decoder_bottleneck"):]
            else:
                torch = "DeBlock" + name[len("deblock"):]
            pairs += [(layer.conv1, f"{torch}.conv1"), (layer.bn1, f"{torch}.bn1"),
                      (layer.conv2, f"{torch}.conv2"), (layer.bn2, f"{torch}.bn2")]
        elif isinstance(layer, UpCat):
            torch = "DeUp" + name[len("deup"):]
            pairs += [(layer.conv1, f"{torch}.conv1"), (layer.conv2, f"{torch}.conv2"),
                      (layer.conv3, f"{torch}.conv3")]
        elif isinstance(layer, layers.Conv3D) and name == "endconv":
            pairs.append((layer, "endconv"))
        elif isinstance(layer, (MultiScaleFusion, PyramidFusion)) and not msf_in_output:
            continue  # training-only, randomly initialised; not in released checkpoints
        elif layer.weights:
            raise ValueError(
                f"Layer {name!r} ({type(layer).__name__}) has no counterpart in the released "
                "PyTorch code (MSF weights are not part of the released checkpoints)"
            )
    return pairs


def load_torch_state_dict(backbone, state_dict: Dict[str, np.ndarray]) -> None:
    """Copies a released-code state dict into ``backbone`` (a built `MISSUBackbone`).

    Raises ``ValueError`` naming the tensor and both shapes on a mismatch, or the
    missing tensor names; tensors the network does not use are ignored with a warning
    (except the two known unused ones and BatchNorm's ``num_batches_tracked`` counters,
    ignored silently).
    """
    state = _clean_state_dict(state_dict)
    used = set()
    missing = []
    assignments = []
    for keras_layer, prefix in _pairs(backbone):
        if isinstance(keras_layer, PositionEmbedding):
            names = [("position_embeddings", f"{prefix}.position_embeddings")]
            variables = [keras_layer.position_embeddings]
        else:
            torch_names = next(_TORCH_NAMES[k] for k in type(keras_layer).__mro__ if k in _TORCH_NAMES)
            variables = list(keras_layer.weights)
            names = [(n, f"{prefix}.{n}") for n in torch_names[: len(variables)]]
        for variable, (short, full) in zip(variables, names):
            if full not in state:
                missing.append(full)
                continue
            value = _torch_layout(keras_layer, short, state[full])
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Shape mismatch for {full!r}: checkpoint has {tuple(state[full].shape)} "
                    f"(PyTorch layout), giving {tuple(value.shape)} in Keras layout, but "
                    f"{variable.path!r} expects {tuple(variable.shape)}"
                )
            assignments.append((variable, value))
            used.add(full)
    if missing:
        raise ValueError(
            f"{len(missing)} tensors missing from the checkpoint: {missing[:20]}"
            + (" ..." if len(missing) > 20 else "")
        )
    unused = sorted(k for k in state if k not in used and not k.startswith(IGNORED_TORCH_PREFIXES)
                    and not k.endswith(IGNORED_TORCH_SUFFIXES))
    if unused:
        warnings.warn(f"Ignored {len(unused)} checkpoint tensors the network does not use: {unused[:20]}")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))

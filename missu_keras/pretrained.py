"""`load_pretrained`: the one entry point for ready-to-predict MISSU models.

``weights`` may be ``None`` (random initialisation), a Keras ``.weights.h5`` saved from
a `MISSU` or from its inference model, or an ``.npz`` state dict in the released
PyTorch code's names and layouts (``Unet.EnBlock2_1.conv1.weight``, ...; keys may carry
a ``state_dict/`` or ``module.`` prefix).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Iterable, List, Tuple

import numpy as np
from keras import layers

from missu_keras.layers import (Bottleneck, DeBlock, DownSample, EncoderBlock, InitConv,
                                MultiScaleFusion, PositionEmbedding, PyramidFusion,
                                TransformerLayer, UpCat)
from missu_keras.models import MISSU

# Tensors of the released code that do not reach the output (an unused linear
# encoding and a final LayerNorm whose output the decoder never reads).
IGNORED_TORCH_PREFIXES = ("linear_encoding.", "pre_head_ln.")


def load_pretrained(preset, weights=None, **config_overrides):
    """Builds preset ``preset`` (with configuration overrides) and returns its inference
    model (``image -> probabilities``, no MSF weights unless ``msf_mode="ms_output"``).

    Args:
        preset: a name from `missu_keras.list_presets()`.
        weights: ``None``, a path to a ``.weights.h5`` or a PyTorch-layout ``.npz``.
        **config_overrides: any `missu_keras.MISSUConfig` name, e.g. ``image_size=32``.

    Example:

    >>> import numpy as np, missu_keras
    >>> model = missu_keras.load_pretrained("tiny", weights=None, image_size=32)
    >>> model.predict(np.zeros((1, 32, 32, 32, 4), "float32"), verbose=0).shape
    (1, 32, 32, 32, 4)
    """
    model = MISSU.from_preset(preset, **config_overrides)
    inference = model.inference_model()
    if weights is None:
        return inference
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"weights file not found: {path!r}; expected None, a .weights.h5 or a "
            "PyTorch-layout .npz state dict"
        )
    if path.endswith(".weights.h5"):
        _load_keras_weights(model, inference, path)
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
        load_torch_state_dict(model.backbone, state)
    else:
        raise ValueError(
            f"Unsupported weights file {path!r}; expected a '.weights.h5' or a PyTorch "
            "state dict saved as '.npz'"
        )
    return inference


def _load_strict(target, path):
    """``load_weights`` that fails instead of warning when part of the file does not fit
    (Keras only warns and keeps fresh weights for unmatched containers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target.load_weights(path)
    problems = [str(w.message) for w in caught if "Skipping" in str(w.message)
                or "mismatch" in str(w.message).lower()]
    if problems:
        raise ValueError(problems[0])


def _load_keras_weights(model, inference, path):
    try:
        _load_strict(model, path)
        return
    except Exception as training_error:  # saved from the inference model instead?
        try:
            _load_strict(inference, path)
        except Exception as inference_error:
            raise ValueError(
                f"Could not load {path!r} into the training model ({training_error}) nor "
                f"into the inference model ({inference_error}); check that the preset "
                "and configuration overrides match the ones the weights were saved with"
            ) from inference_error


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
    (except the two known unused ones, ignored silently).
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
            torch_names = _TORCH_NAMES[type(keras_layer)]
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
    unused = sorted(k for k in state if k not in used and not k.startswith(IGNORED_TORCH_PREFIXES))
    if unused:
        warnings.warn(f"Ignored {len(unused)} checkpoint tensors the network does not use: {unused[:20]}")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))

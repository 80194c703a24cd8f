"""`load_pretrained`: the one entry point for ready-to-predict MISSU models, the
Keras Applications way.

``load_pretrained(preset, weights=...)`` builds a registered preset (`brats`,
`chaos`, `tiny`; `missu_keras.list_presets`) with its preprocessing contract, or reads
a saved preset folder (`missu_keras.save_preset`), and fills it with ``weights``:

- ``None``: random initialisation;
- ``"published"``: the preset's published weights, downloaded once through
  ``keras.utils.get_file`` into the Keras cache and checked against their sha256
  (no MISSU Keras weights are published yet: every preset says so and lists what
  to pass instead);
- a Keras ``.weights.h5`` saved from a `MISSU` or from its inference model;
- a ``.keras`` file (a saved `MISSU` or inference model) or a saved preset folder;
- a state dict of the authors' released PyTorch code, as ``.npz`` or as the
  ``.pth`` / ``.pt`` checkpoint itself (read with ``torch.load(weights_only=True)``;
  ``pip install "missu-keras[torch]"``). Names like ``Unet.EnBlock2_1.conv1.weight``,
  PyTorch layouts; keys may carry a ``state_dict/`` or ``module.`` prefix.

>>> import missu_keras
>>> missu_keras.load_pretrained("brats", weights="published")
Traceback (most recent call last):
...
ValueError: No published weights for preset 'brats': no MISSU Keras weights have been released, so the registry holds no URL for it. Pass instead weights=None (random initialisation), a '.weights.h5' file, a '.keras' file, a saved preset folder (missu_keras.save_preset), a PyTorch-layout '.npz' state dict, or a '.pth'/'.pt' checkpoint of the released PyTorch code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from keras import layers

from missu_keras.layers import (Bottleneck, DeBlock, DownSample, EncoderBlock, InitConv,
                                MultiScaleFusion, PositionEmbedding, PyramidFusion,
                                TransformerLayer, UpCat)
from missu_keras.models import MISSU
from missu_keras.presets import (get_preset_config, get_preset_preprocessing,
                                 get_preset_weights, list_presets)

# Tensors of the released code that do not reach the output (an unused linear
# encoding and a final LayerNorm whose output the decoder never reads).
IGNORED_TORCH_PREFIXES = ("linear_encoding.", "pre_head_ln.")
# Buffers every PyTorch checkpoint carries that are not weights: BatchNorm's step counter
# (used by PyTorch only with momentum=None; Keras' BatchNormalization has no counterpart).
IGNORED_TORCH_SUFFIXES = (".num_batches_tracked",)

# ``weights`` tag for a preset's published weights (Keras Applications' "imagenet").
PUBLISHED = "published"
# Where downloads go, under the Keras cache folder (``~/.keras`` or ``$KERAS_HOME``).
CACHE_SUBDIR = os.path.join("models", "missu_keras")

WEIGHT_SOURCES = (
    "weights=None (random initialisation), a '.weights.h5' file, a '.keras' file, a "
    "saved preset folder (missu_keras.save_preset), a PyTorch-layout '.npz' state dict, "
    "or a '.pth'/'.pt' checkpoint of the released PyTorch code"
)
TORCH_SUFFIXES = (".pth", ".pt")


def load_pretrained(preset, weights=None, *, cache_dir=None, training_model=False,
                    **config_overrides):
    """Builds ``preset`` (with configuration overrides), loads ``weights`` and returns
    its inference model (``image -> probabilities``, no MSF weights unless
    ``msf_mode="ms_output"``).

    Args:
        preset: a name from `missu_keras.list_presets()`, or a saved preset folder
            (`missu_keras.save_preset`; its configuration and weights are used).
        weights: ``None``, ``"published"``, or a path to a ``.weights.h5``, ``.keras``,
            saved preset folder, PyTorch-layout ``.npz`` or released-code ``.pth`` /
            ``.pt`` checkpoint (see the module docstring).
        cache_dir: where ``"published"`` weights are cached (default: the Keras cache,
            ``~/.keras`` or ``$KERAS_HOME``), under ``models/missu_keras``.
        training_model: return the `MISSU` itself (it holds the configuration, the
            preprocessing contract and ``inference_model()``) instead of its
            inference model, e.g. to export it or train on.
        **config_overrides: any `missu_keras.MISSUConfig` name, e.g. ``image_size=32``,
            or ``preprocessing`` (a `missu_keras.data.PreprocessingConfig` dict).

    Raises:
        ValueError: unknown preset (lists them), unsupported ``weights``, a hash
            mismatch, a checkpoint whose ``in_channels`` / ``num_classes`` (or any
            tensor shape) does not fit the configuration.
        FileNotFoundError: ``weights`` or the preset folder does not exist.
        ConnectionError: published weights cannot be downloaded and none are cached.
        ImportError: a ``.pth`` / ``.pt`` checkpoint without torch installed.

    Example:

    >>> import numpy as np, missu_keras
    >>> model = missu_keras.load_pretrained("tiny", weights=None, image_size=32)
    >>> model.predict(np.zeros((1, 32, 32, 32, 4), "float32"), verbose=0).shape
    (1, 32, 32, 32, 4)
    """
    model = _load_missu(preset, weights, cache_dir, dict(config_overrides))
    return model if training_model else model.inference_model()


# ---------------------------------------------------------------- dispatching --------

def _is_pathlike(value) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and (
        os.sep in value or value.startswith(".") or os.path.exists(value)))


def _load_missu(preset, weights, cache_dir, overrides) -> MISSU:
    from missu_keras import saving

    ref = os.fspath(preset) if isinstance(preset, os.PathLike) else preset
    if not isinstance(ref, str):
        raise ValueError(
            f"preset must be a preset name {list_presets()} or a saved preset folder; "
            f"received {type(preset).__name__}"
        )
    if ref not in list_presets():
        if saving.is_preset_dir(ref):
            if weights is not None:
                raise ValueError(
                    f"preset {ref!r} is a saved preset folder, which carries its own weights; "
                    f"pass weights=None (received weights={weights!r})"
                )
            return _from_preset_dir(ref, overrides, expected=None)
        if _is_pathlike(ref):
            what = ("is not a saved preset folder (no config.json)" if os.path.exists(ref)
                    else "not found")
            raise FileNotFoundError(
                f"preset folder {what}: {ref!r}; expected a folder written by "
                f"missu_keras.save_preset (with {list(saving.PRESET_FILES)}) or a preset "
                f"name {list_presets()}"
            )
        raise ValueError(
            f"Unknown preset {ref!r}. Accepted presets: {list_presets()}, or a saved preset "
            "folder (missu_keras.save_preset)"
        )

    expected = _expected(ref, overrides)
    if weights is None:
        return _build(ref, overrides)
    if isinstance(weights, str) and weights == PUBLISHED:
        path = download_published_weights(ref, cache_dir=cache_dir)
        return _from_weights_file(ref, overrides, expected, path)
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, {PUBLISHED!r} or a path; received "
            f"{type(weights).__name__}. Accepted: {WEIGHT_SOURCES}"
        )
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"weights file not found: {path!r}; expected {PUBLISHED!r} or {WEIGHT_SOURCES}"
        )
    if os.path.isdir(path):
        if not saving.is_preset_dir(path):
            raise FileNotFoundError(
                f"weights folder {path!r} is not a saved preset folder: it has no "
                f"{saving.CONFIG_FILE} (missu_keras.save_preset writes {list(saving.PRESET_FILES)})"
            )
        return _from_preset_dir(path, overrides, expected=expected)
    if path.endswith(".keras"):
        return _from_keras_file(path, ref, overrides, expected)
    return _from_weights_file(ref, overrides, expected, path)


def _expected(preset, overrides) -> dict:
    config = get_preset_config(preset)
    config.update({k: v for k, v in overrides.items() if k != "preprocessing"})
    return {"in_channels": config["in_channels"], "num_classes": config["num_classes"],
            "preset": preset}


def _check_compatible(source: str, found: dict, expected: Optional[dict]) -> None:
    """``found``: ``{"in_channels": c, "num_classes": k}`` read from ``source`` (values
    may be ``None`` when unknown)."""
    if expected is None:
        return
    bad = [name for name in ("in_channels", "num_classes")
           if found.get(name) is not None and int(found[name]) != int(expected[name])]
    if bad:
        got = ", ".join(f"{n}={found[n]}" for n in bad)
        want = ", ".join(f"{n}={expected[n]}" for n in bad)
        matching = [p for p in list_presets()
                    if all(get_preset_config(p)[n] == found[n] for n in bad)]
        raise ValueError(
            f"Incompatible weights {source}: they have {got}, but preset "
            f"{expected['preset']!r} (with the overrides given) expects {want}. Pass the "
            f"matching configuration (e.g. {', '.join(f'{n}={found[n]}' for n in bad)})"
            + (f" or a preset that fits: {matching}" if matching else "")
        )


def _default_preprocessing(preset, overrides):
    if "preprocessing" in overrides:
        return overrides["preprocessing"]
    config = get_preset_config(preset)
    config.update(overrides)
    size = config["image_size"]
    return get_preset_preprocessing(preset, patch_size=size)


def _build(preset, overrides) -> MISSU:
    overrides = dict(overrides)
    overrides["preprocessing"] = _default_preprocessing(preset, overrides)
    return MISSU.from_preset(preset, **overrides)


# --------------------------------------------------------------- weight sources ------

def _from_weights_file(preset, overrides, expected, path) -> MISSU:
    if path.endswith(".weights.h5"):
        _check_compatible(repr(path), _h5_channels(path), expected)
        model = _build(preset, overrides)
        _load_keras_weights(model, model.inference_model(), path)
        return model
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    elif path.endswith(TORCH_SUFFIXES):
        state = read_torch_checkpoint(path)
    else:
        raise ValueError(
            f"Unsupported weights file {path!r}; expected {PUBLISHED!r} or {WEIGHT_SOURCES}"
        )
    _check_compatible(repr(path), _state_dict_channels(state), expected)
    model = _build(preset, overrides)
    load_torch_state_dict(model.backbone, state)
    return model


def _from_preset_dir(path, overrides, expected) -> MISSU:
    from missu_keras import saving

    config = saving.read_preset_config(path)
    _check_compatible(f"in preset folder {path!r}", config, expected)
    config.update(overrides)
    if "preprocessing" not in overrides:
        config["preprocessing"] = saving.read_preset_preprocessing(path)
    model = MISSU(**config)
    weights = os.path.join(path, saving.WEIGHTS_FILE)
    _load_keras_weights(model, model.inference_model(), weights)
    return model


def _from_keras_file(path, preset, overrides, expected) -> MISSU:
    import keras

    import missu_keras.layers  # noqa: F401  (registers the custom layers)

    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise ValueError(f"Could not read the Keras model file {path!r}: {err}") from err
    if isinstance(loaded, MISSU):
        config = loaded.config.to_dict()
        _check_compatible(repr(path), config, expected)
        if not overrides:
            return loaded
        preprocessing = overrides.get("preprocessing", loaded.preprocessing)
        config.update({k: v for k, v in overrides.items() if k != "preprocessing"})
        model = MISSU(**config, preprocessing=preprocessing)
        _copy_layer_weights(loaded.backbone, model.backbone, path)
        return model
    # An inference model (``MISSU.inference_model()`` saved as .keras): its input and
    # output shapes give the patch size, channels and classes; the rest of the
    # configuration comes from the preset and the overrides.
    try:
        in_shape = tuple(loaded.inputs[0].shape)
        out_shape = tuple(loaded.outputs[0].shape)
    except (AttributeError, IndexError, TypeError) as err:
        raise ValueError(
            f"{path!r} holds a {type(loaded).__name__}, not a MISSU nor a MISSU inference "
            "model"
        ) from err
    if len(in_shape) != 5 or len(out_shape) != 5:
        raise ValueError(
            f"{path!r} holds a model with input {in_shape} and output {out_shape}; expected "
            "a MISSU inference model (batch, H, W, D, C) -> (batch, H, W, D, K)"
        )
    _check_compatible(repr(path), {"in_channels": in_shape[-1], "num_classes": out_shape[-1]},
                      expected)
    overrides = dict(overrides)
    overrides.setdefault("image_size", [int(s) for s in in_shape[1:4]])
    model = _build(preset, overrides)
    _copy_layer_weights(loaded, model.inference_model(), path)
    return model


def _copy_layer_weights(source_model, target_model, path) -> None:
    """Copies every weight-carrying layer of ``source_model`` into the layer of the same
    name in ``target_model``, checking shapes."""
    for layer in source_model.layers:
        if not layer.weights:
            continue
        try:
            target = target_model.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"{path!r}: layer {layer.name!r} has no counterpart in the model built from "
                "the preset and overrides; check msf_mode, num_layers and the other settings"
            ) from None
        values = layer.get_weights()
        shapes = [tuple(v.shape) for v in target.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(
                f"{path!r}: layer {layer.name!r} holds weights of shapes "
                f"{[tuple(v.shape) for v in values]} but the configured model expects "
                f"{shapes}; pass the configuration the file was saved with"
            )
        target.set_weights(values)


def _h5_channels(path) -> dict:
    """``in_channels`` / ``num_classes`` read from a Keras ``.weights.h5`` (``None``
    when the file does not show them)."""
    found = {"in_channels": None, "num_classes": None}
    try:
        import h5py

        with h5py.File(path, "r") as f:
            for prefix in ("backbone/layers/", "layers/"):
                stem = f.get(prefix + "init_conv/conv/vars/0")
                if stem is not None and len(stem.shape) == 5:
                    found["in_channels"] = int(stem.shape[3])
                head = f.get(prefix + "conv3d/vars/0")  # the last 1x1x1 convolution
                if head is not None and len(head.shape) == 5:
                    found["num_classes"] = int(head.shape[4])
                if found["in_channels"] is not None:
                    break
    except (ImportError, OSError, KeyError, TypeError):
        pass  # the strict load below still fails on any mismatch
    return found


def _state_dict_channels(state) -> dict:
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
        import torch
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


# ------------------------------------------------------------------ downloads --------

def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_published_weights(preset: str, cache_dir=None) -> str:
    """Path of preset ``preset``'s published weights, downloaded once into the Keras
    cache (``keras.utils.get_file``) and checked against the registered sha256.

    Raises ``ValueError`` when nothing is published for the preset (the case for every
    preset today) or on a hash mismatch (the bad file is removed from the cache), and
    ``ConnectionError`` when the file cannot be fetched and no verified copy is cached.
    """
    import keras

    entry = get_preset_weights(preset)
    url, sha256 = entry.get("url"), entry.get("sha256")
    if not url:
        raise ValueError(
            f"No published weights for preset {preset!r}: no MISSU Keras weights have been "
            f"released, so the registry holds no URL for it. Pass instead {WEIGHT_SOURCES}."
        )
    if not sha256:
        raise ValueError(
            f"The registry entry of preset {preset!r} has a URL ({url}) but no sha256; "
            "refusing to download unverified weights"
        )
    fname = os.path.basename(url.split("?", 1)[0]) or f"missu_{preset}.weights.h5"
    if cache_dir is None:  # Keras' own default: $KERAS_HOME, else ~/.keras
        cache_dir = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    cache_dir = os.path.expanduser(os.fspath(cache_dir))
    try:
        os.makedirs(cache_dir, exist_ok=True)  # get_file only uses folders that exist
    except OSError:
        pass
    if not os.access(cache_dir, os.W_OK):
        cache_dir = os.path.join(tempfile.gettempdir(), ".keras")  # get_file does the same
    target = os.path.join(cache_dir, CACHE_SUBDIR, fname)
    try:
        path = keras.utils.get_file(fname=fname, origin=url, file_hash=sha256,
                                    hash_algorithm="sha256", cache_subdir=CACHE_SUBDIR,
                                    cache_dir=cache_dir)
    except ValueError as err:
        if "hash" not in str(err):
            raise
        actual = _sha256(target) if os.path.isfile(target) else "unknown"
        if os.path.isfile(target):
            os.remove(target)  # never leave a bad file where the next call would find it
        raise ValueError(
            f"sha256 mismatch for the published weights of preset {preset!r} from {url}: "
            f"expected {sha256}, downloaded {actual}. The file was removed from the cache "
            f"({target}); try again, or pass a local file as weights=..."
        ) from None
    except Exception as err:  # get_file raises a bare Exception on a failed fetch
        raise ConnectionError(
            f"Cannot download the published weights of preset {preset!r} from {url} ({err}) "
            f"and no verified copy is cached at {target}. Connect once to fetch them, or "
            f"download the file elsewhere and pass weights='path/to/{fname}'."
        ) from err
    return path


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

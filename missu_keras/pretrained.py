"""`load_pretrained`: ready-to-predict MISSU models, the Keras Applications way.

``load_pretrained(preset, weights="published")`` builds a preset with `MISSU.from_preset`
(a registered name, `missu_keras.list_presets`, or a saved preset folder / ``.keras``
file / ``missu-keras train`` output folder) and fills it with ``weights``:

- ``"published"`` (the default): the preset's published weights, resolved through the
  weights registry (the built-in table plus a user registry named by ``registry=`` or
  ``$MISSU_KERAS_REGISTRY``; see `missu_keras.presets`), downloaded once through
  ``keras.utils.get_file`` into the Keras cache and checked against their sha256. For a
  folder or ``.keras`` file: the weights it carries. Where nothing is published the
  error says what to pass instead and how to publish (`missu_keras.publish`): it never
  returns an untrained network silently;
- ``None``: random initialisation (for a preset name; a folder or file carries its
  own weights, so ``None`` is refused there rather than guessed);
- a Keras ``.weights.h5`` saved from a `MISSU` or from its inference model;
- a ``.keras`` file (a saved `MISSU` or inference model) or a saved preset folder;
- a state dict of the authors' released PyTorch code, as ``.npz`` or as the ``.pth`` /
  ``.pt`` checkpoint itself (`missu_keras.weights.torch_convert`; ``pip install
  "missu-keras[torch]"`` for ``.pth``).

>>> import missu_keras
>>> missu_keras.load_pretrained("brats", registry="")
Traceback (most recent call last):
...
ValueError: No published weights for preset 'brats': the built-in table has no URL for it and no user registry is set (registry=..., or $MISSU_KERAS_REGISTRY). Pass instead weights=None (random initialisation), a '.weights.h5' file, a '.keras' file, a saved preset folder (model.save_to_preset / missu_keras.save_preset), a PyTorch-layout '.npz' state dict, or a '.pth'/'.pt' checkpoint of the released PyTorch code. To publish weights you trained: `missu-keras publish RUN --preset brats --registry FILE` (Python: missu_keras.publish(RUN, 'brats', FILE)), then set MISSU_KERAS_REGISTRY=FILE or pass registry=FILE.
"""

from __future__ import annotations

import os
from typing import Optional

from missu_keras.models import MISSU
from missu_keras.presets import get_preset_config, list_presets
from missu_keras.weights import preset_io
from missu_keras.weights.download import (CACHE_SUBDIR, PUBLISHED, WEIGHT_SOURCES,  # noqa: F401
                                          download_published_weights)
from missu_keras.weights.publishing import publish  # noqa: F401  (public here too)
from missu_keras.weights.torch_convert import (IGNORED_TORCH_PREFIXES,  # noqa: F401
                                               IGNORED_TORCH_SUFFIXES, TORCH_SUFFIXES,
                                               is_state_dict_file, load_torch_state_dict,
                                               read_state_dict, read_torch_checkpoint,
                                               state_dict_channels)


def load_pretrained(preset, weights=PUBLISHED, *, registry: Optional[str] = None,
                    cache_dir=None, training_model: bool = False, **config_overrides):
    """Builds ``preset`` (with configuration overrides), loads ``weights`` and returns
    its inference model (``image -> probabilities``, no MSF weights unless
    ``msf_mode="ms_output"``).

    Args:
        preset: a name from `missu_keras.list_presets()` (or of the user registry), a
            saved preset folder (`MISSU.save_to_preset`), a ``.keras`` file of a
            `MISSU`, or a ``missu-keras train`` output folder.
        weights: ``"published"`` (default), ``None`` (random), or a path to a
            ``.weights.h5``, ``.keras``, saved preset folder, PyTorch-layout ``.npz`` or
            released-code ``.pth`` / ``.pt`` checkpoint (see the module docstring).
        registry: a user weights registry (JSON / YAML file or URL) for
            ``"published"``; default ``$MISSU_KERAS_REGISTRY``, ``""`` for none.
        cache_dir: where downloaded weights are cached (default: the Keras cache,
            ``~/.keras`` or ``$KERAS_HOME``), under ``models/missu_keras``.
        training_model: return the `MISSU` itself (it holds the configuration, the
            preprocessing contract and ``inference_model()``) instead of its
            inference model, e.g. to export it or train on.
        **config_overrides: any `missu_keras.MISSUConfig` name, e.g. ``image_size=32``,
            or ``preprocessing`` (a `missu_keras.data.PreprocessingConfig` or its dict).

    Raises:
        ValueError: unknown preset (lists them), unsupported ``weights``, nothing
            published (says how to publish), a hash mismatch, a checkpoint whose
            ``in_channels`` / ``num_classes`` (or any tensor shape) does not fit the
            configuration.
        FileNotFoundError: ``weights``, the preset folder or the registry does not exist.
        ConnectionError: published weights cannot be downloaded and none are cached.
        ImportError: a ``.pth`` / ``.pt`` checkpoint without torch installed.

    Example:

    >>> import numpy as np, missu_keras
    >>> model = missu_keras.load_pretrained("tiny", weights=None, image_size=32)
    >>> model.predict(np.zeros((1, 32, 32, 32, 4), "float32"), verbose=0).shape
    (1, 32, 32, 32, 4)
    """
    _check_weights_argument(weights)
    model = load_missu(preset, weights, registry=registry, cache_dir=cache_dir,
                       overrides=dict(config_overrides))
    return model if training_model else model.inference_model()


def load_missu(preset, weights=PUBLISHED, *, registry=None, cache_dir=None,
               overrides: Optional[dict] = None) -> MISSU:
    """`load_pretrained` returning the `MISSU` (the loader behind `load_pretrained`,
    `missu_keras.prediction.load_segmenter` and `missu_keras.publish`)."""
    overrides = dict(overrides or {})
    ref = os.fspath(preset) if isinstance(preset, os.PathLike) else preset
    if not isinstance(ref, str):
        raise ValueError(f"preset must be {preset_io.accepted_forms()}; received "
                         f"{type(preset).__name__}")
    if ref.endswith(".keras") or os.path.isdir(ref) or (
            ref not in list_presets() and preset_io.looks_like_path(ref)):
        return _from_self_describing(ref, weights, overrides)
    if weights is None:
        return MISSU.from_preset(ref, **overrides)
    if weights == PUBLISHED:
        path = download_published_weights(ref, cache_dir=cache_dir, registry=registry)
        if ref not in list_presets():  # a name only the user registry knows
            return _from_registry_only_file(ref, path, overrides)
        return _from_weights_path(ref, path, overrides)
    return _from_weights_path(ref, os.fspath(weights), overrides)


def _check_weights_argument(weights) -> None:
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, {PUBLISHED!r} or a path; received "
            f"{type(weights).__name__}. Accepted: {PUBLISHED!r} or {WEIGHT_SOURCES}"
        )


# ------------------------------------------------- folders and files as the preset --

def _from_self_describing(ref: str, weights, overrides: dict) -> MISSU:
    """A folder / ``.keras`` / train run as ``preset``: it carries its own weights.
    ``weights=None`` is refused: it meant "the folder's weights" before ``"published"``
    became the default, and "random" for a name, so either reading could be wrong."""
    if weights != PUBLISHED:
        raise ValueError(
            f"preset {ref!r} is a saved model (folder or .keras file), which carries its own "
            f"weights; pass weights={PUBLISHED!r} (the default) to load them (received "
            f"weights={weights!r}). For its configuration with random weights: "
            f"MISSU.from_config(MISSU.from_preset({ref!r}).get_config())"
        )
    return MISSU.from_preset(ref, **overrides)


def _from_registry_only_file(name: str, path: str, overrides: dict) -> MISSU:
    if not path.endswith(".keras"):
        raise ValueError(
            f"preset {name!r} is not a built-in preset ({list_presets()}), so its published "
            f"file must be a '.keras' MISSU (it carries the configuration); the registry "
            f"points at {path!r}"
        )
    return MISSU.from_preset(path, **overrides)


# --------------------------------------------------- weights for a named preset -----

def _expected(preset: str, overrides: dict) -> dict:
    config = get_preset_config(preset)
    config.update({k: v for k, v in overrides.items() if k != "preprocessing"})
    return {"in_channels": config["in_channels"], "num_classes": config["num_classes"],
            "preset": preset}


def _from_weights_path(preset: str, path: str, overrides: dict) -> MISSU:
    expected = _expected(preset, overrides)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"weights file not found: {path!r}; expected {PUBLISHED!r} or {WEIGHT_SOURCES}"
        )
    if os.path.isdir(path):
        if not preset_io.is_preset_dir(path):
            raise FileNotFoundError(
                f"weights folder {path!r} is not a saved preset folder: it has no "
                f"{preset_io.CONFIG_FILE} (model.save_to_preset writes "
                f"{list(preset_io.PRESET_FILES)})"
            )
        preset_io.check_compatible(f"in preset folder {path!r}",
                                   preset_io.read_preset_config(path), expected)
        return MISSU.from_preset(path, **overrides)
    if path.endswith(".keras"):
        return _from_keras_weights(preset, path, overrides, expected)
    if path.endswith(".weights.h5"):
        preset_io.check_compatible(repr(path), preset_io.h5_channels(path), expected)
        model = MISSU.from_preset(preset, **overrides)
        preset_io.load_keras_weights(model, path)
        return model
    if is_state_dict_file(path):
        state = read_state_dict(path)
        preset_io.check_compatible(repr(path), state_dict_channels(state), expected)
        model = MISSU.from_preset(preset, **overrides)
        load_torch_state_dict(model.backbone, state)
        return model
    raise ValueError(f"Unsupported weights file {path!r}; expected {PUBLISHED!r} or {WEIGHT_SOURCES}")


def _from_keras_weights(preset: str, path: str, overrides: dict, expected: dict) -> MISSU:
    loaded = preset_io.load_keras_file(path)
    if isinstance(loaded, MISSU):
        preset_io.check_compatible(repr(path), loaded.config.to_dict(), expected)
        return preset_io.with_overrides(MISSU, loaded, overrides, path)
    # An inference model (``MISSU.inference_model()`` saved as .keras): its input and
    # output shapes give the patch size, channels and classes; the rest of the
    # configuration comes from the preset and the overrides.
    try:
        in_shape = tuple(loaded.inputs[0].shape)
        out_shape = tuple(loaded.outputs[0].shape)
    except (AttributeError, IndexError, TypeError) as err:
        raise ValueError(
            f"{path!r} holds a {type(loaded).__name__}, not a MISSU nor a MISSU inference model"
        ) from err
    if len(in_shape) != 5 or len(out_shape) != 5:
        raise ValueError(
            f"{path!r} holds a model with input {in_shape} and output {out_shape}; expected "
            "a MISSU inference model (batch, H, W, D, C) -> (batch, H, W, D, K)"
        )
    preset_io.check_compatible(
        repr(path), {"in_channels": in_shape[-1], "num_classes": out_shape[-1]}, expected)
    overrides = dict(overrides)
    overrides.setdefault("image_size", [int(s) for s in in_shape[1:4]])
    model = MISSU.from_preset(preset, **overrides)
    preset_io.copy_layer_weights(loaded, model.inference_model(), path)
    return model

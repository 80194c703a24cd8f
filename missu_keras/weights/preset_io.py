"""`MISSU.from_preset` and `MISSU.save_to_preset` (keras-hub's preset folders).

A preset folder holds a trained `MISSU` as four plain files:

- ``config.json``: ``{"module", "class_name", "registered_name", "name", "config"}``,
  where ``config`` is the `missu_keras.MISSUConfig` (every constructor argument but the
  preprocessing);
- ``model.weights.h5``: the training model's weights (MSF included, so training can go
  on from them);
- ``preprocessing.json``: the preprocessing contract
  (`missu_keras.data.PreprocessingConfig.to_dict`), ``null`` when the model has none;
- ``metadata.json``: versions, parameter counts, date.

`from_preset` reads what a user has: a preset name (a randomly initialised network with
the preset's configuration and preprocessing), a preset folder, a ``.keras`` file of a
`MISSU`, or a ``missu-keras train`` output folder (its best checkpoint, else the last).
The functions take the model class as an argument, so this module never imports
`missu_keras.models` (which imports it).

>>> import tempfile
>>> from missu_keras.models import MISSU
>>> model = MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> folder = model.save_to_preset(tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'metadata.json', 'model.weights.h5', 'preprocessing.json']
>>> MISSU.from_preset(folder).get_config() == model.get_config()
True
"""

from __future__ import annotations

import datetime
import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import h5py
import keras
import tensorflow as tf

import missu_keras.layers  # noqa: F401  (registers the custom layers for .keras files)
from missu_keras.config import MISSUConfig
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.files import atomic_path, write_json_atomic
from missu_keras.presets import get_preset_config, get_preset_preprocessing, list_presets
from missu_keras.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
PREPROCESSING_FILE = "preprocessing.json"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, METADATA_FILE)
# Optional beside a model (a preset, run or fold folder): its post-processing steps
# (`missu_keras.inference.postprocessing`), read by the loaders of `missu_keras.prediction`.
POSTPROCESSING_FILE = "postprocessing.json"
FORMAT_VERSION = 1

# A ``missu-keras train`` output folder: its settings, then its checkpoints by preference.
RUN_CONFIG_FILE = "config.json"
RUN_CHECKPOINTS = (os.path.join("checkpoints", "best.keras"),
                   os.path.join("checkpoints", "last.keras"))

ACCEPTED_FORMS = ("a preset name {names}, a saved preset folder (model.save_to_preset), a "
                  "'.keras' file of a MISSU, or a missu-keras train output folder")


def accepted_forms() -> str:
    return ACCEPTED_FORMS.format(names=list_presets())


# ------------------------------------------------------------------------ writing ----

def save_to_preset(model, preset_dir: Union[str, os.PathLike], postprocessing=None) -> Path:
    """Writes ``model`` (a `MISSU`) as a preset folder, each file atomically; returns
    the folder. The folder is created if needed; the four preset files in it are
    replaced, other files are left alone. ``postprocessing`` (a
    `missu_keras.inference.PostprocessingConfig` or its dict) is also written, as
    ``postprocessing.json``, which the loaders apply."""
    folder = Path(preset_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"preset_dir {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    write_json_atomic(folder / CONFIG_FILE, {
        "module": "missu_keras",
        "class_name": type(model).__name__,
        "registered_name": keras.saving.get_registered_name(type(model)),
        "name": model.name,
        "config": model.config.to_dict(),
    })
    prep = model.preprocessing
    write_json_atomic(folder / PREPROCESSING_FILE, None if prep is None else prep.to_dict())
    write_json_atomic(folder / METADATA_FILE, _metadata(model))
    if postprocessing is not None:
        plain = postprocessing if isinstance(postprocessing, dict) else postprocessing.to_dict()
        write_json_atomic(folder / POSTPROCESSING_FILE, plain)
    return folder


def _metadata(model) -> dict:
    return {
        "format": "missu_keras preset",
        "format_version": FORMAT_VERSION,
        "missu_keras_version": __version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "parameter_count": int(model.count_params()),
        "inference_parameter_count": int(model.inference_model().count_params()),
        "msf_mode": model.config.msf_mode,
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------ reading ----

def is_preset_dir(path) -> bool:
    """Whether ``path`` is a folder holding a preset's ``config.json`` (a train output
    folder also has one: check `find_run_checkpoint` first)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def _read_stored_config(preset_dir) -> dict:
    folder = Path(preset_dir)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(folder)!r} is not a complete preset folder: missing {missing}; expected "
            f"{list(PRESET_FILES)} as written by model.save_to_preset (missu_keras.save_preset)"
        )
    try:
        stored = json.loads((folder / CONFIG_FILE).read_text())
        dict(stored["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(folder / CONFIG_FILE)!r}: expected a JSON object with a 'config' entry "
            f"(model.save_to_preset), could not read it ({err})"
        ) from None
    if stored.get("class_name", "MISSU") != "MISSU":
        raise ValueError(
            f"{str(folder / CONFIG_FILE)!r} describes a {stored.get('class_name')!r}; "
            "expected a MISSU preset"
        )
    return stored


def read_preset_config(preset_dir) -> dict:
    """The `MISSUConfig` dict stored in a preset folder (checked for its files)."""
    return dict(_read_stored_config(preset_dir)["config"])


def read_preset_preprocessing(preset_dir) -> Optional[PreprocessingConfig]:
    """The preprocessing contract stored in a preset folder, or ``None``."""
    path = Path(preset_dir) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        return None if stored is None else PreprocessingConfig.from_dict(stored)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r}: expected null or a PreprocessingConfig dict; could not read it ({err})"
        ) from None


def find_run_checkpoint(folder) -> Optional[Path]:
    """The checkpoint of a ``missu-keras train`` output folder (``config.json`` plus
    ``checkpoints/best.keras``, else ``checkpoints/last.keras``), or ``None`` when
    ``folder`` is not one."""
    folder = Path(folder)
    if not (folder / RUN_CONFIG_FILE).is_file():
        return None
    for name in RUN_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    return None


def read_run_preprocessing(folder) -> Optional[PreprocessingConfig]:
    """The preprocessing contract a train output folder's ``config.json`` records."""
    path = Path(folder) / RUN_CONFIG_FILE
    try:
        stored = json.loads(path.read_text()).get("preprocessing")
        return PreprocessingConfig.from_dict(stored) if stored else None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{str(path)!r}: expected the JSON written by missu-keras train with a "
            f"'preprocessing' entry; could not read it ({err})"
        ) from None


def load_keras_file(path) -> keras.Model:
    """Whatever model a ``.keras`` file holds (a `MISSU` or an inference model),
    uncompiled."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" for it
        raise ValueError(
            f"{path!r} is corrupt or not a .keras file: expected a .keras zip archive "
            f"(written by model.save), found {os.path.getsize(path)} bytes that are not one"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a file it cannot read
        raise ValueError(f"Could not read the Keras model file {path!r} (corrupt, or written "
                         f"by another version?): {_first_line(err)}") from err


def _first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line and ``limit`` characters (Keras
    messages can run to pages of layer names and weight values)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


# ------------------------------------------------------------------- from_preset -----

def from_preset(cls, preset, overrides: dict):
    """``cls.from_preset(preset, **overrides)``: see the module docstring."""
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise ValueError(f"preset must be {accepted_forms()}; received {type(preset).__name__}")
    if preset in list_presets():
        return build_from_name(cls, preset, overrides)
    if os.path.isdir(preset):
        checkpoint = find_run_checkpoint(preset)
        if checkpoint is not None:
            return _from_run_folder(cls, preset, checkpoint, overrides)
        if is_preset_dir(preset):
            return from_preset_dir(cls, preset, overrides)
        raise FileNotFoundError(
            f"{preset!r} is not a saved preset folder (no {CONFIG_FILE}) nor a train output "
            f"folder (no {' / '.join(RUN_CHECKPOINTS)}); expected {accepted_forms()}"
        )
    if preset.endswith(".keras"):
        return from_keras_file(cls, preset, overrides)
    if looks_like_path(preset):
        raise FileNotFoundError(
            f"preset folder not found: {preset!r}; expected a folder written by "
            f"model.save_to_preset (with {list(PRESET_FILES)}), or {accepted_forms()}"
        )
    raise ValueError(f"Unknown preset {preset!r}. Accepted presets: {list_presets()}; "
                     f"accepted forms: {accepted_forms()}")


def looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.startswith(".") or os.path.exists(value)


def check_override_names(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(MISSUConfig.field_names()) - {"preprocessing", "name"})
    if unknown:
        raise ValueError(
            f"Unknown configuration names {unknown}; accepted: "
            f"{MISSUConfig.field_names() + ['preprocessing', 'name']}"
        )


def build_from_name(cls, name: str, overrides: dict):
    """A randomly initialised ``cls`` with preset ``name``'s configuration and
    overrides, carrying the preset's preprocessing contract at the model's patch size
    (unless ``preprocessing`` is given, or ``in_channels`` / ``num_classes`` are
    overridden away from the preset's data: then none)."""
    check_override_names(overrides)
    config = get_preset_config(name)
    config.update(overrides)
    if "preprocessing" not in overrides:
        config["preprocessing"] = _preset_preprocessing(name, config)
    return cls(**config)


def _preset_preprocessing(name: str, config: dict) -> Optional[PreprocessingConfig]:
    size = MISSUConfig.from_dict({k: v for k, v in config.items()
                                  if k in MISSUConfig.field_names()}).image_size
    prep = PreprocessingConfig.from_dict(get_preset_preprocessing(name, patch_size=size))
    fits = (prep.num_channels, prep.num_classes) == (config["in_channels"], config["num_classes"])
    return prep if fits else None


def from_preset_dir(cls, folder, overrides: dict):
    """``cls`` with a preset folder's configuration (plus ``overrides``), preprocessing
    (unless overridden) and weights."""
    check_override_names(overrides)
    stored = _read_stored_config(folder)
    config = dict(stored["config"])
    if stored.get("name"):
        config["name"] = stored["name"]
    config.update(overrides)
    if "preprocessing" not in overrides:
        config["preprocessing"] = read_preset_preprocessing(folder)
    model = cls(**config)
    load_keras_weights(model, os.path.join(folder, WEIGHTS_FILE))
    return model


def from_keras_file(cls, path, overrides: dict):
    """The ``cls`` a ``.keras`` file holds; with ``overrides``, a new one built from
    its configuration plus them, given its weights layer by layer."""
    check_override_names(overrides)
    loaded = load_keras_file(path)
    if not isinstance(loaded, cls):
        raise ValueError(
            f"{os.fspath(path)!r} holds a {type(loaded).__name__} ({loaded.name!r}), not a "
            f"{cls.__name__}: it carries no configuration. Load it into a preset with "
            f"load_pretrained(PRESET, weights={os.fspath(path)!r}, **overrides)"
        )
    return with_overrides(cls, loaded, overrides, path)


def with_overrides(cls, model, overrides: dict, path):
    """``model`` itself without ``overrides``; else a new ``cls`` built from its
    configuration plus them, given its weights layer by layer (``path`` names the
    source in errors)."""
    if not overrides:
        return model
    config = model.get_config()
    config.update(overrides)
    rebuilt = cls(**config)
    copy_layer_weights(model.backbone, rebuilt.backbone, path)
    return rebuilt


def _from_run_folder(cls, folder, checkpoint: Path, overrides: dict):
    model = from_keras_file(cls, checkpoint, overrides)
    if model.preprocessing is None:  # checkpoints written before the model held it
        model.preprocessing = read_run_preprocessing(folder)
    return model


# ------------------------------------------------------------------ Keras weights ----

def _load_strict(target, path) -> None:
    """``load_weights`` that fails instead of warning when part of the file does not fit
    (Keras only warns and keeps fresh weights for unmatched containers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target.load_weights(path)
    problems = [str(w.message) for w in caught if "Skipping" in str(w.message)
                or "mismatch" in str(w.message).lower()]
    if problems:
        raise ValueError(problems[0])


def load_keras_weights(model, path) -> None:
    """Loads a ``.weights.h5`` saved from a `MISSU` or from its inference model into
    ``model``, strictly (every tensor must fit)."""
    path = os.fspath(path)
    try:
        _load_strict(model, path)
        return
    except Exception as training_error:  # saved from the inference model instead?
        try:
            _load_strict(model.inference_model(), path)
        except Exception as inference_error:
            raise ValueError(
                f"Could not load {path!r}: it does not fit the model built from the preset "
                f"and overrides: {_mismatch_summary(training_error, inference_error)}; pass "
                "the preset and configuration the weights were saved with"
            ) from inference_error


_SHAPES = re.compile(r"variable\.shape=(\([^)]*\)).*?value\.shape=(\([^)]*\))"
                     r"(?:.*?Target variable: <Variable path=([^,>\s]+))?", re.DOTALL)
_COUNT = re.compile(r"A total of (\d+) objects could not be loaded")


def _mismatch_summary(*errors: BaseException) -> str:
    """The first differing tensor (its path and both shapes) and how many objects did
    not fit, from Keras' load errors (which list every layer and print weight values)."""
    for err in errors:
        text = str(err)
        shapes = _SHAPES.search(text)
        if shapes:
            count = _COUNT.search(text)
            where = shapes.group(3) or "a tensor"
            total = f"{count.group(1)} objects differ; " if count else ""
            return (f"{total}first, {where} has shape {shapes.group(1)} in the model but "
                    f"{shapes.group(2)} in the file")
    return _first_line(errors[0])


def copy_layer_weights(source_model, target_model, path) -> None:
    """Copies every weight-carrying layer of ``source_model`` into the layer of the same
    name in ``target_model``, checking shapes (``path`` names the source in errors)."""
    for layer in source_model.layers:
        if not layer.weights:
            continue
        try:
            target = target_model.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"{os.fspath(path)!r}: layer {layer.name!r} has no counterpart in the model "
                "built from the preset and overrides; check msf_mode, num_layers and the "
                "other settings"
            ) from None
        values = layer.get_weights()
        shapes = [tuple(v.shape) for v in target.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(
                f"{os.fspath(path)!r}: layer {layer.name!r} holds weights of shapes "
                f"{[tuple(v.shape) for v in values]} but the configured model expects "
                f"{shapes}; pass the configuration the file was saved with"
            )
        target.set_weights(values)


def h5_channels(path) -> dict:
    """``in_channels`` / ``num_classes`` read from a Keras ``.weights.h5`` (``None``
    when the file does not show them)."""
    found = {"in_channels": None, "num_classes": None}
    try:
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
    except (OSError, KeyError, TypeError):
        pass  # the strict load still fails on any mismatch
    return found


def h5_holds_msf(path) -> bool:
    """Whether a Keras ``.weights.h5`` holds the MSF branch: saved from a `MISSU`, not
    from its inference model (Keras names the groups after the layer classes)."""
    try:
        with h5py.File(path, "r") as f:
            for prefix in ("backbone/layers/", "layers/"):
                group = f.get(prefix)
                if group is not None and "init_conv" in group:
                    return any(name.startswith("multi_scale_fusion") for name in group)
    except (OSError, KeyError, TypeError):
        pass
    return False


def check_compatible(source: str, found: dict, expected: Optional[dict]) -> None:
    """Refuses weights whose ``in_channels`` / ``num_classes`` (``found``, values may be
    ``None`` when unknown) differ from ``expected`` (``{"in_channels", "num_classes",
    "preset"}``), naming the matching configuration and presets."""
    if expected is None:
        return
    bad = [name for name in ("in_channels", "num_classes")
           if found.get(name) is not None and int(found[name]) != int(expected[name])]
    if not bad:
        return
    got = ", ".join(f"{n}={found[n]}" for n in bad)
    want = ", ".join(f"{n}={expected[n]}" for n in bad)
    matching = [p for p in list_presets() if all(get_preset_config(p)[n] == found[n] for n in bad)]
    raise ValueError(
        f"Incompatible weights {source}: they have {got}, but preset "
        f"{expected['preset']!r} (with the overrides given) expects {want}. Pass the "
        f"matching configuration (e.g. {', '.join(f'{n}={found[n]}' for n in bad)})"
        + (f" or a preset that fits: {matching}" if matching else "")
    )

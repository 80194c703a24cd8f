"""Preset folders (keras-hub's layout): a trained `MISSU` as four plain files.

``save_preset(model, folder)`` writes:

- ``config.json``: ``{"module", "class_name", "registered_name", "config"}``, where
  ``config`` is the `missu_keras.MISSUConfig` (every constructor argument but the
  preprocessing);
- ``model.weights.h5``: the training model's weights (MSF included, so training can
  go on from them);
- ``preprocessing.json``: the preprocessing contract
  (`missu_keras.data.PreprocessingConfig.to_dict`), ``null`` when the model has none;
- ``metadata.json``: versions, parameter counts, date.

``missu_keras.load_pretrained(folder)`` loads it back (its inference model).

>>> import tempfile, missu_keras
>>> model = missu_keras.MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> folder = missu_keras.save_preset(model, tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'metadata.json', 'model.weights.h5', 'preprocessing.json']
>>> missu_keras.load_pretrained(str(folder)).name
'missu_inference'
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Optional, Union

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
PREPROCESSING_FILE = "preprocessing.json"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, METADATA_FILE)
FORMAT_VERSION = 1


def save_preset(model, preset_dir: Union[str, os.PathLike]) -> Path:
    """Writes ``model`` (a `missu_keras.MISSU`) as a preset folder; returns the folder.

    The folder is created if needed; the four preset files in it are replaced, other
    files are left alone. ``missu_keras.load_pretrained(preset_dir)`` loads it.
    """
    import keras

    import missu_keras
    from missu_keras.models import MISSU

    if not isinstance(model, MISSU):
        raise ValueError(
            f"save_preset needs a missu_keras.MISSU (it holds the configuration and the "
            f"preprocessing contract); received {type(model).__name__}. An inference model "
            "from MISSU.inference_model() or load_pretrained() carries neither: save the "
            "MISSU it came from (load_pretrained(..., training_model=True) returns one)."
        )
    folder = Path(preset_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"preset_dir {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    (folder / CONFIG_FILE).write_text(json.dumps({
        "module": "missu_keras",
        "class_name": "MISSU",
        "registered_name": keras.saving.get_registered_name(MISSU),
        "config": config,
    }, indent=2) + "\n")
    # Write the weights under a temporary name first: a folder never holds half a file
    # under the real name.
    tmp = folder / (".tmp-" + WEIGHTS_FILE)
    model.save_weights(tmp)
    os.replace(tmp, folder / WEIGHTS_FILE)
    (folder / PREPROCESSING_FILE).write_text(json.dumps(model.preprocessing, indent=2) + "\n")
    import tensorflow as tf

    (folder / METADATA_FILE).write_text(json.dumps({
        "format": "missu_keras preset",
        "format_version": FORMAT_VERSION,
        "missu_keras_version": missu_keras.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "parameter_count": int(model.count_params()),
        "inference_parameter_count": int(model.inference_model().count_params()),
        "msf_mode": model.config.msf_mode,
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }, indent=2) + "\n")
    return folder


def is_preset_dir(path) -> bool:
    """Whether ``path`` is a folder holding a preset's ``config.json``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_preset_config(preset_dir) -> dict:
    """The `MISSUConfig` dict stored in a preset folder (checked for its files)."""
    folder = Path(preset_dir)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(folder)!r} is not a complete preset folder: missing {missing}; expected "
            f"{list(PRESET_FILES)} as written by missu_keras.save_preset"
        )
    try:
        stored = json.loads((folder / CONFIG_FILE).read_text())
        config = dict(stored["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(folder / CONFIG_FILE)!r}: expected a JSON object with a 'config' entry "
            f"(missu_keras.save_preset), could not read it ({err})"
        ) from None
    if stored.get("class_name", "MISSU") != "MISSU":
        raise ValueError(
            f"{str(folder / CONFIG_FILE)!r} describes a {stored.get('class_name')!r}; "
            "expected a MISSU preset"
        )
    return config


def read_preset_preprocessing(preset_dir) -> Optional[dict]:
    """The preprocessing dict stored in a preset folder, or ``None``."""
    path = Path(preset_dir) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())

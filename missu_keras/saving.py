"""``missu_keras.save_preset(model, folder)``: `MISSU.save_to_preset` as a function.

The preset folder format and its readers live in `missu_keras.weights.preset_io`
(re-exported here for code written against this module).

>>> import tempfile, missu_keras
>>> model = missu_keras.MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> folder = missu_keras.save_preset(model, tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'metadata.json', 'model.weights.h5', 'preprocessing.json']
>>> missu_keras.load_pretrained(str(folder)).name
'missu_inference'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from missu_keras.models import MISSU
from missu_keras.weights.preset_io import (CONFIG_FILE, FORMAT_VERSION,  # noqa: F401
                                           METADATA_FILE, PREPROCESSING_FILE, PRESET_FILES,
                                           WEIGHTS_FILE, is_preset_dir, read_preset_config,
                                           read_preset_preprocessing)


def save_preset(model, preset_dir: Union[str, os.PathLike]) -> Path:
    """Writes ``model`` (a `missu_keras.MISSU`) as a preset folder; returns the folder.
    The same as ``model.save_to_preset(preset_dir)``; `MISSU.from_preset(preset_dir)`
    and ``missu_keras.load_pretrained(preset_dir)`` load it."""
    if not isinstance(model, MISSU):
        raise ValueError(
            f"save_preset needs a missu_keras.MISSU (it holds the configuration and the "
            f"preprocessing contract); received {type(model).__name__}. An inference model "
            "from MISSU.inference_model() or load_pretrained() carries neither: save the "
            "MISSU it came from (load_pretrained(..., training_model=True) returns one)."
        )
    return model.save_to_preset(preset_dir)

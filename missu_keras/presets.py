"""Named configurations (keras-hub style: ``{name: {"metadata": ..., "config": ...}}``).

>>> list_presets()
['brats', 'chaos', 'tiny']
>>> get_preset_config("tiny")["base_width"]
8
>>> get_preset_config("kits")
Traceback (most recent call last):
...
ValueError: Unknown preset 'kits'. Accepted presets: ['brats', 'chaos', 'tiny']

Each preset also names its preprocessing and, where published, its weights (a URL
and the file's sha256, fetched once into the Keras cache by
`missu_keras.load_pretrained(name, weights="published")`). No MISSU Keras weights
have been published, so every URL is ``None``:

>>> get_preset_weights("brats")
{'url': None, 'sha256': None}
>>> get_preset_preprocessing("tiny", patch_size=32)["patch_size"]
[32, 32, 32]
"""

from __future__ import annotations

import copy
from typing import Dict, List

PRESETS: Dict[str, dict] = {
    "brats": {
        "metadata": {
            "description": "BraTS brain tumour: FLAIR, T1ce, T1, T2 -> background, NCR/NET, ED, ET "
            "(labels 0/1/2/4); 128^3 patches; the paper's network (b=16, E=512, L=4).",
            "dataset": "brats",
            "label_convention": "brats",
            "modalities": ["flair", "t1ce", "t1", "t2"],
        },
        "config": {
            "image_size": [128, 128, 128],
            "in_channels": 4,
            "num_classes": 4,
            "base_width": 16,
            "embed_dim": 512,
            "num_heads": 8,
            "num_layers": 4,
            "mlp_dim": 1024,
        },
        "preprocessing": {"dataset": "brats"},
        "weights": {"url": None, "sha256": None},
    },
    "chaos": {
        "metadata": {
            "description": "CHAOS abdominal MR liver: T1DUAL in-phase + out-phase -> background, liver; "
            "128 x 128 x 32 patches; same widths as brats.",
            "dataset": "chaos",
            "label_convention": "chaos",
            "modalities": ["in_phase", "out_phase"],
        },
        "config": {
            "image_size": [128, 128, 32],
            "in_channels": 2,
            "num_classes": 2,
            "base_width": 16,
            "embed_dim": 512,
            "num_heads": 8,
            "num_layers": 4,
            "mlp_dim": 1024,
        },
        "preprocessing": {"dataset": "chaos", "sequence": "T1DUAL"},
        "weights": {"url": None, "sha256": None},
    },
    "tiny": {
        "metadata": {
            "description": "CPU-sized BraTS-style network for demos and tests "
            "(b=8, E=64, L=2, 4 heads, MLP 128, 64^3 patches).",
            "dataset": "brats",
            "label_convention": "brats",
            "modalities": ["flair", "t1ce", "t1", "t2"],
        },
        "config": {
            "image_size": [64, 64, 64],
            "in_channels": 4,
            "num_classes": 4,
            "base_width": 8,
            "embed_dim": 64,
            "num_heads": 4,
            "num_layers": 2,
            "mlp_dim": 128,
        },
        "preprocessing": {"dataset": "brats"},
        "weights": {"url": None, "sha256": None},
    },
}


def list_presets() -> List[str]:
    """Names of the built-in presets."""
    return sorted(PRESETS)


def _lookup(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Accepted presets: {list_presets()}")
    return PRESETS[name]


def get_preset_config(name: str) -> dict:
    """The configuration dict of preset ``name`` (a copy)."""
    return copy.deepcopy(_lookup(name)["config"])


def get_preset_metadata(name: str) -> dict:
    """Description, dataset, label convention and modality order of preset ``name``."""
    return copy.deepcopy(_lookup(name)["metadata"])


def get_preset_weights(name: str) -> dict:
    """``{"url": ..., "sha256": ...}`` of the published weights of preset ``name``
    (both ``None`` where nothing is published; see `missu_keras.load_pretrained`)."""
    return copy.deepcopy(_lookup(name).get("weights", {"url": None, "sha256": None}))


def get_preset_preprocessing(name: str, patch_size=None) -> dict:
    """The preprocessing contract of preset ``name`` as a dict
    (`missu_keras.data.PreprocessingConfig.to_dict`), at ``patch_size`` (an int or
    ``(H, W, D)``; default the preset's ``image_size``)."""
    from missu_keras.data.preprocessing import PreprocessingConfig

    entry = _lookup(name)
    spec = dict(entry.get("preprocessing", {"dataset": "brats"}))
    dataset = spec.pop("dataset")
    size = patch_size if patch_size is not None else entry["config"]["image_size"]
    if dataset == "chaos":
        config = PreprocessingConfig.chaos(patch_size=size, **spec)
    else:
        config = PreprocessingConfig.brats(patch_size=size, **spec)
    return config.to_dict()

"""Named configurations (keras-hub style: ``{name: {"metadata": ..., "config": ...}}``).

>>> list_presets()
['brats', 'chaos', 'tiny']
>>> get_preset_config("tiny")["base_width"]
8
>>> get_preset_config("kits")
Traceback (most recent call last):
...
ValueError: Unknown preset 'kits'. Accepted presets: ['brats', 'chaos', 'tiny']
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
    },
    "chaos": {
        "metadata": {
            "description": "CHAOS abdominal MR liver: T1DUAL in-phase + out-phase -> background, liver; "
            "128 x 128 x 32 patches; same widths as brats.",
            "dataset": "chaos",
            "label_convention": "chaos",
            "modalities": ["t1_inphase", "t1_outphase"],
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

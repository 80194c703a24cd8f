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
`missu_keras.load_pretrained(name)`). No MISSU Keras weights have been published in
this built-in table, so every URL is ``None``:

>>> get_preset_weights("brats")
{'url': None, 'sha256': None}
>>> get_preset_preprocessing("tiny", patch_size=32)["patch_size"]
[32, 32, 32]

**User registries** extend the table: a JSON or YAML file (or a URL serving one), named
by ``registry=`` or by the environment variable ``MISSU_KERAS_REGISTRY``, of the form::

    {"presets": {"brats": {"url": "https://example.org/missu_brats.keras",
                           "sha256": "<64 hex digits>"},
                 "lab_liver": {"path": "weights/lab_liver.keras", "sha256": "..."}}}

Each entry gives a ``url`` or a ``path`` (relative paths are relative to the registry
file, or to the registry URL) and the file's sha256; ``description`` and ``metadata``
are optional. An entry overrides the built-in one of the same name, and a new name
must point at a ``.keras`` file (it carries its own configuration).
`missu_keras.publish` writes such entries:

>>> import json, pathlib, tempfile
>>> registry = pathlib.Path(tempfile.mkdtemp()) / "registry.json"
>>> _ = registry.write_text(json.dumps({"presets": {"brats": {
...     "path": "missu_brats.keras", "sha256": "AB" * 32}}}))
>>> entry = get_preset_weights("brats", registry=str(registry))
>>> entry["path"] == str(registry.parent / "missu_brats.keras"), entry["sha256"] == "ab" * 32
(True, True)
"""

from __future__ import annotations

import copy
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import yaml

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


def get_preset_weights(name: str, registry: Optional[str] = None) -> dict:
    """Where the published weights of preset ``name`` are: the entry of the user
    registry (``registry``, else ``$MISSU_KERAS_REGISTRY``) when it has one, else the
    built-in ``{"url": ..., "sha256": ...}`` (both ``None`` where nothing is published;
    see `missu_keras.load_pretrained`).

    A user entry is ``{"url" or "path": ..., "sha256": ..., "registry": source}`` plus
    its optional ``description`` / ``metadata``; a ``path`` is absolute.

    Raises:
        ValueError: ``name`` is neither a built-in preset nor in the user registry (the
            message lists both), or the registry is malformed.
        FileNotFoundError / ConnectionError: the registry cannot be read.
    """
    source = registry_source(registry)
    entries = read_registry(source) if source else {}
    if name in entries:
        return copy.deepcopy(entries[name])
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Accepted presets: {list_presets()}"
            + (f", or from the registry {source}: {sorted(entries)}" if source else "")
        )
    return copy.deepcopy(PRESETS[name].get("weights", {"url": None, "sha256": None}))


# ------------------------------------------------------------ user registries --------

REGISTRY_ENV = "MISSU_KERAS_REGISTRY"
REGISTRY_KEYS = ("format", "presets")
ENTRY_KEYS = ("url", "path", "sha256", "description", "metadata")
REGISTRY_FORMAT = "missu_keras weights registry"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_URL_SCHEMES = ("http", "https", "file", "ftp")


def registry_source(registry: Optional[str] = None) -> Optional[str]:
    """The user registry in effect: ``registry`` when given (``""``: none, whatever the
    environment says), else the value of ``$MISSU_KERAS_REGISTRY``, else ``None``
    (built-in table only)."""
    if registry is not None:
        return os.fspath(registry)
    return os.environ.get(REGISTRY_ENV) or None


def is_url(value: str) -> bool:
    """Whether ``value`` is a URL (``https://``, ``file://``, ...), not a local path."""
    return urllib.parse.urlparse(value).scheme in _URL_SCHEMES


def _registry_text(source: str) -> str:
    if is_url(source):
        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return response.read().decode("utf-8")
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(f"Cannot read the weights registry {source}: {err}") from err
    path = Path(source).expanduser()
    if not path.is_file():
        via = f" (named by ${REGISTRY_ENV})" if os.environ.get(REGISTRY_ENV) == source else ""
        raise FileNotFoundError(
            f"weights registry not found: {source!r}{via}; expected a JSON or YAML file "
            f'{{"presets": {{NAME: {{"url" or "path": ..., "sha256": ...}}}}}} '
            "(missu_keras.publish writes one)"
        )
    return path.read_text(encoding="utf-8")


def parse_registry(text: str, source: str) -> dict:
    """The raw mapping of a registry's text (JSON, or YAML for ``.yaml`` / ``.yml``),
    checked for its top-level shape; ``{}`` for an empty file."""
    suffix = Path(urllib.parse.urlparse(source).path if is_url(source) else source).suffix.lower()
    try:
        data = yaml.safe_load(text) if suffix in (".yaml", ".yml") else json.loads(text or "{}")
    except (yaml.YAMLError, ValueError) as err:
        kind = "YAML" if suffix in (".yaml", ".yml") else "JSON"
        raise ValueError(f"weights registry {source}: not valid {kind} ({err})") from None
    data = {} if data is None else data
    if not isinstance(data, dict) or not isinstance(data.get("presets", {}), dict):
        raise ValueError(
            f"weights registry {source}: expected a mapping with a 'presets' mapping "
            f"{{NAME: {{'url' or 'path': ..., 'sha256': ...}}}}; found {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(REGISTRY_KEYS))
    if unknown:
        raise ValueError(f"weights registry {source}: unknown keys {unknown}; accepted: "
                         f"{list(REGISTRY_KEYS)}")
    return data


def check_registry_entry(name: str, entry, source: str) -> dict:
    """``entry`` checked: a mapping with one of ``url`` / ``path`` and a 64-digit hex
    ``sha256`` (returned lower-case), and only the known keys."""
    where = f"weights registry {source}, preset {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping, found {type(entry).__name__}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; accepted: {list(ENTRY_KEYS)}")
    located = [key for key in ("url", "path") if entry.get(key)]
    if len(located) != 1:
        raise ValueError(f"{where}: expected exactly one of 'url' or 'path'; found {located or 'neither'}")
    if not isinstance(entry[located[0]], str):
        raise ValueError(f"{where}: {located[0]} must be a string; received {entry[located[0]]!r}")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValueError(f"{where}: sha256 must be 64 hexadecimal digits; received {sha256!r}")
    return {**entry, "sha256": sha256.lower()}


def _locate(entry: dict, source: str) -> dict:
    """A ``path`` made absolute (beside a registry file) or a URL (beside a registry
    URL)."""
    if "path" not in entry or not entry["path"]:
        return entry
    located = dict(entry)
    path = entry["path"]
    if is_url(source):
        located.pop("path")
        located["url"] = urllib.parse.urljoin(source, path)
    else:
        full = Path(path).expanduser()
        if not full.is_absolute():
            full = Path(source).expanduser().absolute().parent / full
        located["path"] = str(full)
    return located


def read_registry(source: str) -> Dict[str, dict]:
    """``{name: entry}`` of a user registry (a file path or URL), each entry checked
    (`check_registry_entry`), its ``path`` resolved and its ``registry`` set to
    ``source``."""
    data = parse_registry(_registry_text(source), source)
    return {str(name): {**_locate(check_registry_entry(str(name), entry, source), source),
                        "registry": source}
            for name, entry in data.get("presets", {}).items()}


def get_preset_preprocessing(name: str, patch_size=None) -> dict:
    """The preprocessing contract of preset ``name`` as a dict
    (`missu_keras.data.PreprocessingConfig.to_dict`), at ``patch_size`` (an int or
    ``(H, W, D)``; default the preset's ``image_size``)."""
    # Lazy: the preprocessing module loads TensorFlow, and the command line reads the
    # presets when it builds its flags (--help runs without TensorFlow).
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

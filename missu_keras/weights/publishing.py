"""`publish`: make a trained MISSU what ``load_pretrained(name)`` returns for everyone
who points ``$MISSU_KERAS_REGISTRY`` (or ``registry=``) at a registry file.

It writes the model as one self-describing ``.keras`` file (configuration, weights and
preprocessing contract; no optimizer state), its sha256 (in the entry, and beside the
file as ``<file>.sha256`` in ``sha256sum`` format, to upload with it), and the registry
entry (read-modify-write of the JSON / YAML registry, under a lock, replaced atomically).

>>> import pathlib, tempfile, missu_keras
>>> lab = pathlib.Path(tempfile.mkdtemp())
>>> model = missu_keras.MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> published = publish(model, "tiny", lab / "registry.json")
>>> published.weights_file.name, len(published.sha256)
('missu_tiny.keras', 64)
>>> sorted(missu_keras.presets.read_registry(str(lab / "registry.json")))
['tiny']
>>> loaded = missu_keras.load_pretrained("tiny", registry=str(lab / "registry.json"))
>>> loaded.count_params() == model.inference_model().count_params()
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Union

import keras
import yaml

from missu_keras.files import atomic_path, sha256_file, write_text_atomic
from missu_keras.models import MISSU
from missu_keras.presets import (REGISTRY_FORMAT, check_registry_entry, get_preset_config,
                                 is_url, list_presets, parse_registry)
from missu_keras.version import __version__
from missu_keras.weights import preset_io

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; the registry is still replaced atomically
    fcntl = None

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """What `publish` wrote.

    Attributes:
        name: the preset name ``load_pretrained`` now resolves.
        weights_file: the ``.keras`` file written.
        sha256: its hex sha256.
        checksum_file: ``<weights_file>.sha256`` (``sha256sum -c`` reads it).
        registry_file: the registry updated.
        entry: the registry entry as written (``path`` or ``url``, ``sha256``, ...).
    """

    name: str
    weights_file: Path
    sha256: str
    checksum_file: Path
    registry_file: Path
    entry: dict


def publish(run_or_model, preset_name: str, registry_file: Union[str, os.PathLike], *,
            weights_file: Optional[Union[str, os.PathLike]] = None, url: Optional[str] = None,
            description: Optional[str] = None, overwrite: bool = False) -> PublishedWeights:
    """Publishes a trained MISSU under ``preset_name`` in the registry ``registry_file``.

    Args:
        run_or_model: a `MISSU`, a ``missu-keras train`` output folder (its
            ``checkpoints/best.keras``, else ``last.keras``), a saved preset folder or a
            ``.keras`` file of a MISSU.
        preset_name: the name ``load_pretrained(preset_name, registry=...)`` will
            resolve: a built-in preset (``brats``: the model must then have its
            ``in_channels`` / ``num_classes``) or a new name (letters, digits, ``_.-``).
        registry_file: the JSON (``.json``) or YAML (``.yaml`` / ``.yml``) registry to
            create or update (other entries are kept).
        weights_file: where to write the ``.keras`` file (default: beside the registry,
            ``missu_<preset_name>.keras``); the entry stores its path relative to the
            registry when it lies under the registry's folder, else absolute.
        url: where the file will be served from (e.g. after uploading it); the entry
            then holds this URL instead of the path, and users download it once into
            their Keras cache.
        description: a line for the entry.
        overwrite: replace an existing entry of that name and an existing weights file.

    Returns:
        A `PublishedWeights` (file, sha256, entry).

    Raises:
        ValueError: a bad name, a model without preprocessing contract or whose
            channels / classes do not fit the built-in preset, a malformed registry, a
            registry given as URL, an untrained source (a preset name).
        FileExistsError: the entry or the weights file exists and ``overwrite`` is off.
    """
    _check_name(preset_name)
    registry = _local_registry(registry_file)
    model = _trained_model(run_or_model)
    _check_publishable(model, preset_name)
    target = Path(weights_file) if weights_file is not None else registry.parent / f"missu_{preset_name}.keras"
    if target.suffix != ".keras":
        raise ValueError(f"weights_file must end in '.keras'; received {str(target)!r}")
    registry.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(registry):
        data = _read_for_update(registry)
        if preset_name in data["presets"] and not overwrite:
            raise FileExistsError(
                f"{str(registry)!r} already has an entry for {preset_name!r} "
                f"({data['presets'][preset_name]}); pass overwrite=True to replace it"
            )
        if target.exists() and not overwrite:
            raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
        _write_model(model, target)
        sha256 = sha256_file(target)
        checksum = write_text_atomic(target.with_name(target.name + ".sha256"),
                                     f"{sha256}  {target.name}\n")
        entry = _entry(model, run_or_model, target, registry, sha256, url, description)
        data["presets"][preset_name] = check_registry_entry(preset_name, entry, str(registry))
        data["format"] = REGISTRY_FORMAT
        _write_registry(registry, data)
    return PublishedWeights(preset_name, target, sha256, checksum, registry, entry)


# ----------------------------------------------------------------------- checks -----

def _check_name(name) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"preset_name must be letters, digits, '_', '.' or '-' (starting with a letter or "
            f"digit), e.g. 'brats' or 'brats_lab2024'; received {name!r}"
        )


def _local_registry(registry_file) -> Path:
    text = os.fspath(registry_file)
    if is_url(text):
        raise ValueError(
            f"registry_file must be a local file to write; received the URL {text!r}. Publish "
            "into a local copy and upload it (pass url= for the weights' address)"
        )
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ValueError(f"registry_file must end in .json, .yaml or .yml; received {text!r}")
    return path


def _trained_model(run_or_model) -> MISSU:
    if isinstance(run_or_model, MISSU):
        return run_or_model
    if isinstance(run_or_model, keras.Model):
        raise ValueError(
            f"publish needs a missu_keras.MISSU (configuration + preprocessing); received a "
            f"{type(run_or_model).__name__} ({run_or_model.name!r}). Publish the MISSU it came from"
        )
    if not isinstance(run_or_model, (str, os.PathLike)):
        raise ValueError(
            "run_or_model must be a MISSU, a missu-keras train output folder, a saved preset "
            f"folder or a .keras file; received {type(run_or_model).__name__}"
        )
    ref = os.fspath(run_or_model)
    if ref in list_presets():
        raise ValueError(
            f"run_or_model {ref!r} is a preset name, i.e. an untrained network; pass the "
            "train output folder (or .keras file, or MISSU) holding the trained weights"
        )
    return MISSU.from_preset(ref)


def _check_publishable(model: MISSU, preset_name: str) -> None:
    if model.preprocessing is None:
        raise ValueError(
            f"the model to publish as {preset_name!r} carries no preprocessing contract; set "
            "model.preprocessing = missu_keras.data.PreprocessingConfig(...) (the one it was "
            "trained with) first"
        )
    if preset_name not in list_presets():
        return
    preset = get_preset_config(preset_name)
    bad = [f"{k}={getattr(model.config, k)} (preset: {preset[k]})"
           for k in ("in_channels", "num_classes") if getattr(model.config, k) != preset[k]]
    if bad:
        raise ValueError(
            f"the model cannot be published as the built-in preset {preset_name!r}: "
            f"{', '.join(bad)}; publish it under a new name instead"
        )


# ------------------------------------------------------------------------ writing ---

def _write_model(model: MISSU, target: Path) -> None:
    # A compiled model would also store its optimizer state (twice the size, and
    # nothing a user of the weights needs): save an uncompiled copy then.
    if getattr(model, "optimizer", None) is not None:
        clean = MISSU.from_config(model.get_config())
        preset_io.copy_layer_weights(model.backbone, clean.backbone, "the model to publish")
        model = clean
    with atomic_path(target, suffix=".keras") as tmp:
        model.save(tmp)


def _entry(model, source, target: Path, registry: Path, sha256: str, url, description) -> dict:
    entry = {"url": url} if url else {"path": _relative_to(target, registry.parent)}
    entry["sha256"] = sha256
    if description:
        entry["description"] = str(description)
    entry["metadata"] = {
        "date_published": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "missu_keras_version": __version__,
        "keras_version": keras.__version__,
        "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else "MISSU in memory",
        "file_size": target.stat().st_size,
        "inference_parameter_count": int(model.inference_model().count_params()),
        "in_channels": model.config.in_channels,
        "num_classes": model.config.num_classes,
        "image_size": list(model.config.image_size),
        "modalities": list(model.preprocessing.modalities),
        "label_convention": model.preprocessing.label_convention,
    }
    return entry


def _relative_to(path: Path, folder: Path) -> str:
    full, base = path.expanduser().absolute(), folder.expanduser().absolute()
    try:
        return full.relative_to(base).as_posix()
    except ValueError:
        return str(full)


# ---------------------------------------------------------------------- registry ----

def _read_for_update(registry: Path) -> dict:
    if not registry.is_file():
        return {"format": REGISTRY_FORMAT, "presets": {}}
    data = parse_registry(registry.read_text(encoding="utf-8"), str(registry))
    data.setdefault("presets", {})
    return data


def _write_registry(registry: Path, data: dict) -> None:
    ordered = {"format": data["format"], "presets": data["presets"]}
    if registry.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(ordered, sort_keys=False)
    else:
        text = json.dumps(ordered, indent=2) + "\n"
    write_text_atomic(registry, text)


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    """Serialises publishers of one registry (read-modify-write), where the platform
    has advisory locks."""
    if fcntl is None:
        yield
        return
    lock = registry.parent / f".{registry.name}.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

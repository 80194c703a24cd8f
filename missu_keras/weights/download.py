"""Published weights: from a registry entry (`missu_keras.presets.get_preset_weights`)
to a verified local file.

A ``url`` entry is downloaded once into the Keras cache (``keras.utils.get_file`` with
the entry's sha256; ``~/.keras/models/missu_keras/`` or ``$KERAS_HOME``); a ``path``
entry is used where it is, after checking its sha256. Either way the file returned has
the registered hash.

>>> download_published_weights("brats", registry=None)
Traceback (most recent call last):
...
ValueError: No published weights for preset 'brats': the built-in table has no URL for it and no user registry is set (registry=..., or $MISSU_KERAS_REGISTRY). Pass instead weights=None (random initialisation), a '.weights.h5' file, a '.keras' file, a saved preset folder (model.save_to_preset / missu_keras.save_preset), a PyTorch-layout '.npz' state dict, or a '.pth'/'.pt' checkpoint of the released PyTorch code. To publish weights you trained: `missu-keras publish RUN --preset brats --registry FILE` (Python: missu_keras.publish(RUN, 'brats', FILE)), then set MISSU_KERAS_REGISTRY=FILE or pass registry=FILE.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Optional

import keras

from missu_keras.files import sha256_file
from missu_keras.presets import REGISTRY_ENV, get_preset_weights, registry_source

# ``weights`` tag for a preset's published weights (Keras Applications' "imagenet").
PUBLISHED = "published"
# Where downloads go, under the Keras cache folder (``~/.keras`` or ``$KERAS_HOME``).
CACHE_SUBDIR = os.path.join("models", "missu_keras")

WEIGHT_SOURCES = (
    "weights=None (random initialisation), a '.weights.h5' file, a '.keras' file, a "
    "saved preset folder (model.save_to_preset / missu_keras.save_preset), a "
    "PyTorch-layout '.npz' state dict, or a '.pth'/'.pt' checkpoint of the released "
    "PyTorch code"
)


def publish_hint(preset: str) -> str:
    """How to make ``load_pretrained(preset)`` work: the publish command and the
    registry setting."""
    return (
        f"To publish weights you trained: `missu-keras publish RUN --preset {preset} "
        f"--registry FILE` (Python: missu_keras.publish(RUN, {preset!r}, FILE)), then set "
        f"{REGISTRY_ENV}=FILE or pass registry=FILE."
    )


def _no_published_weights(preset: str, registry: Optional[str]) -> ValueError:
    where = (f"neither the registry {registry} nor the built-in table has an entry for it"
             if registry else
             f"the built-in table has no URL for it and no user registry is set "
             f"(registry=..., or ${REGISTRY_ENV})")
    return ValueError(
        f"No published weights for preset {preset!r}: {where}. Pass instead "
        f"{WEIGHT_SOURCES}. {publish_hint(preset)}"
    )


def download_published_weights(preset: str, cache_dir=None, registry: Optional[str] = None) -> str:
    """Path of preset ``preset``'s published weights, checked against the registered
    sha256: a registry ``path`` as it is, a ``url`` downloaded once into the Keras cache.

    Args:
        preset: a built-in preset name or a name of the user registry.
        cache_dir: the Keras cache folder (default ``$KERAS_HOME`` or ``~/.keras``);
            files go under ``models/missu_keras``.
        registry: a registry file or URL (default ``$MISSU_KERAS_REGISTRY``), see
            `missu_keras.presets`.

    Raises:
        ValueError: nothing is published for the preset (the message says what to pass
            instead and how to publish), an entry without sha256, or a hash mismatch
            (a bad download is removed from the cache).
        FileNotFoundError: a registry ``path`` that does not exist.
        ConnectionError: the file cannot be fetched and no verified copy is cached.
    """
    source = registry_source(registry)
    entry = get_preset_weights(preset, registry=source)
    if entry.get("path"):
        return _verified_local_file(preset, entry)
    url, sha256 = entry.get("url"), entry.get("sha256")
    if not url:
        raise _no_published_weights(preset, source)
    if not sha256:
        raise ValueError(
            f"The registry entry of preset {preset!r} has a URL ({url}) but no sha256; "
            "refusing to download unverified weights"
        )
    return _download(preset, url, sha256.lower(), cache_dir)


def _verified_local_file(preset: str, entry: dict) -> str:
    path = Path(entry["path"])
    if not path.is_file():
        raise FileNotFoundError(
            f"The published weights of preset {preset!r} are registered at {str(path)!r} "
            f"(registry {entry.get('registry')}), but no such file exists"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"sha256 mismatch for the published weights of preset {preset!r} at "
            f"{str(path)!r}: the registry {entry.get('registry')} expects {entry['sha256']}, "
            f"the file has {actual}. Refusing to load it; publish it again or fix the entry"
        )
    return str(path)


def _writable_cache_dir(cache_dir) -> str:
    if cache_dir is None:  # Keras' own default: $KERAS_HOME, else ~/.keras
        cache_dir = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    cache_dir = os.path.expanduser(os.fspath(cache_dir))
    with contextlib.suppress(OSError):  # an uncreatable folder is replaced just below
        os.makedirs(cache_dir, exist_ok=True)  # get_file only uses folders that exist
    if not os.access(cache_dir, os.W_OK):
        cache_dir = os.path.join(tempfile.gettempdir(), ".keras")  # get_file does the same
    return cache_dir


def _download(preset: str, url: str, sha256: str, cache_dir) -> str:
    fname = os.path.basename(url.split("?", 1)[0]) or f"missu_{preset}.weights.h5"
    cache_dir = _writable_cache_dir(cache_dir)
    target = os.path.join(cache_dir, CACHE_SUBDIR, fname)
    try:
        return keras.utils.get_file(fname=fname, origin=url, file_hash=sha256,
                                    hash_algorithm="sha256", cache_subdir=CACHE_SUBDIR,
                                    cache_dir=cache_dir)
    except ValueError as err:
        if "hash" not in str(err):
            raise
        actual = sha256_file(target) if os.path.isfile(target) else "unknown"
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

"""File helpers shared by the whole package: one sha256, one atomic write.

Every file missu_keras writes goes through `atomic_path`: it is written under a
temporary name in the same folder, flushed to disk, then renamed over the target, so
a reader (or a crash) never sees half a file under the real name.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> path = write_text_atomic(folder / "a.txt", "abc")
>>> sha256_file(path)
'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
>>> sorted(p.name for p in folder.iterdir())
['a.txt']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read-only, streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``target`` to write to; on success it is synced
    and renamed to ``target`` (replacing it), on error it is removed.

    ``suffix`` ends the temporary name, for writers that insist on an extension
    (Keras' ``save_weights`` wants ``.weights.h5``, ``model.save`` wants ``.keras``).
    """
    target = Path(target)
    # A fresh name the writer creates itself (not mkstemp's 0600 file), so the result
    # gets the usual permissions: a published weights file must be readable by others.
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(target: PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``target`` atomically; returns the target path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: PathLike, value) -> Path:
    """``value`` as indented JSON (with a final newline), written atomically."""
    return write_text_atomic(target, json.dumps(value, indent=2) + "\n")

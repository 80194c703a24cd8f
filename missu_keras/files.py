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
import errno
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Union

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
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno and err.filename in (None, str(tmp)):
            # A full or read-only disk: name the file the user asked for, not the
            # temporary one (which is gone).
            raise type(err)(err.errno, f"could not write the file ({err.strerror or err})",
                            str(target)) from err
        raise


def write_text_atomic(target: PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``target`` atomically; returns the target path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: PathLike, value) -> Path:
    """``value`` as indented JSON (with a final newline), written atomically."""
    return write_text_atomic(target, json.dumps(value, indent=2) + "\n")


def prepare_output_dir(folder: PathLike, what: str = "output folder") -> Path:
    """Creates ``folder`` (and its parents) and checks that a file can be created in it,
    before any work is done: a path that is a file, a folder that cannot be created and
    a read-only folder each raise one error naming ``folder`` (``what`` says which
    option it came from, e.g. ``"--out"``). Returns the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"{what} is a file; expected a folder (or a path that does not "
            "exist yet)", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tmp-write-test-{uuid.uuid4().hex[:12]}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.unlink(probe)
    except OSError as err:
        raise type(err)(err.errno, f"{what} is not writable ({err.strerror or err}); expected "
                        "a folder this user can create files in", str(folder)) from err
    return folder


def refuse_existing(paths: Iterable[PathLike]) -> None:
    """``FileExistsError`` naming the first of ``paths`` that exists (and how many do):
    commands never replace earlier results unless asked (``--overwrite``)."""
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise FileExistsError(
            f"{existing[0]} already exists ({len(existing)} output(s) in all); pass "
            "--overwrite (overwrite=True) to replace them"
        )


@contextlib.contextmanager
def output_folder(folder: PathLike, what: str = "output folder") -> Iterator[Path]:
    """`prepare_output_dir` for the length of a command: if the command then fails, the
    folders this call created are removed again when they are still empty, so a failed
    command leaves no trace (files it wrote stay: each was written whole)."""
    folder = Path(folder)
    created = []
    for parent in [folder, *folder.parents]:
        if os.path.lexists(parent):
            break
        created.append(parent)
    prepare_output_dir(folder, what)
    try:
        yield folder
    except BaseException:
        if created:  # the folder is new: every empty folder under it is this command's
            for dirpath, _, _ in os.walk(folder, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        for path in created[1:]:  # then the new parents, deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise

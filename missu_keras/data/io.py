"""NIfTI files in and out, and the names of case files: the one home for both.

Reading is read-only and names the file in every error (``ValueError`` for a file that is
not a readable NIfTI, ``FileNotFoundError`` for a missing one). Writing is atomic (a
temporary name in the same folder, synced, then renamed; `missu_keras.files`), gives the
same bytes for the same inputs (gzip without a timestamp), and writes label maps with an
integer data type and the scaling (slope / intercept) cleared, so no reader rescales them.

>>> import tempfile, pathlib, numpy as np
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> labels = np.zeros((4, 5, 6), np.uint8); labels[1, 2, 3] = 4
>>> path = write_nifti(folder / "case_0001.nii.gz", labels, np.eye(4))
>>> data, affine = read_nifti(path, dtype=None)
>>> data.dtype, int(data[1, 2, 3]), strip_nifti_suffix(path.name)
(dtype('uint8'), 4, 'case_0001')
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional, Tuple

import nibabel
import numpy as np

from missu_keras.files import atomic_path

NIFTI_SUFFIXES: Tuple[str, ...] = (".nii.gz", ".nii")

# NIfTI-1 and NIfTI-2 define no 16-bit float data type (nifti1.h: DT_FLOAT32 16,
# DT_FLOAT64 64, DT_FLOAT128 1536) and nibabel refuses float16 ("data dtype float16 not
# supported"), so probabilities are stored in 16 bits as unsigned integers with
# scl_slope = 1 / 65535: as small as float16, read as floats by every NIfTI reader
# (nibabel, ITK / SimpleITK, FSL, 3D Slicer apply the slope), and a uniform step of
# 1.5e-5 (float16's step just below 1 is 4.9e-4).
PROBABILITY_DTYPE = np.uint16
PROBABILITY_STEPS = 65535
PROBABILITY_SCALE = 1.0 / PROBABILITY_STEPS


def strip_nifti_suffix(name: str) -> str:
    """``"BraTS2021_00001_flair.nii.gz"`` -> ``"BraTS2021_00001_flair"`` (``.nii`` too);
    other names are returned unchanged.

    >>> strip_nifti_suffix("a.nii"), strip_nifti_suffix("b.nii.gz"), strip_nifti_suffix("c.txt")
    ('a', 'b', 'c.txt')
    """
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti(path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def read_nifti_header(path, channels: bool = False) -> Tuple[Tuple[int, ...], np.ndarray, object]:
    """Reads only the header: returns ``(shape, affine, image)``; the data stay on disk.

    A file that is not a readable NIfTI raises ``ValueError`` naming it. Trailing
    singleton dimensions are dropped from ``shape``. ``channels=True`` also accepts a
    4-D image with channels on the last axis (a Decathlon ``imagesTr`` file) and always
    returns a 4-D ``shape`` ``(H, W, D, C)`` (``C = 1`` for a 3-D file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        img = nibabel.load(str(path), mmap=False)
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise ValueError(
            f"{path}: cannot read NIfTI header: expected a NIfTI-1/2 image, found "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if channels and len(shape) in (3, 4):
        return (shape + (1,))[:4], affine, img
    if len(shape) != 3:
        expected = "a 3-D volume or a 4-D image with channels last" if channels else "a 3-D volume"
        raise ValueError(f"{path}: expected {expected}, found shape {tuple(img.shape)}")
    return shape, affine, img


def read_nifti_data(path: Path, img, shape, dtype) -> np.ndarray:
    """The voxels of an opened NIfTI ``img`` (from `read_nifti_header`) as ``shape``:
    ``dtype`` as in `read_nifti`; ``ValueError`` naming ``path`` for unreadable data."""
    try:
        if dtype is None:
            data = np.asanyarray(img.dataobj)
        elif np.dtype(dtype).kind == "f":
            data = np.asarray(img.get_fdata(dtype=dtype))
        else:
            data = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    except Exception as exc:  # truncated gzip: EOFError, zlib.error, OSError ...
        raise ValueError(
            f"{path}: cannot read NIfTI data: expected {int(np.prod(shape))} voxels of a "
            f"readable image, found {type(exc).__name__}: {exc}"
        ) from exc
    return data.reshape(shape)


def read_nifti(path, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a NIfTI volume read-only: returns ``(data (H, W, D), affine (4, 4))``.

    ``dtype``: a float type -> scaled data as that type; ``None`` -> the stored values
    as stored (scaled if the header says so); another type -> cast to it.
    """
    shape, affine, img = read_nifti_header(path)
    return read_nifti_data(Path(path), img, shape, dtype), affine


def quantize_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities ``(..., K)`` in [0, 1] as `PROBABILITY_DTYPE` steps of
    `PROBABILITY_SCALE` (round to nearest), the file format of ``predict
    --probabilities``. Where rounding ties the top class with another, the top class
    keeps one step more, so the argmax of the stored map is the argmax of the input.

    >>> q = quantize_probabilities(np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]))
    >>> q.dtype, q.tolist(), (q * PROBABILITY_SCALE).sum(-1).round(4).tolist()
    (dtype('uint16'), [[32769, 32768, 0], [0, 13107, 52428]], [1.0, 1.0])
    """
    p = np.asarray(probabilities, np.float32)
    top = np.argmax(p, axis=-1)[..., None]
    q = np.rint(np.clip(p, 0.0, 1.0) * np.float32(PROBABILITY_STEPS)).astype(PROBABILITY_DTYPE)
    top_q = np.take_along_axis(q, top, -1)
    ties = (q == top_q).sum(-1, keepdims=True) > 1
    np.put_along_axis(q, top, np.where(ties & (top_q < PROBABILITY_STEPS), top_q + 1, top_q), -1)
    return q


def check_finite(array: np.ndarray, source) -> None:
    """``ValueError`` naming ``source`` if ``array`` holds NaN or inf."""
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        n = int(bad.sum())
        if n:
            raise ValueError(
                f"{source}: expected finite values, found {n} non-finite voxel(s) "
                f"(NaN/inf), first at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
            )


def write_nifti(path, data: np.ndarray, affine: np.ndarray, header=None,
                description: Optional[str] = None, slope: Optional[float] = None) -> Path:
    """Writes ``data`` (3-D, or 4-D with channels last) as NIfTI-1 to ``path``, atomically.

    ``header``: a reference header (e.g. the input scan's) whose geometry and units are
    kept; its data type and scaling are replaced by ``data``'s. Integer data (label maps)
    are written with slope 1 / intercept 0, float data as float32-or-wider as given;
    ``slope``: integer data stored with that ``scl_slope`` (a reader sees ``data *
    slope``, e.g. `quantize_probabilities`' output with `PROBABILITY_SCALE`).
    ``.nii.gz`` is gzip-compressed without a timestamp: the same inputs give the same
    bytes. Returns the path.
    """
    path = Path(path)
    data = np.asarray(data)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI output must end in .nii.gz or .nii")
    header = header.copy() if header is not None else None
    img = nibabel.Nifti1Image(data, np.asarray(affine, np.float64), header)
    img.set_data_dtype(data.dtype)
    if slope is not None and data.dtype.kind not in "ui":
        raise ValueError(f"{path}: a slope is for integer data; received {data.dtype} data")
    img.header.set_slope_inter(1.0 if slope is None else float(slope), 0.0)
    if header is None:
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    if description is not None:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return path

"""Per-case checks before anything is trained on a case, and read-only NIfTI loading.

Every check names the file, what was expected and what was found:

* every modality present (``FileNotFoundError``);
* each file readable as NIfTI (``ValueError``);
* same shape, and same affine within ``atol`` (default 1e-3), across modalities and seg;
* finite values (no NaN / inf);
* labels inside the label convention's set (`missu_keras.labels`);
* a non-empty brain mask (voxels where any modality is non-zero).

Files are opened read-only and never written to.

>>> import tempfile
>>> from missu_keras.data.brats import find_brats_cases
>>> from missu_keras.data.synthetic import write_synthetic_brats
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=1, seed=0, shape=(32, 32, 24))
>>> case = find_brats_cases(root)[0]
>>> loaded = load_brats_case(case)
>>> loaded.image.shape, loaded.image.dtype, loaded.labels.shape
((32, 32, 24, 4), dtype('float32'), (32, 32, 24))
>>> valid, skipped = validate_cases([case])
>>> len(valid), skipped
(1, [])
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from missu_keras.data.io import (check_finite, read_nifti, read_nifti_data,  # noqa: F401 (public here too)
                                 read_nifti_header)
from missu_keras.labels import LabelConvention, get_label_convention

logger = logging.getLogger("missu_keras.data")

AFFINE_ATOL = 1e-3


@dataclasses.dataclass
class LoadedCase:
    """A case read into memory and validated.

    Attributes:
        case_id: the case name.
        image: ``(H, W, D, C)`` float32, channels in ``channel_names`` order.
        labels: ``(H, W, D)`` dataset labels (e.g. BraTS 0/1/2/4), or ``None``.
        affine: ``(4, 4)`` voxel-to-world matrix of the first channel.
        spacing: ``(3,)`` voxel size in mm.
        channel_names: e.g. ``("flair", "t1ce", "t1", "t2")``.
        label_convention: the convention ``labels`` are written in: a registered name, or
            a `missu_keras.labels.LabelConvention` (dataset-defined, e.g. nnU-Net).
        source_files: the files the case was read from.
    """

    case_id: str
    image: np.ndarray
    labels: Optional[np.ndarray]
    affine: np.ndarray
    spacing: Tuple[float, float, float]
    channel_names: Tuple[str, ...]
    label_convention: Union[str, LabelConvention]
    source_files: Tuple[Path, ...] = ()


class SkippedCase(NamedTuple):
    """A case left out by ``skip_invalid=True``, with the reason."""

    case_id: str
    reason: str


class ValidationResult(NamedTuple):
    valid: list
    skipped: List[SkippedCase]


def check_same_geometry(
    ref_source, ref_shape, ref_affine, source, shape, affine, atol: float = AFFINE_ATOL
) -> None:
    """``ValueError`` naming ``source`` if its shape or affine differ from the reference."""
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(
            f"{source}: shape mismatch: expected {tuple(ref_shape)} (as {ref_source}), found {tuple(shape)}"
        )
    if ref_affine is not None and affine is not None:
        diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(ref_affine))))
        if not diff <= atol:
            raise ValueError(
                f"{source}: affine mismatch: expected {np.asarray(ref_affine).round(4).tolist()} "
                f"(as {ref_source}, atol {atol}), found {np.asarray(affine).round(4).tolist()} "
                f"(max difference {diff:.4g})"
            )


def check_labels(labels: np.ndarray, label_convention, source) -> np.ndarray:
    """Checks the labels are in the convention's set; returns them as uint8 labels."""
    labels = np.asarray(labels)
    check_finite(labels, source)
    conv = get_label_convention(label_convention)
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        # Unsigned labels: one table look-up per voxel; the out-of-set values (if any)
        # then go through the convention for its usual error message.
        allowed = np.zeros(256 ** labels.dtype.itemsize, bool)
        allowed[[v for v in conv.labels if v < allowed.size]] = True
        ok = allowed[labels]
        if not ok.all():
            conv.to_classes(np.unique(labels[~ok]), source=str(source))
        return labels.astype(np.uint8, copy=False)
    conv.to_classes(labels, source=str(source))
    return np.rint(labels).astype(np.uint8) if labels.dtype.kind == "f" else labels.astype(np.uint8)


def check_brain_mask(image: np.ndarray, source) -> None:
    """``ValueError`` if no voxel of ``image (H, W, D, C)`` is non-zero in any channel."""
    if not np.any(image):
        raise ValueError(
            f"{source}: empty brain mask: expected voxels where some modality is non-zero, "
            f"found all {int(np.prod(image.shape[:3]))} voxels zero in every modality"
        )


def spacing_from_affine(affine: np.ndarray) -> Tuple[float, float, float]:
    """Voxel size ``(3,)`` in mm: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def load_brats_case(case, label_convention: Optional[str] = None, atol: float = AFFINE_ATOL) -> LoadedCase:
    """Reads a `BratsCase` and runs every check (see the module docstring).

    Args:
        case: a `missu_keras.data.brats.BratsCase`.
        label_convention: ``"brats"`` (0/1/2/4) or ``"brats2023"`` (0/1/2/3); default
            the convention of the case's layout.
        atol: tolerance of the affine comparison.

    Returns:
        A `LoadedCase`: ``image (H, W, D, C)`` float32 in the case's modality order,
        ``labels (H, W, D)`` uint8 dataset labels or ``None``.
    """
    convention = label_convention or case.label_convention
    get_label_convention(convention)  # unknown names fail before any file is read
    for m, p in case.image_paths.items():
        if not Path(p).is_file():
            present = sorted(os.listdir(case.directory)) if Path(case.directory).is_dir() else []
            raise FileNotFoundError(
                f"{p}: modality {m!r} of case {case.case_id!r} not found: expected this file "
                f"(or .nii), found {present}"
            )
    channels = [(m, Path(p), None) for m, p in case.image_paths.items()]
    return load_nifti_case(case.case_id, channels, case.seg_path, convention, atol)


def _check_channel_index(path, shape, index: int, name: str) -> None:
    if index >= shape[3]:
        raise ValueError(
            f"{path}: channel {name!r} is index {index} on the last axis, but the image has "
            f"{shape[3]} channel(s) (shape {tuple(shape)}); expected at least {index + 1}"
        )


class FilePerChannelCase:
    """What cases stored one NIfTI file per channel have in common (`BratsCase`,
    `NnunetCase`): they define ``image_paths`` (``{channel: file}`` in channel order) and
    ``seg_path`` (or ``None``)."""

    @property
    def channel_names(self) -> Tuple[str, ...]:
        return tuple(self.image_paths)

    @property
    def modalities(self) -> Tuple[str, ...]:
        return self.channel_names

    @property
    def missing_channels(self) -> Tuple[str, ...]:
        """Channels whose file is not there (the path is the name the layout expects)."""
        return tuple(n for n, p in self.image_paths.items() if not Path(p).is_file())

    @property
    def has_seg(self) -> bool:
        return self.seg_path is not None

    @property
    def reference_path(self) -> Path:
        """The file whose affine and header a prediction for this case is written with."""
        return Path(next(iter(self.image_paths.values())))

    def source_files(self) -> List[Path]:
        """Every file this case is read from (images, then the seg if any)."""
        return [Path(p) for p in self.image_paths.values()] + \
            ([Path(self.seg_path)] if self.seg_path is not None else [])


def load_nifti_case(case_id: str, channels: Sequence[Tuple[str, Path, Optional[int]]],
                    seg_path, label_convention, atol: float = AFFINE_ATOL) -> LoadedCase:
    """Reads and checks a NIfTI case (BraTS, Decathlon, nnU-Net: one implementation).

    Args:
        case_id: the case name.
        channels: ``(name, path, index)`` per channel in order: ``index`` is the channel
            on the last axis of a 4-D file (Decathlon), ``None`` for a 3-D file.
        seg_path: the label file or ``None``.
        label_convention: what `missu_keras.labels.get_label_convention` takes.
        atol: tolerance of the affine comparison between the files.

    Returns:
        A `LoadedCase`; every error names the file (see the module docstring).
    """
    get_label_convention(label_convention)  # an unknown convention fails before any file is read
    headers = {}
    for name, path, index in channels:
        if path not in headers:
            headers[path] = read_nifti_header(path, channels=index is not None)
        if index is not None:
            _check_channel_index(path, headers[path][0], index, name)
    ref_path = channels[0][1]
    ref_shape, ref_affine = tuple(headers[ref_path][0][:3]), headers[ref_path][1]
    for path, (shape, affine, _) in headers.items():
        check_same_geometry(ref_path, ref_shape, ref_affine, path, shape[:3], affine, atol)
    seg_header = read_nifti_header(seg_path) if seg_path is not None else None
    if seg_header is not None:
        check_same_geometry(ref_path, ref_shape, ref_affine, seg_path, seg_header[0], seg_header[1], atol)

    image = np.empty(ref_shape + (len(channels),), dtype=np.float32)
    data = {}
    for c, (name, path, index) in enumerate(channels):
        if path not in data:
            shape, _, img = headers[path]
            data[path] = read_nifti_data(Path(path), img, shape, np.float32)
            check_finite(data[path], path)  # on the contiguous array: faster than on a strided channel
        image[..., c] = data[path] if index is None else data[path][..., index]
    del data
    labels = None
    if seg_header is not None:
        raw = read_nifti_data(Path(seg_path), seg_header[2], seg_header[0], None)
        labels = check_labels(np.asarray(raw), label_convention, seg_path)
    files = list(dict.fromkeys(Path(p) for _, p, _ in channels))
    check_brain_mask(image, f"case {case_id!r} ({', '.join(str(p) for p in files)})")
    return LoadedCase(
        case_id=case_id,
        image=image,
        labels=labels,
        affine=ref_affine,
        spacing=spacing_from_affine(ref_affine),
        channel_names=tuple(name for name, _, _ in channels),
        label_convention=label_convention,
        source_files=tuple(files + ([Path(seg_path)] if seg_path is not None else [])),
    )


def _load_any(case, label_convention):
    return case.load(label_convention) if label_convention is not None else case.load()


def validate_cases(
    cases: Sequence,
    label_convention: Optional[str] = None,
    skip_invalid: bool = False,
    loader: Optional[Callable] = None,
) -> ValidationResult:
    """Loads and checks every case; returns ``(valid_cases, skipped)``.

    Args:
        cases: `BratsCase` or `missu_keras.data.chaos.ChaosCase` records.
        label_convention: convention to check labels against (default per case).
        skip_invalid: ``False`` raises the first case's error; ``True`` leaves bad
            cases out, logs a warning per case and returns them as `SkippedCase`
            ``(case_id, reason)``.
        loader: ``loader(case, label_convention)`` to use instead of ``case.load``.

    Returns:
        `ValidationResult` ``(valid, skipped)``: the good case records and the skipped ones.
    """
    load = loader or _load_any
    valid, skipped = [], []
    for case in cases:
        try:
            load(case, label_convention)
        except (ValueError, OSError) as exc:
            if not skip_invalid:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("skipping case %s: %s", case.case_id, reason)
            skipped.append(SkippedCase(case.case_id, reason))
        else:
            valid.append(case)
    return ValidationResult(valid, skipped)

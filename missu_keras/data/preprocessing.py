"""Preprocessing as in the paper (Sec. IV-A), and its inverse for predictions.

A case goes: crop to the bounding box of the non-zero voxels (plus a margin) ->
z-score each modality over the brain mask (voxels where any modality is non-zero),
background 0 -> dataset labels to training classes (`missu_keras.labels`). The crop
box is kept, so a prediction goes back to the original grid exactly (`restore_labels`).

The settings live in one `PreprocessingConfig` that is saved with the model config
(``to_dict`` / ``from_dict``, JSON-safe), so inference applies the same steps.

>>> import numpy as np
>>> image = np.zeros((10, 10, 10, 2), np.float32)
>>> image[2:6, 3:7, 4:8] = np.random.default_rng(0).uniform(1, 2, (4, 4, 4, 2))
>>> box = foreground_box(image, margin=1)
>>> box.start, box.stop
((1, 2, 3), (7, 8, 9))
>>> cropped = crop(image, box)
>>> cropped.shape
(6, 6, 6, 2)
>>> np.array_equal(uncrop(cropped, box), image)
True
>>> z = normalize_nonzero(cropped)
>>> brain = np.any(cropped != 0, axis=-1)
>>> bool(np.allclose(z[brain].mean(0), 0, atol=1e-5)), bool(np.all(z[~brain] == 0))
(True, True)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from missu_keras.labels import LABEL_CONVENTIONS, get_label_convention

NORMALIZATIONS = ("zscore_nonzero", "zscore", "none")
DATASETS = ("brats", "chaos")

IntOr3 = Union[int, Sequence[int]]


def _triple(value: IntOr3, name: str) -> Tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * 3
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be an int or 3 ints. Received: {name}={value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (H, W, D). Received: {name}={value!r}")
    return out


@dataclasses.dataclass
class PreprocessingConfig:
    """The preprocessing contract, stored with the model so inference matches training.

    Args:
        dataset: ``"brats"`` or ``"chaos"`` (which reader produced the cases).
        modalities: channel names in order, e.g. ``("flair", "t1ce", "t1", "t2")``
            (BraTS) or ``("in_phase", "out_phase")`` (CHAOS T1DUAL).
        label_convention: ``"brats"`` (0/1/2/4), ``"brats2023"`` (0/1/2/3) or ``"chaos"``.
        normalization: ``"zscore_nonzero"`` (per channel over voxels where any channel
            is non-zero, background 0; the paper's BraTS rule), ``"zscore"`` (per
            channel over the whole cropped volume; MR without a zero background) or
            ``"none"``.
        crop_to_nonzero: crop each case to the bounding box of its non-zero voxels.
        crop_margin: voxels kept around that box on each side (int or 3 ints).
        patch_size: training crop ``(H, W, D)``; multiples of 8 (three stride-2 steps).
        pad_multiple: whole validation / inference volumes are padded (at the end of
            each axis) to a multiple of this.

    >>> cfg = PreprocessingConfig.chaos()
    >>> cfg.patch_size, cfg.modalities
    ((128, 128, 32), ('in_phase', 'out_phase'))
    >>> PreprocessingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    True
    >>> PreprocessingConfig(patch_size=(128, 128, 30))
    Traceback (most recent call last):
    ...
    ValueError: patch_size must be positive multiples of 8 on every axis. Received: patch_size=(128, 128, 30); e.g. CHAOS depth 30 -> 32.
    """

    dataset: str = "brats"
    modalities: Tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
    label_convention: str = "brats"
    normalization: str = "zscore_nonzero"
    crop_to_nonzero: bool = True
    crop_margin: IntOr3 = 2
    patch_size: IntOr3 = (128, 128, 128)
    pad_multiple: int = 8

    def __post_init__(self):
        self.modalities = tuple(str(m) for m in self.modalities)
        self.crop_margin = _triple(self.crop_margin, "crop_margin")
        self.patch_size = _triple(self.patch_size, "patch_size")
        self.validate()

    def validate(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={self.dataset!r}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct and non-empty. Received: modalities={self.modalities}")
        if self.label_convention not in LABEL_CONVENTIONS:
            raise ValueError(
                f"label_convention must be one of {sorted(LABEL_CONVENTIONS)}. "
                f"Received: label_convention={self.label_convention!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}. Received: normalization={self.normalization!r}"
            )
        if any(m < 0 for m in self.crop_margin):
            raise ValueError(f"crop_margin must be >= 0. Received: crop_margin={self.crop_margin}")
        if any(p <= 0 or p % 8 for p in self.patch_size):
            raise ValueError(
                "patch_size must be positive multiples of 8 on every axis. "
                f"Received: patch_size={self.patch_size}; e.g. CHAOS depth 30 -> 32."
            )
        if not isinstance(self.pad_multiple, int) or self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be an int >= 1. Received: pad_multiple={self.pad_multiple!r}")

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        return get_label_convention(self.label_convention).num_classes

    @classmethod
    def brats(cls, label_convention: str = "brats", **overrides) -> "PreprocessingConfig":
        """The paper's BraTS settings (FLAIR, T1ce, T1, T2; 128^3 crops)."""
        return cls(dataset="brats", label_convention=label_convention, **overrides)

    @classmethod
    def chaos(cls, sequence: str = "T1DUAL", **overrides) -> "PreprocessingConfig":
        """The paper's CHAOS MR settings (in/out phase, liver; 128 x 128 x 32 crops)."""
        from missu_keras.data.chaos import chaos_channel_names

        kwargs = dict(
            dataset="chaos",
            modalities=chaos_channel_names(sequence),
            label_convention="chaos",
            normalization="zscore",
            patch_size=(128, 128, 32),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("modalities", "crop_margin", "patch_size"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"Unknown preprocessing settings {unknown}; accepted names: {names}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A crop ``[start, stop)`` inside a volume of ``original_shape`` (3 axes each)."""

    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]
    original_shape: Tuple[int, int, int]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def to_dict(self) -> dict:
        return {"start": list(self.start), "stop": list(self.stop), "original_shape": list(self.original_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "CropBox":
        return cls(tuple(int(v) for v in d["start"]), tuple(int(v) for v in d["stop"]),
                   tuple(int(v) for v in d["original_shape"]))

    @classmethod
    def full(cls, shape: Sequence[int]) -> "CropBox":
        shape = tuple(int(s) for s in shape[:3])
        return cls((0, 0, 0), shape, shape)


def foreground_box(image: np.ndarray, margin: IntOr3 = 0) -> CropBox:
    """Bounding box of the voxels where any channel of ``image`` is non-zero.

    Args:
        image: ``(H, W, D)`` or ``(H, W, D, C)``.
        margin: voxels added on each side (clipped to the volume).

    Returns:
        A `CropBox`; the whole volume if nothing is non-zero.
    """
    image = np.asarray(image)
    mask = np.any(image != 0, axis=-1) if image.ndim == 4 else image != 0
    margin = _triple(margin, "margin")
    shape = mask.shape
    if not mask.any():
        return CropBox.full(shape)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        start.append(max(int(idx[0]) - margin[axis], 0))
        stop.append(min(int(idx[-1]) + 1 + margin[axis], shape[axis]))
    return CropBox(tuple(start), tuple(stop), tuple(shape))


def crop(volume: np.ndarray, box: CropBox) -> np.ndarray:
    """``volume (H, W, D[, C])`` -> ``(h, w, d[, C])`` inside ``box`` (a copy)."""
    if tuple(volume.shape[:3]) != tuple(box.original_shape):
        raise ValueError(
            f"crop: volume shape {tuple(volume.shape[:3])} does not match the box's "
            f"original_shape {box.original_shape}"
        )
    return np.ascontiguousarray(volume[box.slices])


def uncrop(cropped: np.ndarray, box: CropBox, fill=0) -> np.ndarray:
    """Inverse of `crop`: ``(h, w, d[, C])`` -> ``original_shape[, C]``, ``fill`` outside."""
    if tuple(cropped.shape[:3]) != box.shape:
        raise ValueError(f"uncrop: expected a volume of the box shape {box.shape}, found {tuple(cropped.shape[:3])}")
    out = np.full(tuple(box.original_shape) + tuple(cropped.shape[3:]), fill, dtype=cropped.dtype)
    out[box.slices] = cropped
    return out


def pad_to_multiple(volume: np.ndarray, multiple: int = 8, value=0) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Pads the first three axes at their end to a multiple of ``multiple``.

    Returns ``(padded, original_hwd)``; `unpad` with that shape undoes it.

    >>> padded, hwd = pad_to_multiple(np.ones((5, 8, 9)), 8)
    >>> padded.shape, hwd, unpad(padded, hwd).shape
    ((8, 8, 16), (5, 8, 9), (5, 8, 9))
    """
    hwd = tuple(int(s) for s in volume.shape[:3])
    target = [-(-s // multiple) * multiple for s in hwd]
    pads = [(0, t - s) for s, t in zip(hwd, target)] + [(0, 0)] * (volume.ndim - 3)
    if not any(p[1] for p in pads):
        return volume, hwd
    return np.pad(volume, pads, constant_values=value), hwd


def unpad(volume: np.ndarray, hwd: Sequence[int]) -> np.ndarray:
    """Inverse of `pad_to_multiple`: keeps ``volume[:H, :W, :D]``."""
    return volume[: hwd[0], : hwd[1], : hwd[2]]


def normalize_nonzero(image: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Z-score each channel over the brain mask; background stays 0.

    ``image (H, W, D, C)`` -> float32 of the same shape. The mask is the voxels where
    any channel is non-zero (paper Sec. IV-A); a channel constant over the mask
    becomes 0 there.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.any(image != 0, axis=-1)
    out = np.zeros_like(image)
    if not mask.any():
        return out
    for c in range(image.shape[-1]):
        vals = image[..., c][mask].astype(np.float64)
        mean, std = vals.mean(), vals.std()
        out[..., c][mask] = ((vals - mean) / max(std, eps)).astype(np.float32)
    return out


def normalize_whole(image: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Z-score each channel of ``image (H, W, D, C)`` over every voxel."""
    image = np.asarray(image, dtype=np.float32)
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        vals = image[..., c].astype(np.float64)
        out[..., c] = ((vals - vals.mean()) / max(vals.std(), eps)).astype(np.float32)
    return out


def normalize(image: np.ndarray, method: str) -> np.ndarray:
    """Applies ``method`` in `NORMALIZATIONS` to ``image (H, W, D, C)``."""
    if method == "zscore_nonzero":
        return normalize_nonzero(image)
    if method == "zscore":
        return normalize_whole(image)
    if method == "none":
        return np.asarray(image, dtype=np.float32)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: {method!r}")


@dataclasses.dataclass
class PreprocessedCase:
    """Output of `preprocess_case`.

    Attributes:
        case_id: the case name.
        image: ``(h, w, d, C)`` float32, cropped and normalised.
        classes: ``(h, w, d)`` uint8 training classes, or ``None``.
        box: where the crop sits in the original ``(H, W, D)`` grid.
        affine: ``(4, 4)`` of the original grid.
        spacing: ``(3,)`` voxel size in mm.
    """

    case_id: str
    image: np.ndarray
    classes: Optional[np.ndarray]
    box: CropBox
    affine: np.ndarray
    spacing: Tuple[float, float, float]


def preprocess_case(loaded, config: PreprocessingConfig) -> PreprocessedCase:
    """Crop, normalise and map labels of a validated `LoadedCase`.

    ``loaded.image (H, W, D, C)`` -> ``image (h, w, d, C)`` float32 and
    ``classes (h, w, d)`` uint8 (via `missu_keras.labels`; BraTS 4 -> 3).
    The case's channels must be ``config.modalities``, in that order.
    """
    if tuple(loaded.channel_names) != tuple(config.modalities):
        raise ValueError(
            f"case {loaded.case_id!r}: channel order mismatch: expected {list(config.modalities)} "
            f"(preprocessing config), found {list(loaded.channel_names)}"
        )
    image = loaded.image
    box = (foreground_box(image, config.crop_margin) if config.crop_to_nonzero
           else CropBox.full(image.shape))
    image = normalize(crop(image, box), config.normalization)
    classes = None
    if loaded.labels is not None:
        conv = get_label_convention(config.label_convention)
        classes = conv.to_classes(crop(loaded.labels, box), source=f"case {loaded.case_id!r} labels")
    return PreprocessedCase(loaded.case_id, image, classes, box, np.asarray(loaded.affine), tuple(loaded.spacing))


def restore_labels(classes: np.ndarray, box: CropBox, label_convention: str) -> np.ndarray:
    """Training classes on the cropped (possibly padded) grid -> dataset labels on the original grid.

    ``classes (h', w', d')`` with ``h' >= h`` etc. (padding from `pad_to_multiple` is
    dropped) -> ``(H, W, D)`` uint8 labels (BraTS class 3 -> 4), background outside the box.

    >>> box = CropBox((1, 1, 1), (3, 3, 3), (4, 4, 4))
    >>> out = restore_labels(np.full((8, 8, 8), 3), box, "brats")
    >>> out.shape, int(out.sum()), int(out.max())
    ((4, 4, 4), 32, 4)
    """
    classes = unpad(np.asarray(classes), box.shape)
    if tuple(classes.shape[:3]) != box.shape:
        raise ValueError(f"restore_labels: expected at least the box shape {box.shape}, found {classes.shape}")
    labels = get_label_convention(label_convention).to_labels(classes)
    return uncrop(labels, box, fill=0)

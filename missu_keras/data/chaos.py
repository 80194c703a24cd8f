"""CHAOS MR (liver) reader: DICOM series + Ground PNG masks (optional extra ``chaos``).

Layout (``../shared/docs/data-and-evaluation.md``)::

    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm
    Train_Sets/MR/<id>/T1DUAL/Ground/*.png        (one mask set for both phases)
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm
    Train_Sets/MR/<id>/T2SPIR/Ground/*.png

* T1DUAL: in-phase and out-phase share geometry and are stacked as two channels
  ``("in_phase", "out_phase")``; T2SPIR is a separate single-channel set ``("t2spir",)``.
* Slice ``k`` is the ``k``-th file name in natural order (digit runs compared by
  value), for DICOM and PNG alike.
* Spacing comes from the DICOM headers: ``PixelSpacing`` (rows, columns) and
  ``SpacingBetweenSlices``, else ``SliceThickness``.
* Liver is the mask grey range 55-70 (63 nominal); kidneys (126, 189) and spleen (252)
  are other organs, so the mask is thresholded, never ``> 0``.
* The paper's 15 / 5 split is the named split ``"paper_15_5"`` (`chaos_split`).

pydicom and Pillow are imported only inside these functions
(``pip install "missu-keras[chaos]"``).

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_chaos
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_chaos(root, num_cases=1, seed=0, shape=(32, 32, 6))
>>> case = find_chaos_cases(root)[0]
>>> case.case_id, case.channel_names
('1', ('in_phase', 'out_phase'))
>>> loaded = case.load()
>>> loaded.image.shape, loaded.labels.shape, sorted(set(loaded.labels.ravel().tolist()))
((32, 32, 6, 2), (32, 32, 6), [0, 1])
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from missu_keras.data.brats import natural_key
from missu_keras.data.validation import (
    AFFINE_ATOL,
    LoadedCase,
    check_brain_mask,
    check_finite,
    check_labels,
    check_same_geometry,
)

logger = logging.getLogger("missu_keras.data")

CHAOS_SEQUENCES = ("T1DUAL", "T2SPIR")
ORGAN_GREY_RANGES: Dict[str, Tuple[int, int]] = {
    "liver": (55, 70),
    "right_kidney": (110, 135),
    "left_kidney": (175, 200),
    "spleen": (240, 255),
}
"""Inclusive grey-value ranges of the CHAOS MR Ground PNGs."""

CHAOS_SPLITS = ("paper_15_5",)

_INSTALL_HINT = 'pip install "missu-keras[chaos]"'


def _pydicom():
    try:
        import pydicom  # the optional "chaos" extra: imported when a DICOM is read
    except ImportError as exc:
        raise ImportError(f"Reading CHAOS DICOM needs pydicom: {_INSTALL_HINT} ({exc})") from exc
    return pydicom


def _pil_image():
    try:
        from PIL import Image  # the optional "chaos" extra
    except ImportError as exc:
        raise ImportError(f"Reading CHAOS masks needs Pillow: {_INSTALL_HINT} ({exc})") from exc
    return Image


def chaos_channel_names(sequence: str = "T1DUAL") -> Tuple[str, ...]:
    """``("in_phase", "out_phase")`` for T1DUAL, ``("t2spir",)`` for T2SPIR."""
    if sequence not in CHAOS_SEQUENCES:
        raise ValueError(f"sequence must be one of {CHAOS_SEQUENCES}. Received: sequence={sequence!r}")
    return ("in_phase", "out_phase") if sequence == "T1DUAL" else ("t2spir",)


@dataclasses.dataclass(frozen=True)
class ChaosCase:
    """One CHAOS MR case and sequence on disk.

    Attributes:
        case_id: the case folder name (``"1"``, ``"2"``, ...).
        sequence: ``"T1DUAL"`` or ``"T2SPIR"``.
        series_dirs: ``{channel_name: DICOM folder}`` in channel order.
        ground_dir: the Ground PNG folder, or ``None`` (test cases).
        organ: the organ read from the masks (default ``"liver"``).
    """

    case_id: str
    sequence: str
    series_dirs: Dict[str, Path]
    ground_dir: Optional[Path]
    organ: str = "liver"

    @property
    def channel_names(self) -> Tuple[str, ...]:
        return tuple(self.series_dirs)

    @property
    def has_seg(self) -> bool:
        return self.ground_dir is not None

    @property
    def label_convention(self) -> str:
        return "chaos"

    def source_files(self) -> List[Path]:
        files = []
        for d in self.series_dirs.values():
            files.extend(_sorted_files(d, (".dcm",)))
        if self.ground_dir is not None:
            files.extend(_sorted_files(self.ground_dir, (".png",)))
        return files

    def load(self, label_convention: Optional[str] = None) -> LoadedCase:
        return load_chaos_case(self, label_convention=label_convention)


def _sorted_files(directory: Path, extensions: Sequence[str]) -> List[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    return sorted(files, key=lambda p: natural_key(p.name))


def _mr_root(root: Path) -> Path:
    for cand in (root, root / "MR", root / "Train_Sets" / "MR"):
        if cand.is_dir() and any((d / "T1DUAL").is_dir() or (d / "T2SPIR").is_dir()
                                 for d in cand.iterdir() if d.is_dir()):
            return cand
    raise FileNotFoundError(
        f"{root}: no CHAOS MR cases found: expected <root>[/Train_Sets][/MR]/<id>/T1DUAL or T2SPIR"
    )


def is_chaos_root(root) -> bool:
    """Whether ``root`` (or its ``Train_Sets[/MR]``) holds CHAOS MR case folders."""
    try:
        _mr_root(Path(root))
    except (FileNotFoundError, OSError):
        return False
    return True


def find_chaos_cases(root, sequence: str = "T1DUAL", organ: str = "liver") -> List[ChaosCase]:
    """Lists the CHAOS MR cases under ``root``, sorted by case number.

    Args:
        root: the CHAOS folder, its ``Train_Sets``, or ``Train_Sets/MR``.
        sequence: ``"T1DUAL"`` (2 channels) or ``"T2SPIR"`` (1 channel).
        organ: mask organ, a key of `ORGAN_GREY_RANGES`.

    Returns:
        One `ChaosCase` per ``<id>`` folder holding the sequence; ``ground_dir`` is
        ``None`` where there is no ``Ground`` folder.
    """
    channel_names = chaos_channel_names(sequence)
    if organ not in ORGAN_GREY_RANGES:
        raise ValueError(f"organ must be one of {sorted(ORGAN_GREY_RANGES)}. Received: organ={organ!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CHAOS root folder not found")
    mr = _mr_root(root)
    cases = []
    for d in sorted((p for p in mr.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        seq_dir = d / sequence
        if not seq_dir.is_dir():
            continue
        if sequence == "T1DUAL":
            series = {channel_names[0]: seq_dir / "DICOM_anon" / "InPhase",
                      channel_names[1]: seq_dir / "DICOM_anon" / "OutPhase"}
        else:
            series = {channel_names[0]: seq_dir / "DICOM_anon"}
        ground = seq_dir / "Ground"
        cases.append(ChaosCase(d.name, sequence, series, ground if ground.is_dir() else None, organ))
    if not cases:
        raise FileNotFoundError(f"{mr}: no CHAOS case folder holds a {sequence} sequence")
    return cases


def _header_value(ds, name: str):
    value = getattr(ds, name, None)
    return None if value is None or value == "" else value


def read_dicom_series(directory) -> Tuple[np.ndarray, Tuple[float, float, float], np.ndarray]:
    """Reads a folder of single-slice DICOM files.

    Returns:
        ``(volume (rows, columns, slices) float32, spacing (3,) mm, affine (4, 4))``.
        Slices follow the natural order of the file names. The affine maps
        (row, column, slice) indices to patient coordinates (LPS, mm) from
        ImageOrientationPatient / ImagePositionPatient of the first slice and the
        header spacing.
    """
    pydicom = _pydicom()
    directory = Path(directory)
    files = _sorted_files(directory, (".dcm",))
    if not files:
        present = sorted(p.name for p in directory.iterdir())[:10] if directory.is_dir() else "no such folder"
        raise FileNotFoundError(f"{directory}: expected DICOM slices (*.dcm), found {present}")
    slices, first = [], None
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises many types for a broken file
            raise ValueError(
                f"{f}: cannot read DICOM: expected an MR image slice, found {type(exc).__name__}: {exc}"
            ) from exc
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        if first is None:
            first = (f, ds, pixels.shape)
        elif pixels.shape != first[2]:
            raise ValueError(f"{f}: slice size mismatch: expected {first[2]} (as {first[0]}), found {pixels.shape}")
        slices.append(pixels * slope + intercept)
    f0, ds0, _ = first
    pixel_spacing = _header_value(ds0, "PixelSpacing")
    if pixel_spacing is None:
        raise ValueError(f"{f0}: expected a PixelSpacing header, found none")
    between = _header_value(ds0, "SpacingBetweenSlices")
    thickness = _header_value(ds0, "SliceThickness")
    dz = between if between is not None else thickness
    if dz is None:
        raise ValueError(f"{f0}: expected SpacingBetweenSlices or SliceThickness, found neither")
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]), float(dz))
    affine = np.eye(4)
    iop = getattr(ds0, "ImageOrientationPatient", None)
    row_dir, col_dir = (np.asarray(iop[:3], float), np.asarray(iop[3:], float)) if iop else (
        np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    # Index i (rows) moves along the column direction cosine, j (columns) along the row one.
    affine[:3, 0] = col_dir * spacing[0]
    affine[:3, 1] = row_dir * spacing[1]
    affine[:3, 2] = np.cross(row_dir, col_dir) * spacing[2]
    ipp = getattr(ds0, "ImagePositionPatient", None)
    if ipp:
        affine[:3, 3] = np.asarray(ipp, float)
    return np.stack(slices, axis=-1).astype(np.float32), spacing, affine


def read_chaos_mask(directory, organ: str = "liver") -> np.ndarray:
    """Reads a Ground folder of PNGs into an ``(rows, columns, slices)`` uint8 0/1 mask.

    A pixel is ``organ`` when its grey value lies in ``ORGAN_GREY_RANGES[organ]``
    (liver: 55-70); other organs' grey values are background.
    """
    Image = _pil_image()
    lo, hi = ORGAN_GREY_RANGES[organ]
    directory = Path(directory)
    files = _sorted_files(directory, (".png",))
    if not files:
        raise FileNotFoundError(f"{directory}: expected Ground masks (*.png), found none")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                grey = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
        except Exception as exc:
            raise ValueError(f"{f}: cannot read PNG mask: {type(exc).__name__}: {exc}") from exc
        if out and grey.shape != out[0].shape:
            raise ValueError(f"{f}: mask size mismatch: expected {out[0].shape} (as {files[0]}), found {grey.shape}")
        out.append(((grey >= lo) & (grey <= hi)).astype(np.uint8))
    return np.stack(out, axis=-1)


def load_chaos_case(case: ChaosCase, label_convention: Optional[str] = None) -> LoadedCase:
    """Reads and validates a `ChaosCase`.

    Returns a `LoadedCase` with ``image (rows, columns, slices, C)`` float32
    (C = 2 for T1DUAL: in-phase, out-phase; 1 for T2SPIR), ``labels`` 0/1 uint8
    (``None`` without masks), the header spacing and affine.
    """
    convention = label_convention or "chaos"
    channels, ref = [], None
    for name, d in case.series_dirs.items():
        vol, spacing, affine = read_dicom_series(d)
        if ref is None:
            ref = (d, vol.shape, affine, spacing)
        else:
            check_same_geometry(ref[0], ref[1], ref[2], d, vol.shape, affine, AFFINE_ATOL)
        check_finite(vol, d)
        channels.append(vol)
    labels = None
    if case.ground_dir is not None:
        mask = read_chaos_mask(case.ground_dir, case.organ)
        check_same_geometry(ref[0], ref[1], None, case.ground_dir, mask.shape, None)
        labels = check_labels(mask, convention, case.ground_dir)
    image = np.stack(channels, axis=-1)
    check_brain_mask(image, f"case {case.case_id!r} ({', '.join(str(d) for d in case.series_dirs.values())})")
    return LoadedCase(
        case_id=case.case_id,
        image=image,
        labels=labels,
        affine=ref[2],
        spacing=ref[3],
        channel_names=case.channel_names,
        label_convention=convention,
        source_files=tuple(case.source_files()),
    )


def chaos_split(case_ids: Sequence[str], name: str = "paper_15_5") -> Dict[str, List[str]]:
    """The paper's CHAOS split as ``{"train": [...], "val": [...]}``.

    ``"paper_15_5"``: case ids sorted by number (natural order), the first 15 train
    and the last 5 validate. With the 20 CHAOS MR training cases that is
    train = 1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33 and
    val = 34, 36, 37, 38, 39. With another number of cases the same rule keeps the
    last quarter (at least one) for validation and logs a warning.

    >>> ids = ["1", "2", "3", "5", "8", "10", "13", "15", "19", "20", "21", "22",
    ...        "31", "32", "33", "34", "36", "37", "38", "39"]
    >>> split = chaos_split(ids)
    >>> len(split["train"]), split["val"]
    (15, ['34', '36', '37', '38', '39'])
    """
    if name not in CHAOS_SPLITS:
        raise ValueError(f"Unknown CHAOS split {name!r}; accepted splits: {list(CHAOS_SPLITS)}")
    ids = sorted((str(c) for c in case_ids), key=natural_key)
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids must be distinct. Received: {ids}")
    if len(ids) < 2:
        raise ValueError(f"split {name!r} needs at least 2 cases. Received: {ids}")
    n_val = 5 if len(ids) == 20 else max(1, round(len(ids) / 4))
    if len(ids) != 20:
        logger.warning("split %r is defined on 20 cases; found %d, keeping the last %d for validation",
                       name, len(ids), n_val)
    return {"train": ids[:-n_val], "val": ids[-n_val:]}

"""Synthetic BraTS (NIfTI) and CHAOS (DICOM + PNG) cases written in the real layouts,
and the BraTS cases also as a Decathlon task (`write_synthetic_msd`) and an nnU-Net raw
dataset (`write_synthetic_nnunet`).

The files go through exactly the same readers as real data, so the demo, the tests
and the notebooks exercise the real code paths. Everything is deterministic for a
seed: the same call writes byte-identical files (fixed NIfTI header fields, gzip
``mtime=0``, DICOM UIDs derived from the seed).

BraTS: an ellipsoid head with a smooth irregular boundary, white / grey matter and
ventricles, and a tumour whose edema (2), enhancing rim (4; 3 in the 2023 layout) and
necrotic core (1) have their usual contrasts: edema bright on FLAIR / T2, rim bright
on T1ce, necrosis dark on T1ce. Multiplicative smooth bias field and Gaussian noise;
background exactly 0 (skull-stripped); 1 mm voxels.

CHAOS: an abdomen-like body with a fat ring, liver, both kidneys and spleen;
T1DUAL in/out phase and T2SPIR series; Ground masks with the CHAOS grey values
(liver 63, right kidney 126, left kidney 189, spleen 252).

>>> import tempfile
>>> from missu_keras.data.brats import find_brats_cases
>>> root = tempfile.mkdtemp()
>>> dirs = write_synthetic_brats(root, num_cases=2, seed=1, shape=(32, 32, 24), layout="2019")
>>> sorted(p.parent.name for p in dirs)
['HGG', 'LGG']
>>> vols = synthetic_brats_volumes((32, 32, 24), seed=3)
>>> sorted(vols["images"]), np.unique(vols["seg"]).tolist()
(['flair', 't1', 't1ce', 't2'], [0, 1, 2, 4])
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from missu_keras.data import io
from missu_keras.data.brats import BRATS_LAYOUTS, BRATS_MODALITIES, MODALITY_2023_NAMES
from missu_keras.data.msd import MSD_BRATS_LABELS
from missu_keras.files import write_json_atomic
from missu_keras.labels import get_label_convention

FULL_BRATS_SHAPE = (240, 240, 155)
CHAOS_GREY = {"liver": 63, "right_kidney": 126, "left_kidney": 189, "spleen": 252}

# Tissue intensities per modality (arbitrary units, x1000 on disk):
#            WM    GM    CSF   edema  rim   necrosis
_BRATS_CONTRAST = {
    "t1": (0.80, 0.60, 0.20, 0.45, 0.55, 0.30),
    "t1ce": (0.80, 0.60, 0.20, 0.45, 1.00, 0.12),
    "t2": (0.45, 0.60, 1.00, 0.85, 0.70, 0.90),
    "flair": (0.45, 0.55, 0.10, 1.00, 0.80, 0.60),
}
_WM, _GM, _CSF, _ED, _RIM, _NEC = range(6)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def smooth_field(shape: Sequence[int], rng, cells: int = 4) -> np.ndarray:
    """A smooth random field of ``shape`` with about ``cells`` bumps per axis.

    Gaussian bumps on a coarse grid, combined separably (three small matrix
    products, no full-size filtering), so a 240 x 240 x 155 field costs tens of ms.
    Values are rescaled to zero mean and unit standard deviation.
    """
    rng = _rng(rng)
    shape = tuple(int(s) for s in shape)
    coarse = rng.standard_normal((cells + 2,) * len(shape)).astype(np.float32)
    out = coarse
    for axis, n in enumerate(shape):
        x = (np.arange(n, dtype=np.float32) + 0.5) / n
        centres = (np.arange(cells + 2, dtype=np.float32) - 0.5) / cells
        basis = np.exp(-0.5 * ((x[:, None] - centres[None, :]) * cells / 0.8) ** 2)
        basis /= basis.sum(axis=1, keepdims=True)
        out = np.moveaxis(np.tensordot(basis, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    out = out - out.mean()
    return (out / max(float(out.std()), 1e-6)).astype(np.float32)


def _grid(shape) -> Tuple[np.ndarray, ...]:
    return tuple(np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
                 for i, n in enumerate(shape))


def _ellipsoid_radius(grid, centre, radii) -> np.ndarray:
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))


def synthetic_brats_volumes(
    shape: Sequence[int] = FULL_BRATS_SHAPE, seed=0, enhancing_label: int = 4
) -> Dict[str, object]:
    """One synthetic BraTS case in memory.

    Args:
        shape: ``(H, W, D)``, e.g. ``(240, 240, 155)`` or ``(64, 64, 64)``.
        seed: int or ``np.random.Generator``.
        enhancing_label: 4 (2019-2021) or 3 (2023).

    Returns:
        ``{"images": {modality: int16 (H, W, D)}, "seg": uint8 (H, W, D)}``; background
        is 0 in every modality, brain voxels are >= 1.
    """
    rng = _rng(seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8. Received: shape={shape}")
    grid = _grid(shape)
    size = np.asarray(shape, np.float32)

    # Head: ellipsoid (BraTS brains span ~60 / 72 / 84 % of the box) with a wavy edge.
    centre = size / 2 + rng.uniform(-0.02, 0.02, 3) * size
    radii = size * np.array([0.30, 0.36, 0.42]) * rng.uniform(0.92, 1.05, 3)
    r = _ellipsoid_radius(grid, centre, radii)
    r *= 1.0 + 0.06 * np.clip(smooth_field(shape, rng, 5), -2.5, 2.5)
    brain = r < 1.0
    tissue = np.full(shape, _WM, np.uint8)
    gm_edge = 0.78 + 0.05 * smooth_field(shape, rng, 6)
    tissue[r > gm_edge] = _GM
    for side in (-1, 1):  # two ventricles either side of the midline
        v_centre = centre + np.array([side * 0.10, -0.05, 0.05]) * radii
        v = _ellipsoid_radius(grid, v_centre, radii * np.array([0.08, 0.30, 0.22]))
        tissue[v < 1.0] = _CSF

    # Tumour: random centre inside the brain, random size, irregular outline.
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    t_centre = centre + direction * rng.uniform(0.0, 0.45) * radii
    t_radii = radii * rng.uniform(0.30, 0.50) * rng.uniform(0.8, 1.2, 3)
    d = _ellipsoid_radius(grid, t_centre, t_radii)
    d *= 1.0 + 0.2 * np.clip(smooth_field(shape, rng, 4), -1.0, 1.0) * (d > 0.2)
    core_r, nec_r = rng.uniform(0.50, 0.62), rng.uniform(0.30, 0.40)
    seg = np.zeros(shape, np.uint8)
    seg[d < 1.0] = 2
    seg[d < core_r] = enhancing_label
    seg[d < nec_r] = 1
    seg[~brain] = 0
    ci = tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(t_centre, shape))
    seg[ci] = 1  # the tumour centre is always inside the brain: keep every label present
    tissue[seg == 2] = _ED
    tissue[seg == enhancing_label] = _RIM
    tissue[seg == 1] = _NEC

    images = {}
    for modality in BRATS_MODALITIES:
        lut = np.asarray(_BRATS_CONTRAST[modality], np.float32)
        vol = lut[tissue]
        vol *= np.exp(0.12 * smooth_field(shape, rng, 3))  # bias field
        vol += rng.standard_normal(shape, dtype=np.float32) * 0.03
        vol = np.clip(np.rint(vol * 1000.0), 1, 4000).astype(np.int16)
        vol[~brain] = 0
        images[modality] = vol
    return {"images": images, "seg": seg}


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """The 1 mm affine real BraTS volumes carry (x and y flipped, RAS+ world)."""
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[1, 3] = float(shape[1] - 1)
    return aff


def write_nifti(path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Writes ``data`` as NIfTI-1 with fixed header fields (`missu_keras.data.io.write_nifti`):
    the same inputs always give the same bytes."""
    return io.write_nifti(path, data, affine, description="missu-keras synthetic")


SYNTHETIC_MARK = "SYNTH"
"""In every synthetic BraTS case id, inside the layout's naming pattern
(``BraTS2021_SYNTH_00000``, ``BraTS-GLI-SYNTH-00000-000``, ...): no real BraTS id holds
it, so synthetic cases can never replace or be taken for real ones."""


def synthetic_brats_case_id(layout: str, index: int) -> str:
    """The id of synthetic case ``index`` in ``layout``.

    >>> [synthetic_brats_case_id(layout, 0) for layout in BRATS_LAYOUTS]
    ['BraTS19_SYNTH_000_1', 'BraTS20_SYNTH_001', 'BraTS2021_SYNTH_00000', 'BraTS-GLI-SYNTH-00000-000']
    """
    if layout == "2019":
        return f"BraTS19_{SYNTHETIC_MARK}_{index:03d}_1"
    if layout == "2020":
        return f"BraTS20_{SYNTHETIC_MARK}_{index + 1:03d}"
    if layout == "2021":
        return f"BraTS2021_{SYNTHETIC_MARK}_{index:05d}"
    return f"BraTS-GLI-{SYNTHETIC_MARK}-{index:05d}-000"


def _brats_case_names(layout: str, index: int) -> Tuple[str, Optional[str]]:
    grade = ("HGG" if index % 2 == 0 else "LGG") if layout == "2019" else None
    return synthetic_brats_case_id(layout, index), grade


def write_synthetic_brats(
    out_dir,
    num_cases: int = 4,
    seed: int = 0,
    shape: Sequence[int] = FULL_BRATS_SHAPE,
    layout: str = "2021",
    extension: str = ".nii.gz",
    with_seg: bool = True,
) -> List[Path]:
    """Writes ``num_cases`` synthetic cases in a BraTS layout; returns the case folders.

    Args:
        out_dir: root folder (created). 2019 cases go to ``HGG/`` and ``LGG/``
            alternately.
        num_cases: how many cases, named `synthetic_brats_case_id` (marked ``SYNTH``, so
            never a real BraTS id).
        seed: case ``i`` depends only on ``(seed, i)``.
        shape: ``(H, W, D)``; default the full 240 x 240 x 155.
        layout: ``"2019"``, ``"2020"``, ``"2021"`` (default) or ``"2023"`` (file names
            ``t2f/t1c/t1n/t2w``, enhancing tumour label 3).
        extension: ``".nii.gz"`` or ``".nii"`` (uncompressed, as in some 2020 copies).
        with_seg: ``False`` writes prediction-only cases (no ``seg`` file).
    """
    if layout not in BRATS_LAYOUTS:
        raise ValueError(f"layout must be one of {list(BRATS_LAYOUTS)}. Received: layout={layout!r}")
    if extension not in (".nii.gz", ".nii"):
        raise ValueError(f"extension must be '.nii.gz' or '.nii'. Received: extension={extension!r}")
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1. Received: num_cases={num_cases!r}")
    out_dir = Path(out_dir)
    sep = "-" if layout == "2023" else "_"
    affine = brats_affine(shape)
    dirs = []
    for i, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(num_cases))):
        rng = np.random.default_rng(child)
        vols = synthetic_brats_volumes(shape, rng, enhancing_label=3 if layout == "2023" else 4)
        case_id, grade = _brats_case_names(layout, i)
        case_dir = out_dir / grade / case_id if grade else out_dir / case_id
        for modality, vol in vols["images"].items():
            suffix = MODALITY_2023_NAMES[modality] if layout == "2023" else modality
            write_nifti(case_dir / f"{case_id}{sep}{suffix}{extension}", vol, affine)
        if with_seg:
            write_nifti(case_dir / f"{case_id}{sep}seg{extension}", vols["seg"], affine)
        dirs.append(case_dir)
    return dirs


# ------------------------------------------------------- Decathlon and nnU-Net raw

MSD_MODALITY_NAMES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
"""Task01_BrainTumour's ``modality`` entry (file channel order)."""
_MSD_FILE_ORDER = ("flair", "t1", "t1ce", "t2")
NNUNET_CHANNEL_NAMES = {"0": "FLAIR", "1": "T1ce", "2": "T1", "3": "T2"}


def _split_cases(seed: int, num_cases: int, num_test: int):
    """``(case_rng, is_test, index)`` per case: training cases first, then test cases."""
    if int(num_cases) < 1 or int(num_test) < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test >= 0. Received: "
                         f"num_cases={num_cases!r}, num_test={num_test!r}")
    children = np.random.SeedSequence(int(seed)).spawn(int(num_cases) + int(num_test))
    for i, child in enumerate(children):
        test = i >= int(num_cases)
        yield np.random.default_rng(child), test, i - int(num_cases) if test else i


def _brats_seg_as(seg: np.ndarray, convention: str) -> np.ndarray:
    """A 0/1/2/4 BraTS segmentation in another convention with the same classes."""
    return get_label_convention(convention).to_labels(get_label_convention("brats").to_classes(seg))


def write_synthetic_msd(out_dir, num_cases: int = 4, seed: int = 0,
                        shape: Sequence[int] = FULL_BRATS_SHAPE, num_test: int = 0) -> Path:
    """Writes synthetic BraTS cases as a Decathlon Task01_BrainTumour folder; returns it.

    ``out_dir/dataset.json`` (Task01's ``modality`` and ``labels``), ``imagesTr/`` 4-D
    NIfTI with channels FLAIR, T1w, t1gd, T2w on the last axis, ``labelsTr/`` (1 edema,
    2 non-enhancing tumour, 3 enhancing), ``imagesTs/`` (``num_test`` cases). Case ``i``
    is the same tumour as `write_synthetic_brats` case ``i`` of the same seed and shape
    (ids ``BRATS_SYNTH_000``, ...; test ids ``BRATS_SYNTH_TEST_000``, ...).
    """
    out = Path(out_dir)
    affine, training, test = brats_affine(shape), [], []
    for rng, is_test, i in _split_cases(seed, num_cases, num_test):
        vols = synthetic_brats_volumes(shape, rng)
        case_id = f"BRATS_{SYNTHETIC_MARK}_{'TEST_' if is_test else ''}{i:03d}"
        image = np.stack([vols["images"][m] for m in _MSD_FILE_ORDER], axis=-1)
        folder = "imagesTs" if is_test else "imagesTr"
        write_nifti(out / folder / f"{case_id}.nii.gz", image, affine)
        if is_test:
            test.append(f"./imagesTs/{case_id}.nii.gz")
            continue
        write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", _brats_seg_as(vols["seg"], "msd_brats"), affine)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    write_json_atomic(out / "dataset.json", {
        "name": "BRATS", "description": "missu-keras synthetic brain tumours (Task01_BrainTumour layout)",
        "tensorImageSize": "4D", "modality": MSD_MODALITY_NAMES,
        "labels": {str(k): v for k, v in MSD_BRATS_LABELS.items()},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    })
    return out


def write_synthetic_nnunet(out_dir, num_cases: int = 4, seed: int = 0,
                           shape: Sequence[int] = FULL_BRATS_SHAPE, num_test: int = 0,
                           regions: bool = False) -> Path:
    """Writes synthetic BraTS cases as an nnU-Net v2 raw dataset; returns its folder.

    ``out_dir/dataset.json``, ``imagesTr/<case>_000{0,1,2,3}.nii.gz`` (FLAIR, T1ce, T1,
    T2), ``labelsTr/<case>.nii.gz`` with consecutive labels (1 necrotic core, 2 edema,
    3 enhancing: nnU-Net wants no gaps), ``imagesTs/`` (``num_test`` cases). The labels
    are declared per class, or with ``regions=True`` region-based as nnU-Net's BraTS
    example (``"whole tumor": [1, 2, 3]``, ``"tumor core": [1, 3]``, ``"enhancing
    tumor": 3``, with ``regions_class_order``). Name the folder ``DatasetXXX_Name`` as
    nnU-Net does: its name is the label convention's. Same tumours as
    `write_synthetic_brats` for the same seed and shape.
    """
    out = Path(out_dir)
    affine, n_train = brats_affine(shape), 0
    for rng, is_test, i in _split_cases(seed, num_cases, num_test):
        vols = synthetic_brats_volumes(shape, rng)
        case_id = f"BRATS_{SYNTHETIC_MARK}_{'TEST_' if is_test else ''}{i:03d}"
        folder = out / ("imagesTs" if is_test else "imagesTr")
        for c, modality in enumerate(BRATS_MODALITIES):
            write_nifti(folder / f"{case_id}_{c:04d}.nii.gz", vols["images"][modality], affine)
        if not is_test:
            write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", _brats_seg_as(vols["seg"], "brats2023"), affine)
            n_train += 1
    if regions:
        labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3}
    else:
        labels = {"background": 0, "necrotic core": 1, "edema": 2, "enhancing tumor": 3}
    spec = {"channel_names": NNUNET_CHANNEL_NAMES, "labels": labels, "numTraining": n_train,
            "file_ending": ".nii.gz", "name": "missu-keras synthetic brain tumours"}
    if regions:
        spec["regions_class_order"] = [2, 1, 3]  # region i is painted with this label
    write_json_atomic(out / "dataset.json", spec)
    return out


# ----------------------------------------------------------------------------- CHAOS

CHAOS_MR_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)
"""The 20 CHAOS MR training case numbers; synthetic cases reuse them (then 40, 41, ...)."""

# Tissue intensities (x1000 on disk): background, fat, muscle/other, liver, kidney, spleen
_CHAOS_CONTRAST = {
    "in_phase": (0.02, 0.90, 0.35, 0.55, 0.50, 0.45),
    "out_phase": (0.02, 0.80, 0.32, 0.42, 0.48, 0.44),
    "t2spir": (0.02, 0.15, 0.25, 0.35, 0.65, 0.70),
}
_ORGAN_CODE = {"liver": 3, "right_kidney": 4, "left_kidney": 4, "spleen": 5}


def synthetic_chaos_volumes(shape: Sequence[int] = (256, 256, 32), seed=0) -> Dict[str, object]:
    """One synthetic abdominal MR case in memory.

    Returns ``{"images": {"in_phase"|"out_phase"|"t2spir": uint16 (H, W, D)},
    "mask": uint8 (H, W, D) PNG grey values (CHAOS_GREY), "organs": {name: bool}}``.
    Axis 0 is image rows (anterior -> posterior), axis 1 columns (patient right on the
    left of the image), axis 2 slices (feet -> head).
    """
    rng = _rng(seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape[:2]) < 16 or shape[2] < 4:
        raise ValueError(f"shape must be (H >= 16, W >= 16, D >= 4). Received: shape={shape}")
    grid = _grid(shape)
    size = np.asarray(shape, np.float32)

    def wobble(cells):
        return 1.0 + 0.08 * np.clip(smooth_field(shape, rng, cells), -2, 2)

    body_r = _ellipsoid_radius(grid[:2], size[:2] / 2, size[:2] * np.array([0.34, 0.45]) * rng.uniform(0.9, 1.05, 2))
    body_r = body_r * wobble(3)
    tissue = np.zeros(shape, np.uint8)
    tissue[body_r < 1.0] = 1  # subcutaneous fat ring
    tissue[body_r < 0.88] = 2
    organs = {}
    # (row, col, slice) centres and radii as fractions of the volume
    specs = {
        "liver": ((0.42, 0.33, 0.60), (0.17, 0.17, 0.42)),
        "right_kidney": ((0.66, 0.34, 0.35), (0.06, 0.05, 0.22)),
        "left_kidney": ((0.66, 0.66, 0.38), (0.06, 0.05, 0.22)),
        "spleen": ((0.45, 0.73, 0.62), (0.08, 0.07, 0.25)),
    }
    mask = np.zeros(shape, np.uint8)
    for name, (c, rad) in specs.items():
        centre = size * (np.asarray(c) + rng.uniform(-0.02, 0.02, 3))
        radii = size * np.asarray(rad) * rng.uniform(0.9, 1.1, 3)
        inside = (_ellipsoid_radius(grid, centre, radii) * wobble(4) < 1.0) & (body_r < 0.85)
        organs[name] = bool(inside.any())
        tissue[inside] = _ORGAN_CODE[name]
        mask[inside] = CHAOS_GREY[name]

    images = {}
    for seq, contrast in _CHAOS_CONTRAST.items():
        vol = np.asarray(contrast, np.float32)[tissue]
        vol *= np.exp(0.10 * smooth_field(shape, rng, 3))
        vol = np.abs(vol + rng.standard_normal(shape, dtype=np.float32) * 0.02)  # Rician-like floor
        images[seq] = np.clip(np.rint(vol * 1000.0), 0, 4095).astype(np.uint16)
    return {"images": images, "mask": mask, "organs": organs}


def _require_chaos_deps(what: str):
    try:
        import pydicom  # noqa: F401
        from PIL import Image  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{what} needs pydicom and Pillow: pip install \"missu-keras[chaos]\" ({exc})"
        ) from exc


def _write_dicom_slice(path: Path, pixels: np.ndarray, meta: dict) -> None:
    import pydicom  # the optional "chaos" extra: only CHAOS cases need it
    from pydicom.dataset import FileDataset, FileMetaDataset  # (as above)
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage  # (as above)

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = MRImageStorage
    file_meta.MediaStorageSOPInstanceUID = meta["sop_uid"]
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = "MISSU_KERAS"
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta["sop_uid"]
    ds.StudyInstanceUID = meta["study_uid"]
    ds.SeriesInstanceUID = meta["series_uid"]
    ds.FrameOfReferenceUID = meta["frame_uid"]
    ds.Modality = "MR"
    ds.PatientID = meta["patient_id"]
    ds.PatientName = "Synthetic^Case"
    ds.SeriesDescription = meta["description"]
    ds.SeriesNumber = meta["series_number"]
    ds.InstanceNumber = meta["instance"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in meta["position"]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{v:.6f}" for v in meta["pixel_spacing"]]
    ds.SliceThickness = f"{meta['slice_thickness']:.6f}"
    if meta.get("spacing_between") is not None:
        ds.SpacingBetweenSlices = f"{meta['spacing_between']:.6f}"
    ds.SliceLocation = f"{meta['position'][2]:.4f}"
    ds.EchoTime = meta["echo_time"]
    ds.RepetitionTime = meta["repetition_time"]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def _write_png(path: Path, grey: np.ndarray) -> None:
    from PIL import Image  # the optional "chaos" extra

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8), mode="L").save(str(path), format="PNG")


def _write_series(series_dir: Path, volume, names, geometry, uids, meta) -> None:
    from pydicom.uid import generate_uid  # the optional "chaos" extra

    series_dir.mkdir(parents=True, exist_ok=True)
    spacing_z = geometry["spacing_between"] or geometry["slice_thickness"]
    for k, name in enumerate(names):
        pos = np.asarray(geometry["origin"], np.float64) + np.array([0.0, 0.0, k * spacing_z])
        _write_dicom_slice(
            series_dir / name,
            volume[:, :, k],
            dict(meta, instance=k + 1, position=pos, **geometry, **uids,
                 sop_uid=generate_uid(entropy_srcs=[uids["series_uid"], str(k)])),
        )


def write_synthetic_chaos(
    out_dir,
    num_cases: int = 4,
    seed: int = 0,
    shape: Sequence[int] = (256, 256, 32),
    t2spir: bool = True,
) -> List[Path]:
    """Writes CHAOS-layout MR cases; returns the case folders.

    Layout: ``<out>/Train_Sets/MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm``,
    ``T1DUAL/Ground/*.png`` and (``t2spir=True``) ``T2SPIR/{DICOM_anon,Ground}``.
    Case ids follow the real MR ids (1, 2, 3, 5, ...). Slice ``k`` of every series is
    the ``k``-th file name in sorted order. In-plane spacing and slice thickness are
    random per case (1.4-1.9 mm, 5.5-9 mm); T1DUAL slices carry
    SpacingBetweenSlices, T2SPIR only SliceThickness.

    Args:
        out_dir: root folder (created).
        num_cases: how many cases; case ``i`` depends only on ``(seed, i)``.
        seed: int seed.
        shape: ``(rows, columns, slices)``.
        t2spir: also write the T2SPIR series.
    """
    _require_chaos_deps("write_synthetic_chaos")
    from pydicom.uid import generate_uid  # the optional "chaos" extra

    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1. Received: num_cases={num_cases!r}")
    shape = tuple(int(s) for s in shape)
    mr_root = Path(out_dir) / "Train_Sets" / "MR"
    ids = list(CHAOS_MR_IDS) + list(range(40, 40 + max(0, int(num_cases) - len(CHAOS_MR_IDS))))
    dirs = []
    for i, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(num_cases))):
        rng = np.random.default_rng(child)
        vols = synthetic_chaos_volumes(shape, rng)
        case_id = str(ids[i])
        case_dir = mr_root / case_id
        entropy = [str(seed), case_id]
        pixel = float(np.round(rng.uniform(1.4, 1.9), 4))
        thick = float(np.round(rng.uniform(5.5, 9.0), 2))
        origin = (-pixel * shape[1] / 2, -pixel * shape[0] / 2, -thick * shape[2] / 2)
        study = generate_uid(entropy_srcs=entropy + ["study"])
        frame = generate_uid(entropy_srcs=entropy + ["frame"])
        base_meta = dict(patient_id=f"CHAOS-SYN-{case_id}")
        t1_geom = dict(pixel_spacing=(pixel, pixel), slice_thickness=thick, spacing_between=thick, origin=origin)
        # Real CHAOS interleaves the phases' file numbers (out-phase odd, in-phase even).
        out_names = [f"IMG-0004-{2 * k + 1:05d}.dcm" for k in range(shape[2])]
        in_names = [f"IMG-0004-{2 * k + 2:05d}.dcm" for k in range(shape[2])]
        for phase, names, echo, number in (("in_phase", in_names, 4.4, 1), ("out_phase", out_names, 2.2, 2)):
            sub = "InPhase" if phase == "in_phase" else "OutPhase"
            uids = dict(study_uid=study, frame_uid=frame,
                        series_uid=generate_uid(entropy_srcs=entropy + [phase]))
            meta = dict(base_meta, description=f"T1DUAL {sub}", series_number=number,
                        echo_time=echo, repetition_time=150.0)
            _write_series(case_dir / "T1DUAL" / "DICOM_anon" / sub, vols["images"][phase], names, t1_geom, uids, meta)
        for k, name in enumerate(in_names):
            _write_png(case_dir / "T1DUAL" / "Ground" / name.replace(".dcm", ".png"), vols["mask"][:, :, k])
        if t2spir:
            t2_geom = dict(pixel_spacing=(pixel * 1.1, pixel * 1.1), slice_thickness=thick, spacing_between=None,
                           origin=origin)
            names = [f"IMG-0002-{k + 1:05d}.dcm" for k in range(shape[2])]
            uids = dict(study_uid=study, frame_uid=frame, series_uid=generate_uid(entropy_srcs=entropy + ["t2"]))
            meta = dict(base_meta, description="T2SPIR", series_number=3, echo_time=70.0, repetition_time=1600.0)
            _write_series(case_dir / "T2SPIR" / "DICOM_anon", vols["images"]["t2spir"], names, t2_geom, uids, meta)
            for k, name in enumerate(names):
                _write_png(case_dir / "T2SPIR" / "Ground" / name.replace(".dcm", ".png"), vols["mask"][:, :, k])
        dirs.append(case_dir)
    return dirs


__all__ = [
    "CHAOS_GREY",
    "CHAOS_MR_IDS",
    "FULL_BRATS_SHAPE",
    "brats_affine",
    "SYNTHETIC_MARK",
    "smooth_field",
    "synthetic_brats_case_id",
    "synthetic_brats_volumes",
    "synthetic_chaos_volumes",
    "write_nifti",
    "write_synthetic_brats",
    "write_synthetic_chaos",
    "write_synthetic_msd",
    "write_synthetic_nnunet",
]

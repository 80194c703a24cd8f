"""BraTS case discovery: the 2019, 2020, 2021 and 2023 on-disk layouts.

Layouts (``../shared/docs/data-and-evaluation.md``):

========  ==================================================================
``2019``  ``<root>/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``
``2020``  ``<root>/<case>/<case>_{...}.nii.gz`` (some copies ``.nii``; no seg
          in the validation set)
``2021``  ``<root>/BraTS2021_XXXXX/BraTS2021_XXXXX_{...}.nii.gz``
``2023``  ``<root>/BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz``
========  ==================================================================

Modalities are named with the 2019-2021 names everywhere in this package
(``flair``, ``t1ce``, ``t1``, ``t2``); the 2023 file names ``t2f``, ``t1c``, ``t1n``,
``t2w`` are mapped to them (`MODALITY_2023_NAMES`). Discovery only looks at file
names; `missu_keras.data.validation.load_brats_case` reads and checks the volumes.

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_brats
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=2, seed=0, shape=(32, 32, 24), layout="2023")
>>> detect_brats_layout(root)
'2023'
>>> cases = find_brats_cases(root)
>>> [c.case_id for c in cases]
['BraTS-GLI-SYNTH-00000-000', 'BraTS-GLI-SYNTH-00001-000']
>>> cases[0].modalities
('flair', 't1ce', 't1', 't2')
>>> [p.name for p in cases[0].image_paths.values()]
['BraTS-GLI-SYNTH-00000-000-t2f.nii.gz', 'BraTS-GLI-SYNTH-00000-000-t1c.nii.gz', 'BraTS-GLI-SYNTH-00000-000-t1n.nii.gz', 'BraTS-GLI-SYNTH-00000-000-t2w.nii.gz']
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from missu_keras.data.validation import FilePerChannelCase, load_brats_case

PathLike = Union[str, "os.PathLike[str]"]

BRATS_MODALITIES: Tuple[str, ...] = ("flair", "t1ce", "t1", "t2")
"""The paper's (and the released code's) channel order."""

MODALITY_2023_NAMES: Dict[str, str] = {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"}
"""2019-2021 modality name -> 2023 file-name suffix."""

BRATS_LAYOUTS: Tuple[str, ...] = ("2019", "2020", "2021", "2023")

NIFTI_EXTENSIONS: Tuple[str, ...] = (".nii.gz", ".nii")

_GRADES = ("HGG", "LGG")


def natural_key(name: str):
    """Sort key that orders digit runs by value (``IMG2`` before ``IMG10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", str(name))]


def canonical_modality(name: str) -> str:
    """Maps a modality name (2019-2021 or 2023 spelling, any case) to the 2019-2021 name.

    >>> canonical_modality("T2F"), canonical_modality("t1ce")
    ('flair', 't1ce')
    """
    low = str(name).lower()
    if low in BRATS_MODALITIES:
        return low
    for old, new in MODALITY_2023_NAMES.items():
        if low == new:
            return old
    raise ValueError(
        f"Unknown BraTS modality {name!r}; expected one of {list(BRATS_MODALITIES)} "
        f"or their 2023 names {list(MODALITY_2023_NAMES.values())}"
    )


def layout_label_convention(layout: str) -> str:
    """Label convention a layout is written in: ``"brats2023"`` for 2023, else ``"brats"``."""
    _check_layout(layout)
    return "brats2023" if layout == "2023" else "brats"


def _check_layout(layout: str) -> None:
    if layout not in BRATS_LAYOUTS:
        raise ValueError(f"Unknown BraTS layout {layout!r}; expected one of {list(BRATS_LAYOUTS)} or 'auto'")


def _separator(layout: str) -> str:
    return "-" if layout == "2023" else "_"


def _file_suffix(layout: str, modality: str) -> str:
    return MODALITY_2023_NAMES[modality] if layout == "2023" else modality


def _strip_nifti_ext(name: str) -> Optional[str]:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


@dataclasses.dataclass(frozen=True)
class BratsCase(FilePerChannelCase):
    """One BraTS case on disk (nothing is read until it is loaded).

    Attributes:
        case_id: the case folder name, e.g. ``"BraTS2021_00000"``.
        directory: the case folder.
        image_paths: ``{modality: path}`` in channel order; a path that does not exist
            (see ``missing_modalities``) is the file name the layout expects.
        seg_path: the segmentation, or ``None`` (prediction-only cases).
        layout: ``"2019"``, ``"2020"``, ``"2021"`` or ``"2023"``.
        grade: ``"HGG"`` / ``"LGG"`` for the 2019 layout, else ``None``.
    """

    case_id: str
    directory: Path
    image_paths: Mapping[str, Path]
    seg_path: Optional[Path]
    layout: str
    grade: Optional[str] = None

    @property
    def missing_modalities(self) -> Tuple[str, ...]:
        return self.missing_channels

    @property
    def label_convention(self) -> str:
        """``"brats2023"`` for the 2023 layout (ET is 3), else ``"brats"`` (ET is 4)."""
        return layout_label_convention(self.layout)

    def load(self, label_convention: Optional[str] = None):
        """Reads and validates the case; see `missu_keras.data.validation.load_brats_case`."""
        return load_brats_case(self, label_convention=label_convention)


_MAX_DEPTH = 3


def _candidate_dirs(root: Path) -> List[Path]:
    # Case folders sit at most three levels below the root
    # (e.g. root/MICCAI_BraTS_2019_Data_Training/HGG/<case>); hidden folders are skipped.
    dirs, level = [root], [root]
    for _ in range(_MAX_DEPTH):
        nxt = []
        for d in level:
            try:
                nxt.extend(sorted(Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")))
            except OSError:
                continue
        dirs.extend(nxt)
        level = nxt
    return dirs


def _nifti_names(directory: Path) -> List[str]:
    try:
        return sorted(
            e.name for e in os.scandir(directory) if e.is_file() and _strip_nifti_ext(e.name) is not None
        )
    except OSError:
        return []


_PATTERN_2023 = re.compile(r"-(t1n|t1c|t2w|t2f)$")
_PATTERN_OLD = re.compile(r"_(flair|t1ce|t1|t2)$")


def detect_brats_layout(root: PathLike) -> str:
    """Guesses the layout of a BraTS folder from its file and folder names.

    ``2023`` if files end in ``-t2f`` / ``-t1c`` / ...; ``2019`` if cases sit in
    ``HGG`` / ``LGG``; ``2021`` if case folders start with ``BraTS2021``; else ``2020``.
    Raises ``FileNotFoundError`` if no BraTS image file is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BraTS root folder not found")
    seen_old = []
    for d in _candidate_dirs(root):
        for name in _nifti_names(d):
            stem = _strip_nifti_ext(name)
            if _PATTERN_2023.search(stem):
                return "2023"
            if _PATTERN_OLD.search(stem):
                seen_old.append(d)
    if not seen_old:
        raise FileNotFoundError(
            f"{root}: no BraTS images found (expected <case>/<case>_flair.nii.gz, "
            f"<case>-t2f.nii.gz or HGG/LGG sub-folders, at most three levels deep)"
        )
    if any(d.parent.name in _GRADES for d in seen_old):
        return "2019"
    if any(d.name.startswith("BraTS2021") for d in seen_old):
        return "2021"
    return "2020"


def _find_file(directory: Path, names: Sequence[str], sep: str, suffix: str) -> Optional[Path]:
    tail = f"{sep}{suffix}"
    hits = [n for n in names if _strip_nifti_ext(n).endswith(tail)]
    if len(hits) > 1:
        raise ValueError(
            f"{directory}: more than one file for {suffix!r}: expected one of "
            f"<case>{tail}.nii.gz / .nii, found {hits}"
        )
    return directory / hits[0] if hits else None


def _find_seg(directory: Path, names: Sequence[str], sep: str, image_names: Sequence[str]) -> Optional[Path]:
    seg = _find_file(directory, names, sep, "seg")
    if seg is not None:
        return seg
    # A few released cases name the mask differently (BraTS 2020 case 355 ships
    # "W39_1998.09.19_Segm.nii"); accept one unambiguous *seg* file.
    others = [n for n in names if "seg" in n.lower() and n not in image_names]
    if len(others) == 1:
        return directory / others[0]
    if len(others) > 1:
        raise ValueError(
            f"{directory}: cannot tell which file is the segmentation: expected <case>{sep}seg.nii.gz, "
            f"found {others}"
        )
    return None


def find_brats_cases(
    root: PathLike,
    layout: str = "auto",
    modalities: Sequence[str] = BRATS_MODALITIES,
    require_seg: bool = False,
) -> List[BratsCase]:
    """Lists the BraTS cases under ``root``, sorted by case id.

    Args:
        root: a folder at most three levels above the case folders (e.g. the
            training folder, or for 2019 the one holding ``HGG`` / ``LGG``).
        layout: ``"auto"`` (see `detect_brats_layout`), ``"2019"``, ``"2020"``,
            ``"2021"`` or ``"2023"``.
        modalities: channel order, by 2019-2021 or 2023 names; default FLAIR, T1ce, T1, T2.
        require_seg: raise ``FileNotFoundError`` for a case without a segmentation
            (by default such cases are kept, with ``seg_path=None``, for prediction).

    Returns:
        One `BratsCase` per folder that holds at least one of the modality files.
        A missing modality is not an error here; it is reported when the case is
        validated (`missu_keras.data.validation`).
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_brats_layout(root)
    _check_layout(layout)
    mods = tuple(canonical_modality(m) for m in modalities)
    if len(set(mods)) != len(mods) or not mods:
        raise ValueError(f"modalities must be distinct and non-empty. Received: modalities={list(modalities)}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BraTS root folder not found")
    sep = _separator(layout)
    all_suffixes = [_file_suffix(layout, m) for m in BRATS_MODALITIES]
    cases: Dict[str, BratsCase] = {}
    for d in _candidate_dirs(root):
        names = _nifti_names(d)
        found = {s: _find_file(d, names, sep, s) for s in all_suffixes}
        if not any(found.values()):
            continue
        case_id = d.name
        paths = {}
        for m in mods:
            p = found[_file_suffix(layout, m)]
            paths[m] = p if p is not None else d / f"{case_id}{sep}{_file_suffix(layout, m)}.nii.gz"
        image_names = [p.name for p in found.values() if p is not None]
        seg = _find_seg(d, names, sep, image_names)
        if seg is None and require_seg:
            raise FileNotFoundError(
                f"{d / (case_id + sep + 'seg.nii.gz')}: segmentation of case {case_id!r} not found "
                f"(require_seg=True); found files {names}"
            )
        if case_id in cases:
            raise ValueError(
                f"duplicate BraTS case id {case_id!r}: found in {cases[case_id].directory} and {d}"
            )
        grade = d.parent.name if layout == "2019" and d.parent.name in _GRADES else None
        cases[case_id] = BratsCase(case_id, d, paths, seg, layout, grade)
    if not cases:
        raise FileNotFoundError(
            f"{root}: no cases of the BraTS {layout} layout found (expected files named "
            f"<case>{sep}{_file_suffix(layout, mods[0])}.nii.gz or .nii, at most three folders deep)"
        )
    return [cases[k] for k in sorted(cases, key=natural_key)]

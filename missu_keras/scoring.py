"""Scoring existing segmentations (any method's NIfTI) against ground truth by case name:
the library behind ``missu-keras score`` (`missu_keras.cli.score`).

`score_directories` pairs the files, scores each case (`missu_keras.metrics.score_case`)
and summarises; `missu_keras.metrics.write_scores` writes ``cases.csv``,
``summary.json`` and ``convention.txt``. Input files are only read.

How files are matched by case name (`index_segmentations`, applied to both folders,
searched recursively, ``.nii.gz`` or ``.nii``):

- ``<case>_seg.nii.gz`` or ``<case>-seg.nii.gz`` (BraTS 2023) -> ``<case>``;
- ``<case>/seg.nii.gz`` -> ``<case>`` (the folder's name);
- in a case folder ``<case>/`` holding ``<case>_seg``, ``seg`` or ``<case>.nii.gz``,
  every other file (modalities, probability maps) is ignored;
- any other ``<name>.nii.gz`` (e.g. in a flat folder) -> ``<name>``, except names ending in a
  BraTS modality (``_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``-t1n``, ``-t1c``, ``-t2w``,
  ``-t2f``, with ``_`` or ``-``) or a probability map (``_prob``, ``_probs``,
  ``_probabilities``, ``_softmax``), which are ignored.

So BraTS layouts (``<case>/<case>_seg.nii.gz``, ``HGG/<case>/...``, flat
``<case>_seg.nii.gz``) and prediction folders (``<case>.nii.gz``, ``<case>_seg.nii.gz``
or ``<case>/...``) pair up. Every prediction must have a ground truth (else an error
naming the file); ground-truth cases without a prediction are listed and skipped, or
are an error with ``--require-all``. Two files giving the same case name are an error.

A prediction is scored only on the ground truth's grid: the same shape and the same
affine within `AFFINE_TOLERANCE_MM` (``--ignore-affine`` skips the affine check), else an
error naming both files. An unreadable file, NaN / inf values or labels outside the
convention are errors naming the file. Earlier results in the output folder are refused
unless ``--overwrite`` (as for ``predict`` and ``evaluate``); the folder is checked before
any case is scored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from missu_keras.data.io import (check_finite, is_nifti, read_nifti, read_nifti_data,
                                 read_nifti_header, strip_nifti_suffix)
from missu_keras.files import output_folder, refuse_existing
from missu_keras.labels import get_label_convention
from missu_keras.metrics import (DEFAULT_NSD_TOLERANCE_MM, convention_text, score_case, summarize,
                                  write_scores)
from missu_keras.reports import case_view, find_display_image, write_score_report

SEG_SUFFIXES = ("_seg", "-seg")
SCORE_FILES = ("cases.csv", "summary.json", "convention.txt", "report.html")
# Largest difference allowed between a prediction's and its ground truth's affine entries
# (mm for the origin, mm per voxel for the rest): far below a voxel, far above the
# float32 rounding of headers written by other tools.
AFFINE_TOLERANCE_MM = 0.01
SEG_STEMS = ("seg",)
# Files that are never segmentations: probability maps and BraTS modalities.
IGNORED_SUFFIXES = tuple(
    sep + name
    for name in ("prob", "probs", "probabilities", "softmax",
                 "flair", "t1", "t1ce", "t2", "t1n", "t1c", "t2w", "t2f")
    for sep in ("_", "-")
)


def _nifti_stem(filename: str) -> Optional[str]:
    if filename.startswith(".") or not is_nifti(filename):
        return None
    return strip_nifti_suffix(filename) or None


def case_name(path) -> Optional[str]:
    """The case a segmentation file belongs to, by its own name and folder, or ``None``
    for a modality or probability map (see the module docstring).

    >>> case_name("BraTS2021_00001/BraTS2021_00001_seg.nii.gz")
    'BraTS2021_00001'
    >>> case_name("preds/BraTS2021_00001.nii.gz"), case_name("BraTS2021_00001/seg.nii")
    ('BraTS2021_00001', 'BraTS2021_00001')
    >>> case_name("BraTS2021_00001/BraTS2021_00001_flair.nii.gz") is None
    True
    """
    path = Path(path)
    stem = _nifti_stem(path.name)
    if stem is None:
        return None
    if stem in SEG_STEMS:
        return path.parent.name or None
    for suffix in SEG_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    if stem.lower().endswith(IGNORED_SUFFIXES):
        return None
    return stem


def index_segmentations(root, role: str = "segmentation") -> Dict[str, Path]:
    """``{case: path}`` for every segmentation file under ``root`` (recursive).

    Per folder: if a file names the folder's own case (``<folder>_seg``, ``seg``,
    ``<folder>``), only such files count; else every file `case_name` accepts.
    Raises ``FileNotFoundError`` if ``root`` is not a folder and ``ValueError`` if two
    files map to the same case; ``role`` (e.g. ``"prediction"``) names the folder in
    the messages.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{role} folder not found: {root}")
    found: Dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        cases = {f: case_name(folder / f) for f in sorted(filenames)}
        cases = {f: c for f, c in cases.items() if c is not None}
        # In a case folder (one holding the folder's own segmentation), the other
        # files are that case's extras (modalities under unusual names, maps, ...).
        own = {f: c for f, c in cases.items() if c == folder.name}
        for filename, case in (own or cases).items():
            path = folder / filename
            if case in found:
                raise ValueError(
                    f"two {role} files for case {case!r}: {found[case]} and {path}; "
                    f"keep one of them"
                )
            found[case] = path
    return found


def match_cases(pred_dir, gt_dir, require_all: bool = False
                ) -> Tuple[List[Tuple[str, Path, Path]], List[str]]:
    """Pairs predictions with ground truths by case name.

    Returns ``([(case, pred_path, gt_path), ...] sorted by case, [GT cases without a
    prediction])``. Raises ``ValueError`` naming the file for a prediction without a
    ground truth, when nothing matches, and (with ``require_all``) naming the GT cases
    that lack a prediction.
    """
    preds = index_segmentations(pred_dir, "prediction")
    gts = index_segmentations(gt_dir, "ground-truth")
    if not preds:
        raise ValueError(f"no prediction NIfTI files (.nii.gz / .nii) found under {pred_dir}")
    if not gts:
        raise ValueError(
            f"no ground-truth segmentations found under {gt_dir} (expected "
            f"<case>/<case>_seg.nii.gz, <case>_seg.nii.gz or <case>.nii.gz)"
        )
    orphans = sorted(c for c in preds if c not in gts)
    if orphans:
        shown = ", ".join(f"{c!r} ({preds[c]})" for c in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise ValueError(
            f"{len(orphans)} prediction(s) have no ground truth under {gt_dir}: "
            f"{shown}{more}"
        )
    missing = sorted(c for c in gts if c not in preds)
    if missing and require_all:
        shown = ", ".join(f"{c!r} ({gts[c]})" for c in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"{len(missing)} ground-truth case(s) have no prediction under {pred_dir}: "
            f"{shown}{more}"
        )
    pairs = [(case, preds[case], gts[case]) for case in sorted(preds)]
    return pairs, missing


def _load_labels(path: Path, convention) -> Tuple[np.ndarray, np.ndarray, object]:
    """``(labels, affine, header)`` of a segmentation file; every problem (unreadable,
    NaN / inf, labels outside ``convention``) is a ``ValueError`` naming the file."""
    shape, affine, img = read_nifti_header(path)  # ValueError naming the file when unreadable
    data = read_nifti_data(Path(path), img, shape, None)
    check_finite(data, path)
    convention.to_classes(data, source=str(path))  # raises on labels outside it
    return data, affine, img.header


def check_same_grid(case: str, pred_path, pred_affine, gt_path, gt_affine,
                    tolerance_mm: float = AFFINE_TOLERANCE_MM) -> None:
    """``ValueError`` naming both files when the prediction's affine differs from the
    ground truth's by more than ``tolerance_mm`` (a shifted or flipped prediction would
    be scored against the wrong voxels)."""
    diff = float(np.max(np.abs(np.asarray(pred_affine) - np.asarray(gt_affine))))
    if diff > tolerance_mm:
        raise ValueError(
            f"case {case!r}: prediction {pred_path} has affine "
            f"{np.round(pred_affine[:3], 3).tolist()} but ground truth {gt_path} has "
            f"{np.round(gt_affine[:3], 3).tolist()} (largest difference {diff:.3g}, tolerance "
            f"{tolerance_mm}); expected the ground truth's grid (resample the prediction, or "
            "pass --ignore-affine to score the voxels as they are)"
        )


def _score_pair(case: str, pred_path: Path, gt_path: Path, conv, ignore_affine: bool, log,
                nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, views: Optional[dict] = None):
    """The `score_case` row of one prediction / ground-truth pair, after checking that
    they share a shape and (unless ``ignore_affine``) an affine; ``views`` (a dict)
    receives the case's report slices (`missu_keras.reports`)."""
    gt, gt_affine, gt_header = _load_labels(gt_path, conv)
    pred, pred_affine, pred_header = _load_labels(pred_path, conv)
    if pred.shape != gt.shape:
        raise ValueError(
            f"case {case!r}: prediction {pred_path} has shape {pred.shape} but ground "
            f"truth {gt_path} has shape {gt.shape}"
        )
    if not ignore_affine:
        check_same_grid(case, pred_path, pred_affine, gt_path, gt_affine)
    spacing = tuple(float(z) for z in gt_header.get_zooms()[:3])
    pred_spacing = tuple(float(z) for z in pred_header.get_zooms()[:3])
    if log and not np.allclose(spacing, pred_spacing, rtol=1e-3):
        log(f"warning: case {case!r}: prediction spacing {pred_spacing} differs from "
            f"ground truth {spacing} ({gt_path}); using the ground truth's")
    if views is not None:
        views[case] = _case_view(case, pred, gt, gt_path, gt_affine, spacing, log)
    return {"case": case, **score_case(pred, gt, spacing, conv, nsd_tolerance_mm)}


def _case_view(case: str, pred, gt, gt_path: Path, gt_affine, spacing, log):
    """The report slices of a case, over the FLAIR beside its ground truth when there is
    one on the same grid (a BraTS layout), else over the labels alone (an unreadable or
    misaligned FLAIR is named in the log: it only decorates the report)."""
    image_path = find_display_image(gt_path, case)
    image = None
    if image_path is not None:
        try:
            image, image_affine = read_nifti(image_path)
        except ValueError as err:
            image_affine, problem = None, str(err)
        else:
            problem = f"{image_path}: not on the grid of {gt_path}"
        if image_affine is None or image.shape != gt.shape or not np.allclose(
                image_affine, gt_affine, atol=AFFINE_TOLERANCE_MM):
            image = None
            if log:
                log(f"warning: case {case!r}: the report shows the labels alone ({problem})")
    return case_view(case, pred, gt=gt, image=image, affine=gt_affine, spacing=spacing,
                     image_name=None if image is None else image_path.name)


def score_directories(pred_dir, gt_dir, convention="brats", require_all: bool = False,
                      log: Optional[Callable[[str], None]] = None, ignore_affine: bool = False,
                      nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                      views: Optional[dict] = None):
    """Scores every prediction under ``pred_dir`` against ``gt_dir`` (NSD at
    ``nsd_tolerance_mm``).

    Returns ``(rows, summary, missing)``: one `score_case` dict per case with a
    ``"case"`` key first, the `summarize` dict, and the GT cases without a prediction.
    Spacing comes from the ground-truth header (``get_zooms()[:3]``). A prediction must
    have the ground truth's shape and affine (within `AFFINE_TOLERANCE_MM`; not checked
    with ``ignore_affine``). ``views`` (a dict) receives each case's report slices.
    """
    conv = get_label_convention(convention)
    pairs, missing = match_cases(pred_dir, gt_dir, require_all=require_all)
    rows = []
    for i, (case, pred_path, gt_path) in enumerate(pairs, start=1):
        row = _score_pair(case, pred_path, gt_path, conv, ignore_affine, log, nsd_tolerance_mm,
                          views)
        rows.append(row)
        if log:
            dice = "  ".join(f"{r} {row[f'{r}_dice']:.4f}" for r in conv.regions)
            log(f"[{i}/{len(pairs)}] {case}: Dice {dice}")
    return rows, summarize(rows), missing


def score_to_folder(pred_dir, gt_dir, out, convention="brats", require_all: bool = False,
                    ignore_affine: bool = False, overwrite: bool = False,
                    log: Optional[Callable[[str], None]] = None,
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM):
    """``missu-keras score``: checks ``out`` (created, writable, no earlier results
    unless ``overwrite``) before scoring, then writes ``cases.csv``, ``summary.json`` and
    ``convention.txt`` (stating ``nsd_tolerance_mm``) atomically
    (`missu_keras.metrics.write_scores`), and ``report.html`` (`missu_keras.reports`:
    over the FLAIR beside each ground truth when the GT folder holds one, a BraTS layout;
    else over the labels alone).

    Returns ``(rows, summary, missing, paths)``.
    """
    with output_folder(out, "--out") as out:
        if not overwrite:
            refuse_existing(out / name for name in SCORE_FILES)
        text = convention_text(nsd_tolerance_mm)  # a bad tolerance fails before any scoring
        views = {}
        rows, summary, missing = score_directories(pred_dir, gt_dir, convention,
                                                   require_all=require_all, log=log,
                                                   ignore_affine=ignore_affine,
                                                   nsd_tolerance_mm=nsd_tolerance_mm, views=views)
        paths = write_scores(out, rows, summary, convention=text)
        paths["report"] = str(write_score_report(out, rows, summary, convention, views,
                                                 note=f"score: {pred_dir} against {gt_dir}."))
        return rows, summary, missing, paths

"""``missu-keras evaluate``: a model and a labelled data folder -> per-case scores and a
summary, with the same sliding window as ``predict`` and the same metrics and files as
``missu-keras score`` (``cases.csv``, ``summary.json`` shaped ``{region: {metric: {mean,
std, median}}}``, ``convention.txt``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from missu_keras.data.io import write_nifti
from missu_keras.files import output_folder, prepare_output_dir, refuse_existing, write_json_atomic
from missu_keras.labels import convert_labels
from missu_keras.metrics import CONVENTION, format_summary_table, score_case, summarize, write_scores
from missu_keras.prediction import (find_cases, load_segmenter, reference_geometry,
                                    warn_empty_modalities)
from missu_keras.scoring import SCORE_FILES


def evaluate(model, data, out, weights="published", layout: str = "auto",
             case_ids: Optional[Sequence[str]] = None, save_predictions: bool = False,
             skip_invalid: bool = False, overwrite: bool = False, log=print, **segmenter_kwargs):
    """Segments every labelled case under ``data`` and scores it against its ground truth.

    Args:
        model, weights: see `missu_keras.prediction.load_segmenter`.
        data: a folder of cases (any layout of `missu_keras.data.datasets`); a ground
            truth in another convention with the same classes (Decathlon Task01 for a
            BraTS model) is scored in the model's convention and regions.
        out: output folder for ``cases.csv``, ``summary.json``, ``convention.txt`` (and
            ``predictions/<case>.nii.gz`` with ``save_predictions``); created and checked
            for writability before anything else, every file written atomically.
        layout: one of `missu_keras.data.datasets.LAYOUTS` (default ``"auto"``).
        case_ids: only these cases (default: every case with a segmentation).
        skip_invalid: leave out cases that fail validation (listed in the log and in
            ``summary.json`` under ``"skipped"``) instead of stopping.
        overwrite: replace earlier results in ``out`` (by default they are an error,
            raised before anything is computed, as for ``predict``).
        **segmenter_kwargs: `missu_keras.prediction.Segmenter` settings.

    Returns:
        ``(rows, summary)``: the per-case score dicts and `missu_keras.metrics.summarize`.
    """
    with output_folder(out, "--out") as out:
        if not overwrite:
            refuse_existing(out / name for name in SCORE_FILES)
        segmenter = load_segmenter(model, weights=weights, **segmenter_kwargs)
        cases = _labelled_cases(data, segmenter.preprocessing, layout, case_ids)
        if save_predictions:
            prepare_output_dir(out / "predictions", "--out/predictions")
            if not overwrite:
                refuse_existing(_prediction_path(out, c) for c in cases)
        rows, skipped = _score_cases(segmenter, cases, out, save_predictions, skip_invalid, log)
        if not rows:
            raise ValueError(f"every case under {data} failed validation: {skipped}")
        summary = summarize(rows)
        paths = write_scores(out, rows, summary)
        if skipped:
            write_json_atomic(paths["summary"], {**summary, "skipped": skipped})
    log(format_summary_table(summary))
    log(CONVENTION)
    log(f"wrote {paths['cases']}, {paths['summary']}")
    return rows, summary


def _prediction_path(out: Path, case) -> Path:
    return out / "predictions" / f"{case.case_id}.nii.gz"


def _score_cases(segmenter, cases, out: Path, save_predictions: bool, skip_invalid: bool, log):
    """Segments and scores each case: ``(rows, skipped)``."""
    conv = segmenter.preprocessing.convention
    rows, skipped = [], []
    t0 = time.time()
    for i, case in enumerate(cases):
        try:
            loaded = case.load()
            # scored in the model's convention (BraTS regions for a BraTS model on
            # Decathlon Task01 data): the ground truth is rewritten class by class
            loaded.labels = convert_labels(loaded.labels, loaded.label_convention, conv,
                                           what=f"case {case.case_id!r} ground truth")
        except (ValueError, OSError) as err:
            if not skip_invalid:
                raise
            skipped.append({"case": case.case_id, "reason": f"{type(err).__name__}: {err}"})
            log(f"skipping {case.case_id}: {err}")
            continue
        warn_empty_modalities(case, loaded, log)
        result = segmenter.segment(loaded)
        row = {"case": case.case_id, **score_case(result.labels, loaded.labels, loaded.spacing, conv)}
        rows.append(row)
        if save_predictions:
            affine, header = reference_geometry(case)
            write_nifti(_prediction_path(out, case), result.labels.astype(np.uint8),
                        loaded.affine if affine is None else affine, header)
        first = next(iter(k for k in row if k.endswith("_dice")))
        log(f"[{i + 1}/{len(cases)}] {case.case_id}: {first} {row[first]:.4f} "
            f"({time.time() - t0:.0f} s)")
    return rows, skipped


def _labelled_cases(data, preprocessing, layout: str, case_ids: Optional[Sequence[str]]):
    """The cases under ``data`` with a ground truth (only ``case_ids`` when given)."""
    cases = [c for c in find_cases([data], preprocessing, layout=layout) if c.has_seg]
    if case_ids is not None:
        wanted = set(case_ids)
        unknown = sorted(wanted - {c.case_id for c in cases})
        if unknown:
            raise ValueError(f"cases {unknown} not found (with a segmentation) under {data}")
        cases = [c for c in cases if c.case_id in wanted]
    if not cases:
        raise FileNotFoundError(f"{data}: no case with a ground-truth segmentation to evaluate")
    return cases

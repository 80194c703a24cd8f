"""``missu-keras evaluate``: a model and a labelled data folder -> per-case scores and a
summary, with the same sliding window as ``predict`` and the same metrics and files as
``missu-keras score`` (``cases.csv``, ``summary.json`` shaped ``{region: {metric: {mean,
std, median}}}``, ``convention.txt``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from missu_keras.data.io import write_nifti
from missu_keras.metrics import CONVENTION, format_summary_table, score_case, summarize, write_scores
from missu_keras.prediction import find_cases, load_segmenter, reference_geometry


def evaluate(model, data, out, weights="published", layout: str = "auto",
             case_ids: Optional[Sequence[str]] = None, save_predictions: bool = False,
             skip_invalid: bool = False, log=print, **segmenter_kwargs):
    """Segments every labelled case under ``data`` and scores it against its ground truth.

    Args:
        model, weights: see `missu_keras.prediction.load_segmenter`.
        data: a folder of cases (BraTS layouts or CHAOS).
        out: output folder for ``cases.csv``, ``summary.json``, ``convention.txt`` (and
            ``predictions/<case>.nii.gz`` with ``save_predictions``).
        layout: BraTS layout (``"auto"``, ``"2019"`` ... ``"2023"``) or ``"chaos"``.
        case_ids: only these cases (default: every case with a segmentation).
        skip_invalid: leave out cases that fail validation (listed in the log and in
            ``summary.json`` under ``"skipped"``) instead of stopping.
        **segmenter_kwargs: `missu_keras.prediction.Segmenter` settings.

    Returns:
        ``(rows, summary)``: the per-case score dicts and `missu_keras.metrics.summarize`.
    """
    segmenter = load_segmenter(model, weights=weights, **segmenter_kwargs)
    conv = segmenter.preprocessing.label_convention
    cases = _labelled_cases(data, segmenter.preprocessing, layout, case_ids)
    out = Path(out)
    rows, skipped = [], []
    t0 = time.time()
    for i, case in enumerate(cases):
        try:
            loaded = case.load(conv)
        except (ValueError, OSError) as err:
            if not skip_invalid:
                raise
            skipped.append({"case": case.case_id, "reason": f"{type(err).__name__}: {err}"})
            log(f"skipping {case.case_id}: {err}")
            continue
        result = segmenter.segment(loaded)
        row = {"case": case.case_id, **score_case(result.labels, loaded.labels, loaded.spacing, conv)}
        rows.append(row)
        if save_predictions:
            affine, header = reference_geometry(case)
            write_nifti(out / "predictions" / f"{case.case_id}.nii.gz", result.labels.astype(np.uint8),
                        loaded.affine if affine is None else affine, header)
        first = next(iter(k for k in row if k.endswith("_dice")))
        log(f"[{i + 1}/{len(cases)}] {case.case_id}: {first} {row[first]:.4f} "
            f"({time.time() - t0:.0f} s)")
    if not rows:
        raise ValueError(f"every case under {data} failed validation: {skipped}")
    summary = summarize(rows)
    paths = write_scores(out, rows, summary)
    if skipped:
        Path(paths["summary"]).write_text(json.dumps({**summary, "skipped": skipped}, indent=2) + "\n")
    log(format_summary_table(summary))
    log(CONVENTION)
    log(f"wrote {paths['cases']}, {paths['summary']}")
    return rows, summary


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

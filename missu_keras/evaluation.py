"""``missu-keras evaluate``: a model and a labelled data folder -> per-case scores and a
summary, with the same sliding window as ``predict`` and the same metrics and files as
``missu-keras score`` (``cases.csv``, ``summary.json`` shaped ``{region: {metric: {mean,
std, median}}}``, ``convention.txt``).

On a cross-validation run (``train --folds``), `evaluate_folds` scores the out-of-fold
predictions: each fold's model segments the validation cases of its own split, and one
summary covers every case once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from missu_keras.data.io import write_nifti
from missu_keras.files import output_folder, prepare_output_dir, refuse_existing, write_json_atomic
from missu_keras.inference.uncertainty import entropy, entropy_by_correctness, summarize_uncertainty
from missu_keras.labels import convert_labels
from missu_keras.metrics import CONVENTION, format_summary_table, score_case, summarize, write_scores
from missu_keras.prediction import (find_cases, load_segmenter, log_postprocessing,
                                    reference_geometry, warn_empty_modalities)
from missu_keras.reports import loaded_case_view, write_score_report
from missu_keras.scoring import SCORE_FILES
from missu_keras.training.folds import SPLITS_FILE, fold_models, is_cross_validation_run, read_splits


def evaluate(model, data, out, weights="published", layout: str = "auto",
             case_ids: Optional[Sequence[str]] = None, save_predictions: bool = False,
             skip_invalid: bool = False, overwrite: bool = False, log=print,
             uncertainty: bool = False, **segmenter_kwargs):
    """Segments every labelled case under ``data`` and scores it against its ground truth.

    Args:
        model, weights: see `missu_keras.prediction.load_segmenter`; a list of models
            is an ensemble (their probabilities averaged, `load_ensemble`; members
            whose preprocessing contracts differ are refused, naming the field); a
            cross-validation run folder alone (``train --folds``) is scored out of fold
            (`evaluate_folds`).
        data: a folder of cases (any layout of `missu_keras.data.datasets`); a ground
            truth in another convention with the same classes (Decathlon Task01 for a
            BraTS model) is scored in the model's convention and regions.
        out: output folder for ``cases.csv``, ``summary.json``, ``convention.txt``,
            ``report.html`` (`missu_keras.reports`: table, box plots, the best, median
            and worst case drawn) (and ``predictions/<case>.nii.gz`` with
            ``save_predictions``); created and checked
            for writability before anything else, every file written atomically.
        layout: one of `missu_keras.data.datasets.LAYOUTS` (default ``"auto"``).
        case_ids: only these cases (default: every case with a segmentation).
        skip_invalid: leave out cases that fail validation (listed in the log and in
            ``summary.json`` under ``"skipped"``) instead of stopping.
        overwrite: replace earlier results in ``out`` (by default they are an error,
            raised before anything is computed, as for ``predict``).
        log: a ``print``-like function for progress and the summary table; ``None``:
            quiet.
        uncertainty: also how the entropy of the (averaged) probabilities relates to the
            errors (`missu_keras.inference.uncertainty`): columns in ``cases.csv``,
            ``"uncertainty"`` in ``summary.json``.
        **segmenter_kwargs: `missu_keras.prediction.Segmenter` settings.

    Returns:
        ``(rows, summary)``: the per-case score dicts and `missu_keras.metrics.summarize`.
    """
    log = log or (lambda *a, **k: None)
    if isinstance(model, (str, os.PathLike)) and is_cross_validation_run(model):
        return evaluate_folds(model, data, out, layout=layout, case_ids=case_ids,
                              save_predictions=save_predictions, skip_invalid=skip_invalid,
                              overwrite=overwrite, log=log, uncertainty=uncertainty,
                              **segmenter_kwargs)
    with output_folder(out, "--out") as out:
        if not overwrite:
            refuse_existing(out / name for name in SCORE_FILES)
        segmenter = load_segmenter(model, weights=weights, **segmenter_kwargs)
        log_postprocessing(segmenter, log)
        cases = _labelled_cases(data, segmenter.preprocessing, layout, case_ids)
        if save_predictions:
            prepare_output_dir(out / "predictions", "--out/predictions")
            if not overwrite:
                refuse_existing(_prediction_path(out, c) for c in cases)
        views = {}
        rows, skipped = _score_cases(segmenter, cases, out, save_predictions, skip_invalid, log,
                                     uncertainty, views)
        if not rows:
            raise ValueError(f"every case under {data} failed validation: {skipped}")
        summary = summarize(rows)
        paths = write_scores(out, rows, summary)
        extra = _summary_extras(rows, skipped, uncertainty)
        if extra:
            write_json_atomic(paths["summary"], {**summary, **extra})
        paths["report"] = str(write_score_report(
            out, rows, summary, segmenter.preprocessing.convention, views, note=f"evaluate: {data}."))
    _log_scores(log, summary, paths, extra.get("uncertainty"))
    return rows, summary


def _summary_extras(rows, skipped, uncertainty: bool) -> dict:
    """What ``summary.json`` holds beside the region scores: ``"skipped"`` cases and
    the ``"uncertainty"`` summary, when there are."""
    return {**({"skipped": skipped} if skipped else {}),
            **({"uncertainty": summarize_uncertainty(rows)} if uncertainty else {})}


def _prediction_path(out: Path, case) -> Path:
    return out / "predictions" / f"{case.case_id}.nii.gz"


def _score_cases(segmenter, cases, out: Path, save_predictions: bool, skip_invalid: bool, log,
                 uncertainty: bool = False, views: Optional[dict] = None):
    """Segments and scores each case: ``(rows, skipped)``; ``views`` (a dict) receives
    each case's report slices (`missu_keras.reports.CaseView`)."""
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
        result = segmenter.segment(loaded, return_probabilities=uncertainty)
        row = {"case": case.case_id, **score_case(result.labels, loaded.labels, loaded.spacing, conv)}
        if uncertainty:
            row.update(entropy_by_correctness(entropy(result.probabilities), result.labels,
                                              loaded.labels))
        rows.append(row)
        if views is not None:  # three small slices per case: the volumes are not kept
            views[case.case_id] = loaded_case_view(loaded, result.labels)
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


def evaluate_folds(run, data, out, layout: str = "auto", case_ids: Optional[Sequence[str]] = None,
                   save_predictions: bool = False, skip_invalid: bool = False,
                   overwrite: bool = False, log=print, uncertainty: bool = False,
                   **segmenter_kwargs):
    """Cross-validation summary of a ``train --folds`` run: every fold's model segments
    the validation cases of its split (``run/splits.json``), the out-of-fold predictions
    are scored, and one set of files is written as by `evaluate`: ``cases.csv`` (one row
    per case, its ``fold`` second), ``summary.json`` (over every case; plus ``"folds"``:
    each fold's own summary) and ``convention.txt``.

    Args:
        run: the cross-validation run folder (``splits.json``, ``fold_N/``); a missing
            fold model is an error naming it, raised before any work.
        data: the folder of labelled cases the run was trained on (each case of the
            splits must be there; cases no fold validates on are named in the log and
            left out).
        out, layout, save_predictions, skip_invalid, overwrite, log, uncertainty,
            **segmenter_kwargs: as for `evaluate`.
        case_ids: only these cases (default: every case of the splits).

    Returns:
        ``(rows, summary)`` as `evaluate` (the summary over every case).
    """
    log = log or (lambda *a, **k: None)
    splits = read_splits(os.path.join(run, SPLITS_FILE))
    models = fold_models(run, require_all=True)
    with output_folder(out, "--out") as out:
        wanted = _validation_cases(splits, case_ids)
        if not overwrite:
            refuse_existing([out / name for name in SCORE_FILES]
                            + [out / "predictions" / f"{c}.nii.gz" for c in wanted if save_predictions])
        segmenter = load_segmenter(str(models[0]), **segmenter_kwargs)
        cases = _fold_cases(data, segmenter.preprocessing, layout, splits, wanted, log)
        if save_predictions:
            prepare_output_dir(out / "predictions", "--out/predictions")
        rows, skipped, by_fold, views = [], [], {}, {}
        for k, folder in models.items():
            if k:
                segmenter = load_segmenter(str(folder), **segmenter_kwargs)
            val = set(splits[k]["val"])
            fold_cases = [c for c in cases if c.case_id in val]
            log(f"fold {k} ({folder}): {len(fold_cases)} validation cases")
            log_postprocessing(segmenter, log)
            fold_rows, fold_skipped = _score_cases(segmenter, fold_cases, out, save_predictions,
                                                   skip_invalid, log, uncertainty, views)
            rows += [{"case": r["case"], "fold": k, **r} for r in fold_rows]
            skipped += fold_skipped
            if fold_rows:
                by_fold[str(k)] = summarize(fold_rows)
        if not rows:
            raise ValueError(f"every case under {data} failed validation: {skipped}")
        summary = summarize(rows)
        paths = write_scores(out, rows, summary)
        extra = _summary_extras(rows, skipped, uncertainty)
        write_json_atomic(paths["summary"], {**summary, "folds": by_fold, **extra})
        paths["report"] = str(write_score_report(
            out, rows, summary, segmenter.preprocessing.convention, views,
            note=f"evaluate (out of fold): {run} on {data}."))
    log(f"cross-validation over {len(models)} folds, {len(rows)} cases (out-of-fold):")
    _log_scores(log, summary, paths, extra.get("uncertainty"))
    return rows, summary


def _validation_cases(splits, case_ids: Optional[Sequence[str]]) -> list:
    """The validation cases of every fold (only ``case_ids`` when given; each must be one)."""
    every = [c for s in splits for c in s["val"]]
    if case_ids is None:
        return every
    unknown = sorted(set(case_ids) - set(every))
    if unknown:
        raise ValueError(f"cases {unknown} are in no fold's validation set of the splits")
    keep = set(case_ids)
    return [c for c in every if c in keep]


def _fold_cases(data, preprocessing, layout: str, splits, wanted: Sequence[str], log):
    """The labelled cases under ``data`` named in ``wanted`` (every one must be there);
    cases no fold validates on are named in the log and left out."""
    found = [c for c in find_cases([data], preprocessing, layout=layout) if c.has_seg]
    missing = sorted(set(wanted) - {c.case_id for c in found})
    if missing:
        raise ValueError(f"cases {missing} of the cross-validation splits not found (with a "
                         f"segmentation) under {data}; expected the data the folds were trained on")
    extra = sorted({c.case_id for c in found} - {c for s in splits for c in s["val"]})
    if extra:
        log(f"not in any fold's validation set, left out: {extra}")
    keep = set(wanted)
    return [c for c in found if c.case_id in keep]


def _log_scores(log, summary, paths, uncertainty=None) -> None:
    """The summary table, the scoring conventions (and the uncertainty summary) and the
    files written."""
    log(format_summary_table(summary))
    log(CONVENTION)
    if uncertainty:
        correct, wrong = uncertainty["entropy_correct_mean"], uncertainty["entropy_wrong_mean"]
        def fmt(value):
            return "n/a" if value is None else f"{value:.4f}"

        log(f"mean entropy: {fmt(correct['mean'])} on correct voxels, {fmt(wrong['mean'])} on wrong "
            f"voxels ({uncertainty['entropy_wrong_voxels']} wrong of "
            f"{uncertainty['entropy_mask_voxels']}); {uncertainty['convention']}")
    log(f"wrote {paths['cases']}, {paths['summary']}" + (f", {paths['report']}" if "report" in paths else ""))

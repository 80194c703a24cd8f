"""``missu-keras postprocess choose``: the post-processing of a trained model, chosen on
predictions of cases it was not trained on (nnU-Net's ``determine_postprocessing`` way).

`choose_for_run` segments, once and without post-processing, the out-of-fold cases of
a cross-validation run (``evaluate_folds``), or the validation cases of a single run
(its ``split.json``), or every labelled case of a ``--data`` folder, keeping the
predictions under ``RUN/postprocessing_validation/``; `choose_postprocessing` then
decides each step on those label maps, greedily and in the order the steps run
(`missu_keras.inference.postprocessing`):

1. the ET threshold ``et_min_voxels``, the best of a grid (`ET_GRID`);
2. per region, ``min_component_voxels``, the best of a grid (`COMPONENT_GRID`);
3. per region, ``largest_component_only``.

A step (at its best grid value) is kept only when it makes the mean Dice of its region
strictly higher and no other region's mean Dice lower, each compared with the
predictions post-processed by the steps kept so far. Ties: between grid values with the
same mean Dice, the smallest (the mildest change) wins; a step that only equals the
Dice without it is not kept (the simpler model). The chosen steps go to
``RUN/postprocessing.json`` (which ``predict``, ``evaluate`` and ``export`` then apply;
for a cross-validation run in the run folder, which its folds and their ensemble read),
the numbers to ``RUN/postprocessing_choice.json``.

>>> import numpy as np
>>> gt = np.zeros((12, 12, 12), "uint8"); gt[2:8, 2:8, 2:8] = 2
>>> pred = gt.copy(); pred[10, 10, 10] = 2       # a spurious one-voxel blob
>>> config, report = choose_postprocessing([("a", pred, gt)], "brats", et_grid=(),
...                                        component_grid=(2,))
>>> config.min_component_voxels, config.largest_component_only
({'WT': 2}, ())
>>> report["baseline"]["WT"] < report["after"]["WT"] == 1.0
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from missu_keras.data.io import read_nifti
from missu_keras.evaluation import evaluate, evaluate_folds
from missu_keras.files import refuse_existing, write_json_atomic
from missu_keras.inference.postprocessing import (ET_REGION, POSTPROCESSING_FILE,
                                                  PostprocessingConfig, apply_postprocessing,
                                                  write_postprocessing)
from missu_keras.labels import convert_labels, get_label_convention
from missu_keras.metrics import dice_score
from missu_keras.prediction import find_cases
from missu_keras.training.folds import fold_models, is_cross_validation_run
from missu_keras.weights.preset_io import RUN_CONFIG_FILE, read_run_preprocessing

ET_GRID = (0, 50, 100, 200, 300, 500, 750, 1000)
COMPONENT_GRID = (10, 50, 100, 200, 500, 1000)
CHOICE_FILE = "postprocessing_choice.json"
PREDICTIONS_FOLDER = "postprocessing_validation"


# ---------------------------------------------------------------- the choice --

def _crop_pair(pred, gt):
    """``pred`` and ``gt`` cut to the box of their joint foreground (Dice and connected
    components are the same there; a case then costs little memory)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    hit = np.argwhere((pred > 0) | (gt > 0))
    if not len(hit):
        return pred[:1, :1, :1], gt[:1, :1, :1]
    box = tuple(slice(a, b + 1) for a, b in zip(hit.min(0), hit.max(0)))
    return pred[box].astype(np.int32), gt[box]


def mean_dice(preds, gts, convention) -> Dict[str, float]:
    """``{region: mean Dice over the cases}`` (`missu_keras.metrics.dice_score`)."""
    conv = get_label_convention(convention)
    return {region: float(np.mean([dice_score(np.isin(p, members), np.isin(g, members))
                                   for p, g in zip(preds, gts)]))
            for region, members in conv.regions.items()}


def _helps(with_step: Dict[str, float], without: Dict[str, float], region: str) -> bool:
    """Strictly better for ``region``, no worse for any other."""
    return with_step[region] > without[region] and all(
        with_step[r] >= without[r] for r in without if r != region)


class _Trials:
    """The cases' current predictions and the post-processing kept so far."""

    def __init__(self, cases, convention):
        pairs = [_crop_pair(p, g) for _, p, g in cases]
        self.preds, self.gts = [p for p, _ in pairs], [g for _, g in pairs]
        self.convention = convention
        self.dice = mean_dice(self.preds, self.gts, convention)

    def run(self, config: PostprocessingConfig):
        """``(predictions, mean Dice)`` with one more step on top of the kept ones."""
        # eagerly: a graph per candidate would be traced for a single use
        preds = [apply_postprocessing(tf.constant(p), config, self.convention).numpy()
                 for p in self.preds]
        return preds, mean_dice(preds, self.gts, self.convention)

    def decide(self, name: str, region: str, candidates: Sequence[Tuple[object, PostprocessingConfig]]):
        """Tries each ``(value, config)`` (in order: the first best wins a tie); keeps the
        best when it helps. Returns ``(report, kept value or None)``."""
        tried, best = [], None
        for value, config in candidates:
            preds, dice = self.run(config)
            tried.append({"value": value, "dice": dice})
            if best is None or dice[region] > best[2][region]:
                best = (value, preds, dice)
        kept = best is not None and _helps(best[2], self.dice, region)
        report = {"step": name, "region": region, "without": self.dice, "tried": tried,
                  "best": None if best is None else best[0], "kept": kept}
        if not kept:
            return report, None
        self.preds, self.dice = best[1], best[2]
        return report, best[0]


def choose_postprocessing(cases, convention, et_grid: Sequence[int] = ET_GRID,
                          component_grid: Sequence[int] = COMPONENT_GRID):
    """The post-processing that helps on ``cases`` (module docstring).

    Args:
        cases: ``(case_id, prediction, ground truth)`` label maps (dataset labels of
            ``convention``, the same shape per case), predicted without post-processing.
        convention: the model's label convention (a name, `LabelConvention` or dict).
        et_grid: ET thresholds in voxels to try (0 and an empty grid: none); only for a
            convention with an ``"ET"`` region.
        component_grid: minimum component sizes in voxels to try per region.

    Returns:
        ``(PostprocessingConfig, report)``: the report holds the mean Dice per region
        before any step, for each step and region the Dice without it and with each
        value tried, what was kept, and the mean Dice after the chosen steps.
    """
    conv = get_label_convention(convention)
    if not cases:
        raise ValueError("no case to choose the post-processing on; expected predictions with "
                         "their ground truth")
    trials = _Trials(cases, conv)
    report = {"cases": [c for c, _, _ in cases], "baseline": trials.dice, "steps": [],
              "et_grid": [int(t) for t in et_grid], "component_grid": [int(n) for n in component_grid]}
    et_min, sizes, largest = 0, {}, []
    thresholds = sorted({int(t) for t in et_grid} - {0})
    if ET_REGION in conv.regions and conv.num_classes > 2 and thresholds:
        step, et_min = trials.decide("et_min_voxels", ET_REGION, [
            (t, PostprocessingConfig(et_min_voxels=t)) for t in thresholds])
        report["steps"].append(step)
        et_min = et_min or 0
    for region in conv.regions:
        grid = sorted({int(n) for n in component_grid if int(n) >= 1})
        if grid:
            step, size = trials.decide("min_component_voxels", region, [
                (n, PostprocessingConfig(min_component_voxels={region: n})) for n in grid])
            report["steps"].append(step)
            if size is not None:
                sizes[region] = size
    for region in conv.regions:
        step, kept = trials.decide("largest_component_only", region, [
            (True, PostprocessingConfig(largest_component_only=(region,)))])
        report["steps"].append(step)
        if kept:
            largest.append(region)
    config = PostprocessingConfig(et_min_voxels=et_min, min_component_voxels=sizes,
                                  largest_component_only=tuple(largest))
    report["chosen"] = config.to_dict()
    report["description"] = config.describe(conv)
    report["after"] = trials.dice
    return config, report


# ------------------------------------------------------------------- a run --

def _recorded_training(folder: Path) -> dict:
    """The ``train`` settings a run folder's ``config.json`` records."""
    path = folder / RUN_CONFIG_FILE
    try:
        return json.loads(path.read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected the config.json of a missu-keras train run; could not "
                         f"read its 'train' settings ({err})") from None


def _validation_split(run: Path):
    """``(data folder, validation case ids)`` of a single run, as training chose them."""
    train = _recorded_training(run)
    path = run / "split.json"
    try:
        ids = json.loads(path.read_text())["validation"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected the split.json of a missu-keras train run ({err})") from None
    if not ids:
        raise ValueError(f"{run}: the run has no validation cases (split.json); pass --data with a "
                         "folder of labelled cases it was not trained on")
    return train.get("val_data") or train["data"], ids


def _segment_once(run: Path, data, out: Path, layout: str, overwrite: bool, log, kwargs):
    """Segments the cases to choose on (no post-processing), predictions under ``out``;
    returns ``(data folder, what the cases are, the run's preprocessing contract, the case
    ids segmented or None for every labelled case of the folder)``."""
    kwargs = {**kwargs, "postprocessing": None}
    if is_cross_validation_run(run):
        first = next(iter(fold_models(run, require_all=True).values()))
        data = data or _recorded_training(first)["data"]
        evaluate_folds(run, data, out, layout=layout, save_predictions=True, overwrite=overwrite,
                       log=log, **kwargs)
        return data, "out-of-fold predictions of the cross-validation", read_run_preprocessing(first), None
    if data:
        source = f"every labelled case of {data}"
        evaluate(run, data, out, layout=layout, save_predictions=True, overwrite=overwrite, log=log,
                 **kwargs)
    else:
        data, ids = _validation_split(run)
        source = f"the run's {len(ids)} validation cases (split.json)"
        evaluate(run, data, out, layout=layout, case_ids=ids, save_predictions=True,
                 overwrite=overwrite, log=log, **kwargs)
        return data, source, read_run_preprocessing(run), set(ids)
    return data, source, read_run_preprocessing(run), None


def _prediction_pairs(data, out: Path, preprocessing, layout: str, case_ids=None) -> List[tuple]:
    """``(case_id, prediction, ground truth)`` for every prediction under ``out`` of the
    cases ``case_ids`` (None: every labelled case of ``data``): predictions an earlier
    choice left there for other cases (``--data`` then, the validation split now) are not
    paired."""
    conv = preprocessing.convention
    folder = out / "predictions"
    pairs = []
    for case in find_cases([data], preprocessing, layout=layout):
        path = folder / f"{case.case_id}.nii.gz"
        if not case.has_seg or not path.is_file() or (case_ids is not None and case.case_id not in case_ids):
            continue
        loaded = case.load()
        gt = convert_labels(loaded.labels, loaded.label_convention, conv,
                            what=f"case {case.case_id!r} ground truth")
        pred = read_nifti(path, dtype=np.int32)[0]
        if pred.shape != gt.shape:
            raise ValueError(f"{path}: prediction of shape {pred.shape}, but the ground truth of "
                             f"case {case.case_id!r} is {gt.shape}")
        pairs.append((case.case_id, *_crop_pair(pred, gt)))  # only the foreground box is kept
    return pairs


def choose_for_run(run, data=None, layout: str = "auto", overwrite: bool = False,
                   et_grid: Sequence[int] = ET_GRID, component_grid: Sequence[int] = COMPONENT_GRID,
                   log=print, **segmenter_kwargs) -> Tuple[PostprocessingConfig, dict]:
    """Chooses and stores the post-processing of a ``missu-keras train`` run.

    Args:
        run: a run folder, or a cross-validation run folder (``train --folds``: every
            fold must hold a model; out-of-fold predictions).
        data: the labelled cases: for a cross-validation run the data it was trained on
            (default: the folder its config.json records); for a single run a folder of
            labelled cases to use instead of its validation split (default: the
            validation cases of its ``split.json``).
        layout: the data layout (`missu_keras.data.datasets.LAYOUTS`).
        overwrite: replace an earlier choice (``postprocessing.json``,
            ``postprocessing_choice.json`` and the predictions); refused otherwise,
            before any work.
        et_grid, component_grid: the values tried (`choose_postprocessing`).
        log: a ``print``-like function, or ``None``.
        **segmenter_kwargs: sliding-window settings (`missu_keras.inference.Segmenter`).

    Returns:
        ``(config, report)``, as written to ``RUN/postprocessing.json`` and
        ``RUN/postprocessing_choice.json``.
    """
    log = log or (lambda *a, **k: None)
    run = Path(run)
    if not (run / RUN_CONFIG_FILE).is_file() and not is_cross_validation_run(run):
        raise FileNotFoundError(f"{run}: not a missu-keras train run folder (no {RUN_CONFIG_FILE} "
                                "nor splits.json)")
    if not overwrite:
        refuse_existing([run / CHOICE_FILE, run / POSTPROCESSING_FILE])
    out = run / PREDICTIONS_FOLDER
    data, source, prep, case_ids = _segment_once(run, data, out, layout, overwrite, log, segmenter_kwargs)
    pairs = _prediction_pairs(data, out, prep, layout, case_ids)
    config, report = choose_postprocessing(pairs, prep.convention, et_grid, component_grid)
    report = {"run": str(run), "source": source, "data": os.fspath(data),
              "predictions": str(out / "predictions"),
              "rule": "a step is kept when it raises its region's mean Dice and lowers no other "
                      "region's; ties between grid values go to the smallest value, a tie with "
                      "no step to no step", **report}
    write_json_atomic(run / CHOICE_FILE, report)
    write_postprocessing(config, run)  # last: the file the model uses from now on
    log(f"post-processing chosen on {len(pairs)} cases ({source}): {report['description']}")
    log("mean Dice before: " + _dice_line(report["baseline"]) + "; after: " + _dice_line(report["after"]))
    log(f"wrote {run / POSTPROCESSING_FILE}, {run / CHOICE_FILE}")
    return config, report


def _dice_line(dice: Dict[str, float]) -> str:
    return ", ".join(f"{region} {value:.4f}" for region, value in dice.items())

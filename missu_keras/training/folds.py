"""Cross-validation folds: the split by case ID, ``splits.json``, and where a
cross-validation run keeps its folds.

A cross-validation run (``missu-keras train --folds K --fold k --out OUT``) is one
folder::

    OUT/splits.json     [{"train": [...], "val": [...]}, ...]: one entry per fold, as
                        nnU-Net's splits_final.json
    OUT/cache/          the preprocessed cases, shared by every fold
    OUT/fold_0/ ...     one normal run folder per fold (config.json, checkpoints/,
                        log.csv, backup/, ...), resumed on its own

The split (`make_splits`) is deterministic and stratification-free, the nnU-Net v2
rule: the case IDs are sorted, their positions shuffled with a fixed seed (NumPy's
``RandomState(12345)``, as scikit-learn's ``KFold(shuffle=True, random_state=12345)``
that nnU-Net calls), and cut into K consecutive validation sets whose sizes differ by
at most one; each fold trains on every other case. Once written, ``splits.json`` is
only read (`fold_splits`): it is never silently re-made, and a data folder that no
longer holds the same cases is an error naming them. A hand-made ``splits.json`` (e.g.
stratified) is used as it is, provided its folds name exactly the cases of the data.

>>> splits = make_splits(["c", "a", "b", "e", "d"], folds=2)
>>> splits
[{'train': ['b', 'c'], 'val': ['a', 'd', 'e']}, {'train': ['a', 'd', 'e'], 'val': ['b', 'c']}]
>>> make_splits(["e", "d", "c", "b", "a"], folds=2) == splits  # the order given is irrelevant
True
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from missu_keras.files import write_json_atomic
from missu_keras.weights.preset_io import find_run_checkpoint

SPLITS_FILE = "splits.json"
# nnU-Net v2's seed for its 5-fold split (nnunetv2 crossval_split.generate_crossval_split).
SPLIT_SEED = 12345


def make_splits(case_ids: Iterable[str], folds: int = 5, seed: int = SPLIT_SEED) -> List[Dict[str, List[str]]]:
    """K disjoint validation sets covering every case once (module docstring).

    Args:
        case_ids: the case IDs, in any order (duplicates are an error).
        folds: K >= 2, at most the number of cases.
        seed: the shuffle's seed.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]``, one per fold, each list sorted.
    """
    ids = sorted(str(c) for c in case_ids)
    duplicates = sorted(c for c, n in collections.Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"case IDs must be distinct to be split into folds; repeated: {duplicates}")
    if int(folds) < 2 or int(folds) > len(ids):
        raise ValueError(f"folds must be between 2 and the number of cases ({len(ids)}). "
                         f"Received: folds={folds!r}")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(int(folds), len(ids) // int(folds))
    sizes[: len(ids) % int(folds)] += 1
    splits, start = [], 0
    for size in sizes:
        val = set(order[start:start + size].tolist())
        start += size
        splits.append({"train": [c for i, c in enumerate(ids) if i not in val],
                       "val": [c for i, c in enumerate(ids) if i in val]})
    return splits


def read_splits(path) -> List[Dict[str, List[str]]]:
    """A ``splits.json`` (a list of ``{"train": [...], "val": [...]}``), checked for
    its shape and for a case in both the training and the validation list of a fold."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: could not read it as JSON ({err}); expected the splits.json "
                         "of a cross-validation run") from None
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and set(s) >= {"train", "val"}
            and all(isinstance(s[k], list) for k in ("train", "val")) for s in splits):
        raise ValueError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}} "
                         "(one per fold, as nnU-Net's splits_final.json)")
    for k, split in enumerate(splits):
        both = sorted(set(map(str, split["train"])) & set(map(str, split["val"])))
        if both:
            raise ValueError(f"{path}: fold {k} lists cases for training and validation: {both}")
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def check_splits(splits: Sequence[Dict[str, List[str]]], case_ids: Iterable[str], source) -> None:
    """``ValueError`` naming the cases when ``splits`` (read from ``source``) and the
    cases found in the data differ: cases the splits name that the data lacks, and new
    cases no fold knows."""
    named = {c for s in splits for c in s["train"] + s["val"]}
    found = set(case_ids)
    problems = [f"{what}: {ids}" for what, ids in (
        ("cases in the splits but not in the data", sorted(named - found)),
        ("new cases in the data that no fold lists", sorted(found - named))) if ids]
    if problems:
        raise ValueError(
            f"{source} no longer matches the data ({'; '.join(problems)}); it is never re-made "
            "silently: restore the data, or move splits.json and the fold folders away to "
            "start a new cross-validation")


def fold_splits(run, case_ids: Iterable[str], folds: int) -> List[Dict[str, List[str]]]:
    """The splits of the cross-validation run folder ``run``: ``run/splits.json`` when
    it exists (checked against ``case_ids`` and ``folds``), else made by `make_splits`
    and written there atomically."""
    path = Path(run) / SPLITS_FILE
    case_ids = list(case_ids)
    if not path.is_file():
        splits = make_splits(case_ids, folds)
        write_json_atomic(path, splits)
        return splits
    splits = read_splits(path)
    if len(splits) != int(folds):
        raise ValueError(f"{path} holds {len(splits)} folds but --folds is {folds}; use "
                         f"--folds {len(splits)} or another --out")
    check_splits(splits, case_ids, path)
    return splits


def fold_folder(run, fold: int) -> Path:
    """``run/fold_<fold>``: the run folder of one fold."""
    return Path(run) / f"fold_{int(fold)}"


def is_cross_validation_run(folder) -> bool:
    """Whether ``folder`` is a cross-validation run (it holds ``splits.json``)."""
    return (Path(folder) / SPLITS_FILE).is_file()


def fold_models(run, require_all: bool = False) -> Dict[int, Path]:
    """``{fold: fold folder}`` of the folds of ``run`` (those ``splits.json`` lists)
    that hold a trained model (a checkpoint), in fold order.

    With ``require_all``, every fold must have one, else a ``FileNotFoundError`` naming
    each missing fold model; without, at least one must.
    """
    run = Path(run)
    folds = len(read_splits(run / SPLITS_FILE))
    present = {k: fold_folder(run, k) for k in range(folds)
               if find_run_checkpoint(fold_folder(run, k)) is not None}
    missing = missing_folds(run, present)
    if missing and require_all:
        raise FileNotFoundError(
            f"{run}: {len(missing)} of {folds} fold models missing: {', '.join(missing)} (each "
            "needs checkpoints/best.keras or last.keras; train it with --fold N)")
    if not present:
        raise FileNotFoundError(f"{run}: no fold holds a trained model yet (expected "
                                "fold_N/checkpoints/best.keras or last.keras)")
    return present


def missing_folds(run, found: Dict[int, Path]) -> List[str]:
    """The fold folders of ``run`` (by ``splits.json``) not in ``found``."""
    folds = len(read_splits(Path(run) / SPLITS_FILE))
    return [str(fold_folder(run, k)) for k in range(folds) if k not in found]

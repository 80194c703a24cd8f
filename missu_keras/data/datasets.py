"""One way in for every dataset layout: `detect_layout` and `find_cases`.

======================  ===========================================================
layout                  on disk (reader)
======================  ===========================================================
``2019`` ... ``2023``   BraTS case folders (`missu_keras.data.brats`)
``chaos``               CHAOS MR DICOM + PNG (`missu_keras.data.chaos`)
``msd``                 Decathlon task: ``dataset.json`` with ``modality``, 4-D
                        ``imagesTr`` (`missu_keras.data.msd`)
``nnunet``              nnU-Net v2 raw: ``dataset.json`` with ``channel_names``,
                        ``imagesTr/CASE_XXXX`` (`missu_keras.data.nnunet`)
======================  ===========================================================

Training (`missu_keras.training`), ``predict`` and ``evaluate`` find their cases here;
the contract of a training set is `missu_keras.data.PreprocessingConfig.from_cases`
with `dataset_of_layout`. Light: no TensorFlow.

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_nnunet
>>> root = write_synthetic_nnunet(tempfile.mkdtemp() + "/Dataset001_Synth", num_cases=1,
...                               shape=(24, 24, 16))
>>> detect_layout(root), detect_layout(root / "imagesTr"), dataset_of_layout("2021")
('nnunet', 'nnunet', 'brats')
>>> [c.case_id for c in find_cases(root)]
['BRATS_SYNTH_000']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

from missu_keras.data.brats import BRATS_LAYOUTS, BRATS_MODALITIES, detect_brats_layout, find_brats_cases
from missu_keras.data.chaos import find_chaos_cases, is_chaos_root
from missu_keras.data.msd import DATASET_JSON, find_msd_cases, is_msd_dataset
from missu_keras.data.nnunet import find_nnunet_cases, is_nnunet_dataset

LAYOUTS = ("auto",) + BRATS_LAYOUTS + ("chaos", "msd", "nnunet")
"""Every ``--layout`` value."""


def dataset_of_layout(layout: str) -> str:
    """The `PreprocessingConfig` ``dataset`` of a (detected) layout: ``"brats"`` for the
    BraTS layouts, else the layout's name."""
    _check_layout(layout)
    return "brats" if layout in BRATS_LAYOUTS else layout


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}. Received: layout={layout!r}")


def _dataset_json(root: Path) -> Optional[Path]:
    for folder in (root, root.parent) if root.name in ("imagesTr", "imagesTs") else (root,):
        if (folder / DATASET_JSON).is_file():
            return folder / DATASET_JSON
    return None


def detect_layout(root) -> str:
    """The layout of a dataset folder: ``"nnunet"`` / ``"msd"`` from its ``dataset.json``
    (also for its ``imagesTr`` / ``imagesTs`` folder), ``"chaos"`` for CHAOS MR case
    folders, else the BraTS layout (`missu_keras.data.brats.detect_brats_layout`).
    ``FileNotFoundError`` naming the folder and every layout when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    spec = _dataset_json(root)
    if spec is not None:
        try:
            data = json.loads(spec.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{spec}: cannot read dataset.json: expected JSON, found {exc}") from exc
        if isinstance(data, dict) and is_nnunet_dataset(data):
            return "nnunet"
        if isinstance(data, dict) and is_msd_dataset(data):
            return "msd"
        raise ValueError(f"{spec}: expected an nnU-Net v2 dataset.json ('channel_names') or a "
                         "Decathlon one ('modality'); found neither key")
    if is_chaos_root(root):
        return "chaos"
    try:
        return detect_brats_layout(root)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{root}: no dataset found: expected a BraTS 2019-2023 folder of cases, CHAOS "
            f"MR (Train_Sets/MR/<id>/T1DUAL), a Decathlon task or an nnU-Net raw dataset "
            f"(dataset.json), or pass --layout ({', '.join(LAYOUTS[1:])})"
        ) from None


def find_cases(root, layout: str = "auto", modalities: Optional[Sequence[str]] = None,
               sequence: str = "T1DUAL", subset: str = "train", require_seg: bool = False) -> List:
    """The cases of a dataset folder in any layout, sorted by case id.

    Args:
        root: the dataset folder (for ``msd`` / ``nnunet`` also its ``imagesTr`` or
            ``imagesTs`` folder).
        layout: one of `LAYOUTS`; ``"auto"`` is `detect_layout`.
        modalities: channel order (default: the BraTS order for BraTS data, else the
            dataset's).
        sequence: CHAOS MR sequence, ``"T1DUAL"`` or ``"T2SPIR"``.
        subset: for ``msd`` / ``nnunet``: ``"train"``, ``"test"`` or ``"all"``.
        require_seg: a case without labels is an error (BraTS, Decathlon, nnU-Net).

    Returns:
        Case records (`BratsCase`, `ChaosCase`, `MsdCase`, `NnunetCase`) with
        ``case_id``, ``channel_names``, ``has_seg``, ``label_convention``,
        ``source_files()`` and ``load(label_convention=None)``.
    """
    _check_layout(layout)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "chaos":
        return find_chaos_cases(root, sequence=sequence)
    if layout == "msd":
        return find_msd_cases(root, modalities=modalities, subset=subset, require_seg=require_seg)
    if layout == "nnunet":
        return find_nnunet_cases(root, modalities=modalities, subset=subset, require_seg=require_seg)
    return find_brats_cases(root, layout=layout, modalities=modalities or BRATS_MODALITIES,
                            require_seg=require_seg)


__all__ = ["LAYOUTS", "dataset_of_layout", "detect_layout", "find_cases"]

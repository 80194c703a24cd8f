"""Medical Segmentation Decathlon (MSD) tasks: ``TaskXX_Name/dataset.json``, ``imagesTr/``
(4-D NIfTI, channels on the last axis), ``labelsTr/``, ``imagesTs/``.

``dataset.json`` gives ``modality`` (``{"0": "FLAIR", "1": "T1w", ...}``: the channels
in file order), ``labels`` (``{"0": "background", "1": "edema", ...}``), ``training``
(``[{"image": "./imagesTr/X.nii.gz", "label": "./labelsTr/X.nii.gz"}, ...]``) and
``test`` (``["./imagesTs/Y.nii.gz", ...]``).

Channel names are spelled as in the rest of the package (`channel_name`: ``FLAIR`` ->
``flair``, ``T1w`` -> ``t1``, ``t1gd`` -> ``t1ce``, ``T2w`` -> ``t2``; others in lower
case), so a BraTS-trained model runs on Task01_BrainTumour and the reverse. Task01's
labels (1 edema, 2 non-enhancing tumour, 3 enhancing) are the registered convention
``"msd_brats"`` (`missu_keras.labels`): training class ``i`` is the same tissue as in
BraTS and results are reported in the BraTS regions WT / TC / ET. Any other task gets
a convention built from its ``labels`` (`msd_label_convention`), one region per label.

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_msd
>>> root = write_synthetic_msd(tempfile.mkdtemp(), num_cases=2, num_test=1, shape=(24, 24, 16))
>>> cases = find_msd_cases(root)
>>> [c.case_id for c in cases], cases[0].channel_names, cases[0].label_convention
(['BRATS_SYNTH_000', 'BRATS_SYNTH_001'], ('flair', 't1ce', 't1', 't2'), 'msd_brats')
>>> cases[0].channel_indices  # t1gd is the file's channel 2, T1w channel 1
(0, 2, 1, 3)
>>> [(c.case_id, c.has_seg) for c in find_msd_cases(root, subset="test")]
[('BRATS_SYNTH_TEST_000', False)]
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from missu_keras.data.brats import BRATS_MODALITIES, canonical_modality, natural_key
from missu_keras.data.io import strip_nifti_suffix
from missu_keras.data.validation import LoadedCase, load_nifti_case
from missu_keras.labels import LabelConvention, get_label_convention

DATASET_JSON = "dataset.json"
SUBSETS = ("train", "test", "all")

MSD_CHANNEL_ALIASES: Dict[str, str] = {"t1w": "t1", "t1gd": "t1ce", "t2w": "t2"}
"""Decathlon modality names (lower case) -> the package's BraTS channel names."""

MSD_BRATS_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
"""Task01_BrainTumour's ``labels`` (the ``"msd_brats"`` convention)."""


def channel_name(name: str) -> str:
    """A channel name as the package spells it: BraTS modalities in their 2019-2021
    names (also from the Decathlon and 2023 spellings), anything else in lower case.

    >>> [channel_name(n) for n in ("FLAIR", "T1w", "t1gd", "T2w", "CT", " ADC ")]
    ['flair', 't1', 't1ce', 't2', 'ct', 'adc']
    """
    low = str(name).strip().lower()
    low = MSD_CHANNEL_ALIASES.get(low, low)
    try:
        return canonical_modality(low)
    except ValueError:
        return low


def read_dataset_json(root) -> Tuple[Path, dict]:
    """``(path, contents)`` of ``root/dataset.json``; errors name the file."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset.json not found: expected a Decathlon task or "
                                "nnU-Net raw dataset folder holding it")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read dataset.json: expected JSON, found {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return path, data


def require_keys(path: Path, data: dict, keys: Sequence[str], what: str) -> None:
    """``ValueError`` naming ``path`` and the missing keys of a ``dataset.json``."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: {what} dataset.json needs the keys {list(keys)}; missing {missing}")


def _int_keys(path: Path, mapping, key: str) -> Dict[int, str]:
    try:
        return {int(k): str(v) for k, v in dict(mapping).items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {key!r} must map integer strings to names "
                         f"(e.g. {{\"0\": \"background\"}}); found {mapping!r}") from None


def msd_label_convention(path: Path, labels: Dict[int, str], channels: Sequence[str],
                         name: str) -> Union[str, LabelConvention]:
    """The convention of a Decathlon task: ``"msd_brats"`` for Task01's channels and
    labels, else one built from ``labels`` named ``name`` (one region per non-zero label)."""
    values = sorted(labels)
    if not values or values[0] != 0:
        raise ValueError(f"{path}: 'labels' must include 0 (background); found {labels}")
    if set(channels) == set(BRATS_MODALITIES) and values == [0, 1, 2, 3]:
        return "msd_brats"
    conv = LabelConvention(name, tuple(values), {labels[v]: (v,) for v in values if v})
    return get_label_convention(conv.to_dict())  # checked like a stored one


@dataclasses.dataclass(frozen=True)
class MsdCase:
    """One Decathlon case: a 4-D image (channels last) and, for training cases, labels.

    Attributes:
        case_id: the file name without ``.nii.gz``.
        image_path: the 4-D image.
        seg_path: the label file, or ``None`` (``imagesTs`` cases).
        channel_names: the channels in the order they are loaded.
        channel_indices: the index of each of them on the file's last axis.
        label_convention: a registered name (``"msd_brats"``) or a `LabelConvention`.
    """

    case_id: str
    image_path: Path
    seg_path: Optional[Path]
    channel_names: Tuple[str, ...]
    channel_indices: Tuple[int, ...]
    label_convention: Union[str, LabelConvention]

    @property
    def modalities(self) -> Tuple[str, ...]:
        return self.channel_names

    @property
    def has_seg(self) -> bool:
        return self.seg_path is not None

    @property
    def reference_path(self) -> Path:
        """The NIfTI whose geometry a prediction for this case is written in."""
        return Path(self.image_path)

    def source_files(self) -> List[Path]:
        return [Path(self.image_path)] + ([Path(self.seg_path)] if self.seg_path is not None else [])

    def load(self, label_convention=None) -> LoadedCase:
        """Reads and validates the case (`missu_keras.data.validation.load_nifti_case`)."""
        if not Path(self.image_path).is_file():
            raise FileNotFoundError(f"{self.image_path}: image of case {self.case_id!r} not found "
                                    "(listed in dataset.json)")
        channels = [(n, Path(self.image_path), i) for n, i in zip(self.channel_names, self.channel_indices)]
        return load_nifti_case(self.case_id, channels, self.seg_path,
                               label_convention or self.label_convention)


def channel_order(path, available: Sequence[str], wanted: Optional[Sequence[str]]) -> Tuple[int, ...]:
    """Index into ``available`` (the dataset's channels) of each ``wanted`` channel; the
    default order is the BraTS one for the four BraTS channels, else the file order."""
    if wanted is None:
        wanted = BRATS_MODALITIES if set(available) == set(BRATS_MODALITIES) else available
    wanted = [channel_name(w) for w in wanted]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValueError(f"{path}: the dataset's channels are {list(available)}; expected "
                         f"{wanted} (missing {missing})")
    return tuple(list(available).index(w) for w in wanted)


def _resolve(root: Path, rel: str, what: str, path: Path) -> Path:
    if not isinstance(rel, str):
        raise ValueError(f"{path}: {what} entries must be file paths; found {rel!r}")
    return Path(os.path.normpath(root / rel))


def _listed(root: Path, path: Path, data: dict, subset: str) -> List[Tuple[Path, Optional[Path]]]:
    pairs = []
    if subset in ("train", "all"):
        for entry in data.get("training") or []:
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"{path}: 'training' entries must be {{\"image\": ..., \"label\": ...}}; "
                                 f"found {entry!r}")
            label = entry.get("label")
            pairs.append((_resolve(root, entry["image"], "training", path),
                          _resolve(root, label, "training", path) if label else None))
    if subset in ("test", "all"):
        pairs.extend((_resolve(root, rel, "test", path), None) for rel in data.get("test") or [])
    return pairs


def find_msd_cases(root, modalities: Optional[Sequence[str]] = None, subset: str = "train",
                   require_seg: bool = False) -> List[MsdCase]:
    """Lists the cases of a Decathlon task, sorted by case id.

    Args:
        root: the task folder (holding ``dataset.json``), or its ``imagesTr`` /
            ``imagesTs`` folder (then ``subset`` follows the folder).
        modalities: channel order (any spelling `channel_name` reads); default the
            BraTS order for a BraTS task, else the file order.
        subset: ``"train"`` (the ``training`` list), ``"test"`` (``test``) or ``"all"``.
        require_seg: ``FileNotFoundError`` for a training case whose label file is missing.

    A listed image that does not exist is kept (loading the case raises, naming it; so
    `missu_keras.data.fingerprint` can report it); a missing label file leaves the case
    unlabelled unless ``require_seg``.
    """
    root = Path(root)
    if root.name in ("imagesTr", "imagesTs") and not (root / DATASET_JSON).is_file():
        subset, root = ("test" if root.name == "imagesTs" else "train"), root.parent
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    path, data = read_dataset_json(root)
    require_keys(path, data, ("modality", "labels"), "a Decathlon")
    available = [channel_name(n) for _, n in sorted(_int_keys(path, data["modality"], "modality").items())]
    labels = _int_keys(path, data["labels"], "labels")
    convention = msd_label_convention(path, labels, available, str(data.get("name") or root.name))
    order = channel_order(path, available, modalities)
    cases = {}
    for image, label in _listed(root, path, data, subset):
        if label is not None and not label.is_file():
            if require_seg:
                raise FileNotFoundError(f"{label}: listed in {path} but not found")
            label = None
        case_id = strip_nifti_suffix(image.name)
        cases[case_id] = MsdCase(case_id, image, label, tuple(available[i] for i in order), order, convention)
    if not cases:
        raise FileNotFoundError(f"{path}: no {subset} cases listed")
    return [cases[k] for k in sorted(cases, key=natural_key)]


def is_msd_dataset(data: dict) -> bool:
    """Whether a parsed ``dataset.json`` is a Decathlon one (``modality``, not ``channel_names``)."""
    return "modality" in data and "channel_names" not in data


__all__ = ["MSD_BRATS_LABELS", "MSD_CHANNEL_ALIASES", "MsdCase", "channel_name", "channel_order",
           "find_msd_cases", "is_msd_dataset", "msd_label_convention", "read_dataset_json"]

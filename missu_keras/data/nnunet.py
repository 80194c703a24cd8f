"""nnU-Net v2 raw datasets: ``DatasetXXX_Name/dataset.json``, ``imagesTr/CASE_XXXX.nii.gz``
(one file per channel, ``XXXX`` the channel index), ``labelsTr/CASE.nii.gz``, optional
``imagesTs/``.

``dataset.json`` gives ``channel_names`` (``{"0": "T2", "1": "ADC"}``), ``labels``
(``{"background": 0, "liver": 1}``; a value may be a list for region-based training,
e.g. ``{"whole tumor": [1, 2, 3]}``), ``file_ending`` (``".nii.gz"``), ``numTraining``
and, for regions, ``regions_class_order``.

The label convention (`nnunet_label_convention`) is built from ``labels``: the training
classes are every label value the file declares (integers, and the members of lists),
in increasing order; every named label other than background is a scoring region (a
list is the region of its members). ``regions_class_order`` is not needed: this package
trains one softmax over the classes and scores the regions from them.

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_nnunet
>>> root = write_synthetic_nnunet(tempfile.mkdtemp(), num_cases=2, num_test=1,
...                               shape=(24, 24, 16), regions=True)
>>> cases = find_nnunet_cases(root)
>>> [c.case_id for c in cases], cases[0].channel_names
(['BRATS_SYNTH_000', 'BRATS_SYNTH_001'], ('flair', 't1ce', 't1', 't2'))
>>> conv = cases[0].label_convention
>>> conv.labels, dict(conv.regions)
((0, 1, 2, 3), {'whole tumor': (1, 2, 3), 'tumor core': (1, 3), 'enhancing tumor': (3,)})
>>> [(c.case_id, c.has_seg) for c in find_nnunet_cases(root / "imagesTs")]
[('BRATS_SYNTH_TEST_000', False)]
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from missu_keras.data.brats import natural_key
from missu_keras.data.io import NIFTI_SUFFIXES
from missu_keras.data.msd import (DATASET_JSON, SUBSETS, channel_name, channel_order,
                                  read_dataset_json, require_keys)
from missu_keras.data.validation import FilePerChannelCase, LoadedCase, load_nifti_case
from missu_keras.labels import LabelConvention, get_label_convention

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""``CASE_0000`` -> case ``CASE``, channel 0 (the nnU-Net file naming)."""


def _as_values(path: Path, name: str, value) -> Tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{path}: label {name!r} must be an integer >= 0 or a list of them "
                         f"(a region); found {value!r}")
    return tuple(sorted(set(values)))


def nnunet_label_convention(path: Path, labels: Mapping, name: str) -> LabelConvention:
    """The convention of an nnU-Net ``labels`` mapping (see the module docstring).

    >>> conv = nnunet_label_convention(Path("dataset.json"), {"background": 0, "liver": 1}, "D1")
    >>> conv.labels, dict(conv.regions)
    ((0, 1), {'liver': (1,)})
    """
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{path}: 'labels' must map names to values, e.g. "
                         f"{{\"background\": 0, \"liver\": 1}}; found {labels!r}")
    values, regions = {0}, {}
    for label_name, value in labels.items():
        members = _as_values(path, label_name, value)
        values.update(members)
        if members != (0,):
            regions[str(label_name)] = members
    if 0 not in [v for k, v in labels.items() if not isinstance(v, (list, tuple))]:
        raise ValueError(f"{path}: 'labels' must declare the background as 0 "
                         f"(\"background\": 0); found {dict(labels)}")
    conv = LabelConvention(name, tuple(sorted(values)), regions)
    return get_label_convention(conv.to_dict())  # checked like a stored one


@dataclasses.dataclass(frozen=True)
class NnunetCase(FilePerChannelCase):
    """One nnU-Net raw case: one file per channel and, for training cases, labels.

    Attributes:
        case_id: the case identifier (file names without ``_XXXX`` and the ending).
        image_paths: ``{channel name: file}`` in the order the channels are loaded; a
            file that does not exist (`missing_channels`) is the name nnU-Net expects.
        seg_path: ``labelsTr/CASE<ending>``, or ``None``.
        label_convention: built from ``dataset.json`` (`nnunet_label_convention`).
    """

    case_id: str
    image_paths: Mapping[str, Path]
    seg_path: Optional[Path]
    label_convention: LabelConvention

    def load(self, label_convention=None) -> LoadedCase:
        """Reads and validates the case (`missu_keras.data.validation.load_nifti_case`)."""
        for channel in self.missing_channels:
            path = self.image_paths[channel]
            raise FileNotFoundError(f"{path}: channel {channel!r} of case {self.case_id!r} not found: "
                                    f"expected this file (nnU-Net names it CASE_XXXX with XXXX the "
                                    f"channel index)")
        channels = [(n, Path(p), None) for n, p in self.image_paths.items()]
        return load_nifti_case(self.case_id, channels, self.seg_path,
                               label_convention or self.label_convention)


def _dataset_channels(path: Path, data: dict) -> List[str]:
    try:
        items = sorted((int(k), str(v)) for k, v in dict(data["channel_names"]).items())
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'channel_names' must map \"0\", \"1\", ... to names; "
                         f"found {data['channel_names']!r}") from None
    if [k for k, _ in items] != list(range(len(items))):
        raise ValueError(f"{path}: 'channel_names' must be numbered 0..N-1; found {[k for k, _ in items]}")
    names = [channel_name(v) for _, v in items]
    # Two channels of the same name (two T1 scans): told apart by their index.
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def _file_ending(path: Path, data: dict) -> str:
    ending = data.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: file_ending {ending!r} is not supported: expected one of "
                         f"{list(NIFTI_SUFFIXES)} (NIfTI)")
    return ending


def _scan(folder: Path, ending: str, num_channels: int) -> Dict[str, Dict[int, Path]]:
    """``{case: {channel index: file}}`` of the files in ``folder``."""
    found: Dict[str, Dict[int, Path]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or not entry.name.endswith(ending) or entry.name.startswith("."):
            continue
        match = CHANNEL_SUFFIX.match(entry.name[: -len(ending)])
        if match is None:
            raise ValueError(f"{entry.path}: expected an image named CASE_XXXX{ending} "
                             "(XXXX: the 4-digit channel index)")
        index = int(match.group("channel"))
        if index >= num_channels:
            raise ValueError(f"{entry.path}: channel index {index}, but dataset.json declares "
                             f"{num_channels} channel(s) (0..{num_channels - 1})")
        found.setdefault(match.group("case"), {})[index] = Path(entry.path)
    return found


def _dataset_root(root: Path, subset: str) -> Tuple[Path, List[str]]:
    if root.name in ("imagesTr", "imagesTs") and not (root / DATASET_JSON).is_file():
        return root.parent, [root.name]
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    return root, {"train": ["imagesTr"], "test": ["imagesTs"], "all": ["imagesTr", "imagesTs"]}[subset]


def find_nnunet_cases(root, modalities: Optional[Sequence[str]] = None, subset: str = "train",
                      require_seg: bool = False) -> List[NnunetCase]:
    """Lists the cases of an nnU-Net raw dataset, sorted by case id.

    Args:
        root: the ``DatasetXXX_Name`` folder (holding ``dataset.json``), or its
            ``imagesTr`` / ``imagesTs`` folder (then ``subset`` follows the folder).
        modalities: channel order (names as in ``channel_names``, any spelling
            `missu_keras.data.msd.channel_name` reads); default the BraTS order for
            the four BraTS channels, else ``channel_names``' order.
        subset: ``"train"`` (``imagesTr``), ``"test"`` (``imagesTs``) or ``"all"``.
        require_seg: ``FileNotFoundError`` for an ``imagesTr`` case without labels.

    A case missing a channel file is listed (its `NnunetCase.missing_channels` name the
    files; loading it raises); the case count is checked against ``numTraining``
    only by `missu_keras.data.inspect`.
    """
    root, folders = _dataset_root(Path(root), subset)
    path, data = read_dataset_json(root)
    require_keys(path, data, ("channel_names", "labels"), "an nnU-Net")
    available, ending = _dataset_channels(path, data), _file_ending(path, data)
    convention = nnunet_label_convention(path, data["labels"], root.name)
    order = channel_order(path, available, modalities)
    cases = {}
    for folder_name in folders:
        folder = root / folder_name
        if not folder.is_dir():
            if folder_name == "imagesTr" or len(folders) == 1:
                raise FileNotFoundError(f"{folder}: folder not found (nnU-Net dataset {root})")
            continue
        for case_id, files in _scan(folder, ending, len(available)).items():
            paths = {available[i]: files.get(i, folder / f"{case_id}_{i:04d}{ending}") for i in order}
            seg = root / "labelsTr" / f"{case_id}{ending}" if folder_name == "imagesTr" else None
            if seg is not None and not seg.is_file():
                if require_seg:
                    raise FileNotFoundError(f"{seg}: labels of case {case_id!r} not found")
                seg = None
            cases[case_id] = NnunetCase(case_id, paths, seg, convention)
    if not cases:
        raise FileNotFoundError(f"{root}: no cases found in {folders} (expected CASE_0000{ending}, ...)")
    return [cases[k] for k in sorted(cases, key=natural_key)]


def is_nnunet_dataset(data: dict) -> bool:
    """Whether a parsed ``dataset.json`` is an nnU-Net v2 one (``channel_names``)."""
    return "channel_names" in data


__all__ = ["CHANNEL_SUFFIX", "NnunetCase", "find_nnunet_cases", "is_nnunet_dataset",
           "nnunet_label_convention"]

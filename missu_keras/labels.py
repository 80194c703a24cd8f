"""Label conventions: dataset labels <-> training classes, and evaluation regions.

One place for the conversion both ways (the nnU-Net habit), so training, evaluation,
prediction and export can never disagree.

>>> conv = get_label_convention("brats")
>>> conv.labels
(0, 1, 2, 4)
>>> import numpy as np
>>> classes = conv.to_classes(np.array([0, 1, 2, 4]))
>>> classes.tolist()
[0, 1, 2, 3]
>>> conv.to_labels(classes).tolist()
[0, 1, 2, 4]
>>> sorted(conv.regions)
['ET', 'TC', 'WT']

A dataset that defines its own labels (an nnU-Net or Decathlon ``dataset.json``) carries
its convention as a `LabelConvention` (saved as ``to_dict()``); `get_label_convention`
takes a registered name, a `LabelConvention` or such a dict, and is the one way every
consumer turns what it holds into a convention:

>>> custom = LabelConvention("Dataset001_Liver", (0, 1), {"liver": (1,)})
>>> get_label_convention(custom.to_dict()) == custom
True
>>> msd = get_label_convention("msd_brats")
>>> msd.to_classes(np.array([0, 1, 2, 3])).tolist()  # MSD 1 edema is class 2, as BraTS 2
[0, 2, 1, 3]

Writing labels in another convention goes by TISSUE (`TISSUES`: what each label of a
registered convention means), not by class index: `relabel` maps every label of the
source to the target's label of the same tissue, and refuses a tissue the target has no
label for (`label_mapping` checks a pair of conventions before any data exists):

>>> relabel(np.array([0, 1, 2, 4]), "brats2021", "brats2023").tolist()
[0, 1, 2, 3]
>>> relabel(np.array([0, 1, 2, 3]), "brats2023", "brats2024").tolist()  # RC never occurs
[0, 1, 2, 3]
>>> relabel(np.array([0, 4]), "brats2024", "brats2021")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: labels: 'brats2024' labels cannot be mapped to 'brats': label 4 (resection_cavity: ...

A dataset-defined convention (`LabelConvention.from_dict` of a ``dataset.json``) has no
tissue table: it maps to itself, and to another convention class by class (class ``i``
of one is class ``i`` of the other, the order its model was trained in) when both have
the same number of classes; otherwise the mapping is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Tuple, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelConvention:
    """How a dataset writes its labels, and which labels make up each scored region.

    Args:
        name: short name, e.g. ``"brats"``.
        labels: dataset label values in training-class order (class ``i`` is
            ``labels[i]``); ``labels[0]`` is background.
        regions: ``{region_name: tuple_of_dataset_labels}`` used for scoring.
        tissues: ``{label: tissue}`` with a key of `TISSUES` for every label (registered
            conventions); empty for a dataset-defined one, which then maps to others
            only class by class (see `label_mapping`).
    """

    name: str
    labels: Tuple[int, ...]
    regions: Mapping[str, Tuple[int, ...]]
    tissues: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_classes(self, labels: np.ndarray, source: str = "labels") -> np.ndarray:
        """Maps dataset labels to training classes ``0..K-1``.

        Raises ``ValueError`` naming ``source`` and the unexpected values when a
        label is outside this convention.
        """
        labels = np.asarray(labels)
        lut_size = max(int(labels.max(initial=0)), max(self.labels)) + 1
        if labels.size and (labels.min() < 0 or not np.all(labels == np.round(labels))):
            bad = np.unique(labels[(labels < 0) | (labels != np.round(labels))])[:10]
            raise ValueError(
                f"{source}: found label values {bad.tolist()}; expected integers in "
                f"{list(self.labels)} ({self.name} convention)"
            )
        lut = np.full(lut_size, -1, dtype=np.int64)
        for cls, lab in enumerate(self.labels):
            lut[lab] = cls
        out = lut[labels.astype(np.int64)]
        if np.any(out < 0):
            bad = np.unique(labels[out < 0])[:10]
            raise ValueError(
                f"{source}: found label values {bad.tolist()}; expected only "
                f"{list(self.labels)} ({self.name} convention)"
            )
        return out.astype(np.uint8)

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Maps training classes ``0..K-1`` back to dataset labels."""
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"class indices must be in [0, {self.num_classes - 1}]; "
                f"found range [{classes.min()}, {classes.max()}]"
            )
        return np.asarray(self.labels, dtype=np.uint8)[classes.astype(np.int64)]

    def region_masks(self, labels: np.ndarray) -> Dict[str, np.ndarray]:
        """Boolean mask per region from a dataset-label volume."""
        labels = np.asarray(labels)
        return {name: np.isin(labels, members) for name, members in self.regions.items()}

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "labels": list(self.labels),
            "regions": {k: list(v) for k, v in self.regions.items()},
        }
        if self.tissues:  # absent without a table: stored contracts keep their form
            d["tissues"] = {str(k): v for k, v in self.tissues.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabelConvention":
        return cls(
            name=d["name"],
            labels=tuple(int(v) for v in d["labels"]),
            regions={k: tuple(int(x) for x in v) for k, v in d["regions"].items()},
            tissues={int(k): str(v) for k, v in d.get("tissues", {}).items()},
        )


# What a label means, by tissue: `relabel` maps labels between conventions through these
# names, so a label is only ever written as the same tissue.
TISSUES: Dict[str, str] = {
    "background": "background",
    "necrosis": "necrotic / non-enhancing tumour core (BraTS NCR/NET; 2024: NETC)",
    "edema": "peritumoral edema (BraTS ED; 2024: SNFH, surrounding non-enhancing FLAIR "
             "hyperintensity)",
    "enhancing": "enhancing tumour (BraTS ET)",
    "resection_cavity": "resection cavity (BraTS 2024 RC)",
    "liver": "liver",
}

_BRATS_TISSUES = ("background", "necrosis", "edema", "enhancing")

LABEL_CONVENTIONS: Dict[str, LabelConvention] = {
    # BraTS 2012-2021: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing (no 3).
    "brats": LabelConvention(
        "brats", (0, 1, 2, 4), {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
        dict(zip((0, 1, 2, 4), _BRATS_TISSUES)),
    ),
    # BraTS 2023+: enhancing tumour is 3.
    "brats2023": LabelConvention(
        "brats2023", (0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
        dict(zip((0, 1, 2, 3), _BRATS_TISSUES)),
    ),
    # BraTS 2024 post-treatment adult glioma (BraTS-GLI 2024): 1 NETC (non-enhancing tumour
    # core), 2 SNFH (surrounding non-enhancing FLAIR hyperintensity), 3 ET (enhancing
    # tissue), 4 RC (resection cavity); WT = 1,2,3 and TC = 1,3 (RC is in neither).
    # Source: de Verdier et al., "The 2024 Brain Tumor Segmentation (BraTS) Challenge:
    # Glioma Segmentation on Post-treatment MRI", arXiv:2405.18368 (the four sub-regions),
    # the challenge data description (ET 3, SNFH 2, NETC 1, RC 4) and the organisers'
    # scorer (github.com/rachitsaluja/BraTS-2024-Metrics, metrics_GLI.py: WT = 1..3,
    # TC = 1,3, NETC = 1, SNFH = 2, ET = 3, RC = 4).
    "brats2024": LabelConvention(
        "brats2024", (0, 1, 2, 3, 4),
        {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "NETC": (1,), "SNFH": (2,), "RC": (4,)},
        dict(zip((0, 1, 2, 3, 4), _BRATS_TISSUES + ("resection_cavity",))),
    ),
    # CHAOS MR liver: masks are thresholded to 0/1 when read.
    "chaos": LabelConvention("chaos", (0, 1), {"liver": (1,)}, {0: "background", 1: "liver"}),
    # Medical Segmentation Decathlon Task01_BrainTumour: 1 edema, 2 non-enhancing tumour,
    # 3 enhancing tumour. Listed so that training class i is the same tissue as in "brats"
    # (1 necrotic / non-enhancing core, 2 edema, 3 enhancing): a model trained on either
    # runs on the other, and results are reported in the BraTS regions.
    "msd_brats": LabelConvention(
        "msd_brats", (0, 2, 1, 3), {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
        {0: "background", 1: "edema", 2: "necrosis", 3: "enhancing"},
    ),
}
# BraTS 2021 is the same convention as "brats" (BraTS 2012-2021), under its year's name.
LABEL_CONVENTIONS["brats2021"] = LABEL_CONVENTIONS["brats"]

ConventionSpec = Union[str, LabelConvention, Mapping]
"""What may name a convention: a registered name, a `LabelConvention`, or its ``to_dict()``."""


def get_label_convention(spec: ConventionSpec) -> LabelConvention:
    """The convention ``spec`` names: a registered name (``brats`` alias ``brats2021``,
    ``brats2023``, ``brats2024``, ``chaos``, ``msd_brats``), a `LabelConvention` (returned as is) or a
    `LabelConvention.to_dict` mapping (a dataset-defined convention, as stored in a
    preprocessing contract). Every consumer resolves conventions through this function.

    >>> get_label_convention({"name": "x", "labels": [0, 5], "regions": {"a": [5]}}).labels
    (0, 5)
    """
    if isinstance(spec, LabelConvention):
        return spec
    if isinstance(spec, Mapping):
        try:
            conv = LabelConvention.from_dict(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"label convention {dict(spec)!r}: expected a mapping with 'name', 'labels' "
                f"(ints, background first) and 'regions' ({{name: [labels]}}); {exc!r}"
            ) from None
        _check_convention(conv)
        return conv
    try:
        return LABEL_CONVENTIONS[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown label convention {spec!r}; expected one of {sorted(LABEL_CONVENTIONS)}, "
            "a LabelConvention or its to_dict()"
        ) from None


def label_mapping(source: ConventionSpec, target: ConventionSpec,
                  what: str = "labels") -> Dict[int, int]:
    """``{source label: target label}`` for writing ``source`` labels in ``target``:
    by tissue when both conventions have a tissue table (registered ones), else class by
    class when both have the same number of classes (a dataset-defined convention; see
    the module docstring). ``ValueError`` naming ``what``, both conventions and the
    tissue when a source label has no counterpart: call it before any work to refuse an
    impossible mapping early.

    >>> label_mapping("msd_brats", "brats2023")
    {0: 0, 2: 1, 1: 2, 3: 3}
    """
    src, dst = get_label_convention(source), get_label_convention(target)
    if src == dst:
        return {lab: lab for lab in src.labels}
    if src.tissues and dst.tissues:
        by_tissue = {tissue: lab for lab, tissue in dst.tissues.items()}
        for lab in src.labels:
            tissue = src.tissues[lab]
            if tissue not in by_tissue:
                raise ValueError(
                    f"{what}: {src.name!r} labels cannot be mapped to {dst.name!r}: label {lab} "
                    f"({tissue}: {TISSUES.get(tissue, tissue)}) has no label in {dst.name!r}, "
                    f"whose tissues are {', '.join(dst.tissues[v] for v in dst.labels)}"
                )
        return {lab: by_tissue[src.tissues[lab]] for lab in src.labels}
    if src.num_classes != dst.num_classes:
        raise ValueError(
            f"{what}: written in the {src.name!r} convention ({src.num_classes} classes "
            f"{list(src.labels)}), which cannot be mapped to {dst.name!r} ({dst.num_classes} "
            f"classes {list(dst.labels)}); expected data labelled like the model's training set"
        )
    return dict(zip(src.labels, dst.labels))


def relabel(labels: np.ndarray, source: ConventionSpec, target: ConventionSpec,
            what: str = "labels") -> np.ndarray:
    """``labels`` written in ``source`` rewritten in ``target`` through `label_mapping`
    (by tissue; class by class for a dataset-defined convention). ``ValueError`` naming
    ``what`` for a label outside ``source`` or an impossible mapping. Returns ``uint8``
    labels (the input itself when both conventions are the same).

    >>> relabel(np.array([[0, 4], [1, 2]]), "brats", "msd_brats").tolist()
    [[0, 3], [2, 1]]
    """
    src, dst = get_label_convention(source), get_label_convention(target)
    if src == dst:
        return np.asarray(labels)
    mapping = label_mapping(src, dst, what)
    by_class = np.asarray([mapping[lab] for lab in src.labels], dtype=np.uint8)
    return by_class[src.to_classes(labels, source=what)]


def convert_labels(labels: np.ndarray, source: ConventionSpec, target: ConventionSpec,
                   what: str = "labels") -> np.ndarray:
    """Labels written in ``source`` rewritten in ``target``: e.g. a Decathlon Task01
    ground truth in the BraTS labels of a BraTS-trained model. The same as `relabel`
    (by tissue for registered conventions, class by class for dataset-defined ones);
    kept for its callers.

    >>> convert_labels(np.array([0, 1, 2, 3]), "msd_brats", "brats").tolist()
    [0, 2, 1, 4]
    """
    return relabel(labels, source, target, what)


def convention_name(spec: ConventionSpec) -> str:
    """The name of the convention ``spec`` names (for messages and file headers)."""
    return get_label_convention(spec).name


def _check_convention(conv: LabelConvention) -> None:
    labels = list(conv.labels)
    if not labels or labels[0] != 0 or len(set(labels)) != len(labels) or min(labels) < 0:
        raise ValueError(
            f"label convention {conv.name!r}: labels must be distinct integers >= 0 with "
            f"background 0 first. Received: labels={labels}"
        )
    if conv.tissues and set(conv.tissues) != set(labels):
        raise ValueError(
            f"label convention {conv.name!r}: tissues must name every label {labels} once. "
            f"Received: tissues={dict(conv.tissues)}"
        )
    for region, members in conv.regions.items():
        unknown = sorted(set(members) - set(labels))
        if unknown or not members:
            raise ValueError(
                f"label convention {conv.name!r}: region {region!r} lists {list(members)}; "
                f"expected a non-empty subset of the labels {labels}"
            )

"""`SegmenterEnsemble`: several `Segmenter` s (e.g. the folds of a cross-validation
run) as one: each member segments the case on its own (its own patch size and sliding
window), their probabilities on the case's grid are averaged with equal weights, and
the labels are the argmax of that average.

Members must share the preprocessing contract (modalities, label convention,
normalisation, crop, ... every field but the patch size, which only sets each member's
window); a difference is refused, naming the field and the members.

>>> import numpy as np, tempfile, missu_keras
>>> from missu_keras.data import find_brats_cases, write_synthetic_brats
>>> from missu_keras.inference import Segmenter
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=1, seed=0, shape=(40, 40, 24))
>>> members = [Segmenter.from_model(missu_keras.MISSU.from_preset(
...     "tiny", image_size=32, embed_dim=32, num_layers=1)) for _ in range(2)]
>>> loaded = find_brats_cases(root)[0].load()
>>> result = SegmenterEnsemble(members).segment(loaded, return_probabilities=True)
>>> mean = sum(m.segment(loaded, return_probabilities=True).probabilities for m in members) / 2
>>> np.allclose(result.probabilities, mean), result.labels.shape
(True, (40, 40, 24))
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from missu_keras.inference.pipeline import labels_from_probabilities
from missu_keras.inference.postprocessing import (apply_postprocessing, as_postprocessing_config,
                                                  check_postprocessing)
from missu_keras.inference.segmenter import Segmentation

# Contract fields members may differ in: each member slides its own window.
ENSEMBLE_FREE_FIELDS = ("patch_size",)


class SegmenterEnsemble:
    """Segmenters whose probabilities are averaged (equal weights); `segment` as
    `missu_keras.inference.Segmenter.segment`.

    Args:
        members: the `Segmenter` s (at least one).
        names: what to call each member in errors (default ``member 0``, ...).
        postprocessing: a `missu_keras.inference.PostprocessingConfig` (or its dict)
            applied to the labels of the averaged probabilities (the members' own is not
            used: only their probabilities are); ``None`` (default): none.
    """

    def __init__(self, members: Sequence, names: Optional[Sequence[str]] = None,
                 postprocessing=None):
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member; received none")
        names = [str(n) for n in names] if names is not None else [f"member {i}" for i in range(len(members))]
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names for {len(members)} ensemble members")
        check_same_contract([m.preprocessing for m in members], names)
        self.members, self.names = members, names
        self.preprocessing = members[0].preprocessing
        self.postprocessing = as_postprocessing_config(postprocessing)
        check_postprocessing(self.postprocessing, self.preprocessing.convention)

    def segment(self, loaded, return_probabilities: bool = False) -> Segmentation:
        """The argmax (as dataset labels) of the members' mean probabilities on the
        case's own grid, post-processed; the mean itself with ``return_probabilities``."""
        total = None
        for member in self.members:
            probs = member.segment(loaded, return_probabilities=True).probabilities
            total = probs if total is None else total + probs
            del probs
        mean = (total / np.float32(len(self.members))).astype(np.float32)
        conv = self.preprocessing.convention
        labels = apply_postprocessing(labels_from_probabilities(mean, conv), self.postprocessing,
                                      conv).numpy()
        return Segmentation(loaded.case_id, labels.astype(np.uint8),
                            mean if return_probabilities else None)


def check_same_contract(contracts: Sequence, names: Sequence[str]) -> None:
    """``ValueError`` naming the field and the two members when preprocessing
    contracts (`missu_keras.data.PreprocessingConfig`) differ in a field other than
    `ENSEMBLE_FREE_FIELDS`."""
    first = contracts[0].to_dict()
    for name, contract in zip(names[1:], contracts[1:]):
        other = contract.to_dict()
        for field in first:
            if field not in ENSEMBLE_FREE_FIELDS and first[field] != other.get(field):
                raise ValueError(
                    f"ensemble members disagree on the preprocessing field {field!r}: "
                    f"{names[0]} has {first[field]!r}, {name} has {other.get(field)!r}; "
                    "expected models trained with the same preprocessing contract")

"""Post-processing of predicted labels, written once in TensorFlow: what ``predict``,
``evaluate``, `SegmenterEnsemble` and the SavedModel's ``segment_volume`` /
``segment_scan`` signatures apply after the argmax.

A `PostprocessingConfig` lists the steps, in the dataset labels and regions of the
model's label convention (`missu_keras.labels`); it is stored beside the model as
``postprocessing.json`` (`write_postprocessing`, `read_postprocessing`) and chosen on
validation predictions by ``missu-keras postprocess choose``
(`missu_keras.postprocess_choice`). The steps run in this order:

1. ``et_min_voxels``: when a case's enhancing tumour (region ``"ET"``) holds fewer
   voxels than this, its ET labels become the label of class 1 (necrosis /
   non-enhancing core: BraTS 2021 label 4 -> 1, BraTS 2023 3 -> 1);
2. ``min_component_voxels`` ``{region: N}``: each 26-connected component of the region
   smaller than N voxels becomes background (0);
3. ``largest_component_only`` ``[region, ...]``: every component of the region but the
   largest becomes background (a single organ: CHAOS liver).

The empty configuration (the default) changes nothing: no op is added to the graph.
Voxel counts are in the case's own grid (the labels are post-processed after the
probabilities are resampled back from the target spacing).

Connected components (`connected_components`) are found in TensorFlow by propagating
the largest voxel id over each voxel's 26 neighbours inside the mask, with pointer
jumping (a voxel takes the id that the voxel its id names holds) until nothing changes,
on the mask's bounding box only.

>>> import numpy as np, tensorflow as tf
>>> labels = np.zeros((8, 8, 8), "int32")
>>> labels[1:3, 1:3, 1:3] = 4          # 8 voxels of enhancing tumour
>>> labels[5:8, 5:8, 5:8] = 2          # 27 voxels of edema
>>> config = PostprocessingConfig(et_min_voxels=10)
>>> out = apply_postprocessing(tf.constant(labels), config, "brats").numpy()
>>> sorted(np.unique(out).tolist())
[0, 1, 2]
>>> config = PostprocessingConfig(min_component_voxels={"WT": 10})
>>> sorted(np.unique(apply_postprocessing(tf.constant(labels), config, "brats").numpy()).tolist())
[0, 2]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from missu_keras.config import StrictConfig
from missu_keras.files import write_json_atomic
from missu_keras.labels import get_label_convention
from missu_keras.weights.preset_io import POSTPROCESSING_FILE
ET_REGION = "ET"


@dataclasses.dataclass
class PostprocessingConfig(StrictConfig):
    """The post-processing steps of a model (module docstring); empty: none.

    Args:
        et_min_voxels: relabel ET as class 1 in a case whose ET volume is below this
            many voxels; 0 (default): off.
        min_component_voxels: ``{region: N}``: drop the region's connected components
            smaller than N voxels (to background).
        largest_component_only: regions of which only the largest connected component
            is kept.

    >>> PostprocessingConfig().is_empty, PostprocessingConfig(et_min_voxels=50).is_empty
    (True, False)
    >>> PostprocessingConfig(min_component_voxels={"WT": 0})
    Traceback (most recent call last):
    ...
    ValueError: PostprocessingConfig: min_component_voxels['WT'] must be an integer >= 1. Received: 0
    """

    SETTINGS_NAME = "post-processing settings"

    et_min_voxels: int = 0
    min_component_voxels: Dict[str, int] = dataclasses.field(default_factory=dict)
    largest_component_only: Tuple[str, ...] = ()

    def validate(self):
        if self.et_min_voxels < 0:
            raise ValueError(f"PostprocessingConfig: et_min_voxels must be an integer >= 0 (0: "
                             f"off). Received: {self.et_min_voxels!r}")
        for region, size in self.min_component_voxels.items():
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"PostprocessingConfig: min_component_voxels[{region!r}] must be "
                                 f"an integer >= 1. Received: {size!r}")
        self.min_component_voxels = {str(k): int(v) for k, v in self.min_component_voxels.items()}

    @property
    def is_empty(self) -> bool:
        return not (self.et_min_voxels or self.min_component_voxels or self.largest_component_only)

    def regions(self) -> Tuple[str, ...]:
        """Every region a step names (``"ET"`` for the ET step)."""
        named = ([ET_REGION] if self.et_min_voxels else []) + list(self.min_component_voxels)
        return tuple(dict.fromkeys(named + list(self.largest_component_only)))

    def describe(self, convention=None) -> str:
        """One line for logs and metadata.

        >>> PostprocessingConfig(et_min_voxels=50, largest_component_only=("WT",)).describe("brats")
        'ET (labels [4]) -> label 1 when a case has fewer than 50 ET voxels; WT: largest component only'
        """
        if self.is_empty:
            return "none"
        parts = []
        if self.et_min_voxels:
            if convention is None:
                parts.append(f"ET -> class 1 below {self.et_min_voxels} voxels")
            else:
                conv = get_label_convention(convention)
                parts.append(f"ET (labels {list(conv.regions[ET_REGION])}) -> label "
                             f"{conv.labels[1]} when a case has fewer than "
                             f"{self.et_min_voxels} ET voxels")
        parts += [f"{r}: components under {n} voxels dropped"
                  for r, n in self.min_component_voxels.items()]
        parts += [f"{r}: largest component only" for r in self.largest_component_only]
        return "; ".join(parts)


def check_postprocessing(config: PostprocessingConfig, convention, source: str = "post-processing"):
    """``ValueError`` naming ``source`` when a step names a region that the label
    convention lacks (or the ET step a convention without an ``"ET"`` region)."""
    conv = get_label_convention(convention)
    unknown = [r for r in config.regions() if r not in conv.regions]
    if unknown:
        raise ValueError(f"{source}: regions {unknown} are not regions of the label convention "
                         f"{conv.name!r}; expected some of {sorted(conv.regions)}")


def as_postprocessing_config(value) -> PostprocessingConfig:
    """``None`` -> the empty config; a `PostprocessingConfig`, its dict or a
    ``postprocessing.json`` path -> the config."""
    if value is None:
        return PostprocessingConfig()
    if isinstance(value, PostprocessingConfig):
        return value
    if isinstance(value, dict):
        return PostprocessingConfig.from_dict(dict(value))
    return read_postprocessing(value)


def write_postprocessing(config: PostprocessingConfig, folder) -> Path:
    """``folder/postprocessing.json`` written atomically; returns its path."""
    return write_json_atomic(Path(folder) / POSTPROCESSING_FILE, config.to_dict())


def read_postprocessing(path) -> PostprocessingConfig:
    """A ``postprocessing.json`` (a file, or a folder holding one), read strictly: an
    unknown name or a wrong type is an error naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / POSTPROCESSING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: post-processing file not found") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected the {POSTPROCESSING_FILE} "
                         "written by missu-keras postprocess choose") from None
    try:
        return PostprocessingConfig.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ------------------------------------------------------------------ in TensorFlow --

def _shift(x, axis: int, step: int):
    """``x`` moved by ``step`` (+1 / -1) voxels along ``axis``, zero-filled."""
    size = tf.shape(x)[axis]
    pad = [[0, 0]] * 3
    pad[axis] = [1, 0] if step > 0 else [0, 1]
    begin = [0, 0, 0]
    begin[axis] = 0 if step > 0 else 1
    sizes = [-1, -1, -1]
    sizes[axis] = size
    return tf.slice(tf.pad(x, pad), begin, sizes)


def _neighbourhood_max(ids):
    """The largest value in each voxel's 3x3x3 neighbourhood (separable, exact int32)."""
    for axis in range(3):
        ids = tf.maximum(ids, tf.maximum(_shift(ids, axis, 1), _shift(ids, axis, -1)))
    return ids


def _box(mask):
    """``(start, stop)`` int32 ``(3,)`` of the mask's bounding box (empty: zeros)."""
    starts, stops = [], []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        hit = tf.cast(tf.where(tf.reduce_any(mask, axis=others))[:, 0], tf.int32)
        starts.append(tf.reduce_min(tf.concat([hit, [tf.int32.max]], 0)))
        stops.append(tf.reduce_max(tf.concat([hit + 1, [0]], 0)))
    start, stop = tf.stack(starts), tf.stack(stops)
    return tf.minimum(start, stop), stop


def _components_in_box(mask):
    """``(ids, start, stop)``: component ids (int32, 0 outside the mask) on the mask's
    bounding box ``[start, stop)``."""
    start, stop = _box(mask)
    box = tf.slice(mask, start, stop - start)
    count = tf.size(box)
    ids = tf.where(box, tf.reshape(tf.range(1, count + 1, dtype=tf.int32), tf.shape(box)), 0)

    def step(ids, _):
        new = tf.where(box, _neighbourhood_max(ids), 0)
        flat = tf.reshape(new, [-1])
        for _ in range(2):  # pointer jumping: ids name a voxel of the same component
            flat = tf.where(flat > 0, tf.gather(flat, tf.maximum(flat - 1, 0)), 0)
        new = tf.reshape(flat, tf.shape(box))
        return new, tf.reduce_any(tf.not_equal(new, ids))

    ids, _ = tf.while_loop(lambda ids, changed: changed, step, (ids, tf.constant(True)))
    return ids, start, stop


def _uncrop(values, start, stop, shape):
    return tf.pad(values, tf.stack([start, shape - stop], axis=1))


def connected_components(mask):
    """26-connected components of a boolean ``(H, W, D)`` mask: int32 ids, 0 outside
    the mask, one id per component (not consecutive: compare them as a partition).

    >>> import numpy as np
    >>> mask = np.zeros((4, 4, 4), bool); mask[0, 0, 0] = mask[1, 1, 1] = mask[3, 3, 3] = True
    >>> ids = connected_components(tf.constant(mask)).numpy()
    >>> bool(ids[0, 0, 0] == ids[1, 1, 1] != ids[3, 3, 3]), int(ids[2, 2, 2])
    (True, 0)
    """
    mask = tf.cast(mask, tf.bool)
    ids, start, stop = _components_in_box(mask)
    return _uncrop(ids, start, stop, tf.shape(mask))


def _box_component_sizes(mask):
    """``(sizes, ids, start, stop)``: the voxel count of each voxel's component (0
    outside the mask) on the mask's bounding box."""
    ids, start, stop = _components_in_box(mask)
    flat = tf.reshape(ids, [-1])
    counts = tf.math.bincount(flat, minlength=tf.size(flat) + 1, dtype=tf.int32)  # ids <= box size
    sizes = tf.where(flat > 0, tf.gather(counts, flat), 0)
    return tf.reshape(sizes, tf.shape(ids)), ids, start, stop


def component_sizes(mask):
    """The size (voxels) of each voxel's 26-connected component, int32, 0 outside the
    mask."""
    mask = tf.cast(mask, tf.bool)
    sizes, _, start, stop = _box_component_sizes(mask)
    return _uncrop(sizes, start, stop, tf.shape(mask))


def largest_component(mask):
    """The largest 26-connected component of ``mask`` (boolean); on a tie, the one
    whose first voxel comes first in C order."""
    mask = tf.cast(mask, tf.bool)
    sizes, ids, start, stop = _box_component_sizes(mask)
    flat_sizes, flat_ids = tf.reshape(sizes, [-1]), tf.reshape(ids, [-1])
    first = tf.argmax(tf.concat([flat_sizes, [0]], 0), output_type=tf.int32)  # empty: no voxel
    best = tf.concat([flat_ids, [0]], 0)[first]
    keep = tf.logical_and(tf.equal(ids, best), ids > 0)
    return tf.cast(_uncrop(tf.cast(keep, tf.int32), start, stop, tf.shape(mask)), tf.bool)


def _in_region(labels, members):
    return tf.reduce_any(tf.equal(labels[..., None], tf.constant(list(members), labels.dtype)), -1)


def apply_postprocessing(labels, config, convention):
    """``labels`` (dataset labels, integer tensor ``(H, W, D)``) after the steps of
    ``config`` (a `PostprocessingConfig`, its dict or ``None``) in the regions of
    ``convention``; graph-safe. The empty config returns ``labels`` itself."""
    config = as_postprocessing_config(config)
    if config.is_empty:
        return labels
    conv = get_label_convention(convention)
    check_postprocessing(config, conv)
    labels = tf.convert_to_tensor(labels)
    zero = tf.zeros_like(labels)
    if config.et_min_voxels:
        et = _in_region(labels, conv.regions[ET_REGION])
        small = tf.reduce_sum(tf.cast(et, tf.int32)) < config.et_min_voxels
        labels = tf.where(tf.logical_and(et, small), tf.cast(conv.labels[1], labels.dtype), labels)
    for region in conv.regions:  # the convention's order, whatever the file's
        if region in config.min_component_voxels:
            mask = _in_region(labels, conv.regions[region])
            drop = tf.logical_and(mask, component_sizes(mask) < config.min_component_voxels[region])
            labels = tf.where(drop, zero, labels)
    for region in config.largest_component_only:
        mask = _in_region(labels, conv.regions[region])
        labels = tf.where(tf.logical_and(mask, tf.logical_not(largest_component(mask))), zero, labels)
    return labels

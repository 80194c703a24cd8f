"""`Segmenter`: an inference model plus its preprocessing contract, loaded case ->
labels on the case's own grid, through the one TensorFlow pipeline
(`missu_keras.inference.segment_volume`'s parts, which the SavedModel's
``segment_volume`` runs too).

Example, with an untrained tiny model on one generated case:

>>> import tempfile, missu_keras
>>> from missu_keras.data import find_brats_cases, write_synthetic_brats
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=1, seed=0, shape=(40, 40, 24))
>>> model = missu_keras.MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> segmenter = Segmenter.from_model(model)
>>> case = find_brats_cases(root)[0]
>>> labels = segmenter.segment(case.load()).labels
>>> labels.shape, labels.dtype, set(labels.ravel().tolist()) <= {0, 1, 2, 4}
((40, 40, 24), dtype('uint8'), True)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from missu_keras.data.geometry import reorient, undo_orientation, voxel_spacing
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.hardware import resolve_precision
from missu_keras.inference.pipeline import as_preprocessing_config, finish_volume, prepare_volume
from missu_keras.inference.postprocessing import as_postprocessing_config, check_postprocessing
from missu_keras.inference.sliding_window import (SlidingWindowInferer, rebuild_with_dtype_policy,
                                                  refusing_non_finite)
from missu_keras.models import MISSU

logger = logging.getLogger("missu_keras.inference")


@dataclasses.dataclass
class Segmentation:
    """Result of `Segmenter.segment` for one case.

    Attributes:
        case_id: the case name.
        labels: ``(H, W, D)`` uint8 dataset labels on the case's original grid.
        probabilities: ``(H, W, D, K)`` float32 class probabilities on the original grid
            (background 1 outside the crop), or ``None`` unless asked for.
    """

    case_id: str
    labels: np.ndarray
    probabilities: Optional[np.ndarray] = None


class Segmenter:
    """An inference model plus its preprocessing: loaded case -> labels in its grid.

    Args:
        model: an image -> probabilities Keras model with a fixed patch size, e.g.
            `missu_keras.MISSU.inference_model` or `missu_keras.load_pretrained`.
        preprocessing: the `PreprocessingConfig` (or its dict) the model was trained with.
        overlap, flip_tta, sw_batch_size, progress: see
            `missu_keras.inference.SlidingWindowInferer`.
        precision: ``"float32"``, ``"mixed_bfloat16"`` (the model is rebuilt under that
            policy; the output stays float32) or ``"auto"`` (`missu_keras.hardware`:
            ``mixed_bfloat16`` on a CPU with bf16 units, else ``float32``; logged).
        postprocessing: a `missu_keras.inference.PostprocessingConfig` (its dict, or a
            ``postprocessing.json`` path) applied to the labels in the compiled
            pipeline; ``None`` (default): none.
    """

    def __init__(self, model: keras.Model, preprocessing, overlap: float = 0.5,
                 flip_tta: bool = False, precision: str = "float32",
                 sw_batch_size: int = 1, progress: bool = False, postprocessing=None):
        preprocessing = as_preprocessing_config(preprocessing)
        self.postprocessing = as_postprocessing_config(postprocessing)
        check_postprocessing(self.postprocessing, preprocessing.convention)
        if precision not in ("float32", "mixed_bfloat16", "auto"):
            raise ValueError(
                f"precision must be 'float32', 'mixed_bfloat16' or 'auto'; received {precision!r}"
            )
        precision = resolve_precision(precision, "inference")
        self.patch_size = _check_model(model, preprocessing)
        if precision == "mixed_bfloat16":
            model = rebuild_with_dtype_policy(model, "mixed_bfloat16")
        self.model = model
        self.preprocessing = preprocessing
        self.inferer = SlidingWindowInferer(
            roi_size=self.patch_size, overlap=overlap, sw_batch_size=sw_batch_size,
            flip_tta=flip_tta, precision=None if precision == "float32" else precision,
            progress=progress, divisible_by=8,
        )
        self._functions = {}

    @classmethod
    def from_model(cls, model, preprocessing=None, **kwargs) -> "Segmenter":
        """From a `missu_keras.MISSU` (its inference model and stored preprocessing) or
        a plain inference model with ``preprocessing`` given."""
        if isinstance(model, MISSU):
            preprocessing = preprocessing or model.preprocessing
            model = model.inference_model()
        if preprocessing is None:
            preprocessing = default_preprocessing(model)
        return cls(model, preprocessing, **kwargs)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Sliding-window probabilities of one preprocessed (cropped, normalised)
        volume ``(h, w, d, C)`` -> ``(h, w, d, K)`` (axes shorter than the patch are
        padded and cropped back by the inferer)."""
        return self.inferer(self.model, np.asarray(image, np.float32))

    def segment(self, loaded, return_probabilities: bool = False) -> Segmentation:
        """Segments a loaded case (`missu_keras.data.LoadedCase`, e.g. ``case.load()``;
        its labels, if any, are ignored) with `missu_keras.inference.segment_volume`'s
        three parts, each compiled once for every volume size.

        The case is first reoriented to the contract's ``orientation`` (exact,
        `missu_keras.data.geometry.reorient`) and its voxel spacing read from its affine;
        the pipeline resamples to the contract's ``target_spacing`` and back; the labels
        (and probabilities) are then moved back to the case's own orientation, so both
        lie on the input's grid, voxel for voxel.

        Raises:
            ValueError: the case's channels are not the contract's modalities, or its
                image holds NaN or Inf values (named with the case and its files).
        """
        prep = self.preprocessing
        if tuple(loaded.channel_names) != tuple(prep.modalities):
            raise ValueError(
                f"case {loaded.case_id!r}: channel order mismatch: expected "
                f"{list(prep.modalities)} (preprocessing config), found "
                f"{list(loaded.channel_names)}"
            )
        prepare, finish = self._compiled(return_probabilities)
        volume, affine = np.asarray(loaded.image, np.float32), np.asarray(loaded.affine)
        moved = reorient(volume, affine, prep.orientation) if prep.orientation else None
        if moved is not None:
            volume, affine = np.ascontiguousarray(moved.array), moved.affine
        grid = tf.constant(volume.shape[:3], tf.int32)
        spacing = tf.constant(voxel_spacing(affine), tf.float64)
        volume = tf.convert_to_tensor(volume)
        with refusing_non_finite(_describe(loaded)):
            image, start, stop = prepare(volume, spacing)
        # Three steps, not one graph, and no reference kept to what a step no longer
        # needs: TensorFlow's CPU memory pool (oneDNN's BFC allocator) never shrinks, and
        # a 240 x 240 x 155 case peaked 0.5 GB above the NumPy pipeline when the volume
        # and the preprocessing buffers shared it with the model (benchmarks/NOTES.md).
        del volume
        probs = self.inferer.run(self.model, image)
        del image
        out = finish(probs, start, stop, grid, spacing)
        labels = out["labels"].numpy().astype(np.uint8)
        full = out["probabilities"].numpy() if return_probabilities else None
        if moved is not None:
            labels = undo_orientation(labels, moved)
            full = None if full is None else undo_orientation(full, moved)
        return Segmentation(loaded.case_id, labels, full)

    def _compiled(self, return_probabilities: bool):
        """``(prepare, finish)``: `prepare_volume` and `finish_volume` as ``tf.function``s."""
        if return_probabilities not in self._functions:
            prep, channels = self.preprocessing, self.preprocessing.num_channels
            post = self.postprocessing
            prepare = tf.function(
                lambda volume, spacing: prepare_volume(volume, prep, what="image", spacing=spacing),
                input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32),
                                 tf.TensorSpec([3], tf.float64)],
                autograph=False)
            finish = tf.function(
                lambda probs, start, stop, full_shape, spacing: finish_volume(
                    probs, start, stop, full_shape, prep.convention, return_probabilities,
                    spacing, prep.resampling, post),
                input_signature=[tf.TensorSpec([None, None, None, prep.num_classes], tf.float32),
                                 *[tf.TensorSpec([3], tf.int32)] * 3,
                                 tf.TensorSpec([3], tf.float64)],
                autograph=False)
            self._functions[return_probabilities] = prepare, finish
        prepare, finish = self._functions[return_probabilities]
        return prepare, finish


def _describe(loaded) -> str:
    files = [str(f) for f in getattr(loaded, "source_files", ()) or ()]
    return f"case {loaded.case_id!r}" + (f" ({', '.join(files)})" if files else "") + ": image"


def _check_model(model: keras.Model, preprocessing: PreprocessingConfig):
    """The model's patch size, after checking it against the contract."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 5 or None in shape[1:]:
        raise ValueError(
            f"the model must take fixed-size patches (batch, H, W, D, C); its input "
            f"shape is {shape}"
        )
    if shape[-1] != preprocessing.num_channels:
        raise ValueError(
            f"the model takes {shape[-1]} channels but the preprocessing lists "
            f"{preprocessing.num_channels} modalities {list(preprocessing.modalities)}"
        )
    classes = tuple(model.outputs[0].shape)[-1]
    if classes != preprocessing.num_classes:
        raise ValueError(
            f"the model predicts {classes} classes but label convention "
            f"{preprocessing.label_convention!r} has {preprocessing.num_classes}"
        )
    return tuple(int(s) for s in shape[1:4])


def default_preprocessing(model: keras.Model) -> PreprocessingConfig:
    """BraTS preprocessing at the model's patch size, for models saved without their
    contract (with a warning: pass the real one when the model was trained otherwise)."""
    shape = tuple(model.inputs[0].shape)
    logger.warning("model carries no preprocessing settings; assuming BraTS (FLAIR, T1ce, "
                   "T1, T2; z-score over the brain) at patch %s", shape[1:4])
    return PreprocessingConfig.brats(patch_size=tuple(int(s) for s in shape[1:4]))

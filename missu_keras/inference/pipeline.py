"""The case pipeline, written once in TensorFlow: raw scan -> labels on its own grid.

``segment_volume`` runs the preprocessing contract (`missu_keras.data.preprocessing`:
crop to the non-zero box plus margin, resampling to the contract's target spacing when
the voxel spacing is given, normalisation), the sliding window of a
`SlidingWindowInferer`, the probabilities resampled back to the crop box's grid, argmax,
the label map and the uncrop, all in TensorFlow ops, in
three parts (`prepare_volume`, ``inferer.sliding_window``, `finish_volume`): the
SavedModel's ``segment_volume`` signature (`missu_keras.export`) runs them in one graph,
`missu_keras.inference.Segmenter` (``predict``, ``evaluate``, the demo) as three
compiled steps with the arrays on the host in between, like the training cache. ``segment_patches`` is the patch-level path of the SavedModel's
``serving_default``. Both refuse NaN / Inf input inside the graph (`ensure_finite`).

It works with any patch predictor, e.g. a 1x1x1 convolution:

>>> import numpy as np, keras, tensorflow as tf
>>> from missu_keras.data import PreprocessingConfig
>>> from missu_keras.inference import SlidingWindowInferer
>>> inputs = keras.Input((16, 16, 8, 4))
>>> net = keras.Model(inputs, keras.layers.Conv3D(4, 1, activation="softmax")(inputs))
>>> prep = PreprocessingConfig.brats(patch_size=(16, 16, 8))
>>> inferer = SlidingWindowInferer((16, 16, 8), overlap=0.5, divisible_by=8)
>>> segment = tf.function(lambda v: segment_volume(v, net, prep, inferer, num_classes=4))
>>> volume = np.zeros((30, 20, 12, 4), "float32")
>>> volume[5:25, 4:16, 2:10] = np.random.default_rng(0).uniform(1, 9, (20, 12, 8, 4))
>>> labels = segment(tf.constant(volume))["labels"].numpy()
>>> labels.shape, labels.dtype, set(np.unique(labels)) <= {0, 1, 2, 4}
((30, 20, 12), dtype('int32'), True)
>>> volume[7, 7, 7, 0] = np.nan
>>> try:
...     segment(tf.constant(volume))
... except tf.errors.InvalidArgumentError as err:
...     print("volume holds NaN or Inf values" in err.message)
True
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from missu_keras.data.geometry import resample_tensor, target_shape
from missu_keras.data.preprocessing import PreprocessingConfig, preprocess_volume
from missu_keras.inference.postprocessing import apply_postprocessing
from missu_keras.inference.sliding_window import (SlidingWindowInferer, ensure_finite,
                                                  probabilities_of)
from missu_keras.labels import get_label_convention


def as_preprocessing_config(value, what: str = "preprocessing") -> PreprocessingConfig:
    """A `PreprocessingConfig` from itself or its dict (``MISSU.preprocessing`` may be
    either)."""
    if isinstance(value, PreprocessingConfig):
        return value
    if isinstance(value, dict):
        return PreprocessingConfig.from_dict(dict(value))
    raise ValueError(f"{what} must be a PreprocessingConfig or its dict; received "
                     f"{type(value).__name__}")


def labels_from_probabilities(probabilities, label_convention):
    """Dataset labels, int32 ``(...)``, of the argmax of ``probabilities (..., K)``
    (BraTS class 3 -> label 4; `missu_keras.labels`)."""
    values = tf.constant(get_label_convention(label_convention).labels, tf.int32)
    return tf.gather(values, tf.argmax(probabilities, axis=-1, output_type=tf.int32))


@tf.autograph.experimental.do_not_convert
def segment_patches(image, predictor: Callable, label_convention, what: str = "image"):
    """Preprocessed patches ``image (b, *patch, C)`` -> ``{"probabilities": float32
    (b, *patch, K), "labels": int32 (b, *patch)}`` (NaN / Inf refused, named ``what``)."""
    image = ensure_finite(tf.cast(image, tf.float32), what)
    probs = tf.cast(probabilities_of(predictor(image)), tf.float32)
    return {"probabilities": probs, "labels": labels_from_probabilities(probs, label_convention)}


@tf.autograph.experimental.do_not_convert
def segment_volume(volume, predictor: Callable, preprocessing,
                   inferer: SlidingWindowInferer, num_classes: Optional[int] = None,
                   return_probabilities: bool = False, pad_to_multiple: bool = False,
                   what: str = "volume", spacing=None, postprocessing=None):
    """One raw scan -> dataset labels on its own grid, in TensorFlow (graph-safe):
    `prepare_volume`, the sliding window (``inferer.sliding_window``), `finish_volume`.

    Args:
        volume: float32 ``(H, W, D, C)``, channels in the contract's modality order,
            any size. A NaN or Inf voxel fails the graph (``InvalidArgumentError``
            "<what> holds NaN or Inf values").
        predictor: patch model, see `sliding_window_inference`.
        preprocessing: the `PreprocessingConfig` (or its dict) the model was trained with.
        inferer: the sliding-window settings.
        num_classes: ``K`` when known (see `sliding_window_inference`).
        return_probabilities: also return the probabilities on the original grid.
        pad_to_multiple: pad the cropped volume at its end to a multiple of
            ``preprocessing.pad_multiple`` first (as whole-volume validation does).
        what: the input's name in the error message.
        spacing: the volume's voxel size in mm ``(3,)``; with a contract that has a
            ``target_spacing`` the crop box is resampled to it and the probabilities
            back. ``None``: the volume is taken to be at the contract's spacing. The
            volume must already be in the contract's ``orientation`` (reorienting is
            exact and done outside the graph: `missu_keras.data.geometry.reorient`).
        postprocessing: a `missu_keras.inference.PostprocessingConfig` (or its dict)
            applied to the labels (`finish_volume`); ``None``: none.

    Returns:
        ``{"labels": int32 (H, W, D)}`` (background outside the crop box), plus
        ``"probabilities"`` float32 ``(H, W, D, K)`` (background 1 outside the crop box)
        when asked.
    """
    prep = as_preprocessing_config(preprocessing)
    image, start, stop = prepare_volume(volume, prep, pad_to_multiple, what, spacing)
    probs = inferer.sliding_window(predictor, image, num_classes)
    return finish_volume(probs, start, stop, tf.shape(volume)[:3], prep.convention,
                         return_probabilities, spacing, prep.resampling, postprocessing)


@tf.autograph.experimental.do_not_convert
def prepare_volume(volume, preprocessing, pad_to_multiple: bool = False, what: str = "volume",
                   spacing=None):
    """First part of `segment_volume`: raw ``volume (H, W, D, C)`` (in the contract's
    orientation) at ``spacing`` -> ``(image, start, stop)``: the finiteness check, the
    preprocessing contract (`missu_keras.data.preprocessing.preprocess_volume`: crop box
    ``[start, stop)``, resampling to the target spacing when ``spacing`` is given,
    normalisation) and, with ``pad_to_multiple``, zero padding at the end of each axis
    to a multiple of ``preprocessing.pad_multiple``."""
    prep = as_preprocessing_config(preprocessing)
    volume = ensure_finite(tf.cast(volume, tf.float32), what)
    image, start, stop = preprocess_volume(
        volume, prep.normalization, prep.crop_margin if prep.crop_to_nonzero else None,
        spacing, prep.resampling, prep.image_interpolation)
    if pad_to_multiple and prep.pad_multiple > 1:
        image = _pad_end(image, tf.shape(image)[:3], prep.pad_multiple)
    return image, start, stop


@tf.autograph.experimental.do_not_convert
def finish_volume(probs, start, stop, full_shape, label_convention,
                  return_probabilities: bool = False, spacing=None, target_spacing=None,
                  postprocessing=None):
    """Last part of `segment_volume`: probabilities ``(h', w', d', K)`` on the (possibly
    end-padded, possibly resampled) crop -> ``{"labels": int32 (H, W, D)[,
    "probabilities": float32 (H, W, D, K)]}`` on the ``full_shape`` grid, the crop box
    being ``[start, stop)``. With ``spacing`` and ``target_spacing`` (as given to
    `prepare_volume`) the probabilities are resampled back to the box's grid (linear)
    before the argmax. ``postprocessing`` (`missu_keras.inference.apply_postprocessing`)
    acts on the labels of the crop box, before the uncrop: outside the box everything
    is background, so no component crosses it and the result is the same on less data."""
    box = stop - start
    grid = box
    if spacing is not None and target_spacing is not None:
        grid = target_shape(box, spacing, target_spacing)
    probs = tf.slice(probs, [0, 0, 0, 0], tf.concat([grid, [-1]], 0))  # drops the padding
    if spacing is not None and target_spacing is not None:
        probs = resample_tensor(probs, box, "linear")
    paddings = tf.stack([start, full_shape - stop], axis=1)
    labels = apply_postprocessing(labels_from_probabilities(probs, label_convention),
                                  postprocessing, label_convention)
    out = {"labels": tf.pad(labels, paddings)}
    if return_probabilities:
        out["probabilities"] = _uncrop_probabilities(probs, paddings)
    return out


def _pad_end(image, box, multiple: int):
    """``image (h, w, d, C)`` zero-padded at the end of each axis to a multiple."""
    extra = (multiple - box % multiple) % multiple
    paddings = tf.concat([tf.stack([tf.zeros([3], tf.int32), extra], 1),
                          tf.zeros([1, 2], tf.int32)], 0)
    padded = tf.pad(image, paddings)
    padded.set_shape([None, None, None, image.shape[-1]])
    return padded


def _uncrop_probabilities(probs, paddings):
    """``probs (h, w, d, K)`` back on the original grid, one-hot background outside."""
    full = tf.pad(probs, tf.concat([paddings, tf.zeros([1, 2], tf.int32)], 0))
    outside = tf.pad(tf.zeros(tf.shape(probs)[:3], tf.float32), paddings, constant_values=1.0)
    background = tf.one_hot(0, tf.shape(probs)[-1], dtype=tf.float32)
    return full + outside[..., None] * background

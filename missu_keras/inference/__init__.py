"""Inference, written once in TensorFlow and used by every caller.

- `sliding_window`: window placement (`window_starts`), the Gaussian importance map
  (`importance_map`), `sliding_window_inference` (the window loop with optional flip
  TTA, graph-safe) and `SlidingWindowInferer` (its settings; ``inferer(predictor,
  volume)`` from NumPy, ``inferer.sliding_window(predictor, tensor)`` in a graph).
- `pipeline`: `segment_volume` (raw scan -> crop, normalisation, sliding window, argmax,
  label map, uncrop; in parts `prepare_volume`, the sliding window, `finish_volume`) and
  `segment_patches` (preprocessed patches -> probabilities and labels), both refusing
  NaN / Inf input in the graph.
- `segmenter`: `Segmenter` (a model and its preprocessing contract; loaded case ->
  `Segmentation`), used by ``predict``, ``evaluate`` and the demo.
- `postprocessing`: `PostprocessingConfig` (``postprocessing.json`` beside a model) and
  `apply_postprocessing` (small-ET relabelling, small components dropped, the largest
  component kept; 26-connected components in TensorFlow), applied in `finish_volume`
  and by `SegmenterEnsemble` after averaging.
- `ensemble`: `SegmenterEnsemble` (several segmenters, e.g. cross-validation folds:
  their probabilities averaged), used by ``predict`` / ``evaluate --model A --model B``
  (``missu_keras.export`` averages an ensemble's members in its graph instead).
- `uncertainty`: `entropy` of the (averaged) probabilities and `entropy_by_correctness`,
  for ``predict`` / ``evaluate --uncertainty``.

``missu_keras.export`` builds both SavedModel signatures from `pipeline`; the validation
callback of ``train`` runs `SlidingWindowInferer` on cached, preprocessed cases.
"""

from missu_keras.inference.ensemble import SegmenterEnsemble, check_same_contract
from missu_keras.inference.pipeline import (as_preprocessing_config, finish_volume,
                                            labels_from_probabilities, prepare_volume,
                                            segment_patches, segment_volume)
from missu_keras.inference.postprocessing import (POSTPROCESSING_FILE, PostprocessingConfig,
                                                  apply_postprocessing, as_postprocessing_config,
                                                  check_postprocessing, component_sizes,
                                                  connected_components, largest_component,
                                                  read_postprocessing, write_postprocessing)
from missu_keras.inference.segmenter import Segmentation, Segmenter, default_preprocessing
from missu_keras.inference.sliding_window import (FLIPS, MIN_IMPORTANCE, MODES, NON_FINITE,
                                                  PRECISIONS, SlidingWindowInferer,
                                                  ensure_finite, importance_map,
                                                  output_classes, probabilities_of,
                                                  rebuild_with_dtype_policy,
                                                  refusing_non_finite,
                                                  sliding_window_inference, window_corners,
                                                  window_starts, window_starts_tensor)

__all__ = [
    "FLIPS",
    "MIN_IMPORTANCE",
    "MODES",
    "NON_FINITE",
    "POSTPROCESSING_FILE",
    "PostprocessingConfig",
    "PRECISIONS",
    "Segmentation",
    "Segmenter",
    "SegmenterEnsemble",
    "SlidingWindowInferer",
    "apply_postprocessing",
    "as_postprocessing_config",
    "check_postprocessing",
    "component_sizes",
    "connected_components",
    "as_preprocessing_config",
    "check_same_contract",
    "default_preprocessing",
    "ensure_finite",
    "finish_volume",
    "importance_map",
    "labels_from_probabilities",
    "largest_component",
    "output_classes",
    "prepare_volume",
    "probabilities_of",
    "read_postprocessing",
    "rebuild_with_dtype_policy",
    "refusing_non_finite",
    "segment_patches",
    "segment_volume",
    "sliding_window_inference",
    "window_corners",
    "window_starts",
    "window_starts_tensor",
    "write_postprocessing",
]

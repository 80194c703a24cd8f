"""Inference-only SavedModel for TF-Serving, written with ``keras.export.ExportArchive``.

``export_savedmodel(model, out_dir)`` writes ``out_dir/<name>/<version>/`` (the layout
TF-Serving watches: one integer folder per version) holding the inference graph of a
`missu_keras.MISSU` (encoder + Transformer + decoder; the training-only MSF branch is
not in it, unless ``msf_mode="ms_output"`` where the decoder reads the MSF pyramid) with
two signatures whose inputs and outputs are named:

- ``serving_default``: ``image`` float32 ``[batch, H, W, D, C]`` at the model's patch
  size (already normalised, like a training patch) -> ``probabilities`` float32
  ``[batch, H, W, D, K]`` and ``labels`` int32 ``[batch, H, W, D]`` in the dataset's
  label convention (0/1/2/4 for BraTS).
- ``segment_volume``: ``volume`` float32 ``[H, W, D, C]``, one raw scan of any size
  (channels in the model's modality order) -> ``labels`` int32 ``[H, W, D]`` on the
  same grid. The preprocessing contract runs in the graph (crop to the non-zero box
  plus margin, z-score over the brain mask), then the Gaussian sliding window of
  `missu_keras.inference.SlidingWindowInferer` (same window placement, same
  importance map), argmax, the label map and the uncrop: the same labels as
  `missu_keras.data.preprocess_case` + ``SlidingWindowInferer`` + ``restore_labels``.

``assets/missu_export.json`` records the preset, modality order, label map, patch
size, preprocessing, sliding-window settings, signatures and package versions
(`read_export_metadata`). A wrong channel count or rank fails inside the graph with a
message that gives the expected shape (TF-Serving does not check shapes itself).

``missu-keras export --preset NAME [--weights PATH] --out DIR`` runs
`export_savedmodel`; export/README.md shows how to serve the result.

The in-graph pipeline works with any patch predictor, e.g. a 1x1x1 convolution:

>>> import numpy as np, keras, tensorflow as tf
>>> from missu_keras.data import PreprocessingConfig
>>> inputs = keras.Input((16, 16, 8, 4))
>>> net = keras.Model(inputs, keras.layers.Conv3D(4, 1, activation="softmax")(inputs))
>>> segment = tf.function(make_segment_volume_fn(
...     net, PreprocessingConfig.brats(patch_size=(16, 16, 8)), (16, 16, 8), num_classes=4))
>>> volume = np.zeros((30, 20, 12, 4), "float32")
>>> volume[5:25, 4:16, 2:10] = np.random.default_rng(0).uniform(1, 9, (20, 12, 8, 4))
>>> labels = segment(tf.constant(volume)).numpy()
>>> labels.shape, labels.dtype, set(np.unique(labels)) <= {0, 1, 2, 4}
((30, 20, 12), dtype('int32'), True)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

logger = logging.getLogger("missu_keras.export")

SERVING_SIGNATURE = "serving_default"
VOLUME_SIGNATURE = "segment_volume"
SIGNATURES = (SERVING_SIGNATURE, VOLUME_SIGNATURE)
METADATA_ASSET = "missu_export.json"
DEFAULT_MODEL_NAME = "missu"
FORMAT_VERSION = 1
NORMALIZE_EPS = 1e-8  # as `missu_keras.data.preprocessing.normalize_nonzero`


@dataclasses.dataclass
class ExportResult:
    """What `export_savedmodel` wrote.

    Attributes:
        path: the version folder ``out_dir/<name>/<version>``.
        version: the integer version.
        metadata: the dict saved as ``assets/missu_export.json``.
    """

    path: Path
    version: int
    metadata: dict


# ------------------------------------------------------------------- preprocessing --

def resolve_preprocessing(model, preset: Optional[str] = None):
    """The `PreprocessingConfig` to export with ``model`` (a `missu_keras.MISSU`), and
    where it came from: ``"model"`` (``MISSU(preprocessing=...)``), ``"preset"`` (the
    registry entry of ``preset`` at the model's patch size) or ``"default"`` (BraTS for
    4 -> 4, CHAOS for 2 -> 2, with a warning).

    Raises ``ValueError`` when the contract disagrees with the model's channels or
    classes, or when no contract can be found.
    """
    from missu_keras.data.preprocessing import PreprocessingConfig
    from missu_keras.presets import get_preset_preprocessing, list_presets

    cfg = model.config
    if getattr(model, "preprocessing", None):
        prep, source = PreprocessingConfig.from_dict(dict(model.preprocessing)), "model"
    elif preset in list_presets():
        prep = PreprocessingConfig.from_dict(
            get_preset_preprocessing(preset, patch_size=cfg.image_size))
        source = "preset"
    elif (cfg.in_channels, cfg.num_classes) in ((4, 4), (2, 2)):
        dataset = "brats" if cfg.in_channels == 4 else "chaos"
        factory = PreprocessingConfig.brats if dataset == "brats" else PreprocessingConfig.chaos
        prep, source = factory(patch_size=cfg.image_size), "default"
        logger.warning("the model carries no preprocessing contract; exporting the default "
                       "%s one (%s)", dataset, list(prep.modalities))
    else:
        raise ValueError(
            f"the model ({cfg.in_channels} channels -> {cfg.num_classes} classes) carries no "
            "preprocessing contract and matches no default; build it with "
            "MISSU(preprocessing=PreprocessingConfig(...).to_dict()) or load it with "
            "missu_keras.load_pretrained"
        )
    if prep.num_channels != cfg.in_channels:
        raise ValueError(
            f"preprocessing lists {prep.num_channels} modalities {list(prep.modalities)} but "
            f"the model takes in_channels={cfg.in_channels}"
        )
    if prep.num_classes != cfg.num_classes:
        raise ValueError(
            f"label convention {prep.label_convention!r} has {prep.num_classes} classes but "
            f"the model predicts num_classes={cfg.num_classes}"
        )
    return prep, source


def _foreground_box(volume, margin: Sequence[int]):
    """TF twin of `missu_keras.data.preprocessing.foreground_box` on ``(H, W, D, C)``:
    ``(start, stop)`` int32 ``(3,)``; the whole volume when nothing is non-zero."""
    import tensorflow as tf

    mask = tf.reduce_any(tf.not_equal(volume, 0.0), axis=-1)
    shape = tf.shape(mask)
    starts, stops = [], []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        index = tf.cast(tf.where(tf.reduce_any(mask, axis=others))[:, 0], tf.int32)
        # Empty index: min is INT32_MAX and max INT32_MIN; tf.where below drops them.
        starts.append(tf.maximum(tf.reduce_min(index) - margin[axis], 0))
        stops.append(tf.minimum(tf.reduce_max(index) + 1 + margin[axis], shape[axis]))
    found = tf.reduce_any(mask)
    start = tf.where(found, tf.stack(starts), tf.zeros([3], tf.int32))
    stop = tf.where(found, tf.stack(stops), shape)
    return start, stop


def _normalize(image, method: str):
    """TF twin of `missu_keras.data.preprocessing.normalize` (statistics in float64,
    as there)."""
    import tensorflow as tf

    if method == "none":
        return image
    x = tf.cast(image, tf.float64)
    channels = image.shape[-1]
    if method == "zscore_nonzero":
        mask = tf.reduce_any(tf.not_equal(image, 0.0), axis=-1)
        values = tf.boolean_mask(x, mask)  # (voxels in the brain, C)
    elif method == "zscore":
        mask = None
        values = tf.reshape(x, [-1, channels])
    else:
        raise ValueError(f"normalization {method!r} cannot be exported; expected "
                         "'zscore_nonzero', 'zscore' or 'none'")
    mean = tf.reduce_mean(values, axis=0)
    std = tf.sqrt(tf.reduce_mean(tf.square(values - mean), axis=0))
    z = tf.cast((x - mean) / tf.maximum(std, NORMALIZE_EPS), tf.float32)
    if mask is None:
        return z
    # Background stays exactly 0 (and an empty brain mask gives all zeros).
    return tf.where(mask[..., None], z, tf.zeros_like(z))


# ---------------------------------------------------------------- sliding window --

def _window_starts(size, roi: int, overlap: float):
    """TF twin of `missu_keras.inference.window_starts` (same step, same rounding: both
    round half to even) for a dynamic ``size >= roi``."""
    import tensorflow as tf

    target_step = max(1, int(roi * (1.0 - overlap)))
    extra = tf.maximum(size - roi, 0)
    num = tf.where(extra > 0, (extra + target_step - 1) // target_step + 1, 1)
    step = tf.cast(extra, tf.float64) / tf.cast(tf.maximum(num - 1, 1), tf.float64)
    return tf.cast(tf.round(tf.cast(tf.range(num), tf.float64) * step), tf.int32)


def _update_slice(tensor, begin, size, value):
    import tensorflow as tf

    return tf.raw_ops.TensorStridedSliceUpdate(
        input=tensor, begin=begin, end=begin + size, strides=tf.ones_like(begin), value=value)


def sliding_window_probabilities(image, predictor: Callable, roi_size: Sequence[int],
                                 num_classes: int, importance: np.ndarray,
                                 overlap: float = 0.5, sw_batch_size: int = 1):
    """Graph-mode twin of `missu_keras.inference.SlidingWindowInferer` on one volume.

    ``image`` float32 ``(H, W, D, C)`` -> probabilities ``(H, W, D, K)``: axes shorter
    than the window are zero-padded (centred) and cropped back, windows are placed by
    `missu_keras.inference.window_starts`, each prediction is weighted by
    ``importance`` and the sums are divided by the summed weights, window by window
    in the same order and float32 arithmetic as the NumPy inferer.
    """
    import tensorflow as tf

    roi = [int(r) for r in roi_size]
    channels = int(image.shape[-1])
    spatial = tf.shape(image)[:3]
    pad_total = tf.maximum(tf.constant(roi) - spatial, 0)
    pad_low = pad_total // 2
    padded = tf.pad(image, tf.concat([tf.stack([pad_low, pad_total - pad_low], axis=1),
                                      tf.zeros([1, 2], tf.int32)], axis=0))
    padded_shape = tf.shape(padded)[:3]
    axes = [_window_starts(padded_shape[i], roi[i], overlap) for i in range(3)]
    grid = tf.meshgrid(*axes, indexing="ij")  # itertools.product order: H, then W, then D
    corners = tf.stack([tf.reshape(g, [-1]) for g in grid], axis=1)
    count = tf.shape(corners)[0]

    weights = tf.constant(importance, tf.float32)
    weights_k = weights[..., None]
    roi_t = tf.constant(roi, tf.int32)
    window_in = tf.constant(roi + [channels], tf.int32)
    window_out = tf.constant(roi + [num_classes], tf.int32)
    zero = tf.zeros([1], tf.int32)

    def chunk(first, output, weight_sum):
        size = tf.minimum(sw_batch_size, count - first)

        def take(j, windows):
            begin = tf.concat([corners[first + j], zero], axis=0)
            return j + 1, windows.write(j, tf.slice(padded, begin, window_in))

        windows = tf.TensorArray(tf.float32, size=size,
                                 element_shape=tf.TensorShape(roi + [channels]))
        _, windows = tf.while_loop(lambda j, _: j < size, take, (tf.constant(0), windows))
        batch = windows.stack()
        batch.set_shape([None] + roi + [channels])
        probs = tf.cast(predictor(batch), tf.float32)

        def add(j, output, weight_sum):
            corner = corners[first + j]
            begin = tf.concat([corner, zero], axis=0)
            current = tf.slice(output, begin, window_out)
            output = _update_slice(output, begin, window_out, current + probs[j] * weights_k)
            current = tf.slice(weight_sum, corner, roi_t)
            weight_sum = _update_slice(weight_sum, corner, roi_t, current + weights)
            return j + 1, output, weight_sum

        _, output, weight_sum = tf.while_loop(lambda j, *_: j < size, add,
                                              (tf.constant(0), output, weight_sum))
        return first + sw_batch_size, output, weight_sum

    output = tf.zeros(tf.concat([padded_shape, [num_classes]], axis=0), tf.float32)
    weight_sum = tf.zeros(padded_shape, tf.float32)
    _, output, weight_sum = tf.while_loop(lambda first, *_: first < count, chunk,
                                          (tf.constant(0), output, weight_sum))
    output = output / weight_sum[..., None]
    return tf.slice(output, tf.concat([pad_low, zero], axis=0),
                    tf.concat([spatial, [num_classes]], axis=0))


def make_segment_volume_fn(predictor: Callable, preprocessing, patch_size: Sequence[int],
                           num_classes: int, overlap: float = 0.5, sw_batch_size: int = 1,
                           mode: str = "gaussian", sigma_scale: float = 0.125,
                           pad_to_multiple: bool = False):
    """A TF function body: raw ``volume (H, W, D, C)`` float32 -> dataset ``labels``
    int32 ``(H, W, D)`` (see the module docstring), for any ``predictor`` mapping
    ``(b, *patch_size, C)`` windows to probabilities.

    ``pad_to_multiple`` also pads the cropped volume at its end to a multiple of
    ``preprocessing.pad_multiple`` before the sliding window (as the whole-volume
    validation pipeline does); off by default, like ``missu-keras predict``.
    """
    import tensorflow as tf

    from missu_keras.inference import importance_map
    from missu_keras.labels import get_label_convention

    prep = preprocessing
    importance = importance_map(patch_size, mode, sigma_scale)
    label_values = tf.constant(get_label_convention(prep.label_convention).labels, tf.int32)
    margin = [int(m) for m in prep.crop_margin]
    channels = prep.num_channels

    def segment(volume):
        full = tf.shape(volume)[:3]
        if prep.crop_to_nonzero:
            start, stop = _foreground_box(volume, margin)
        else:
            start, stop = tf.zeros([3], tf.int32), full
        box = stop - start
        cropped = tf.slice(volume, tf.concat([start, [0]], 0), tf.concat([box, [channels]], 0))
        cropped.set_shape([None, None, None, channels])
        image = _normalize(cropped, prep.normalization)
        if pad_to_multiple and prep.pad_multiple > 1:
            m = prep.pad_multiple
            extra = (m - box % m) % m
            image = tf.pad(image, tf.concat([tf.stack([tf.zeros([3], tf.int32), extra], 1),
                                             tf.zeros([1, 2], tf.int32)], 0))
            image.set_shape([None, None, None, channels])
        probs = sliding_window_probabilities(image, predictor, patch_size, num_classes,
                                             importance, overlap, sw_batch_size)
        classes = tf.slice(tf.argmax(probs, axis=-1, output_type=tf.int32), [0, 0, 0], box)
        labels = tf.gather(label_values, classes)
        return tf.pad(labels, tf.stack([start, full - stop], axis=1))  # background outside

    return segment


def _check_shape(x, expected: Sequence[Optional[int]], what: str, layout: str, modalities):
    """In-graph checks a server cannot skip: the channel count (with a message naming
    the modalities), then the whole shape (``EnsureShape`` names the expected one)."""
    import tensorflow as tf

    channels = expected[-1]
    check = tf.debugging.assert_equal(
        tf.shape(x)[-1], channels,
        message=(f"{what} must be float32 {layout} with the {channels} channels "
                 f"({', '.join(modalities)}) on the last axis (channels last); received a "
                 "different last axis"))
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(x), expected)


# ------------------------------------------------------------------------ export --

def next_version(model_dir) -> int:
    """1 + the largest integer version folder in ``model_dir`` (1 when there is none).

    >>> next_version("/nonexistent/missu")
    1
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions) + 1 if versions else 1


def read_export_metadata(export_dir) -> dict:
    """The ``assets/missu_export.json`` of an exported version folder."""
    path = Path(export_dir) / "assets" / METADATA_ASSET
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: expected a version folder written by "
            "missu_keras.export.export_savedmodel (missu-keras export)"
        )
    return json.loads(path.read_text())


def _signature_doc(patch, channels, num_classes):
    return {
        SERVING_SIGNATURE: {
            "inputs": {"image": {"dtype": "float32", "shape": [-1, *patch, channels]}},
            "outputs": {"probabilities": {"dtype": "float32", "shape": [-1, *patch, num_classes]},
                        "labels": {"dtype": "int32", "shape": [-1, *patch]}},
            "note": "patches already preprocessed (cropped, z-scored) like training patches",
        },
        VOLUME_SIGNATURE: {
            "inputs": {"volume": {"dtype": "float32", "shape": [-1, -1, -1, channels]}},
            "outputs": {"labels": {"dtype": "int32", "shape": [-1, -1, -1]}},
            "note": "one raw scan of any size; preprocessing and sliding window in the graph",
        },
    }


def _archive_root(archive):
    """The object ``ExportArchive.write_out`` saves (Keras 3 keeps it in
    ``_tf_trackable``); the asset and the variable lists are attached to it."""
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        import keras

        raise RuntimeError(
            f"keras.export.ExportArchive of Keras {keras.__version__} has no _tf_trackable; "
            "missu_keras.export needs Keras 3.x's SavedModel archive"
        )
    return root


def build_export_archive(model, preprocessing, overlap: float = 0.5, sw_batch_size: int = 1,
                         pad_to_multiple: bool = False):
    """``(archive, inference model)``: a ``keras.export.ExportArchive`` with the two
    signatures for a `MISSU` and its `PreprocessingConfig` (no asset yet;
    `export_savedmodel` adds it and writes the archive)."""
    import keras
    import tensorflow as tf

    from missu_keras.labels import get_label_convention

    cfg = model.config
    inference = model.inference_model()
    patch = [int(s) for s in cfg.image_size]
    channels, num_classes = cfg.in_channels, cfg.num_classes
    modalities = list(preprocessing.modalities)
    labels = tf.constant(get_label_convention(preprocessing.label_convention).labels, tf.int32)
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1); received: {overlap!r}")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1; received: {sw_batch_size!r}")

    def predict(x):
        return inference(x, training=False)

    def serve(image):
        image = _check_shape(image, [None, *patch, channels], f"{SERVING_SIGNATURE}: image",
                             "[batch, " + ", ".join(map(str, patch)) + f", {channels}]", modalities)
        probs = tf.cast(predict(image), tf.float32)
        return {"probabilities": probs,
                "labels": tf.gather(labels, tf.argmax(probs, axis=-1, output_type=tf.int32))}

    segment = make_segment_volume_fn(predict, preprocessing, patch, num_classes,
                                     overlap=overlap, sw_batch_size=int(sw_batch_size),
                                     pad_to_multiple=pad_to_multiple)

    def segment_volume(volume):
        volume = _check_shape(volume, [None, None, None, channels],
                              f"{VOLUME_SIGNATURE}: volume", f"[H, W, D, {channels}]",
                              modalities)
        return {"labels": segment(volume)}

    archive = keras.export.ExportArchive()
    # No archive.track(inference): the endpoints capture every variable they use, and
    # tracking the Keras variables as well would store each value twice on disk (once
    # per wrapper). The revived `.variables` lists the same tf.Variables, stored once.
    root = _archive_root(archive)
    root.variables = [v.value for v in inference.weights]
    root.trainable_variables = [v.value for v in inference.trainable_weights]
    root.non_trainable_variables = [v.value for v in inference.non_trainable_weights]
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, *patch, channels], tf.float32, name="image")])
    archive.add_endpoint(VOLUME_SIGNATURE, segment_volume, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32, name="volume")])
    return archive, inference


def _msf_layers(inference):
    from missu_keras.layers import MultiScaleFusion, PyramidFusion

    return [layer.name for layer in inference.layers
            if isinstance(layer, (MultiScaleFusion, PyramidFusion))]


def export_savedmodel(model, out_dir, name: str = DEFAULT_MODEL_NAME,
                      version: Optional[int] = None, overwrite: bool = False,
                      preset: Optional[str] = None, overlap: float = 0.5,
                      sw_batch_size: int = 1, pad_to_multiple: bool = False,
                      log: Optional[Callable[[str], None]] = print) -> ExportResult:
    """Writes the inference SavedModel of ``model`` to ``out_dir/name/version``.

    Args:
        model: a `missu_keras.MISSU` (e.g. ``load_pretrained(..., training_model=True)``).
        out_dir: the TF-Serving model base folder's parent (``--model_base_path`` is
            ``out_dir/name``).
        name: the model name (a folder name; TF-Serving's ``MODEL_NAME``).
        version: an integer >= 0; default the next free one (1 for a new model).
        overwrite: replace an existing version folder (never done otherwise).
        preset: the preset name, recorded in the metadata and used for the
            preprocessing contract when the model carries none.
        overlap, sw_batch_size: sliding-window settings of ``segment_volume`` (windows
            per model call; 1 keeps the server's memory lowest).
        pad_to_multiple: see `make_segment_volume_fn`.
        log: a ``print``-like callable for the summary, or ``None``.

    Returns:
        An `ExportResult`.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is false.
        ValueError: a bad name / version, or a model whose preprocessing contract
            does not fit it.
    """
    import keras
    import tensorflow as tf

    import missu_keras
    from missu_keras.labels import get_label_convention
    from missu_keras.models import MISSU

    if not isinstance(model, MISSU):
        raise ValueError(
            f"export_savedmodel needs a missu_keras.MISSU (configuration + preprocessing); "
            f"received {type(model).__name__}. Use load_pretrained(..., training_model=True)."
        )
    if not name or os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise ValueError(f"name must be a plain folder name (TF-Serving's model name); received {name!r}")
    model_dir = Path(out_dir) / name
    if version is None:
        version = next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be an integer >= 0 (TF-Serving's version folders); "
                         f"received {version!r}")
    version = int(version)
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists (version {version} of model {name!r}); pass "
            f"overwrite=True (--overwrite) to replace it, or another version (next free: "
            f"{next_version(model_dir)})"
        )

    prep, prep_source = resolve_preprocessing(model, preset)
    cfg = model.config
    archive, inference = build_export_archive(model, prep, overlap=overlap,
                                              sw_batch_size=sw_batch_size,
                                              pad_to_multiple=pad_to_multiple)
    msf = _msf_layers(inference)
    msf_in_graph = cfg.msf_mode == "ms_output"
    if msf and not msf_in_graph:  # the inference graph must never reach the MSF branch
        raise RuntimeError(f"MSF layers {msf} reached the inference graph with msf_mode="
                           f"{cfg.msf_mode!r}")
    convention = get_label_convention(prep.label_convention)
    metadata = {
        "format": "missu_keras SavedModel export",
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "version": version,
        "preset": preset,
        "patch_size": [int(s) for s in cfg.image_size],
        "in_channels": cfg.in_channels,
        "num_classes": cfg.num_classes,
        "modalities": list(prep.modalities),
        "label_convention": convention.to_dict(),
        "label_map": {str(c): int(v) for c, v in enumerate(convention.labels)},
        "preprocessing": prep.to_dict(),
        "preprocessing_source": prep_source,
        "sliding_window": {"overlap": float(overlap), "mode": "gaussian", "sigma_scale": 0.125,
                           "sw_batch_size": int(sw_batch_size),
                           "pad_to_multiple": bool(pad_to_multiple)},
        "signatures": _signature_doc(list(cfg.image_size), cfg.in_channels, cfg.num_classes),
        "msf_mode": cfg.msf_mode,
        "msf_in_graph": msf_in_graph,
        "msf_layers": msf,
        "model_config": cfg.to_dict(),
        "parameters": int(inference.count_params()),
        "missu_keras_version": missu_keras.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=model_dir))
    try:
        with tempfile.TemporaryDirectory() as asset_dir:
            asset = Path(asset_dir) / METADATA_ASSET
            asset.write_text(json.dumps(metadata, indent=2) + "\n")
            # A tracked Asset is copied into the SavedModel's assets/ and reachable
            # after loading as `.missu_metadata.asset_path`.
            _archive_root(archive).missu_metadata = tf.saved_model.Asset(str(asset))
            archive.write_out(str(staging / "model"), verbose=False)
        # TF-Serving only loads integer folders, so a version appears whole or not at all.
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if log is not None:
        log(f"exported {name!r} version {version} to {target}")
        log(f"  serving_default: image float32 [batch, {', '.join(map(str, cfg.image_size))}, "
            f"{cfg.in_channels}] -> probabilities [.., {cfg.num_classes}], labels int32 "
            f"{list(convention.labels)}")
        log(f"  segment_volume:  volume float32 [H, W, D, {cfg.in_channels}] "
            f"({', '.join(prep.modalities)}) -> labels int32 [H, W, D]")
        if msf_in_graph:
            log("  msf_mode='ms_output': the decoder reads the MSF pyramid, so the MSF branch "
                f"stays in the exported graph ({len(msf)} layers)")
        else:
            log(f"  no MSF variable or op (msf_mode={cfg.msf_mode!r}); "
                f"{metadata['parameters']:,} parameters")
    return ExportResult(target, version, metadata)

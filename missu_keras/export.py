"""Inference-only SavedModel for TF-Serving, written with ``keras.export.ExportArchive``.

``export_savedmodel(model, out_dir)`` writes ``out_dir/<name>/<version>/`` (the layout
TF-Serving watches: one integer folder per version) holding the inference graph of a
`missu_keras.MISSU` (encoder + Transformer + decoder; the training-only MSF branch is
not in it, unless ``msf_mode="ms_output"`` where the decoder reads the MSF pyramid) with
three signatures whose inputs and outputs are named:

- ``serving_default``: ``image`` float32 ``[batch, H, W, D, C]`` at the model's patch
  size (already normalised, like a training patch) -> ``probabilities`` float32
  ``[batch, H, W, D, K]`` and ``labels`` int32 ``[batch, H, W, D]`` in the dataset's
  label convention (0/1/2/4 for BraTS).
- ``segment_volume``: ``volume`` float32 ``[H, W, D, C]``, one raw scan of any size
  (channels in the model's modality order) already in the contract's orientation and
  voxel spacing -> ``labels`` int32 ``[H, W, D]`` on the same grid (no resampling: the
  signature of exports before orientation and spacing joined the contract).
- ``segment_scan``: ``volume`` as above, in the contract's orientation, and ``spacing``
  float32 ``[3]``, its voxel size in mm along each array axis -> ``labels`` int32
  ``[H, W, D]`` on the same grid: the crop box is resampled to the contract's target
  spacing in the graph and the probabilities back (choice (a) of issue 15: the spacing
  is an input, so the graph agrees with ``missu-keras predict`` at any spacing).
  Orientation is the client's job, exact and outside the graph (nibabel; the
  contract's ``orientation`` is in the metadata; `missu_keras.serving` does it).

Every signature runs `missu_keras.inference` in its graph, the code ``predict``,
``evaluate`` and `missu_keras.inference.Segmenter` run: ``serving_default`` is
`missu_keras.inference.segment_patches`, ``segment_volume`` and ``segment_scan`` are
`missu_keras.inference.segment_volume` (the preprocessing contract: crop to the
non-zero box plus margin, z-score over the brain mask; the Gaussian sliding window of
`missu_keras.inference.SlidingWindowInferer`; argmax, the label map, the uncrop), so
their labels are those of ``missu-keras predict``. A NaN or Inf input value fails
either signature with an error status ("... holds NaN or Inf values").

``assets/missu_export.json`` records the preset, modality order, label map, patch
size, preprocessing, sliding-window settings, signatures and package versions
(`read_export_metadata`). A wrong channel count or rank fails inside the graph with a
message that gives the expected shape (TF-Serving does not check shapes itself).

An ensemble (several models, e.g. the folds of a cross-validation run) exports as ONE
SavedModel: every signature's predictor is the mean of the members' probabilities in
each window, before the argmax. The sliding window is linear in the window predictions
(a weighted sum divided by the summed weights), and so are the resampling and the uncrop,
so this equals `missu_keras.inference.SegmenterEnsemble` (each member's whole-case
probabilities averaged) up to float rounding; the members therefore share one window,
so their patch sizes must agree, as must their preprocessing contracts. The metadata
lists the members under ``"ensemble"``.

``missu-keras export --preset NAME [--weights PATH] --out DIR`` runs
`export_savedmodel` (``--model A --model B`` or a cross-validation run folder: an
ensemble); export/README.md shows how to serve the result.

The in-graph pipeline alone, with any patch predictor: `missu_keras.inference.pipeline`.
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

import keras
import numpy as np
import tensorflow as tf

from missu_keras.compat import archive_root
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.files import prepare_output_dir
from missu_keras.inference import (SlidingWindowInferer, as_postprocessing_config,
                                   as_preprocessing_config, check_postprocessing,
                                   check_same_contract, probabilities_of, segment_patches,
                                   segment_volume)
from missu_keras.layers import MultiScaleFusion, PyramidFusion
from missu_keras.models import MISSU
from missu_keras.presets import get_preset_config, get_preset_preprocessing, list_presets
from missu_keras.version import __version__

logger = logging.getLogger("missu_keras.export")

SERVING_SIGNATURE = "serving_default"
VOLUME_SIGNATURE = "segment_volume"
SCAN_SIGNATURE = "segment_scan"
SIGNATURES = (SERVING_SIGNATURE, VOLUME_SIGNATURE, SCAN_SIGNATURE)
METADATA_ASSET = "missu_export.json"
DEFAULT_MODEL_NAME = "missu"
FORMAT_VERSION = 1
ENSEMBLE_COMBINATION = ("mean of the members' probabilities in each window, before the argmax "
                        "(every signature)")


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
    cfg = model.config
    if getattr(model, "preprocessing", None) is not None:
        prep, source = as_preprocessing_config(model.preprocessing), "model"
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
            "MISSU(preprocessing=PreprocessingConfig(...)) or load it with "
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


def _check_shape(x, expected: Sequence[Optional[int]], what: str, layout: str, modalities):
    """In-graph checks a server cannot skip: the channel count (with a message naming
    the modalities), then the whole shape (``EnsureShape`` names the expected one)."""
    channels = expected[-1]
    check = tf.debugging.assert_equal(
        tf.shape(x)[-1], channels,
        message=(f"{what} must be float32 {layout} with the {channels} channels "
                 f"({', '.join(modalities)}) on the last axis (channels last); received a "
                 "different last axis"))
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(x), expected)


# ------------------------------------------------------------------ provenance --

def preset_differences(model, preset: str, overrides: Optional[dict] = None) -> dict:
    """``{setting: (model's value, preset's value)}`` for each architecture setting of
    ``model`` that differs from the registered ``preset`` with ``overrides`` applied
    (the patch size aside); empty when ``model`` is that preset (or ``preset`` is not a
    registered name)."""
    if preset not in list_presets():
        return {}
    expected = dict(get_preset_config(preset))
    expected.update({k: v for k, v in (overrides or {}).items() if k != "preprocessing"})
    found = model.config.to_dict()
    return {k: (found[k], v) for k, v in expected.items()
            if k != "image_size" and k in found and found[k] != v}


def check_weights_fit_preset(model, preset: str, weights, overrides: Optional[dict] = None) -> None:
    """Refuses to export ``model`` under the preset name ``preset`` when its weights
    (``weights``, a file carrying its own configuration) built another configuration:
    the export's metadata would claim a preset the model is not. ``ValueError`` naming
    the file, the differing settings, and what to pass instead."""
    diffs = preset_differences(model, preset, overrides)
    if not diffs:
        return
    shown = ", ".join(f"{k}={a!r} (preset: {b!r})" for k, (a, b) in list(diffs.items())[:4])
    more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
    raise ValueError(
        f"--weights {weights}: holds a model of another configuration than preset "
        f"{preset!r}: {shown}{more}; expected weights of that preset. To export the file "
        f"with its own configuration pass it as --preset {weights}"
    )


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
    """The metadata of an export: ``export_dir`` is a version folder (its
    ``assets/missu_export.json`` is read) or that JSON file itself. A missing file, a
    file that is not JSON, or one without the fields a client needs (``modalities``,
    ``label_map``) is an error naming it."""
    path = Path(export_dir)
    if not path.is_file():
        path = path / "assets" / METADATA_ASSET
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: expected a version folder written by "
            "missu_keras.export.export_savedmodel (missu-keras export) or its "
            f"{METADATA_ASSET}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: expected the JSON metadata of a missu-keras export "
                         f"({METADATA_ASSET}), found text that is not JSON ({err})") from err
    missing = [k for k in ("modalities", "label_map") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{path}: expected the metadata of a missu-keras export with the fields "
                         f"{missing}; found {type(meta).__name__} "
                         f"{sorted(meta)[:8] if isinstance(meta, dict) else ''}")
    return meta


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
            "note": "one raw scan of any size in the contract's orientation and spacing; "
                    "preprocessing and sliding window in the graph",
        },
        SCAN_SIGNATURE: {
            "inputs": {"volume": {"dtype": "float32", "shape": [-1, -1, -1, channels]},
                       "spacing": {"dtype": "float32", "shape": [3]}},
            "outputs": {"labels": {"dtype": "int32", "shape": [-1, -1, -1]}},
            "note": "one raw scan in the contract's orientation (reorient it first, exactly) "
                    "and its voxel spacing in mm; resampled to the target spacing and back "
                    "in the graph",
        },
    }


def build_export_archive(model, preprocessing, overlap: float = 0.5, sw_batch_size: int = 1,
                         pad_to_multiple: bool = False, postprocessing=None):
    """``(archive, inference model)``: a ``keras.export.ExportArchive`` with the three
    signatures for a `MISSU` and its `PreprocessingConfig` (no asset yet;
    `export_savedmodel` adds it and writes the archive). Every signature calls
    `missu_keras.inference`; ``pad_to_multiple``, ``postprocessing`` (volume signatures
    only) see `missu_keras.inference.segment_volume`.

    ``model`` may be a list of `MISSU` s of one patch size (an ensemble): the predictor
    is then the mean of their probabilities, and the second item the list of their
    inference models."""
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    cfg = members[0].config
    inferences = [m.inference_model() for m in members]
    inference = inferences[0]
    patch = [int(s) for s in cfg.image_size]
    channels, num_classes = cfg.in_channels, cfg.num_classes
    preprocessing, post = as_preprocessing_config(preprocessing), postprocessing
    modalities = list(preprocessing.modalities)
    inferer = SlidingWindowInferer(roi_size=patch, overlap=overlap,
                                   sw_batch_size=sw_batch_size, divisible_by=8)

    predict = _mean_predictor([_traced_once(net, [None, *patch, channels]) for net in inferences])

    def serve_patches(image):
        what = f"{SERVING_SIGNATURE}: image"
        image = _check_shape(image, [None, *patch, channels], what,
                             "[batch, " + ", ".join(map(str, patch)) + f", {channels}]", modalities)
        return segment_patches(image, predict, preprocessing.convention, what=what)

    def serve_volume(volume):
        what = f"{VOLUME_SIGNATURE}: volume"
        volume = _check_shape(volume, [None, None, None, channels], what,
                              f"[H, W, D, {channels}]", modalities)
        out = segment_volume(volume, predict, preprocessing, inferer, num_classes=num_classes,
                             pad_to_multiple=pad_to_multiple, what=what, postprocessing=post)
        return {"labels": out["labels"]}

    def serve_scan(volume, spacing):
        what = f"{SCAN_SIGNATURE}: volume"
        volume = _check_shape(volume, [None, None, None, channels], what,
                              f"[H, W, D, {channels}]", modalities)
        spacing = tf.cast(tf.ensure_shape(spacing, [3]), tf.float64)
        out = segment_volume(volume, predict, preprocessing, inferer, num_classes=num_classes,
                             pad_to_multiple=pad_to_multiple, what=what, spacing=spacing,
                             postprocessing=post)
        return {"labels": out["labels"]}

    archive = _archive_of(inferences)
    archive.add_endpoint(SERVING_SIGNATURE, serve_patches, input_signature=[
        tf.TensorSpec([None, *patch, channels], tf.float32, name="image")])
    archive.add_endpoint(VOLUME_SIGNATURE, serve_volume, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32, name="volume")])
    archive.add_endpoint(SCAN_SIGNATURE, serve_scan, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32, name="volume"),
        tf.TensorSpec([3], tf.float32, name="spacing")])
    return archive, inference if len(inferences) == 1 else inferences


def _traced_once(net, shape) -> Callable:
    """``net``'s probabilities as a ``tf.function`` on windows of ``shape``: the Keras
    model is traced once, and every signature (each traced twice by ``write_out``)
    calls that one graph; tracing it in each took most of an export's time."""
    return tf.function(lambda x: tf.cast(probabilities_of(net(x, training=False)), tf.float32),
                       input_signature=[tf.TensorSpec(shape, tf.float32)], autograph=False)


def _mean_predictor(predictors) -> Callable:
    """The patch predictor of one model, or the mean of several models' probabilities
    (an ensemble)."""
    if len(predictors) == 1:
        return predictors[0]

    def predict(x):
        total = None
        for net in predictors:
            total = net(x) if total is None else total + net(x)
        return total / float(len(predictors))

    return predict


def _archive_of(inferences):
    """An ``ExportArchive`` listing the variables of ``inferences``."""
    archive = keras.export.ExportArchive()
    # No archive.track(inference): the endpoints capture every variable they use, and
    # tracking the Keras variables as well would store each value twice on disk (once
    # per wrapper). The revived `.variables` lists the same tf.Variables, stored once.
    root = archive_root(archive)
    root.variables = [v.value for net in inferences for v in net.weights]
    root.trainable_variables = [v.value for net in inferences for v in net.trainable_weights]
    root.non_trainable_variables = [v.value for net in inferences
                                    for v in net.non_trainable_weights]
    return archive


def _msf_layers(inference):
    return [layer.name for layer in inference.layers
            if isinstance(layer, (MultiScaleFusion, PyramidFusion))]


def export_savedmodel(model, out_dir, name: str = DEFAULT_MODEL_NAME,
                      version: Optional[int] = None, overwrite: bool = False,
                      preset: Optional[str] = None, overlap: float = 0.5,
                      sw_batch_size: int = 1, pad_to_multiple: bool = False,
                      log: Optional[Callable[[str], None]] = print,
                      weights: Optional[str] = None,
                      member_names: Optional[Sequence[str]] = None,
                      postprocessing=None) -> ExportResult:
    """Writes the inference SavedModel of ``model`` to ``out_dir/name/version``.

    Args:
        model: a `missu_keras.MISSU` (e.g. ``load_pretrained(..., training_model=True)``),
            or a list of them: an ensemble exported as one SavedModel (the members'
            probabilities averaged before the argmax; their preprocessing contracts and
            patch sizes must agree, else a ``ValueError`` names the field).
        out_dir: the TF-Serving model base folder's parent (``--model_base_path`` is
            ``out_dir/name``).
        name: the model name (a folder name; TF-Serving's ``MODEL_NAME``).
        version: an integer >= 0; default the next free one (1 for a new model).
        overwrite: replace an existing version folder (never done otherwise).
        preset: the preset name, recorded in the metadata and used for the
            preprocessing contract when the model carries none.
        overlap, sw_batch_size: sliding-window settings of ``segment_volume`` (windows
            per model call; 1 keeps the server's memory lowest).
        pad_to_multiple: see `missu_keras.inference.segment_volume`.
        log: a ``print``-like callable for the summary, or ``None``.
        weights: where the weights came from (a file, ``"published"``, ``"none"``),
            recorded in the metadata as ``"weights"``.
        member_names: an ensemble's members in errors and the metadata's ``"ensemble"``.
        postprocessing: a `missu_keras.inference.PostprocessingConfig` (or its file)
            baked into ``segment_volume`` and ``segment_scan``; ``None``: none.

    The model folder is created and checked for writability before the graph is built;
    the version appears whole or not at all (staged, then renamed).

    Returns:
        An `ExportResult`.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is false.
        ValueError: a bad name / version, or a model whose preprocessing contract
            does not fit it.
    """
    members, names = _export_members(model, member_names)
    model_dir, version = _export_target(out_dir, name, version, overwrite)
    prep, prep_source = _ensemble_preprocessing(members, names, preset)
    post = _export_postprocessing(postprocessing, prep)
    prepare_output_dir(model_dir, "--out")
    model = members[0]
    archive, inference = build_export_archive(members if len(members) > 1 else model, prep,
                                              overlap=overlap, sw_batch_size=sw_batch_size,
                                              pad_to_multiple=pad_to_multiple, postprocessing=post)
    sliding_window = {"overlap": float(overlap), "mode": "gaussian", "sigma_scale": 0.125,
                      "sw_batch_size": int(sw_batch_size),
                      "pad_to_multiple": bool(pad_to_multiple)}
    metadata = _export_metadata(model, inference, prep, prep_source, name, version, preset,
                                sliding_window)
    metadata["weights"] = None if weights is None else str(weights)
    if len(members) > 1:
        metadata["ensemble"] = {"members": names, "combination": ENSEMBLE_COMBINATION}
    metadata["postprocessing"] = {**post.to_dict(), "description": post.describe(prep.convention)}
    target = _write_archive(archive, metadata, model_dir, version)
    if log is not None:
        _log_summary(log, metadata, target)
    return ExportResult(target, version, metadata)


def _export_members(model, member_names):
    """``(members, names)``: ``model`` as a list of `MISSU` s, each checked, and their
    names (``member 0``, ... unless given)."""
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    for member in members:
        if not isinstance(member, MISSU):
            raise ValueError(
                f"export_savedmodel needs a missu_keras.MISSU (configuration + preprocessing); "
                f"received {type(member).__name__}. Use load_pretrained(..., training_model=True)."
            )
    names = [str(n) for n in member_names] if member_names else [
        f"member {i}" for i in range(len(members))]
    return members, names


def _ensemble_preprocessing(members, names: Sequence[str], preset: Optional[str]):
    """`resolve_preprocessing` of the first member, after checking that every member's
    contract (`missu_keras.inference.check_same_contract`) and patch size agree."""
    if len(names) != len(members):
        raise ValueError(f"{len(names)} member names for {len(members)} models")
    if len(members) == 1:
        return resolve_preprocessing(members[0], preset)
    resolved = [resolve_preprocessing(m, n) for m, n in zip(members, names)]
    check_same_contract([prep for prep, _ in resolved], names)
    patches = [[int(s) for s in m.config.image_size] for m in members]
    for member_name, patch in zip(names[1:], patches[1:]):
        if patch != patches[0]:
            raise ValueError(
                f"an exported ensemble slides one window for all its members: {names[0]} has the "
                f"patch size {patches[0]}, {member_name} has {patch}; expected one patch size")
    return resolved[0]
def _export_postprocessing(postprocessing, prep):
    """The `PostprocessingConfig` to bake in, checked against the contract's labels."""
    post = as_postprocessing_config(postprocessing)
    check_postprocessing(post, prep.convention, "export postprocessing")
    return post


def _export_target(out_dir, name: str, version, overwrite: bool):
    """``(model_dir, version)`` after checking the name, the version and that the version
    folder is free (or ``overwrite``)."""
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
    return model_dir, version


def _export_metadata(model, inference, prep, prep_source: str, name: str, version: int,
                     preset, sliding_window: dict) -> dict:
    """The ``assets/missu_export.json`` contents; checks that the MSF branch is absent
    from the inference graph unless ``msf_mode="ms_output"`` needs it."""
    cfg = model.config
    nets = inference if isinstance(inference, list) else [inference]  # an ensemble: a list
    msf = [layer for net in nets for layer in _msf_layers(net)]
    msf_in_graph = cfg.msf_mode == "ms_output"
    if msf and not msf_in_graph:  # the inference graph must never reach the MSF branch
        raise RuntimeError(f"MSF layers {msf} reached the inference graph with msf_mode="
                           f"{cfg.msf_mode!r}")
    convention = prep.convention
    return {
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
        "orientation": prep.orientation,
        "target_spacing": None if prep.resampling is None else list(prep.resampling),
        "sliding_window": sliding_window,
        "signatures": _signature_doc(list(cfg.image_size), cfg.in_channels, cfg.num_classes),
        "msf_mode": cfg.msf_mode,
        "msf_in_graph": msf_in_graph,
        "msf_layers": msf,
        "model_config": cfg.to_dict(),
        "parameters": int(sum(net.count_params() for net in nets)),
        "missu_keras_version": __version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_archive(archive, metadata: dict, model_dir: Path, version: int) -> Path:
    """Writes ``archive`` with its metadata asset into a staging folder next to the
    version folder, then renames it into place; returns the version folder."""
    target = model_dir / str(version)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=model_dir))
    try:
        with tempfile.TemporaryDirectory() as asset_dir:
            asset = Path(asset_dir) / METADATA_ASSET
            asset.write_text(json.dumps(metadata, indent=2) + "\n")
            # A tracked Asset is copied into the SavedModel's assets/ and reachable
            # after loading as `.missu_metadata.asset_path`.
            archive_root(archive).missu_metadata = tf.saved_model.Asset(str(asset))
            _write_out(archive, staging / "model", target)
        # TF-Serving only loads integer folders, so a version appears whole or not at all.
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_out(archive, folder: Path, target: Path) -> None:
    """``archive.write_out`` with TensorFlow's file errors (a full or read-only disk)
    raised as ``OSError`` naming the version folder being written."""
    try:
        archive.write_out(str(folder), verbose=False)
    except tf.errors.OpError as err:
        raise OSError(f"{target}: cannot write the SavedModel: {err.message}") from err


def _log_summary(log: Callable[[str], None], metadata: dict, target: Path) -> None:
    """The few lines ``missu-keras export`` prints about what it wrote."""
    patch = ", ".join(map(str, metadata["patch_size"]))
    channels, classes = metadata["in_channels"], metadata["num_classes"]
    labels = [int(v) for v in metadata["label_map"].values()]
    log(f"exported {metadata['model_name']!r} version {metadata['version']} to {target}")
    log(f"  serving_default: image float32 [batch, {patch}, {channels}] -> probabilities "
        f"[.., {classes}], labels int32 {labels}")
    log(f"  segment_volume:  volume float32 [H, W, D, {channels}] "
        f"({', '.join(metadata['modalities'])}) -> labels int32 [H, W, D]")
    log(f"  segment_scan:    volume [H, W, D, {channels}] in orientation "
        f"{metadata['orientation'] or 'as stored'}, spacing float32 [3] mm -> labels "
        f"(resampled to {metadata['target_spacing'] or 'no target spacing'} and back in the graph)")
    if metadata.get("ensemble"):
        members = metadata["ensemble"]["members"]
        log(f"  an ensemble of {len(members)} models (their probabilities averaged): "
            f"{', '.join(members)}")
    if metadata["msf_in_graph"]:
        log("  msf_mode='ms_output': the decoder reads the MSF pyramid, so the MSF branch "
            f"stays in the exported graph ({len(metadata['msf_layers'])} layers)")
    else:
        log(f"  no MSF variable or op (msf_mode={metadata['msf_mode']!r}); "
            f"{metadata['parameters']:,} parameters")

"""Whole-case segmentation: raw scan -> preprocessing -> sliding window -> labels in the
original grid; ``missu-keras predict``.

`Segmenter` (from `missu_keras.inference`) holds an inference model (no MSF branch) and
the preprocessing contract it was trained with (`missu_keras.data.PreprocessingConfig`),
and turns a loaded case into dataset labels (0/1/2/4 for BraTS) on the case's own grid
through the same TensorFlow pipeline as the SavedModel. `load_segmenter` finds both
in whatever a user has: a ``missu-keras train`` output folder, a ``.keras`` file, a
saved preset folder, or a preset name with weights.

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
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import keras
import numpy as np

from missu_keras.data.brats import BratsCase, find_brats_cases
from missu_keras.data.chaos import find_chaos_cases
from missu_keras.data.io import read_nifti_header, strip_nifti_suffix, write_nifti
from missu_keras.data.preprocessing import PreprocessingConfig
# The one inference implementation; re-exported here, where users have always found it.
from missu_keras.inference.segmenter import (Segmentation, Segmenter,  # noqa: F401
                                             default_preprocessing)
from missu_keras.models import MISSU
from missu_keras.presets import list_presets
from missu_keras.pretrained import PUBLISHED, load_missu
from missu_keras.weights import preset_io

logger = logging.getLogger("missu_keras.prediction")


def _read_preprocessing(folder: Path) -> Optional[PreprocessingConfig]:
    """The contract stored beside a model file: a preset folder's ``preprocessing.json``,
    else a train output folder's ``config.json``; ``None`` when neither has one."""
    folder = Path(folder)
    found = None
    if (folder / preset_io.PREPROCESSING_FILE).is_file():
        found = preset_io.read_preset_preprocessing(folder)
    if found is None and (folder / preset_io.RUN_CONFIG_FILE).is_file():
        found = preset_io.read_run_preprocessing(folder)
    return found


def _load_model(ref: str, weights, registry) -> keras.Model:
    """A `MISSU` through the one loader (`missu_keras.pretrained.load_missu`), or the
    inference model a ``.keras`` file holds on its own (it carries no configuration)."""
    if ref.endswith(".keras") and os.path.isfile(ref):
        loaded = preset_io.load_keras_file(ref)
        if not isinstance(loaded, MISSU) or weights == PUBLISHED:
            return loaded
    return load_missu(ref, weights, registry=registry)


def load_segmenter(model: Union[str, os.PathLike, keras.Model], weights=PUBLISHED,
                   preprocessing=None, *, registry: Optional[str] = None,
                   **kwargs) -> Segmenter:
    """A `Segmenter` from what a user has.

    Args:
        model: a `missu_keras.MISSU` or inference ``keras.Model``; a ``missu-keras
            train`` output folder (its best checkpoint, else the last); a ``.keras``
            file; a saved preset folder (`missu_keras.MISSU.save_to_preset`); or a
            preset name. Everything but a model object goes through
            `missu_keras.MISSU.from_preset` / `missu_keras.load_pretrained`.
        weights: as for `missu_keras.load_pretrained`: ``"published"`` (default: a
            preset name's published weights, a folder's or file's own weights; the only
            value accepted for those), or for a preset name ``None`` (random
            initialisation) or a weights path.
        preprocessing: overrides the stored contract (a `PreprocessingConfig` or dict).
        registry: the weights registry for a preset name's published weights (default
            ``$MISSU_KERAS_REGISTRY``).
        **kwargs: `Segmenter` settings (overlap, flip_tta, precision, ...).
    """
    if isinstance(model, keras.Model):
        return Segmenter.from_model(model, preprocessing, **kwargs)
    ref = os.fspath(model)
    if preset_io.looks_like_path(ref) and not os.path.exists(ref):
        raise FileNotFoundError(
            f"model {ref!r} not found: expected a missu-keras train output folder, a .keras "
            f"file, a saved preset folder or a preset name ({', '.join(list_presets())})"
        )
    loaded = _load_model(ref, weights, registry)
    path = Path(ref)
    if preprocessing is None and getattr(loaded, "preprocessing", None) is None and path.exists():
        preprocessing = _read_preprocessing(path if path.is_dir() else path.parent)
    if isinstance(loaded, MISSU):
        return Segmenter.from_model(loaded, preprocessing, **kwargs)
    return Segmenter(loaded, preprocessing or default_preprocessing(loaded), **kwargs)


# ------------------------------------------------------------------- case discovery --

_MODALITY_SUFFIX = re.compile(r"[_-](flair|t1ce|t1|t2|t1n|t1c|t2w|t2f)$", re.IGNORECASE)


def cases_from_files(files: Sequence[Union[str, os.PathLike]], preprocessing: PreprocessingConfig):
    """One BraTS-style case from NIfTI files given in the model's modality order."""
    files = [Path(f) for f in files]
    if len(files) != preprocessing.num_channels:
        raise ValueError(
            f"expected {preprocessing.num_channels} NIfTI files, one per modality in the "
            f"order {list(preprocessing.modalities)}; received {len(files)}: "
            f"{[str(f) for f in files]}"
        )
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: input file not found")
    stem = strip_nifti_suffix(files[0].name)
    case_id = _MODALITY_SUFFIX.sub("", stem) or stem
    layout = "2023" if preprocessing.label_convention == "brats2023" else "2021"
    return [BratsCase(case_id, files[0].parent, dict(zip(preprocessing.modalities, files)),
                      None, layout)]


def find_cases(inputs: Sequence[Union[str, os.PathLike]], preprocessing: PreprocessingConfig,
               layout: str = "auto"):
    """Cases to segment: one case folder, a folder of cases, or a NIfTI file list."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given: pass a case folder, a folder of cases or NIfTI files")
    if len(inputs) > 1 or inputs[0].is_file():
        return cases_from_files(inputs, preprocessing)
    root = inputs[0]
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found")
    if preprocessing.dataset == "chaos" or layout == "chaos":
        sequence = "T1DUAL" if preprocessing.num_channels == 2 else "T2SPIR"
        return find_chaos_cases(root, sequence=sequence)
    return find_brats_cases(root, layout=layout, modalities=preprocessing.modalities)


def load_images_only(case):
    """Loads (and validates) a BraTS or CHAOS case without its segmentation."""
    field = "seg_path" if hasattr(case, "seg_path") else "ground_dir"
    return dataclasses.replace(case, **{field: None}).load()


def reference_geometry(case):
    """(affine, header) the prediction of ``case`` is written with (``None, None`` when
    the case has no reference NIfTI, e.g. CHAOS DICOM: use the loaded case's affine)."""
    ref = getattr(case, "reference_path", None)
    if ref is not None:
        _, affine, img = read_nifti_header(ref)
        return affine, img.header
    return None, None


def output_paths(out_dir: Path, case_id: str):
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_probabilities.nii.gz"


def predict(inputs, out, model, weights=PUBLISHED, layout: str = "auto", overwrite: bool = False,
            save_probabilities: bool = False, log=print, **segmenter_kwargs) -> List[Path]:
    """Segments cases and writes one label NIfTI per case (``<case>.nii.gz``) in its
    original grid, with the input's affine and header, labels in the dataset's
    convention; optionally ``<case>_probabilities.nii.gz`` (float32, classes last).

    Args:
        inputs: a case folder, a folder of cases, or the NIfTI files of one case in the
            model's modality order (a list of paths).
        out: output folder.
        model, weights: see `load_segmenter`.
        layout: BraTS layout (``"auto"``, ``"2019"`` ... ``"2023"``) or ``"chaos"``.
        overwrite: replace existing outputs (by default an existing output is an error,
            raised before anything is computed).
        save_probabilities: also write the probability maps.
        **segmenter_kwargs: `Segmenter` settings (overlap, flip_tta, precision, ...).

    Returns:
        The label files written.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    segmenter = load_segmenter(model, weights=weights, **segmenter_kwargs)
    cases = find_cases(inputs, segmenter.preprocessing, layout=layout)
    out = Path(out)
    if not overwrite:
        existing = [str(p) for c in cases for p in output_paths(out, c.case_id)[: 1 + save_probabilities]
                    if p.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} already exists ({len(existing)} outputs in all); pass "
                "--overwrite (overwrite=True) to replace them"
            )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, case in enumerate(cases):
        loaded = load_images_only(case)
        result = segmenter.segment(loaded, return_probabilities=save_probabilities)
        affine, header = reference_geometry(case)
        if affine is None:
            affine = loaded.affine
        label_path, prob_path = output_paths(out, case.case_id)
        write_nifti(label_path, result.labels.astype(np.uint8), affine, header)
        if save_probabilities:
            write_nifti(prob_path, result.probabilities.astype(np.float32), affine, header)
        written.append(label_path)
        if log:
            log(f"[{i + 1}/{len(cases)}] {case.case_id} -> {label_path}")
    return written

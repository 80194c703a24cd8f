"""Whole-case segmentation: raw scan -> preprocessing -> sliding window -> labels in the
original grid; ``missu-keras predict``.

`Segmenter` (from `missu_keras.inference`) holds an inference model (no MSF branch) and
the preprocessing contract it was trained with (`missu_keras.data.PreprocessingConfig`),
and turns a loaded case into dataset labels (0/1/2/4 for BraTS) on the case's own grid
through the same TensorFlow pipeline as the SavedModel. `load_segmenter` finds both
in whatever a user has: a ``missu-keras train`` output folder, a ``.keras`` file, a
saved preset folder, or a preset name with weights.

Example: a model saved as a preset folder, loaded the way ``missu-keras predict --model
DIR`` loads it, on one generated case (`Segmenter` alone: `missu_keras.inference`):

>>> import tempfile, missu_keras
>>> from missu_keras.data import find_brats_cases, write_synthetic_brats
>>> root = tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=1, seed=0, shape=(40, 40, 24))
>>> model = missu_keras.MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
>>> _ = model.save_to_preset(root + "/model")
>>> segmenter = load_segmenter(root + "/model")
>>> labels = segmenter.segment(find_brats_cases(root)[0].load()).labels
>>> labels.shape, labels.dtype, set(labels.ravel().tolist()) <= {0, 1, 2, 4}
((40, 40, 24), dtype('uint8'), True)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import keras
import numpy as np

from missu_keras.data.brats import BratsCase, canonical_modality
from missu_keras.data.datasets import find_cases as find_dataset_cases
from missu_keras.data.io import (PROBABILITY_SCALE, quantize_probabilities, read_nifti_header,
                                 strip_nifti_suffix, write_nifti)
from missu_keras.data.msd import MsdCase, channel_name, channel_order
from missu_keras.data.nnunet import CHANNEL_SUFFIX, NnunetCase
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.files import output_folder, refuse_existing
from missu_keras.inference.ensemble import SegmenterEnsemble
from missu_keras.inference.postprocessing import POSTPROCESSING_FILE, read_postprocessing
from missu_keras.inference.uncertainty import entropy
# The one inference implementation; re-exported here, where users have always found it.
from missu_keras.inference.segmenter import (Segmentation, Segmenter,  # noqa: F401
                                             default_preprocessing)
from missu_keras.labels import convention_name, label_mapping, relabel
from missu_keras.models import MISSU
from missu_keras.presets import list_presets
from missu_keras.pretrained import PUBLISHED, load_missu
from missu_keras.training.folds import fold_models, is_cross_validation_run, missing_folds
from missu_keras.weights import preset_io

logger = logging.getLogger("missu_keras.prediction")
# `load_segmenter`'s default post-processing: the postprocessing.json stored with the model.
STORED = "stored"


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


def stored_postprocessing(model) -> Optional[Path]:
    """The ``postprocessing.json`` stored with a model: in its folder (a train output
    folder, a fold folder, a saved preset folder) or beside its ``.keras`` file; a fold
    folder without one uses its cross-validation run's (``postprocess choose`` writes it
    in the run folder). ``None`` when there is none (or ``model`` is not a path)."""
    if not isinstance(model, (str, os.PathLike)) or not os.path.exists(model):
        return None
    folder = Path(model) if os.path.isdir(model) else Path(model).parent
    if (folder / POSTPROCESSING_FILE).is_file():
        return folder / POSTPROCESSING_FILE
    if is_cross_validation_run(folder.parent) and (folder.parent / POSTPROCESSING_FILE).is_file():
        return folder.parent / POSTPROCESSING_FILE
    return None


def _postprocessing_of(model, postprocessing):
    """``postprocessing`` as given, or for `STORED` the file stored with ``model``
    (read strictly) or ``None``."""
    if not (isinstance(postprocessing, str) and postprocessing == STORED):
        return postprocessing
    path = stored_postprocessing(model)
    return None if path is None else read_postprocessing(path)


def load_segmenter(model: Union[str, os.PathLike, keras.Model], weights=PUBLISHED,
                   preprocessing=None, *, registry: Optional[str] = None,
                   postprocessing=STORED, **kwargs) -> Segmenter:
    """A `Segmenter` from what a user has.

    Args:
        model: a `missu_keras.MISSU` or inference ``keras.Model``; a ``missu-keras
            train`` output folder (its best checkpoint, else the last); a ``.keras``
            file; a saved preset folder (`missu_keras.MISSU.save_to_preset`); or a
            preset name. Everything but a model object goes through
            `missu_keras.MISSU.from_preset` / `missu_keras.load_pretrained`. A list of
            these, or a cross-validation run folder (``train --folds``), gives a
            `load_ensemble`. A `Segmenter` or `SegmenterEnsemble` already built is
            returned as it is (its own settings: ``preprocessing`` and ``**kwargs``
            are refused with it).
        weights: as for `missu_keras.load_pretrained`: ``"published"`` (default: a
            preset name's published weights, a folder's or file's own weights; the only
            value accepted for those), or for a preset name ``None`` (random
            initialisation) or a weights path.
        preprocessing: overrides the stored contract (a `PreprocessingConfig` or dict).
        registry: the weights registry for a preset name's published weights (default
            ``$MISSU_KERAS_REGISTRY``).
        postprocessing: ``"stored"`` (default: the ``postprocessing.json`` stored with
            the model, `stored_postprocessing`; none when there is none), ``None`` (no
            post-processing: ``--no-postprocessing``), or a
            `missu_keras.inference.PostprocessingConfig`, its dict or a file.
        **kwargs: `Segmenter` settings (overlap, flip_tta, precision, ...).
    """
    if isinstance(model, (Segmenter, SegmenterEnsemble)):
        if preprocessing is not None or kwargs:
            raise ValueError(f"a {type(model).__name__} already built keeps its own settings; "
                             f"received preprocessing / {sorted(kwargs)} for it as well")
        return model
    if isinstance(model, (list, tuple)) or _is_cross_validation_run(model):
        return load_ensemble(model, weights, preprocessing, registry=registry,
                             postprocessing=postprocessing, **kwargs)
    kwargs["postprocessing"] = _postprocessing_of(model, postprocessing)
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


def _is_cross_validation_run(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and is_cross_validation_run(model)


def ensemble_references(models) -> list:
    """``models`` with each cross-validation run folder replaced by its folds that hold
    a model (a warning names the folds without one)."""
    refs = []
    for model in [models] if not isinstance(models, (list, tuple)) else models:
        if not _is_cross_validation_run(model):
            refs.append(model)
            continue
        found = fold_models(model)
        missing = missing_folds(model, found)
        if missing:
            logger.warning("%s: using %d fold(s); no trained model yet in %s", model, len(found),
                           ", ".join(missing))
        refs += [str(path) for path in found.values()]
    return refs


def load_ensemble(models, weights=PUBLISHED, preprocessing=None, *, registry: Optional[str] = None,
                  postprocessing=STORED, **kwargs):
    """Several models as one segmenter (`missu_keras.inference.SegmenterEnsemble`: their
    probabilities averaged with equal weights, the labels the argmax of the average).

    Args:
        models: a list of what `load_segmenter` takes; a cross-validation run folder
            (``train --folds``, alone or in the list) stands for all its folds that hold
            a trained model. One model in all gives a plain `Segmenter`.
        weights, preprocessing, registry, **kwargs: as for `load_segmenter`, for every
            member.
        postprocessing: as for `load_segmenter`, applied once to the averaged
            prediction; ``"stored"``: the one every member stores (a cross-validation
            run's own for its folds); members storing different ones are refused.

    Members whose preprocessing contracts differ are refused, naming the field.
    """
    refs = ensemble_references(models)
    if not refs:
        raise ValueError("no model given: pass at least one --model")
    if len(refs) == 1:
        return load_segmenter(refs[0], weights, preprocessing, registry=registry,
                              postprocessing=postprocessing, **kwargs)
    members = [load_segmenter(ref, weights, preprocessing, registry=registry, postprocessing=None,
                              **kwargs) for ref in refs]
    names = [os.fspath(ref) if isinstance(ref, (str, os.PathLike)) else f"model {i}"
             for i, ref in enumerate(refs)]
    return SegmenterEnsemble(members, names, postprocessing=_ensemble_postprocessing(
        refs, names, postprocessing))


def stored_ensemble_postprocessing(refs):
    """What `load_ensemble` applies by default to the models ``refs`` (one or several,
    e.g. `ensemble_references`): the post-processing they store, which must agree;
    ``None`` when none is stored."""
    if len(refs) == 1:
        return _postprocessing_of(refs[0], STORED)
    return _ensemble_postprocessing(refs, [os.fspath(r) for r in refs], STORED)


def _ensemble_postprocessing(refs, names, postprocessing):
    """One post-processing for an ensemble: ``postprocessing`` as given, or (`STORED`)
    the one its members store, which must agree."""
    if not (isinstance(postprocessing, str) and postprocessing == STORED):
        return postprocessing
    stored = [_postprocessing_of(ref, STORED) for ref in refs]
    plain = [None if s is None or s.is_empty else s.to_dict() for s in stored]
    for name, other in zip(names[1:], plain[1:]):
        if other != plain[0]:
            raise ValueError(
                f"ensemble members store different post-processing ({POSTPROCESSING_FILE}): "
                f"{names[0]} has {plain[0]}, {name} has {other}; expected the same for every "
                "member (or pass --no-postprocessing, postprocessing=None)")
    return stored[0]


# ------------------------------------------------------------------- case discovery --

_MODALITY_SUFFIX = re.compile(r"[_-](flair|t1ce|t1|t2|t1n|t1c|t2w|t2f)$", re.IGNORECASE)
_SEG_NAME = re.compile(r"(^|[_-])seg$", re.IGNORECASE)
_SUFFIX_HELP = "_flair, _t1ce, _t1, _t2 or the 2023 -t2f, -t1c, -t1n, -t2w"


def _file_modality(path: Path) -> Optional[str]:
    """The modality a file's name ends in (2019-2021 name), ``None`` when it names none;
    ``ValueError`` naming the file for a segmentation."""
    stem = strip_nifti_suffix(path.name)
    if _SEG_NAME.search(stem):
        raise ValueError(
            f"{path}: this is a segmentation (its name ends in 'seg'), found among the "
            f"images; expected only image files ({_SUFFIX_HELP})"
        )
    found = _MODALITY_SUFFIX.search(stem)
    return canonical_modality(found.group(1)) if found else None


def _modality_name(name: str) -> str:
    """A BraTS modality in its 2019-2021 spelling; another name (CHAOS' ``in_phase``,
    ...) as given, in lower case."""
    try:
        return canonical_modality(name.strip())
    except ValueError:
        return name.strip().lower()


def _modalities_by_name(files: Sequence[Path], wanted: Sequence[str]) -> List[str]:
    """The modality of each file by its name's suffix; every file must carry one."""
    named = [_file_modality(f) for f in files]
    unnamed = [str(f) for f, m in zip(files, named) if m is None]
    if unnamed:
        raise ValueError(
            f"{unnamed[0]}: cannot tell its modality from the name: expected a name ending "
            f"in {_SUFFIX_HELP}, or --modalities {','.join(wanted)} (modalities=...) "
            "giving the files' modalities in the order they are listed"
        )
    return named


def _modalities_given(files: Sequence[Path], given: Sequence[str]) -> List[str]:
    """``given`` (one modality per file, in the files' order), checked against any
    modality a file's name carries."""
    if isinstance(given, str):
        given = [m for m in given.split(",") if m.strip()]
    mods = [_modality_name(m) for m in given]
    if len(mods) != len(files):
        raise ValueError(
            f"--modalities lists {len(mods)} modalities {mods} for {len(files)} files; "
            "expected one per file, in the order the files are given"
        )
    for f, m in zip(files, mods):
        named = _file_modality(f)
        if named is not None and named != m:
            raise ValueError(f"{f}: its name says {named!r} but --modalities gives {m!r} for it")
    return mods


def match_modalities(files: Sequence[Union[str, os.PathLike]], wanted: Sequence[str],
                     given: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """``{modality: file}`` in the order ``wanted`` (the model's channels) for NIfTI
    files listed in any order: by their names' suffixes (``_flair``, ``_t1ce``, ``_t1``,
    ``_t2``, or the 2023 ``-t2f``, ``-t1c``, ``-t1n``, ``-t2w``), or by ``given`` (one
    modality per file) when the names carry none. A segmentation file is refused.

    >>> match_modalities(["c_t2.nii.gz", "c_t1ce.nii.gz", "c_flair.nii.gz", "c-t1n.nii"],
    ...                  ["flair", "t1ce", "t1", "t2"])["t1"].name
    'c-t1n.nii'
    """
    files = [Path(f) for f in files]
    wanted = [_modality_name(m) for m in wanted]
    mods = _modalities_given(files, given) if given else _modalities_by_name(files, wanted)
    by_mod: Dict[str, Path] = {}
    for f, m in zip(files, mods):
        if m in by_mod:
            raise ValueError(f"two files for modality {m!r}: {by_mod[m]} and {f}; expected one each")
        by_mod[m] = f
    missing = [m for m in wanted if m not in by_mod]
    extra = [str(by_mod[m]) for m in by_mod if m not in wanted]
    if missing or extra:
        raise ValueError(
            f"the model takes the modalities {wanted}; the files give {sorted(by_mod)} "
            f"(missing {missing}" + (f", not used by the model: {extra})" if extra else ")")
        )
    return {m: by_mod[m] for m in wanted}


def _channel_indices(files: Sequence[Path]) -> Optional[Dict[str, List]]:
    """``{case: [index per file]}`` when every file is named nnU-Net style
    (``CASE_0000.nii.gz``, ...), else ``None``."""
    found = [CHANNEL_SUFFIX.match(strip_nifti_suffix(f.name)) for f in files]
    if not all(found):
        return None
    return {m.group("case"): [int(m.group("channel")) for m in found] for m in found[:1]} \
        if len({m.group("case") for m in found}) == 1 else None


def _nnunet_case(files: Sequence[Path], preprocessing: PreprocessingConfig, given):
    """One nnU-Net-named case (``CASE_XXXX``): channel ``XXXX`` is the contract's channel
    ``XXXX``, unless ``given`` names each file's channel."""
    (case_id, indices), = _channel_indices(files).items()
    wanted = list(preprocessing.modalities)
    if given:
        paths = match_modalities(files, wanted, given)
    else:
        bad = [str(f) for f, i in zip(files, indices) if i >= len(wanted)]
        if bad or len(set(indices)) != len(indices):
            raise ValueError(f"{bad or [str(f) for f in files]}: expected one file per channel "
                             f"index 0..{len(wanted) - 1} (the model's channels {wanted})")
        paths = {wanted[i]: files[indices.index(i)] for i in range(len(wanted))}
    return NnunetCase(case_id, paths, None, preprocessing.convention)


def _channels_last_case(file: Path, preprocessing: PreprocessingConfig, given):
    """One 4-D NIfTI (Decathlon: channels on the last axis) as a case; ``given`` names
    its channels in file order (needed when the model takes more than one)."""
    wanted = list(preprocessing.modalities)
    shape = read_nifti_header(file, channels=True)[0]
    if given is None and len(wanted) > 1:
        raise ValueError(f"{file}: one 4-D file for a model of {len(wanted)} channels {wanted}: "
                         "give its channels in file order with --modalities (modalities=...), "
                         "e.g. --modalities FLAIR,T1w,t1gd,T2w")
    names = [channel_name(m) for m in (given.split(",") if isinstance(given, str) else given or wanted)]
    if len(names) != shape[3]:
        raise ValueError(f"{file}: {shape[3]} channel(s) on the last axis, but --modalities "
                         f"lists {len(names)}: {names}")
    order = channel_order(file, names, wanted)
    return MsdCase(strip_nifti_suffix(file.name), file, None, tuple(wanted), order,
                   preprocessing.convention)


def cases_from_files(files: Sequence[Union[str, os.PathLike]], preprocessing: PreprocessingConfig,
                     modalities: Optional[Sequence[str]] = None):
    """One case from its NIfTI files: files named by BraTS modality (``_flair``, ...,
    `match_modalities`), nnU-Net files ``CASE_0000.nii.gz``, ... (channel ``XXXX`` is
    the model's channel ``XXXX``), or one 4-D Decathlon file (channels last, named in
    file order by ``modalities``); ``modalities`` otherwise names each file's channel."""
    files = [Path(f) for f in files]
    wanted = list(preprocessing.modalities)
    if len(files) == 1 and files[0].is_file() and read_nifti_header(files[0], channels=True)[0][3] > 1:
        return [_channels_last_case(files[0], preprocessing, modalities)]
    if len(files) == preprocessing.num_channels and _channel_indices(files) is not None:
        return [_nnunet_case(files, preprocessing, modalities)]
    if len(files) != preprocessing.num_channels:
        raise ValueError(
            f"expected {preprocessing.num_channels} NIfTI files, one per modality "
            f"{wanted}; received {len(files)}: {[str(f) for f in files]}"
        )
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: input file not found")
    paths = match_modalities(files, wanted, modalities)
    stem = strip_nifti_suffix(files[0].name)  # the case is named after the first file listed
    case_id = _MODALITY_SUFFIX.sub("", stem) or stem
    layout = "2023" if preprocessing.label_convention == "brats2023" else "2021"
    return [BratsCase(case_id, files[0].parent, paths, None, layout)]


def find_cases(inputs: Sequence[Union[str, os.PathLike]], preprocessing: PreprocessingConfig,
               layout: str = "auto", modalities: Optional[Sequence[str]] = None):
    """Cases to segment: one case folder, a folder of cases, or a NIfTI file list
    (matched to modalities as `cases_from_files` says)."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input given: pass a case folder, a folder of cases or NIfTI files")
    if len(inputs) > 1 or inputs[0].is_file():
        return cases_from_files(inputs, preprocessing, modalities)
    if modalities:
        raise ValueError(f"--modalities is for a list of NIfTI files; {inputs[0]} is a folder, "
                         "whose files are found by their names")
    root = inputs[0]
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found")
    if preprocessing.dataset == "chaos":
        layout = "chaos"
    sequence = "T1DUAL" if preprocessing.num_channels == 2 else "T2SPIR"
    # "all": a Decathlon / nnU-Net dataset folder gives its training and test cases
    return find_dataset_cases(root, layout=layout, modalities=preprocessing.modalities,
                              sequence=sequence, subset="all")


def load_images_only(case):
    """Loads (and validates) a BraTS or CHAOS case without its segmentation."""
    field = "seg_path" if hasattr(case, "seg_path") else "ground_dir"
    return dataclasses.replace(case, **{field: None}).load()


def reference_geometry(case):
    """(affine, header) the prediction of ``case`` is written with (``None, None`` when
    the case has no reference NIfTI, e.g. CHAOS DICOM: use the loaded case's affine)."""
    ref = getattr(case, "reference_path", None)
    if ref is not None:
        _, affine, img = read_nifti_header(ref, channels=True)  # a Decathlon image is 4-D
        return affine, img.header
    return None, None


def output_paths(out_dir: Path, case_id: str):
    """``(labels, probabilities, entropy)`` files of ``case_id`` in ``out_dir``."""
    return (out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_probabilities.nii.gz",
            out_dir / f"{case_id}_entropy.nii.gz")


def write_probabilities(path, probabilities: np.ndarray, affine, header=None) -> Path:
    """The class probabilities ``(H, W, D, K)`` as a 4-D NIfTI (classes on the 4th axis),
    16 bits a value (`missu_keras.data.io.quantize_probabilities`: NIfTI has no float16)
    read back as floats in [0, 1] that sum to 1 within ``K / 65535`` and whose argmax is
    that of ``probabilities``."""
    return write_nifti(path, quantize_probabilities(probabilities), affine, header,
                       description="class probabilities (4th axis: class index)",
                       slope=PROBABILITY_SCALE)


def warn_empty_modalities(case, loaded, log=None) -> List[str]:
    """Warns (``logger`` and ``log``) for each modality of ``loaded`` that is all zeros,
    naming its file: such a scan is most likely a wrong or blank file, and the model
    will segment it anyway. Returns the warnings."""
    paths = getattr(case, "image_paths", None) or {}
    names = list(getattr(loaded, "channel_names", None) or paths or [])
    warnings = []
    for c in range(loaded.image.shape[-1]):
        if np.any(loaded.image[..., c]):
            continue
        name = names[c] if c < len(names) else f"channel {c}"
        source = paths[name] if name in paths else case.case_id
        warnings.append(f"warning: {source}: modality {name!r} of case {case.case_id!r} is all "
                        "zeros; expected a scan with signal (check the file)")
    for text in warnings:
        logger.warning(text)
        if log:
            log(text)
    return warnings


def predict(inputs, out, model, weights=PUBLISHED, layout: str = "auto", overwrite: bool = False,
            save_probabilities: bool = False, modalities: Optional[Sequence[str]] = None,
            log=print, uncertainty: bool = False, output_labels=None,
            **segmenter_kwargs) -> List[Path]:
    """Segments cases and writes one label NIfTI per case (``<case>.nii.gz``) in its
    original grid, with the input's affine and header, labels in the dataset's
    convention; optionally ``<case>_probabilities.nii.gz`` (`write_probabilities`: one
    channel per class on the 4th axis, 16 bits a value) and ``<case>_entropy.nii.gz``
    (float32, the voxelwise entropy in nats of the probabilities,
    `missu_keras.inference.uncertainty.entropy`).

    Args:
        inputs: a case folder, a folder of cases, or the NIfTI files of one case in any
            order, matched to the model's modalities by their names (``_flair``,
            ``_t1ce``, ``_t1``, ``_t2``, ``-t2f``, ...; a ``_seg`` file is refused).
        out: output folder, created and checked for writability before anything else.
        model, weights: see `load_segmenter` (several models or a cross-validation run
            folder: their probabilities averaged, `load_ensemble`; with ``flip_tta`` each
            member's are the mean over the 8 flips).
        layout: BraTS layout (``"auto"``, ``"2019"`` ... ``"2023"``) or ``"chaos"``.
        overwrite: replace existing outputs (by default an existing output is an error,
            raised before anything is computed).
        save_probabilities: also write the (averaged) probability maps.
        uncertainty: also write the entropy of the (averaged) probabilities.
        modalities: for a file list whose names carry no modality: the modality of each
            file, in the order given (e.g. ``["flair", "t1ce", "t1", "t2"]``).
        output_labels: write the labels in this convention (a registered name such as
            ``"brats2023"``, see `missu_keras.labels.relabel`) instead of the model's
            training convention; a mapping that cannot be made (a tissue the target has
            no label for) is an error before any case is segmented. The probability maps
            keep the model's class order.
        **segmenter_kwargs: `Segmenter` settings (overlap, flip_tta, precision, ...), and
            ``postprocessing`` (default: the model's stored ``postprocessing.json``;
            ``None``: none; see `load_segmenter`), which is logged.

    Every file is written atomically (`missu_keras.data.io.write_nifti`): a failed
    write (full disk) leaves nothing behind under the output's name.

    Returns:
        The label files written.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    with output_folder(out, "--out") as out:
        segmenter = load_segmenter(model, weights=weights, **segmenter_kwargs)
        if output_labels is not None:  # an impossible mapping fails before any case is segmented
            label_mapping(segmenter.preprocessing.convention, output_labels,
                          what=f"--output-labels {convention_name(output_labels)}")
        log_postprocessing(segmenter, log)
        cases = find_cases(inputs, segmenter.preprocessing, layout=layout, modalities=modalities)
        wanted = (True, save_probabilities, uncertainty)
        if not overwrite:
            refuse_existing(p for c in cases
                            for p, w in zip(output_paths(out, c.case_id), wanted) if w)
        return [_predict_case(segmenter, case, out, wanted, log, f"[{i + 1}/{len(cases)}]",
                              output_labels=output_labels)
                for i, case in enumerate(cases)]


def log_postprocessing(segmenter, log=print) -> str:
    """Logs (and returns) which post-processing ``segmenter`` applies."""
    text = "post-processing: " + segmenter.postprocessing.describe(segmenter.preprocessing.convention)
    logger.info(text)
    if log:
        log(text)
    return text


def _predict_case(segmenter, case, out: Path, wanted, log, counter: str,
                  output_labels=None) -> Path:
    """Segments one case and writes its files (``wanted``: labels, probabilities,
    entropy; labels in ``output_labels`` if given); returns the label file."""
    loaded = load_images_only(case)
    warn_empty_modalities(case, loaded, log)
    _, save_probabilities, uncertainty = wanted
    result = segmenter.segment(loaded, return_probabilities=save_probabilities or uncertainty)
    labels = result.labels
    if output_labels is not None:
        labels = relabel(labels, segmenter.preprocessing.convention, output_labels,
                         what=f"case {case.case_id!r}")
    affine, header = reference_geometry(case)
    if affine is None:
        affine = loaded.affine
    label_path, prob_path, entropy_path = output_paths(out, case.case_id)
    maps = [p for p, w in zip((prob_path, entropy_path), wanted[1:]) if w]
    try:  # the maps first: a label file is the mark of a finished case
        if save_probabilities:
            write_probabilities(prob_path, result.probabilities, affine, header)
        if uncertainty:
            write_nifti(entropy_path, entropy(result.probabilities), affine, header,
                        description="entropy of the class probabilities, nats")
        write_nifti(label_path, labels.astype(np.uint8), affine, header)
    except BaseException:
        for path in maps:  # no half-written case: the maps alone would block a re-run
            path.unlink(missing_ok=True)
        raise
    if log:
        log(f"{counter} {case.case_id} -> {label_path}")
    return label_path

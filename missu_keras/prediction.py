"""Whole-case segmentation: raw scan -> preprocessing -> sliding window -> labels in the
original grid; ``missu-keras predict``.

`Segmenter` holds an inference model (no MSF branch) and the preprocessing contract it
was trained with (`missu_keras.data.PreprocessingConfig`), and turns a loaded case into
dataset labels (0/1/2/4 for BraTS) on the case's own grid. `load_segmenter` finds both
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
import json
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import keras
import numpy as np

from missu_keras.data.preprocessing import (PreprocessingConfig, preprocess_case,
                                            restore_labels, uncrop)
from missu_keras.inference import SlidingWindowInferer, rebuild_with_dtype_policy

logger = logging.getLogger("missu_keras.prediction")

RUN_CONFIG = "config.json"  # written by `missu-keras train` in its output folder
BEST_CHECKPOINT = os.path.join("checkpoints", "best.keras")
LAST_CHECKPOINT = os.path.join("checkpoints", "last.keras")


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
        precision: ``"float32"`` or ``"mixed_bfloat16"`` (the model is rebuilt under that
            policy; the output stays float32).
    """

    def __init__(self, model: keras.Model, preprocessing, overlap: float = 0.5,
                 flip_tta: bool = False, precision: str = "float32",
                 sw_batch_size: int = 1, progress: bool = False):
        if isinstance(preprocessing, dict):
            preprocessing = PreprocessingConfig.from_dict(preprocessing)
        if not isinstance(preprocessing, PreprocessingConfig):
            raise ValueError(
                f"preprocessing must be a PreprocessingConfig or its dict; received "
                f"{type(preprocessing).__name__}"
            )
        if precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(
                f"precision must be 'float32' or 'mixed_bfloat16'; received {precision!r}"
            )
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
        if precision == "mixed_bfloat16":
            model = rebuild_with_dtype_policy(model, "mixed_bfloat16")
        self.model = model
        self.preprocessing = preprocessing
        self.patch_size = tuple(int(s) for s in shape[1:4])
        self.inferer = SlidingWindowInferer(
            roi_size=self.patch_size, overlap=overlap, sw_batch_size=sw_batch_size,
            flip_tta=flip_tta, precision=None if precision == "float32" else precision,
            progress=progress, divisible_by=8,
        )

    @classmethod
    def from_model(cls, model, preprocessing=None, **kwargs) -> "Segmenter":
        """From a `missu_keras.MISSU` (its inference model and stored preprocessing) or
        a plain inference model with ``preprocessing`` given."""
        from missu_keras.models import MISSU

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
        """Segments a loaded case (`missu_keras.data.LoadedCase`, e.g. ``case.load()``)."""
        case = preprocess_case(_without_labels(loaded), self.preprocessing)
        probs = self.probabilities(case.image)
        labels = restore_labels(np.argmax(probs, axis=-1), case.box,
                                self.preprocessing.label_convention)
        full = None
        if return_probabilities:
            background = np.zeros(probs.shape[-1], np.float32)
            background[0] = 1.0
            full = uncrop(probs, case.box, fill=0.0)
            outside = np.ones(case.box.original_shape, bool)
            outside[case.box.slices] = False
            full[outside] = background
        return Segmentation(loaded.case_id, labels, full)


def _without_labels(loaded):
    # Prediction never needs the ground truth (and must not fail on a bad one).
    return dataclasses.replace(loaded, labels=None) if loaded.labels is not None else loaded


def default_preprocessing(model: keras.Model) -> PreprocessingConfig:
    """BraTS preprocessing at the model's patch size, for models saved without their
    contract (with a warning: pass the real one when the model was trained otherwise)."""
    shape = tuple(model.inputs[0].shape)
    logger.warning("model carries no preprocessing settings; assuming BraTS (FLAIR, T1ce, "
                   "T1, T2; z-score over the brain) at patch %s", shape[1:4])
    return PreprocessingConfig.brats(patch_size=tuple(int(s) for s in shape[1:4]))


def _read_preprocessing(folder: Path) -> Optional[dict]:
    for name in ("preprocessing.json", RUN_CONFIG):
        path = folder / name
        if path.is_file():
            d = json.loads(path.read_text())
            if name == RUN_CONFIG:
                d = d.get("preprocessing")
            if d:
                return d
    return None


def load_segmenter(model: Union[str, os.PathLike, keras.Model], weights=None,
                   preprocessing=None, **kwargs) -> Segmenter:
    """A `Segmenter` from what a user has.

    Args:
        model: a `missu_keras.MISSU` or inference ``keras.Model``; a ``missu-keras
            train`` output folder (its best checkpoint, else the last); a ``.keras``
            file; a saved preset folder (`missu_keras.save_preset`); or a preset name
            (then ``weights`` goes to `missu_keras.load_pretrained`).
        weights: only with a preset name.
        preprocessing: overrides the stored contract (a `PreprocessingConfig` or dict).
        **kwargs: `Segmenter` settings (overlap, flip_tta, precision, ...).
    """
    if isinstance(model, keras.Model):
        return Segmenter.from_model(model, preprocessing, **kwargs)
    ref = os.fspath(model)
    path = Path(ref)
    if path.is_dir():
        if (path / RUN_CONFIG).is_file() and ((path / BEST_CHECKPOINT).is_file()
                                             or (path / LAST_CHECKPOINT).is_file()):
            ckpt = path / BEST_CHECKPOINT
            if not ckpt.is_file():
                ckpt = path / LAST_CHECKPOINT
            loaded = keras.saving.load_model(ckpt)
            return Segmenter.from_model(loaded, preprocessing or _read_preprocessing(path), **kwargs)
        from missu_keras.pretrained import load_pretrained

        inference = load_pretrained(ref)  # a saved preset folder
        return Segmenter(inference, preprocessing or _read_preprocessing(path)
                         or default_preprocessing(inference), **kwargs)
    if ref.endswith(".keras"):
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {ref!r}")
        loaded = keras.saving.load_model(path)
        return Segmenter.from_model(loaded, preprocessing or _read_preprocessing(path.parent), **kwargs)
    from missu_keras.presets import list_presets

    if ref in list_presets():
        from missu_keras.pretrained import load_pretrained

        inference = load_pretrained(ref, weights=weights)
        return Segmenter(inference, preprocessing or default_preprocessing(inference), **kwargs)
    raise FileNotFoundError(
        f"model {ref!r} not found: expected a missu-keras train output folder, a .keras "
        f"file, a saved preset folder or a preset name ({', '.join(list_presets())})"
    )


# ------------------------------------------------------------------- case discovery --

_MODALITY_SUFFIX = re.compile(r"[_-](flair|t1ce|t1|t2|t1n|t1c|t2w|t2f)$", re.IGNORECASE)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def cases_from_files(files: Sequence[Union[str, os.PathLike]], preprocessing: PreprocessingConfig):
    """One BraTS-style case from NIfTI files given in the model's modality order."""
    from missu_keras.data.brats import BratsCase

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
    case_id = _MODALITY_SUFFIX.sub("", _stem(files[0])) or _stem(files[0])
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
        from missu_keras.data.chaos import find_chaos_cases

        sequence = "T1DUAL" if preprocessing.num_channels == 2 else "T2SPIR"
        return find_chaos_cases(root, sequence=sequence)
    from missu_keras.data.brats import find_brats_cases

    return find_brats_cases(root, layout=layout, modalities=preprocessing.modalities)


def load_images_only(case):
    """Loads (and validates) a BraTS or CHAOS case without its segmentation."""
    field = "seg_path" if hasattr(case, "seg_path") else "ground_dir"
    return dataclasses.replace(case, **{field: None}).load()


def reference_geometry(case):
    """(affine, header) the prediction of ``case`` is written with (``None, None`` when
    the case has no reference NIfTI, e.g. CHAOS DICOM: use the loaded case's affine)."""
    import nibabel as nib

    ref = getattr(case, "reference_path", None)
    if ref is not None:
        img = nib.load(str(ref))
        return img.affine, img.header
    return None, None


def output_paths(out_dir: Path, case_id: str):
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_probabilities.nii.gz"


def predict(inputs, out, model, weights=None, layout: str = "auto", overwrite: bool = False,
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
    import nibabel as nib

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
        img = nib.Nifti1Image(result.labels.astype(np.uint8), affine, header)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1, 0)
        nib.save(img, label_path)
        if save_probabilities:
            prob = nib.Nifti1Image(result.probabilities.astype(np.float32), affine, header)
            prob.set_data_dtype(np.float32)
            prob.header.set_slope_inter(1, 0)
            nib.save(prob, prob_path)
        written.append(label_path)
        if log:
            log(f"[{i + 1}/{len(cases)}] {case.case_id} -> {label_path}")
    return written


# ---------------------------------------------------------------------------- CLI --

def add_inference_arguments(p):
    """Flags shared by ``predict`` and ``evaluate``."""
    p.add_argument("--model", required=True,
                   help="a train output folder, a .keras file, a saved preset folder or a preset name")
    p.add_argument("--weights", help="weights for a preset name (see load_pretrained)")
    p.add_argument("--layout", default="auto",
                   help="BraTS layout (auto, 2019, 2020, 2021, 2023) or chaos")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips (8x the compute)")
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    p.add_argument("--sw-batch-size", type=int, default=1, help="windows per model call")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the windows")


def segmenter_kwargs(args) -> dict:
    return dict(overlap=args.overlap, flip_tta=args.tta, precision=args.precision,
                sw_batch_size=args.sw_batch_size, progress=not args.quiet)


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment cases to NIfTI in their original grid",
        description="Segments one case folder, a folder of cases, or one case given as NIfTI "
                    "files in the model's modality order, and writes <case>.nii.gz per case.")
    p.add_argument("inputs", nargs="+", help="case folder, folder of cases, or NIfTI files")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p)
    p.add_argument("--probabilities", action="store_true",
                   help="also write <case>_probabilities.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_handle)
    return p


def _handle(args) -> int:
    predict(args.inputs, args.out, args.model, weights=args.weights, layout=args.layout,
            overwrite=args.overwrite, save_probabilities=args.probabilities,
            **segmenter_kwargs(args))
    return 0

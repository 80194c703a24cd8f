"""Data: BraTS / CHAOS / Decathlon / nnU-Net readers, validation, preprocessing, cache,
tf.data and synthetic cases.

Real and synthetic data take the same path::

    cases = find_cases(root)            # any layout (find_brats_cases, find_nnunet_cases, ...)
    result = build_cache(cases, cache_dir, PreprocessingConfig.brats(), workers=2)
    train = make_training_dataset(result.cache, batch_size=2, seed=0)
    val = make_validation_dataset(result.cache)

>>> import missu_keras.data as data
>>> data.BRATS_MODALITIES
('flair', 't1ce', 't1', 't2')
"""

from missu_keras._lazy import lazy_exports

# Public name -> the module that defines it. Loaded on first use (PEP 562), so reading a
# folder layout or a NIfTI header does not load TensorFlow (which pipeline.py needs).
_EXPORTS = {
    "AugmentationConfig": "missu_keras.data.pipeline",
    "BRATS_LAYOUTS": "missu_keras.data.brats",
    "BRATS_MODALITIES": "missu_keras.data.brats",
    "BratsCase": "missu_keras.data.brats",
    "CacheBuildResult": "missu_keras.data.cache",
    "CacheEntry": "missu_keras.data.cache",
    "ChaosCase": "missu_keras.data.chaos",
    "CropBox": "missu_keras.data.preprocessing",
    "DataCache": "missu_keras.data.cache",
    "LAYOUTS": "missu_keras.data.datasets",
    "LoadedCase": "missu_keras.data.validation",
    "MODALITY_2023_NAMES": "missu_keras.data.brats",
    "MsdCase": "missu_keras.data.msd",
    "NnunetCase": "missu_keras.data.nnunet",
    "ORGAN_GREY_RANGES": "missu_keras.data.chaos",
    "PreprocessedCase": "missu_keras.data.preprocessing",
    "PreprocessingConfig": "missu_keras.data.preprocessing",
    "Reorientation": "missu_keras.data.geometry",
    "SkippedCase": "missu_keras.data.validation",
    "ValidationResult": "missu_keras.data.validation",
    "augment_patch": "missu_keras.data.pipeline",
    "build_cache": "missu_keras.data.cache",
    "canonical_modality": "missu_keras.data.brats",
    "chaos_split": "missu_keras.data.chaos",
    "crop": "missu_keras.data.preprocessing",
    "dataset_fingerprint": "missu_keras.data.fingerprint",
    "format_fingerprint": "missu_keras.data.fingerprint",
    "detect_brats_layout": "missu_keras.data.brats",
    "detect_layout": "missu_keras.data.datasets",
    "extract_patch": "missu_keras.data.pipeline",
    "find_brats_cases": "missu_keras.data.brats",
    "find_cases": "missu_keras.data.datasets",
    "find_chaos_cases": "missu_keras.data.chaos",
    "find_msd_cases": "missu_keras.data.msd",
    "find_nnunet_cases": "missu_keras.data.nnunet",
    "foreground_box": "missu_keras.data.preprocessing",
    "load_brats_case": "missu_keras.data.validation",
    "load_chaos_case": "missu_keras.data.chaos",
    "load_nifti_case": "missu_keras.data.validation",
    "make_training_dataset": "missu_keras.data.pipeline",
    "make_validation_dataset": "missu_keras.data.pipeline",
    "median_spacing": "missu_keras.data.geometry",
    "normalize_nonzero": "missu_keras.data.preprocessing",
    "pad_to_multiple": "missu_keras.data.preprocessing",
    "preprocess_case": "missu_keras.data.preprocessing",
    "read_chaos_mask": "missu_keras.data.chaos",
    "read_dicom_series": "missu_keras.data.chaos",
    "read_nifti": "missu_keras.data.validation",
    "reorient": "missu_keras.data.geometry",
    "resample": "missu_keras.data.geometry",
    "restore_labels": "missu_keras.data.preprocessing",
    "sample_crop_start": "missu_keras.data.pipeline",
    "sha256_file": "missu_keras.files",
    "synthetic_brats_volumes": "missu_keras.data.synthetic",
    "synthetic_chaos_volumes": "missu_keras.data.synthetic",
    "uncrop": "missu_keras.data.preprocessing",
    "undo_orientation": "missu_keras.data.geometry",
    "unpad": "missu_keras.data.preprocessing",
    "validate_cases": "missu_keras.data.validation",
    "voxel_spacing": "missu_keras.data.geometry",
    "with_median_spacing": "missu_keras.data.preprocessing",
    "write_synthetic_brats": "missu_keras.data.synthetic",
    "write_synthetic_chaos": "missu_keras.data.synthetic",
    "write_synthetic_msd": "missu_keras.data.synthetic",
    "write_synthetic_nnunet": "missu_keras.data.synthetic",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

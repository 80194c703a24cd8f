"""Data: BraTS / CHAOS readers, validation, preprocessing, cache, tf.data and synthetic cases.

Real and synthetic data take the same path::

    cases = find_brats_cases(root)                          # or find_chaos_cases(root)
    result = build_cache(cases, cache_dir, PreprocessingConfig.brats(), workers=2)
    train = make_training_dataset(result.cache, batch_size=2, seed=0)
    val = make_validation_dataset(result.cache)

>>> import missu_keras.data as data
>>> data.BRATS_MODALITIES
('flair', 't1ce', 't1', 't2')
"""

from missu_keras.data.brats import (
    BRATS_LAYOUTS,
    BRATS_MODALITIES,
    MODALITY_2023_NAMES,
    BratsCase,
    canonical_modality,
    detect_brats_layout,
    find_brats_cases,
)
from missu_keras.data.cache import CacheBuildResult, CacheEntry, DataCache, build_cache, sha256_file
from missu_keras.data.chaos import (
    ORGAN_GREY_RANGES,
    ChaosCase,
    chaos_split,
    find_chaos_cases,
    load_chaos_case,
    read_chaos_mask,
    read_dicom_series,
)
from missu_keras.data.pipeline import (
    AugmentationConfig,
    augment_patch,
    extract_patch,
    make_training_dataset,
    make_validation_dataset,
    sample_crop_start,
)
from missu_keras.data.preprocessing import (
    CropBox,
    PreprocessedCase,
    PreprocessingConfig,
    crop,
    foreground_box,
    normalize_nonzero,
    pad_to_multiple,
    preprocess_case,
    restore_labels,
    uncrop,
    unpad,
)
from missu_keras.data.synthetic import (
    synthetic_brats_volumes,
    synthetic_chaos_volumes,
    write_synthetic_brats,
    write_synthetic_chaos,
)
from missu_keras.data.validation import (
    LoadedCase,
    SkippedCase,
    ValidationResult,
    load_brats_case,
    read_nifti,
    validate_cases,
)

__all__ = [
    "AugmentationConfig",
    "BRATS_LAYOUTS",
    "BRATS_MODALITIES",
    "BratsCase",
    "CacheBuildResult",
    "CacheEntry",
    "ChaosCase",
    "CropBox",
    "DataCache",
    "LoadedCase",
    "MODALITY_2023_NAMES",
    "ORGAN_GREY_RANGES",
    "PreprocessedCase",
    "PreprocessingConfig",
    "SkippedCase",
    "ValidationResult",
    "augment_patch",
    "build_cache",
    "canonical_modality",
    "chaos_split",
    "crop",
    "detect_brats_layout",
    "extract_patch",
    "find_brats_cases",
    "find_chaos_cases",
    "foreground_box",
    "load_brats_case",
    "load_chaos_case",
    "make_training_dataset",
    "make_validation_dataset",
    "normalize_nonzero",
    "pad_to_multiple",
    "preprocess_case",
    "read_chaos_mask",
    "read_dicom_series",
    "read_nifti",
    "restore_labels",
    "sample_crop_start",
    "sha256_file",
    "synthetic_brats_volumes",
    "synthetic_chaos_volumes",
    "uncrop",
    "unpad",
    "validate_cases",
    "write_synthetic_brats",
    "write_synthetic_chaos",
]

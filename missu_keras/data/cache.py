"""Preprocessed cases stored once as ``.npy`` (no pickle) with a JSON manifest.

``<cache_dir>/manifest.json`` holds the `PreprocessingConfig` and, per case, the
sha256, size and mtime of every source file, the crop box, affine and spacing.
On a rebuild a case is re-processed when a source file's content hash changed, a
source was added or removed, or the preprocessing config changed; otherwise its
arrays are reused. (A file whose size and mtime are unchanged is trusted without
re-hashing; ``verify_hashes=True`` re-hashes everything.) Cases no longer listed are
dropped from the manifest and their arrays deleted.

Per case: ``<id>_image.npy`` ``(h, w, d, C)`` float32, ``<id>_label.npy``
``(h, w, d)`` uint8 training classes, ``<id>_fg.npy`` ``(N, 4)`` int32 sampled
foreground voxels ``(i, j, k, class)`` for foreground over-sampling (up to
``max_foreground_samples`` per class, as nnU-Net stores them).

>>> import tempfile
>>> from missu_keras.data.brats import find_brats_cases
>>> from missu_keras.data.synthetic import write_synthetic_brats
>>> root, cache_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> _ = write_synthetic_brats(root, num_cases=2, seed=0, shape=(32, 32, 24))
>>> cfg = PreprocessingConfig.brats(patch_size=16)
>>> result = build_cache(find_brats_cases(root), cache_dir, cfg, progress=False)
>>> result.processed, result.reused
(['BraTS2021_SYNTH_00000', 'BraTS2021_SYNTH_00001'], [])
>>> build_cache(find_brats_cases(root), cache_dir, cfg, progress=False).reused
['BraTS2021_SYNTH_00000', 'BraTS2021_SYNTH_00001']
>>> cache = DataCache(cache_dir)
>>> cache.load_image("BraTS2021_SYNTH_00000").shape[-1], cache.load_label("BraTS2021_SYNTH_00000").dtype
(4, dtype('uint8'))
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from missu_keras.data.preprocessing import CropBox, PreprocessingConfig, preprocess_case
from missu_keras.data.validation import SkippedCase
from missu_keras.files import atomic_path, sha256_file, write_text_atomic
from missu_keras.labels import get_label_convention

logger = logging.getLogger("missu_keras.data")

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(case_id))


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """Where one preprocessed case lives and how it maps back to its original grid."""

    case_id: str
    image_file: str
    label_file: Optional[str]
    foreground_file: Optional[str]
    shape: tuple
    box: CropBox
    affine: tuple
    spacing: tuple
    sources: Dict[str, dict]

    def to_dict(self) -> dict:
        return {
            "image_file": self.image_file,
            "label_file": self.label_file,
            "foreground_file": self.foreground_file,
            "shape": list(self.shape),
            "box": self.box.to_dict(),
            "affine": [list(r) for r in self.affine],
            "spacing": list(self.spacing),
            "sources": self.sources,
        }

    @classmethod
    def from_dict(cls, case_id: str, d: dict) -> "CacheEntry":
        return cls(
            case_id=case_id,
            image_file=d["image_file"],
            label_file=d.get("label_file"),
            foreground_file=d.get("foreground_file"),
            shape=tuple(int(s) for s in d["shape"]),
            box=CropBox.from_dict(d["box"]),
            affine=tuple(tuple(float(v) for v in r) for r in d["affine"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            sources=dict(d["sources"]),
        )


class DataCache:
    """Read access to a built cache.

    Args:
        cache_dir: a folder written by `build_cache`.

    Attributes:
        config: the `PreprocessingConfig` the cache was built with.
        case_ids: cached case ids, sorted as they were given to `build_cache`.
    """

    def __init__(self, cache_dir):
        self.directory = Path(cache_dir)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no cache manifest; build the cache with build_cache()")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"{manifest_path}: cache manifest version expected {MANIFEST_VERSION}, found {manifest.get('version')}"
            )
        self.config = PreprocessingConfig.from_dict(manifest["config"])
        self.entries: Dict[str, CacheEntry] = {
            k: CacheEntry.from_dict(k, v) for k, v in manifest["cases"].items()
        }
        self.case_ids: List[str] = list(manifest.get("order", sorted(self.entries)))

    def __len__(self) -> int:
        return len(self.case_ids)

    def entry(self, case_id: str) -> CacheEntry:
        try:
            return self.entries[case_id]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in the cache {self.directory}; cached: {self.case_ids}") from None

    def image_path(self, case_id: str) -> Path:
        return self.directory / self.entry(case_id).image_file

    def label_path(self, case_id: str) -> Optional[Path]:
        e = self.entry(case_id)
        return self.directory / e.label_file if e.label_file else None

    def load_image(self, case_id: str, mmap: bool = False) -> np.ndarray:
        """``(h, w, d, C)`` float32 preprocessed image (memory-mapped if ``mmap``)."""
        return np.load(self.image_path(case_id), mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_label(self, case_id: str, mmap: bool = False) -> np.ndarray:
        """``(h, w, d)`` uint8 training classes; ``FileNotFoundError`` for unlabelled cases."""
        path = self.label_path(case_id)
        if path is None:
            raise FileNotFoundError(f"case {case_id!r} has no labels in the cache {self.directory}")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def fingerprint(self, case_ids: Optional[Sequence[str]] = None) -> Dict[str, str]:
        """``{case_id: digest}``: a sha256 over the names and sha256s of each case's
        source files (from the manifest), not their folder, so a moved data folder has
        the same fingerprint and a changed file a different one."""
        prints = {}
        for case_id in self.case_ids if case_ids is None else case_ids:
            sources = sorted((Path(k).name, v["sha256"]) for k, v in self.entry(case_id).sources.items())
            prints[case_id] = hashlib.sha256(json.dumps(sources).encode()).hexdigest()
        return prints

    def load_foreground(self, case_id: str) -> np.ndarray:
        """``(N, 4)`` int32 foreground samples ``(i, j, k, class)``; ``(0, 4)`` if none."""
        e = self.entry(case_id)
        if not e.foreground_file:
            return np.zeros((0, 4), np.int32)
        return np.load(self.directory / e.foreground_file, allow_pickle=False)


@dataclasses.dataclass
class CacheBuildResult:
    """What `build_cache` did: ``processed`` and ``reused`` case ids, ``skipped`` cases."""

    cache: DataCache
    processed: List[str]
    reused: List[str]
    skipped: List[SkippedCase]


def _source_records(files: Sequence[Path], previous: Optional[dict], verify: bool) -> Dict[str, dict]:
    records = {}
    for f in files:
        if not Path(f).exists():
            continue  # a missing file is reported, with its name, when the case is loaded
        key = str(Path(f).resolve())
        st = os.stat(f)
        prev = (previous or {}).get(key)
        if (not verify and prev and prev.get("size") == st.st_size
                and prev.get("mtime_ns") == st.st_mtime_ns):
            records[key] = prev
        else:
            records[key] = {"sha256": sha256_file(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return records


def _same_sources(a: Dict[str, dict], b: Optional[Dict[str, dict]]) -> bool:
    return b is not None and set(a) == set(b) and all(a[k]["sha256"] == b[k]["sha256"] for k in a)


def sample_foreground(classes: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Up to ``max_per_class`` voxel coordinates of each class > 0 of ``classes (h, w, d)``.

    Returns ``(N, 4)`` int32 rows ``(i, j, k, class)``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for cls in np.unique(classes):
        if cls == 0:
            continue
        idx = np.argwhere(classes == cls)
        if len(idx) > max_per_class:
            idx = idx[np.sort(rng.choice(len(idx), max_per_class, replace=False))]
        rows.append(np.concatenate([idx, np.full((len(idx), 1), cls)], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:  # np.save appends .npy to other names
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def _process_one(case, cache_dir: Path, config: PreprocessingConfig, sources: dict,
                 max_foreground_samples: int) -> CacheEntry:
    loaded = case.load(config.convention)
    pre = preprocess_case(loaded, config)
    name = _safe_name(case.case_id)
    image_file, label_file, fg_file = f"{name}_image.npy", None, None
    _save_npy(cache_dir / image_file, pre.image)
    if pre.classes is not None:
        label_file, fg_file = f"{name}_label.npy", f"{name}_fg.npy"
        _save_npy(cache_dir / label_file, pre.classes)
        fg = sample_foreground(pre.classes, max_foreground_samples, zlib.crc32(name.encode()))
        _save_npy(cache_dir / fg_file, fg)
    return CacheEntry(
        case_id=case.case_id,
        image_file=image_file,
        label_file=label_file,
        foreground_file=fg_file,
        shape=tuple(int(s) for s in pre.image.shape),
        box=pre.box,
        affine=tuple(tuple(float(v) for v in r) for r in pre.affine),
        spacing=tuple(float(s) for s in pre.spacing),
        sources=sources,
    )


def _write_manifest(cache_dir: Path, config: PreprocessingConfig, entries: Dict[str, CacheEntry],
                    order: List[str]) -> None:
    manifest = {
        "version": MANIFEST_VERSION,
        "config": config.to_dict(),
        "order": order,
        "cases": {k: entries[k].to_dict() for k in order},
    }
    write_text_atomic(cache_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))


def _check_cases(cases: Sequence, config: PreprocessingConfig) -> None:
    """Set-up mistakes concern every case: fail before any work instead of skipping them all."""
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids {dupes}; case ids must be unique within a cache")
    for case in cases:
        channels = tuple(getattr(case, "channel_names", config.modalities))
        if channels != tuple(config.modalities):
            raise ValueError(
                f"case {case.case_id!r}: channels expected {list(config.modalities)} (preprocessing config), "
                f"found {list(channels)}; find the cases with modalities={list(config.modalities)}"
            )
        convention = get_label_convention(getattr(case, "label_convention", config.convention))
        if convention != config.convention:
            raise ValueError(
                f"case {case.case_id!r}: label convention expected {config.convention.name!r} "
                f"(labels {list(config.convention.labels)}; preprocessing config), found "
                f"{convention.name!r} (labels {list(convention.labels)}; from its layout)"
            )


def _read_manifest(cache_dir: Path, config: PreprocessingConfig):
    """``(every entry of the old manifest, the entries built with the same config)``."""
    manifest_path = cache_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}, {}
    try:
        old = DataCache(cache_dir)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable cache manifest %s: %s", manifest_path, exc)
        return {}, {}
    if old.config == config:
        return old.entries, old.entries
    logger.info("preprocessing config changed; re-processing every case in %s", cache_dir)
    return old.entries, {}


def _plan(cases, cache_dir: Path, reusable: Dict[str, CacheEntry], verify_hashes: bool,
          skip_invalid: bool):
    """``(entries reused, [(case, sources) to process], reused ids, skipped)``: a case is
    reused when its arrays exist and its source files are unchanged."""
    entries: Dict[str, CacheEntry] = {}
    todo, reused, skipped = [], [], []
    for case in cases:
        prev = reusable.get(case.case_id)
        try:
            sources = _source_records(case.source_files(), prev.sources if prev else None, verify_hashes)
        except OSError as exc:
            if not skip_invalid:
                raise
            skipped.append(SkippedCase(case.case_id, f"{type(exc).__name__}: {exc}"))
            logger.warning("skipping case %s: %s", case.case_id, skipped[-1].reason)
            continue
        files_present = prev is not None and all(
            (cache_dir / f).is_file() for f in (prev.image_file, prev.label_file, prev.foreground_file) if f
        )
        if prev is not None and files_present and _same_sources(sources, prev.sources):
            entries[case.case_id] = dataclasses.replace(prev, sources=sources)
            reused.append(case.case_id)
        else:
            todo.append((case, sources))
    return entries, todo, reused, skipped


def _process_all(todo, cache_dir: Path, config: PreprocessingConfig, entries: Dict[str, CacheEntry],
                 skipped: List[SkippedCase], *, workers: int, skip_invalid: bool, progress: bool,
                 max_foreground_samples: int) -> List[str]:
    """Preprocesses ``todo`` (in ``workers`` threads) into ``entries``; returns the ids
    processed and appends invalid cases to ``skipped`` (or raises without ``skip_invalid``)."""
    bar = None
    if progress and todo:
        import keras  # only for its progress bar; the cache itself needs no TensorFlow

        bar = keras.utils.Progbar(len(todo), unit_name="case")
    processed = []

    def finish(case, result):
        try:
            entry = result()
        except (ValueError, OSError) as exc:
            if not skip_invalid:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("skipping case %s: %s", case.case_id, reason)
            skipped.append(SkippedCase(case.case_id, reason))
        else:
            entries[case.case_id] = entry
            processed.append(case.case_id)
        if bar is not None:
            bar.add(1)

    def process(case, sources):
        return _process_one(case, cache_dir, config, sources, max_foreground_samples)

    if workers == 1:
        for case, sources in todo:
            finish(case, lambda: process(case, sources))
        return processed
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(process, case, sources): case for case, sources in todo}
        try:
            for fut in concurrent.futures.as_completed(futures):
                finish(futures[fut], fut.result)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return processed


def _remove_stale(cache_dir: Path, old_entries: Dict[str, CacheEntry], entries: Dict[str, CacheEntry]) -> None:
    """Deletes the arrays of cases no longer listed (or skipped now)."""
    keep = {f for e in entries.values() for f in (e.image_file, e.label_file, e.foreground_file) if f}
    for old_entry in old_entries.values():
        for f in (old_entry.image_file, old_entry.label_file, old_entry.foreground_file):
            if f and f not in keep and (cache_dir / f).is_file():
                (cache_dir / f).unlink()


def build_cache(
    cases: Sequence,
    cache_dir,
    config: PreprocessingConfig,
    workers: int = 1,
    skip_invalid: bool = False,
    progress: bool = True,
    verify_hashes: bool = False,
    max_foreground_samples: int = 10000,
) -> CacheBuildResult:
    """Validates, preprocesses and stores ``cases``; reuses what is unchanged.

    Args:
        cases: `BratsCase` / `ChaosCase` records (anything with ``case_id``,
            ``source_files()`` and ``load(label_convention)``).
        cache_dir: output folder (created); source folders are only read.
        config: the `PreprocessingConfig`; a different config re-processes every case.
        workers: threads used in parallel (NIfTI decompression and numpy release
            the GIL); 1 processes in this thread.
        skip_invalid: leave invalid cases out (logged, returned in ``skipped``)
            instead of raising.
        progress: show a `keras.utils.Progbar`.
        verify_hashes: re-hash every source even when its size and mtime are unchanged.
        max_foreground_samples: foreground voxels stored per class for over-sampling.

    Returns:
        `CacheBuildResult` with the opened `DataCache` and the processed / reused /
        skipped case ids.
    """
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1. Received: workers={workers!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_cases(cases, config)
    old_entries, reusable = _read_manifest(cache_dir, config)
    entries, todo, reused, skipped = _plan(cases, cache_dir, reusable, verify_hashes, skip_invalid)
    processed = _process_all(todo, cache_dir, config, entries, skipped, workers=int(workers),
                             skip_invalid=skip_invalid, progress=progress,
                             max_foreground_samples=max_foreground_samples)
    ids = [c.case_id for c in cases]
    order = [i for i in ids if i in entries]
    processed = [i for i in order if i in processed]
    skipped.sort(key=lambda s: ids.index(s.case_id))
    _remove_stale(cache_dir, old_entries, entries)
    _write_manifest(cache_dir, config, entries, order)
    return CacheBuildResult(DataCache(cache_dir), processed, reused, skipped)

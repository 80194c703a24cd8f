"""The dataset fingerprint (``missu-keras inspect``): what to know about a dataset before
training on it, as nnU-Net computes it, and every problem found, each naming the case and
the file.

Per dataset: the cases (with / without labels), channels, label convention and the label
values found (per case and in total), shapes, voxel spacings and orientations (nibabel
axis codes) as min / median / max, intensity percentiles per channel over the foreground
(labelled voxels; non-zero voxels where no case has labels). Problems: a missing or
unreadable channel file, shapes or affines that differ between a case's files, NaN / inf
voxels, label values outside the convention, and a spacing that differs from the median
of the dataset by more than `SPACING_RTOL` on some axis.

NumPy and nibabel only (no TensorFlow), so it is quick to run.

>>> import tempfile
>>> from missu_keras.data.synthetic import write_synthetic_nnunet
>>> root = write_synthetic_nnunet(tempfile.mkdtemp() + "/Dataset001_Synth", num_cases=2,
...                               num_test=1, shape=(24, 24, 16))
>>> fp = dataset_fingerprint(root)
>>> fp["layout"], fp["num_cases"], fp["num_labelled"], fp["channels"]
('nnunet', 3, 2, ['flair', 't1ce', 't1', 't2'])
>>> fp["labels_found"]["total"], fp["spacing"]["median"], fp["orientation"], fp["problems"]
([0, 1, 2, 3], [1.0, 1.0, 1.0], {'LPS': 3}, [])
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import nibabel
import numpy as np

from missu_keras.data.datasets import detect_layout, find_cases
from missu_keras.data.io import check_finite, read_nifti_data, read_nifti_header
from missu_keras.data.validation import check_same_geometry, spacing_from_affine
from missu_keras.files import write_json_atomic
from missu_keras.labels import get_label_convention

SPACING_RTOL = 0.1
"""A case's spacing is a problem when it differs from the median by more than this (10 %)."""
SAMPLES_PER_CASE = 10000
PERCENTILES = (0.5, 50.0, 99.5)


def _channel_files(case) -> List[tuple]:
    """``(channel name, path, index on the last axis or None)`` of a NIfTI case."""
    if hasattr(case, "channel_indices"):
        return [(n, Path(case.image_path), i) for n, i in zip(case.channel_names, case.channel_indices)]
    return [(n, Path(p), None) for n, p in case.image_paths.items()]


class _CaseReport:
    """What one case contributes: its summary row, its problems, its intensity samples."""

    def __init__(self, case, rng):
        self.case, self.rng = case, rng
        self.row: Dict[str, object] = {"case": case.case_id, "labelled": case.has_seg}
        self.problems: List[dict] = []
        self.samples: Dict[str, np.ndarray] = {}

    def problem(self, path, text: str) -> None:
        """Records a problem of this case, naming the file (``None``: the case as a whole)."""
        self.problems.append({"case": self.case.case_id, "file": str(path) if path else None,
                              "problem": text})

    def read(self, conv) -> "_CaseReport":
        """Reads the case's files one by one, recording every problem instead of
        stopping at the first (as loading a case for training does)."""
        channels = _channel_files(self.case)
        headers, ref = {}, None
        for name, path, index in channels:
            if path in headers:
                continue
            try:
                headers[path] = read_nifti_header(path, channels=index is not None)
                shape, affine, _ = headers[path]
                if index is not None and index >= shape[3]:
                    raise ValueError(f"{path}: channel {name!r} is index {index} on the last axis, "
                                     f"but the image has {shape[3]} channel(s)")
                if ref is None:
                    ref = (path, shape[:3], affine)
                check_same_geometry(ref[0], ref[1], ref[2], path, shape[:3], affine)
            except FileNotFoundError:
                self.problem(path, f"missing channel file: channel {name!r} not found")
            except ValueError as exc:
                self.problem(path, str(exc))
        if ref is None:
            return self
        self._geometry(ref)
        images = self._images(channels, headers)
        labels = self._labels(ref, conv)
        self._sample(images, labels)
        return self

    def _geometry(self, ref) -> None:
        _, shape, affine = ref
        # Axis codes as geometry.axis_codes gives them (that module loads TensorFlow).
        self.row.update(shape=[int(s) for s in shape],
                        spacing=[round(s, 5) for s in spacing_from_affine(affine)],
                        orientation="".join(nibabel.aff2axcodes(affine)))

    def _images(self, channels, headers) -> Dict[str, np.ndarray]:
        data, images = {}, {}
        for name, path, index in channels:
            if path not in headers:
                continue
            if path not in data:
                shape, _, img = headers[path]
                try:
                    data[path] = read_nifti_data(path, img, shape, np.float32)
                    check_finite(data[path], path)
                except ValueError as exc:
                    self.problem(path, str(exc))
                    data[path] = np.nan_to_num(data.get(path, np.zeros(shape, np.float32)))
            images[name] = data[path] if index is None else data[path][..., index]
        return images

    def _labels(self, ref, conv) -> Optional[np.ndarray]:
        seg = getattr(self.case, "seg_path", None)
        if seg is None:
            return None
        try:
            shape, affine, img = read_nifti_header(seg)
            check_same_geometry(ref[0], ref[1], ref[2], seg, shape, affine)
            labels = np.asarray(read_nifti_data(Path(seg), img, shape, None))
        except (ValueError, OSError) as exc:
            self.problem(seg, str(exc))
            return None
        values = np.unique(labels)
        found = [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]
        self.row["labels"] = found
        unexpected = [v for v in found if v not in conv.labels]
        if unexpected:
            self.problem(seg, f"unexpected label value(s) {unexpected}: expected only "
                              f"{list(conv.labels)} ({conv.name} convention)")
        return labels

    def _sample(self, images, labels) -> None:
        if not images:
            return
        first = next(iter(images.values()))
        mask = labels > 0 if labels is not None and labels.shape == first.shape[:3] else None
        self.row["foreground"] = "labels" if mask is not None else "non-zero"
        if mask is None:
            mask = np.any(np.stack([im != 0 for im in images.values()]), axis=0)
        idx = np.flatnonzero(mask)
        if idx.size > SAMPLES_PER_CASE:
            idx = np.sort(self.rng.choice(idx, SAMPLES_PER_CASE, replace=False))
        self.samples = {n: im.reshape(-1)[idx] for n, im in images.items()}


def _stats(rows: List[dict], key: str) -> Optional[dict]:
    values = np.asarray([r[key] for r in rows if key in r], float)
    if not values.size:
        return None
    return {"min": values.min(0).tolist(), "median": np.median(values, 0).tolist(),
            "max": values.max(0).tolist()}


def _spacing_outliers(reports: List[_CaseReport], median) -> List[dict]:
    problems = []
    for rep in reports:
        spacing = rep.row.get("spacing")
        if spacing is None:
            continue
        if np.any(np.abs(np.asarray(spacing) - median) > SPACING_RTOL * np.asarray(median)):
            _, path, _ = _channel_files(rep.case)[0]
            problems.append({"case": rep.case.case_id, "file": str(path),
                             "problem": f"spacing {spacing} mm differs from the dataset's median "
                                        f"{[round(m, 5) for m in median]} by more than "
                                        f"{SPACING_RTOL:.0%}"})
    return problems


def _intensities(reports: List[_CaseReport], channels) -> dict:
    out = {}
    for name in channels:
        pooled = [r.samples[name] for r in reports if name in r.samples and r.samples[name].size]
        if not pooled:
            continue
        values = np.concatenate(pooled).astype(np.float64)
        pct = np.percentile(values, PERCENTILES)
        out[name] = {**{f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
                     "mean": float(values.mean()), "std": float(values.std()),
                     "min": float(values.min()), "max": float(values.max())}
    return out


def dataset_fingerprint(root, layout: str = "auto", sequence: str = "T1DUAL", seed: int = 0) -> dict:
    """The fingerprint of the dataset under ``root`` (see the module docstring) as a
    JSON-safe dict. Training and test cases of Decathlon / nnU-Net datasets both count.
    CHAOS (DICOM) cases are read through their reader and reported as loaded."""
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    cases = find_cases(root, layout=layout, sequence=sequence, subset="all")
    rng = np.random.default_rng(seed)
    reports = [_read_case(case, rng) for case in cases]
    rows = [r.row for r in reports]
    conv = get_label_convention(cases[0].label_convention)
    spacing = _stats(rows, "spacing")
    problems = [p for r in reports for p in r.problems]
    if spacing is not None:
        problems += _spacing_outliers(reports, np.asarray(spacing["median"]))
    total = sorted({v for r in rows for v in r.get("labels", [])})
    return {
        "root": str(root), "layout": layout, "num_cases": len(cases),
        "num_labelled": sum(c.has_seg for c in cases),
        "num_unlabelled": sum(not c.has_seg for c in cases),
        "channels": list(cases[0].channel_names), "label_convention": conv.to_dict(),
        "labels_found": {"total": total, "per_case": {r["case"]: r.get("labels") for r in rows if r["labelled"]}},
        "shape": _stats(rows, "shape"), "spacing": spacing,
        "orientation": dict(sorted(Counter(r["orientation"] for r in rows if "orientation" in r).items())),
        "intensity": _intensities(reports, cases[0].channel_names),
        "cases": rows, "problems": problems,
    }


def _read_case(case, rng) -> _CaseReport:
    report = _CaseReport(case, rng)
    conv = get_label_convention(case.label_convention)
    if hasattr(case, "image_paths") or hasattr(case, "channel_indices"):
        return report.read(conv)
    try:  # CHAOS DICOM: through its reader
        loaded = case.load()
    except (ValueError, OSError) as exc:
        report.problem(None, str(exc))
        return report
    report._geometry((None, loaded.image.shape[:3], loaded.affine))
    if loaded.labels is not None:
        report.row["labels"] = np.unique(loaded.labels).astype(int).tolist()
    report._sample({n: loaded.image[..., c] for c, n in enumerate(loaded.channel_names)}, loaded.labels)
    return report


def _triple(values, fmt: str) -> str:
    return "x".join(format(v, fmt) for v in values)


def format_fingerprint(fp: dict) -> str:
    """The fingerprint as a readable table (what ``missu-keras inspect`` prints)."""
    conv = fp["label_convention"]
    lines = [f"dataset      {fp['root']} (layout {fp['layout']})",
             f"cases        {fp['num_cases']} ({fp['num_labelled']} with labels, "
             f"{fp['num_unlabelled']} without)",
             f"channels     {', '.join(fp['channels'])}",
             f"labels       {conv['name']}: {conv['labels']}; regions "
             + ", ".join(f"{k} {v}" for k, v in conv["regions"].items()),
             f"labels found {fp['labels_found']['total']}",
             f"{'':12} {'min':>18} {'median':>18} {'max':>18}"]
    for key, fmt in (("shape", "d"), ("spacing", ".3g")):
        if fp[key]:
            stats = fp[key]
            fmt_ = ".0f" if key == "shape" else fmt
            lines.append(f"{key:12} " + " ".join(f"{_triple(stats[k], fmt_):>18}" for k in ("min", "median", "max")))
    lines.append("orientation  " + ", ".join(f"{k}: {v}" for k, v in fp["orientation"].items()))
    if fp["intensity"]:
        lines.append(f"intensity    {'p0.5':>10} {'p50':>10} {'p99.5':>10} {'mean':>10} {'std':>10}"
                     "  (over the foreground)")
        for name, s in fp["intensity"].items():
            lines.append(f"  {name:10} " + " ".join(f"{s[k]:10.4g}" for k in ("p0.5", "p50", "p99.5", "mean", "std")))
    lines.append(f"problems     {len(fp['problems']) or 'none'}")
    for p in fp["problems"]:
        lines.append(f"  case {p['case']}: {p['file'] or ''}: {p['problem']}")
    return "\n".join(lines)


def write_fingerprint(fp: dict, path) -> Path:
    """Writes the fingerprint as JSON, atomically; returns the path."""
    return write_json_atomic(path, fp)


__all__ = ["dataset_fingerprint", "format_fingerprint", "write_fingerprint"]

"""``report.html``: one self-contained page of a scored set of cases (``evaluate`` and
``score`` write it beside ``cases.csv``), and `view_case` (``missu-keras view``) for one case.

The page needs no network: CSS and the sorting script are inline, images are PNG data
URIs (encoded with ``tf.io.encode_png``: TensorFlow is a core dependency and is already
loaded by every command that writes a report, where Pillow is only in the ``chaos``
extra), and the box plots are inline SVG generated here. It holds:

- the summary table (``summary.json``) and the scoring convention (``convention.txt``);
- the per-case table, every column of ``cases.csv``, sorted by clicking any header;
- one box-plot figure per region: a panel per metric column ``<region>_<metric>``
  present in the rows (Dice, HD95, ..., any new column), Tukey whiskers (1.5 IQR);
- for the best, median and worst case by mean Dice over the regions, three planes
  (axial, coronal, sagittal) through the centre of the ground truth's foreground (the
  prediction's when the ground truth is empty): one image channel (FLAIR when there is
  one) windowed to the 0.5-99.5 percentiles of the planes' non-zero pixels, the
  prediction as translucent fills and
  the ground truth as outlines, one colour per label.

Only the 2-D slices of a case are kept (`CaseView`, a few kilobytes), so a long
evaluation never holds its volumes in memory. Planes are shown after reorienting the
volume to RAS with nibabel, in the radiological convention (the patient's right on the
image's left; anterior / superior up), each pixel scaled to its size in mm.

>>> import numpy as np
>>> gt = np.zeros((8, 8, 8), np.uint8); gt[2:5, 3:6, 4:7] = 1
>>> view = case_view("case_1", pred=gt, gt=gt, spacing=(1.0, 1.0, 2.0))
>>> view.centre, sorted(view.planes)
((3, 4, 5), ['axial', 'coronal', 'sagittal'])
>>> view.planes["coronal"].pixel_mm  # rows: superior-inferior, columns: right-left
(2.0, 1.0)
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import nibabel.orientations as orientations
import numpy as np
import tensorflow as tf
from scipy import ndimage

from missu_keras.data.datasets import find_cases
from missu_keras.data.io import is_nifti, read_nifti, strip_nifti_suffix
from missu_keras.files import prepare_output_dir, refuse_existing, write_text_atomic
from missu_keras.labels import convert_labels, get_label_convention
from missu_keras.metrics import CONVENTION, score_case, summarize
from missu_keras.version import __version__

REPORT_FILE = "report.html"
PLANES = ("axial", "coronal", "sagittal")
# Names of the image channel shown under the overlays, by preference (BraTS 2021 and
# 2023 names, CHAOS' first channel otherwise).
DISPLAY_CHANNELS = ("flair", "t2f")
# Intensity window: these percentiles of the channel's non-zero voxels map to black / white.
WINDOW_PERCENTILES = (0.5, 99.5)
# Overlay images are scaled so that their longer side has about this many pixels.
OVERLAY_PIXELS = 300
FILL_ALPHA = 0.45
# One colour per training class 1, 2, ... (class 0, background, is not drawn).
LABEL_COLOURS = ((230, 40, 40), (60, 200, 60), (255, 215, 0), (40, 120, 255),
                 (200, 60, 220), (255, 140, 0), (0, 210, 210), (255, 105, 180))
# Tukey's box-plot whiskers: the most extreme values within this many IQRs of the box.
WHISKER_IQR = 1.5
# Image files that can sit beside a case's segmentation (BraTS layouts), by preference.
_IMAGE_SUFFIXES = tuple(sep + name for name in DISPLAY_CHANNELS for sep in ("_", "-"))


# ------------------------------------------------------------------ slices of a case --


@dataclasses.dataclass
class PlaneSlice:
    """One plane through a case, as shown: rows top to bottom, columns left to right.

    Attributes:
        image: windowed intensities, uint8, or ``None`` (no image: labels only).
        gt, pred: dataset labels, or ``None`` for a case without ground truth.
        pixel_mm: ``(row height, column width)`` in mm.
        index: the slice's index along the plane's normal in the RAS-oriented volume.
    """

    image: Optional[np.ndarray]
    gt: Optional[np.ndarray]
    pred: np.ndarray
    pixel_mm: Tuple[float, float]
    index: int


@dataclasses.dataclass
class CaseView:
    """What a report keeps of one case: three `PlaneSlice` through ``centre`` (voxel
    indices in the file's own grid) and the name of the image channel shown."""

    case_id: str
    centre: Tuple[int, int, int]
    planes: Dict[str, PlaneSlice]
    image_name: Optional[str] = None


def choose_centre(gt: Optional[np.ndarray], pred: np.ndarray) -> Tuple[int, int, int]:
    """The voxel the three planes go through: the centre of mass of the ground truth's
    foreground, else of the prediction's, else the centre of the volume.

    >>> pred = np.zeros((10, 10, 10)); pred[6:9, 0:2, 4] = 2
    >>> choose_centre(None, pred), choose_centre(np.zeros((10, 10, 10)), 0 * pred)
    ((7, 0, 4), (4, 4, 4))
    """
    for labels in (gt, pred):
        if labels is not None and np.any(labels):
            return tuple(int(round(c)) for c in ndimage.center_of_mass(np.asarray(labels) > 0))
    return tuple((n - 1) // 2 for n in np.shape(pred)[:3])


def display_channel(channel_names: Sequence[str]) -> int:
    """The channel a report shows: FLAIR (``flair`` / ``t2f``) when there is one, else
    the first.

    >>> display_channel(("t1ce", "t1", "FLAIR")), display_channel(("in_phase", "out_phase"))
    (2, 0)
    """
    names = [str(n).lower() for n in channel_names]
    for wanted in DISPLAY_CHANNELS:
        if wanted in names:
            return names.index(wanted)
    return 0


def window(*images: np.ndarray) -> Tuple[float, float]:
    """``(low, high)`` intensities mapped to black and white: `WINDOW_PERCENTILES` of
    the non-zero pixels of ``images`` together (of every pixel when all are zero).

    >>> window(np.zeros(50), np.arange(1.0, 101.0))
    (1.495, 99.505)
    """
    values = np.concatenate([np.ravel(np.asarray(i, np.float64)) for i in images])
    values = values[values != 0] if np.any(values) else values
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    return float(low), float(high)


def _windowed(images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The planes of one case as uint8 with one `window` over all of them."""
    low, high = window(*images)
    scale = 255.0 / max(high - low, 1e-6)
    return [(np.clip((i.astype(np.float32) - low) * scale, 0, 255)).round().astype(np.uint8)
            for i in images]


def _to_ras(volume: Optional[np.ndarray], ornt: np.ndarray) -> Optional[np.ndarray]:
    return None if volume is None else orientations.apply_orientation(np.asarray(volume), ornt)


def _plane(volume: Optional[np.ndarray], plane: str, index: int) -> Optional[np.ndarray]:
    """One plane of a RAS volume, oriented for display (radiological; anterior / superior
    up; in the sagittal plane anterior on the left)."""
    if volume is None:
        return None
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    cut = np.take(volume, index, axis=axis)
    return np.ascontiguousarray(cut.T[::-1, ::-1])


def case_view(case_id: str, pred, gt=None, image=None, affine=None, spacing=None,
              image_name: Optional[str] = None) -> CaseView:
    """The `CaseView` of one case: three planes through `choose_centre`.

    Args:
        case_id: the case's name.
        pred: predicted dataset labels ``(H, W, D)``.
        gt: ground-truth labels on the same grid, or ``None``.
        image: one intensity channel ``(H, W, D)``, or ``None``; the three planes are
            windowed together (`window`).
        affine: the grid's voxel-to-world matrix (orients the planes; default: the
            voxel axes are taken as RAS, scaled by ``spacing``).
        spacing: voxel size in mm (default: from ``affine``, else 1 mm).
        image_name: the channel's name, shown on the page.
    """
    pred = np.asarray(pred)
    for name, other in (("ground truth", gt), ("image", image)):
        if other is not None and np.shape(other)[:3] != pred.shape[:3]:
            raise ValueError(f"case {case_id!r}: the {name} has shape {np.shape(other)} but the "
                             f"prediction {pred.shape}; expected the same grid")
    if affine is None:
        affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
    if spacing is None:
        spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ornt = orientations.io_orientation(np.asarray(affine))
    centre = choose_centre(gt, pred)
    ras_centre, ras_spacing = [0, 0, 0], [1.0, 1.0, 1.0]
    for axis, (new_axis, flip) in enumerate(ornt.astype(int)):
        ras_centre[new_axis] = pred.shape[axis] - 1 - centre[axis] if flip < 0 else centre[axis]
        ras_spacing[new_axis] = float(spacing[axis])
    volumes = [_to_ras(v, ornt) for v in (image, gt, pred)]  # views: nothing copied
    x, y, z = ras_spacing
    normal = {"axial": (2, (y, x)), "coronal": (1, (z, x)), "sagittal": (0, (z, y))}
    cuts = {p: [_plane(v, p, ras_centre[normal[p][0]]) for v in volumes] for p in PLANES}
    if image is not None:  # the window of the three planes shown: no pass over the volume
        for cut, shown in zip(cuts.values(), _windowed([c[0] for c in cuts.values()])):
            cut[0] = shown
    planes = {p: PlaneSlice(*cuts[p], normal[p][1], ras_centre[normal[p][0]]) for p in PLANES}
    return CaseView(case_id, tuple(centre), planes, image_name)


def loaded_case_view(loaded, pred_labels) -> CaseView:
    """`case_view` of a loaded case (`missu_keras.data.validation.LoadedCase`: its
    labels as ground truth, its FLAIR or first channel as the image) and a prediction."""
    channel = display_channel(loaded.channel_names)
    return case_view(loaded.case_id, pred_labels, gt=loaded.labels,
                     image=loaded.image[..., channel], affine=loaded.affine,
                     spacing=loaded.spacing, image_name=loaded.channel_names[channel])


def find_display_image(seg_path, case_id: str) -> Optional[Path]:
    """The FLAIR beside a case's segmentation in a BraTS layout (``<case>_flair.nii.gz``,
    ``<case>-t2f.nii.gz``, ``.nii`` too), or ``None``: ``score`` shows it under its
    overlays."""
    folder = Path(seg_path).parent
    for suffix in _IMAGE_SUFFIXES:
        for ext in (".nii.gz", ".nii"):
            path = folder / f"{case_id}{suffix}{ext}"
            if path.is_file():
                return path
    return None


# ------------------------------------------------------------------------ overlays --


def _resize_nearest(array: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    rows = (np.arange(shape[0]) * array.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * array.shape[1]) // shape[1]
    return array[rows[:, None], cols[None, :]]


def overlay_shape(plane: PlaneSlice) -> Tuple[int, int]:
    """Pixels of the drawn plane: its size in mm, scaled so that the longer side has
    about `OVERLAY_PIXELS` pixels (never fewer pixels than voxels).

    >>> overlay_shape(PlaneSlice(None, None, np.zeros((155, 240)), (1.0, 1.0), 0))
    (194, 300)
    >>> overlay_shape(PlaneSlice(None, None, np.zeros((10, 40)), (2.0, 1.0), 0))
    (150, 300)
    """
    rows, cols = plane.pred.shape
    height, width = rows * plane.pixel_mm[0], cols * plane.pixel_mm[1]
    scale = OVERLAY_PIXELS / max(height, width)
    return max(rows, int(round(height * scale))), max(cols, int(round(width * scale)))


def label_colour(class_index: int) -> Tuple[int, int, int]:
    """The colour of training class ``class_index`` (1, 2, ...) in every overlay."""
    return LABEL_COLOURS[(class_index - 1) % len(LABEL_COLOURS)]


def overlay_rgb(plane: PlaneSlice, convention) -> np.ndarray:
    """The plane as an RGB uint8 image (`overlay_shape`): the image in grey (dark grey
    without one), each predicted label filled with its colour at `FILL_ALPHA`, each
    ground-truth label outlined (2 pixels) in its colour."""
    conv = get_label_convention(convention)
    shape = overlay_shape(plane)
    grey = (np.full(plane.pred.shape, 40, np.uint8) if plane.image is None else plane.image)
    rgb = np.repeat(_resize_nearest(grey, shape)[..., None], 3, axis=-1).astype(np.float32)
    pred = _resize_nearest(plane.pred, shape)
    gt = None if plane.gt is None else _resize_nearest(plane.gt, shape)
    for cls, label in enumerate(conv.labels[1:], start=1):
        colour = np.asarray(label_colour(cls), np.float32)
        fill = pred == label
        rgb[fill] = (1 - FILL_ALPHA) * rgb[fill] + FILL_ALPHA * colour
        if gt is not None:
            mask = gt == label
            rgb[mask & ~ndimage.binary_erosion(mask, iterations=2)] = colour
    return rgb.round().astype(np.uint8)


def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an RGB (or grey) uint8 image."""
    array = np.asarray(rgb, np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    png = tf.io.encode_png(array).numpy()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------- the numbers --


def _number(value) -> Optional[float]:
    """A cell as a finite float, else ``None`` (text, empty, NaN)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_columns(rows: Sequence[Mapping], regions: Sequence[str]
                   ) -> Dict[str, Dict[str, List[Tuple[str, float]]]]:
    """``{region: {metric: [(case, value), ...]}}`` of every numeric column
    ``<region>_<metric>`` in ``rows`` (a column belongs to the longest region name it
    starts with), in column order; cells that are not finite numbers are left out.

    >>> rows = [{"case": "a", "WT_dice": 0.5, "WT_lesion_dice": "0.25", "ET_hd95": 3.0, "fold": 0}]
    >>> metric_columns(rows, ["WT", "ET"])
    {'WT': {'dice': [('a', 0.5)], 'lesion_dice': [('a', 0.25)]}, 'ET': {'hd95': [('a', 3.0)]}}
    """
    by_length = sorted(regions, key=len, reverse=True)
    found: Dict[str, Dict[str, List[Tuple[str, float]]]] = {r: {} for r in regions}
    for column in _columns(rows):
        region = next((r for r in by_length if column.startswith(f"{r}_")), None)
        if region is None:
            continue
        values = [(str(row.get("case", i)), _number(row.get(column))) for i, row in enumerate(rows)]
        values = [(case, v) for case, v in values if v is not None]
        if values:
            found[region][column[len(region) + 1:]] = values
    return {r: m for r, m in found.items() if m}


def _columns(rows: Sequence[Mapping]) -> List[str]:
    """Every key of ``rows``, in order of first appearance, ``case`` first."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return (["case"] if "case" in columns else []) + [c for c in columns if c != "case"]


def mean_dice(row: Mapping, regions: Sequence[str]) -> float:
    """The mean of a row's ``<region>_dice`` over ``regions`` (NaN without any).

    >>> mean_dice({"WT_dice": 0.9, "TC_dice": "0.7", "WT_lesion_dice": 0.1}, ["WT", "TC", "ET"])
    0.8
    """
    values = [_number(row.get(f"{r}_dice")) for r in regions]
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 12) if values else math.nan


def pick_cases(rows: Sequence[Mapping], regions: Sequence[str]) -> List[Tuple[str, str, float]]:
    """``[(rank, case, mean Dice)]`` for the best, median and worst case by `mean_dice`
    (ties broken by case name); a case holding several ranks is listed once, its ranks
    joined ("median, worst").

    >>> rows = [{"case": c, "WT_dice": d} for c, d in (("a", 0.2), ("b", 0.9), ("c", 0.5))]
    >>> pick_cases(rows, ["WT"])
    [('best', 'b', 0.9), ('median', 'c', 0.5), ('worst', 'a', 0.2)]
    >>> pick_cases(rows[:1], ["WT"])
    [('best, median, worst', 'a', 0.2)]
    """
    scored = [(mean_dice(r, regions), str(r["case"])) for r in rows]
    scored = sorted((d, c) for d, c in scored if not math.isnan(d))
    if not scored:
        return []
    chosen = {"best": scored[-1], "median": scored[(len(scored) - 1) // 2], "worst": scored[0]}
    picked: Dict[str, List[str]] = {}
    for rank, (_, case) in chosen.items():
        picked.setdefault(case, []).append(rank)
    by_case = {c: d for d, c in scored}
    return [(", ".join(ranks), case, by_case[case]) for case, ranks in picked.items()]


def box_stats(values: Sequence[float]) -> Dict[str, object]:
    """Tukey box-plot numbers: quartiles (numpy's linear percentiles), whiskers at the
    most extreme values within `WHISKER_IQR` IQRs of the box, and the outliers beyond.

    >>> stats = box_stats([1, 2, 3, 4, 5, 6, 7, 8, 100])
    >>> stats["q1"], stats["median"], stats["q3"], stats["low"], stats["high"], stats["outliers"]
    (3.0, 5.0, 7.0, 1.0, 8.0, [100.0])
    """
    values = np.sort(np.asarray(values, np.float64))
    if values.size == 0:
        raise ValueError("box_stats needs at least one value; received none")
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    reach = WHISKER_IQR * (q3 - q1)
    inside = values[(values >= q1 - reach) & (values <= q3 + reach)]
    return {"q1": q1, "median": median, "q3": q3, "low": float(inside.min()),
            "high": float(inside.max()), "n": int(values.size),
            "outliers": [float(v) for v in values if v < inside.min() or v > inside.max()]}


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 4, 5 or 10 times a power of ten that is >= ``value`` > 0
    (the top of a box-plot axis, halved for its middle tick).

    >>> nice_ceiling(2.449), nice_ceiling(373.13), nice_ceiling(17), nice_ceiling(0.3)
    (2.5, 400.0, 20.0, 0.4)
    """
    power = 10.0 ** math.floor(math.log10(value))
    return next(round(m * power, 12) for m in (1, 2, 2.5, 4, 5, 10) if m * power >= value * (1 - 1e-12))


def axis_range(values: Sequence[float]) -> Tuple[float, float]:
    """The y range of a box-plot panel: [0, 1] when every value lies in it (Dice,
    sensitivity, ...), else from min(0, smallest) to `nice_ceiling` of the largest.

    >>> axis_range([0.2, 0.9]), axis_range([0.0, 373.13]), axis_range([-3.0, -1.0])
    ((0.0, 1.0), (0.0, 400.0), (-3.0, 0.0))
    """
    low, high = min(0.0, float(min(values))), float(max(values))
    if low >= 0 and high <= 1:
        return 0.0, 1.0
    return low, nice_ceiling(high) if high > 0 else 0.0


# ---------------------------------------------------------------------- SVG and HTML --

_PANEL = dict(width=118, height=210, left=46, top=26, bottom=12, box=30)


def _fmt(value: float) -> str:
    """A number as the page shows it (4 significant digits)."""
    return f"{value:.4g}"


def _y(value: float, lo: float, hi: float) -> float:
    top, plot = _PANEL["top"], _PANEL["height"] - _PANEL["top"] - _PANEL["bottom"]
    return round(top + (1.0 - (value - lo) / (hi - lo)) * plot, 2)


def _panel_svg(metric: str, values: Sequence[Tuple[str, float]], x0: float) -> List[str]:
    """One metric's box plot, its axis and its points (one per case, named on hover)."""
    numbers = [v for _, v in values]
    stats, (lo, hi) = box_stats(numbers), axis_range(numbers)
    cx, half = x0 + _PANEL["left"] + (_PANEL["width"] - _PANEL["left"]) / 2, _PANEL["box"] / 2
    axis_x = x0 + _PANEL["left"] - 6
    y = lambda v: _y(v, lo, hi)  # noqa: E731
    parts = [f'<g class="panel" data-metric="{html.escape(metric)}" data-low="{lo}" data-high="{hi}">',
             f'<text x="{cx}" y="14" class="title">{html.escape(metric)}</text>',
             f'<line class="axis" x1="{axis_x}" x2="{axis_x}" y1="{y(hi)}" y2="{y(lo)}"/>']
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{axis_x - 3}" y="{y(tick) + 3}" class="tick">{_fmt(tick)}</text>')
    parts += [
        f'<line class="whisker" x1="{cx}" x2="{cx}" y1="{y(stats["high"])}" y2="{y(stats["low"])}"/>',
        f'<rect class="box" x="{cx - half}" width="{2 * half}" y="{y(stats["q3"])}" '
        f'height="{round(y(stats["q1"]) - y(stats["q3"]), 2)}" data-q1="{stats["q1"]}" '
        f'data-q3="{stats["q3"]}"/>',
        f'<line class="median" x1="{cx - half}" x2="{cx + half}" y1="{y(stats["median"])}" '
        f'y2="{y(stats["median"])}" data-value="{stats["median"]}"/>']
    for i, (case, value) in enumerate(values):
        jitter = ((i * 7919) % 13 - 6) * half / 8
        parts.append(f'<circle class="case" cx="{round(cx + jitter, 2)}" cy="{y(value)}" r="2.6" '
                     f'data-value="{value}"><title>{html.escape(case)}: {_fmt(value)}</title></circle>')
    return parts + ["</g>"]


def box_plot_svg(region: str, metrics: Mapping[str, Sequence[Tuple[str, float]]]) -> str:
    """One region's figure: a panel per metric (`box_stats`, each with its own axis:
    `axis_range`), every case a point named on hover.

    >>> svg = box_plot_svg("WT", {"dice": [("a", 0.5), ("b", 1.0)]})
    >>> svg.startswith('<svg class="boxplot" data-region="WT"'), 'data-value="0.75"' in svg
    (True, True)
    """
    width = _PANEL["width"] * len(metrics)
    parts = [f'<svg class="boxplot" data-region="{html.escape(region)}" width="{width}" '
             f'height="{_PANEL["height"]}" viewBox="0 0 {width} {_PANEL["height"]}" role="img">',
             f'<title>{html.escape(region)}: one box per metric over cases</title>']
    for i, (metric, values) in enumerate(metrics.items()):
        parts += _panel_svg(metric, values, i * _PANEL["width"])
    return "\n".join(parts + ["</svg>"])


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
.scroll { max-height: 480px; overflow: auto; display: inline-block; max-width: 100%; }
pre { background: #f7f7f7; padding: 10px; font-size: 12px; white-space: pre-wrap; }
figure.region { display: inline-block; margin: 6px 14px 6px 0; vertical-align: top; }
figure.region figcaption, .case h3 { font-weight: bold; }
svg.boxplot text { font-size: 10px; fill: #333; }
svg.boxplot text.title { text-anchor: middle; font-size: 11px; font-weight: bold; }
svg.boxplot text.tick { text-anchor: end; }
svg.boxplot .axis { stroke: #888; } svg.boxplot .whisker { stroke: #555; }
svg.boxplot .box { fill: #cfe0f5; stroke: #356; } svg.boxplot .median { stroke: #c00; stroke-width: 2; }
svg.boxplot .case { fill: #222; fill-opacity: 0.55; }
.planes { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
.planes figure { margin: 0; } .planes figcaption { font-size: 12px; color: #444; }
.planes img { image-rendering: pixelated; border: 1px solid #999; background: #000; }
.legend { font-size: 13px; margin: 6px 0; }
.legend span.swatch { display: inline-block; width: 14px; height: 14px; margin: 0 4px 0 12px;
  vertical-align: middle; }
.note { color: #555; font-size: 13px; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell(value) -> str:
    number = _number(value)
    if number is None or isinstance(value, str) and not value.strip():
        text = "" if value is None else str(value)
        return f'<td data-sort="{html.escape(text)}">{html.escape(text)}</td>'
    shown = str(value) if float(number).is_integer() and not isinstance(value, float) else _fmt(number)
    return f'<td data-sort="{number!r}">{html.escape(shown)}</td>'


def cases_table(rows: Sequence[Mapping]) -> str:
    """The per-case table: every column of the rows, one ``<tr>`` per case, each cell's
    number in ``data-sort`` (the page's script sorts by it when a header is clicked)."""
    columns = _columns(rows)
    head = "".join(f'<th title="sort by {html.escape(c)}">{html.escape(c)}</th>' for c in columns)
    body = "\n".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table id="cases" class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def summary_table(summary: Mapping) -> str:
    """``summary.json`` as a table: a row per region, ``mean ± std (median)`` per metric
    (entries that are not ``{metric: {mean, std, median}}``, e.g. ``skipped``, are left out)."""
    regions = {r: m for r, m in summary.items() if isinstance(m, Mapping)
               and m and all(isinstance(s, Mapping) and "mean" in s for s in m.values())}
    metrics = list(dict.fromkeys(k for m in regions.values() for k in m))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["region"] + metrics)
    lines = []
    for region, values in regions.items():
        cells = [f"<td>{html.escape(region)}</td>"]
        for metric in metrics:
            s = values.get(metric)
            text = "-" if s is None else f"{_fmt(s['mean'])} ± {_fmt(s['std'])} ({_fmt(s['median'])})"
            cells.append(f"<td>{html.escape(text)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody>'
            '</table><p class="note">mean ± std (median) over cases; distances in mm.</p>')


def case_scores_table(row: Mapping, regions: Sequence[str]) -> str:
    """One case's scores as a table: a row per region, a column per metric."""
    columns = metric_columns([row], regions)
    metrics = list(dict.fromkeys(m for values in columns.values() for m in values))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["region"] + metrics)
    lines = []
    for region, values in columns.items():
        cells = [_cell(values[m][0][1]) if m in values else "<td>-</td>" for m in metrics]
        lines.append(f"<tr><td>{html.escape(region)}</td>{''.join(cells)}</tr>")
    shown = {f"{r}_{m}" for r, values in columns.items() for m in values} | {"case"}
    others = "; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in row.items() if k not in shown)
    return (f'<table id="scores"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
            + (f'<p class="note">{others}</p>' if others else ""))


def legend_html(convention, with_gt: bool = True) -> str:
    """The colours of the overlays: one per label, named with the regions it is in."""
    conv = get_label_convention(convention)
    entries = []
    for cls, label in enumerate(conv.labels[1:], start=1):
        regions = [r for r, members in conv.regions.items() if label in members]
        colour = "rgb({},{},{})".format(*label_colour(cls))
        entries.append(f'<span class="swatch" style="background:{colour}"></span>label {label}'
                       + (f" ({', '.join(html.escape(r) for r in regions)})" if regions else ""))
    how = ("fill: prediction; outline: ground truth" if with_gt
           else "fill: prediction (no ground truth)")
    return f'<div class="legend">{how}.{"".join(entries)}</div>'


def overlay_html(view: CaseView, convention, caption: str) -> str:
    """One case's three planes as PNG ``<img>`` (data URIs), with a caption and legend."""
    figures = []
    for name, plane in view.planes.items():
        rgb = overlay_rgb(plane, convention)
        figures.append(
            f'<figure><img src="{png_data_uri(rgb)}" width="{rgb.shape[1]}" height="{rgb.shape[0]}" '
            f'alt="{html.escape(view.case_id)} {name}" data-plane="{name}">'
            f"<figcaption>{name}</figcaption></figure>")
    with_gt = any(p.gt is not None for p in view.planes.values())
    image = f"image: {html.escape(view.image_name)}" if view.image_name else "no image"
    return (f'<div class="case" data-case="{html.escape(view.case_id)}"><h3>{html.escape(caption)}</h3>'
            f'<p class="note">planes through voxel {view.centre} of the file; {image}; '
            "radiological view (the patient's right on the left)</p>"
            f'<div class="planes">{"".join(figures)}</div>{legend_html(convention, with_gt)}</div>')


def _regions(convention, rows: Sequence[Mapping]) -> List[str]:
    """The convention's regions, else those named by ``<region>_dice`` columns."""
    if convention is not None:
        return list(get_label_convention(convention).regions)
    return [c[: -len("_dice")] for c in _columns(rows) if c.endswith("_dice")]


def _overlays_section(rows, views: Mapping[str, CaseView], convention, regions) -> str:
    if len(rows) == 1 and str(rows[0].get("case")) in views:  # one case (view): always drawn
        case = str(rows[0]["case"])
        return "<h2>Three planes</h2>" + overlay_html(views[case], convention, case)
    picked = [p for p in pick_cases(rows, regions) if p[1] in views]
    if not picked:
        return ""
    blocks = [overlay_html(views[case], convention, f"{rank}: {case} (mean Dice {_fmt(dice)})")
              for rank, case, dice in picked]
    return ("<h2>Best, median and worst case</h2>"
            f'<p class="note">Ranked by the mean Dice over the regions {html.escape(", ".join(regions))} '
            f"({len(rows)} cases).</p>" + "\n".join(blocks))


def _tables(rows: Sequence[Mapping], summary: Mapping, regions: Sequence[str]) -> str:
    """The summary and per-case tables; for one case, its scores by region and metric."""
    if len(rows) == 1:
        return "<h2>Scores</h2>" + case_scores_table(rows[0], regions) if len(rows[0]) > 1 else ""
    return "\n".join([
        "<h2>Summary</h2>" + summary_table(summary) if summary else "",
        "<h2>Cases</h2>", '<p class="note">Click a column header to sort by it.</p>',
        cases_table(rows)])


def render_report(rows: Sequence[Mapping], summary: Optional[Mapping] = None, convention=None,
                  convention_text: str = CONVENTION, views: Optional[Mapping[str, CaseView]] = None,
                  title: str = "missu-keras report", note: str = "") -> str:
    """The HTML text of a report (see the module docstring); `write_report` writes it.

    Args:
        rows: one dict per case (``case`` and the score columns, as in ``cases.csv``).
        summary: `missu_keras.metrics.summarize` of the rows (default: computed).
        convention: the label convention (regions and overlay colours).
        convention_text: the scoring conventions shown at the end.
        views: ``{case: CaseView}``; the best, median and worst case among them are drawn.
        title, note: the page's title and a line under it.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("a report needs at least one scored case; received none")
    summary = summarize(rows) if summary is None else summary
    regions = _regions(convention, rows)
    plots = [f'<figure class="region"><figcaption>{html.escape(r)}</figcaption>{box_plot_svg(r, m)}</figure>'
             for r, m in metric_columns(rows, regions).items()] if len(rows) > 1 else []
    overlays = _overlays_section(rows, views or {}, convention, regions) if convention else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(note)} {len(rows)} case(s); written by missu-keras '
        f"{__version__}; self-contained (no network).</p>",
        _tables(rows, summary, regions),
        "<h2>Distributions per region</h2>" if plots else "", "\n".join(plots), overlays,
        "<h2>Scoring convention</h2>", f"<pre>{html.escape(convention_text)}</pre>",
        f"<script>{_SORT_JS}</script>", "</body></html>", ""])


def write_report(path, rows: Sequence[Mapping], **kwargs) -> Path:
    """Writes `render_report` to ``path`` atomically (`missu_keras.files`); returns it."""
    return write_text_atomic(path, render_report(rows, **kwargs))


def write_score_report(out, rows: Sequence[Mapping], summary: Mapping, convention,
                       views: Optional[Mapping[str, CaseView]] = None, note: str = "") -> Path:
    """``out/report.html`` beside the files `missu_keras.metrics.write_scores` wrote
    there: the same rows and summary, and ``out/convention.txt`` as its convention text
    (the page states what the files state). Used by ``evaluate`` and ``score``."""
    out = Path(out)
    text_file = out / "convention.txt"
    text = text_file.read_text(encoding="utf-8") if text_file.is_file() else CONVENTION
    return write_report(out / REPORT_FILE, rows, summary=summary, convention=convention,
                        convention_text=text, views=views, note=note)


# ------------------------------------------------------------------- missu-keras view --

_SEG_ENDINGS = ("_seg", "-seg")
_NAMES_2023 = ("-t1n", "-t1c", "-t2w", "-t2f")


def _pick_case(cases: Sequence, folder, pred: Path):
    """The one case of a case folder, or among several the one ``pred`` is named after."""
    if len(cases) == 1:
        return cases[0]
    stem = strip_nifti_suffix(pred.name)
    for ending in _SEG_ENDINGS:
        stem = stem[: -len(ending)] if stem.endswith(ending) else stem
    named = [c for c in cases if c.case_id == stem]
    if len(named) == 1:
        return named[0]
    ids = [c.case_id for c in cases]
    raise ValueError(f"{folder}: {len(cases)} cases found ({', '.join(ids[:5])}"
                     f"{' ...' if len(ids) > 5 else ''}) and none is named like the prediction "
                     f"{pred.name}; expected one case folder, or a prediction named <case>.nii.gz")


def _case_from_folder(folder: Path, pred: Path, layout: str):
    """``(case_id, image, image_name, gt, affine, spacing, convention)`` of a case
    folder, read and checked by the dataset readers (`missu_keras.data.datasets`)."""
    loaded = _pick_case(find_cases(folder, layout=layout, subset="all"), folder, pred).load()
    channel = display_channel(loaded.channel_names)
    return (loaded.case_id, loaded.image[..., channel], loaded.channel_names[channel],
            loaded.labels, loaded.affine, loaded.spacing, loaded.label_convention)


def _case_from_files(files: Sequence[Path], convention):
    """The same for a case given as NIfTI files (`missu_keras.data.io`): the image shown
    is the FLAIR (``_flair`` / ``-t2f``) or the first file, a ``_seg`` / ``-seg`` file is
    the ground truth. ``convention`` is the ground truth's (``view``'s
    ``--case-convention``); by default ``brats2023`` for 2023 file names, else ``brats``.
    (The prediction's ``--convention`` never decides how the ground truth is read.)"""
    stems = [strip_nifti_suffix(f.name) for f in files]
    bad = [str(f) for f in files if not is_nifti(f)]
    if bad:
        raise ValueError(f"{bad[0]}: expected NIfTI files (.nii.gz / .nii) or one case folder")
    segs = [f for f, s in zip(files, stems) if s.lower().endswith(_SEG_ENDINGS)]
    images = [(f, s) for f, s in zip(files, stems) if f not in segs]
    if len(segs) > 1 or not images:
        raise ValueError(f"expected the image files of one case and at most one _seg file; "
                         f"received {[str(f) for f in files]}")
    names = [s.lower() for _, s in images]
    chosen = next((i for i, s in enumerate(names) if s.endswith(_IMAGE_SUFFIXES)), 0)
    if convention is None:
        convention = "brats2023" if any(s.endswith(_NAMES_2023) for s in names) else "brats"
    image, affine = read_nifti(images[chosen][0])
    gt = None
    if segs:
        gt, _ = read_nifti(segs[0], dtype=None)
        get_label_convention(convention).to_classes(gt, source=str(segs[0]))
    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    case_id = images[chosen][1]
    for suffix in _IMAGE_SUFFIXES:
        case_id = case_id[: -len(suffix)] if case_id.lower().endswith(suffix) else case_id
    return case_id, image, images[chosen][0].name, gt, affine, spacing, convention


def _read_prediction(pred: Path, shape, affine, source_convention, convention):
    """The prediction's labels in the case's convention; errors name the file."""
    labels, pred_affine = read_nifti(pred, dtype=None)
    if labels.shape != tuple(shape):
        raise ValueError(f"{pred}: shape {labels.shape}; expected the case's grid {tuple(shape)}")
    if np.max(np.abs(pred_affine - np.asarray(affine))) > 0.01:
        raise ValueError(f"{pred}: its affine differs from the case's (largest difference "
                         f"{np.max(np.abs(pred_affine - affine)):.3g}); expected the case's grid")
    return convert_labels(labels, convention or source_convention, source_convention, what=str(pred))


def view_case(case, pred, out=None, convention=None, layout: str = "auto",
              overwrite: bool = False, case_convention=None) -> Path:
    """``missu-keras view``: one case's page (its three planes, and its scores when it
    has a ground truth), written atomically.

    Args:
        case: a case folder (any layout of `missu_keras.data.datasets`; in a folder of
            several cases, the one the prediction is named after), or the case's NIfTI
            files (images, optionally its ``_seg`` file).
        pred: a label NIfTI on the case's grid.
        out: the page (default ``<case>_view.html`` in the current folder); an existing
            file is refused unless ``overwrite``.
        convention: the prediction's label convention (default: the case's; a
            different one with the same classes is mapped to the case's).
        layout: the dataset layout of a case folder (default: detected).
        case_convention: the ground truth's label convention when the case is given as
            NIfTI files (default: ``brats2023`` for 2023 file names, else ``brats``); a
            case folder's comes from its layout.

    Returns:
        The page's path.
    """
    pred = Path(pred)
    if not pred.is_file():
        raise FileNotFoundError(f"{pred}: prediction not found; expected a label NIfTI")
    files = [Path(c) for c in ([case] if isinstance(case, (str, Path)) else case)]
    if len(files) == 1 and files[0].is_dir():
        found = _case_from_folder(files[0], pred, layout)
    else:
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: not found; expected a case folder or its NIfTI files")
        found = _case_from_files(files, case_convention)
    case_id, image, image_name, gt, affine, spacing, case_convention = found
    labels = _read_prediction(pred, image.shape[:3], affine, case_convention, convention)
    out = Path(out) if out is not None else Path.cwd() / f"{case_id}_view.html"
    if not overwrite:
        refuse_existing([out])
    prepare_output_dir(out.parent, "--out's folder")
    view = case_view(case_id, labels, gt=gt, image=image, affine=affine, spacing=spacing,
                     image_name=image_name)
    row = {"case": case_id, **(score_case(labels, gt, spacing, case_convention) if gt is not None else {})}
    return write_report(out, [row], convention=case_convention, views={case_id: view},
                        title=f"missu-keras view: {case_id}",
                        note=f"Prediction {pred}" + ("" if gt is not None else "; no ground truth") + ".")

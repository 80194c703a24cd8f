"""``report.html`` (evaluate, score) and ``missu-keras view``: the pages are parsed with the
standard library's ``html.parser``; the pieces (box-plot numbers, slice choice,
orientation, case ranking) are checked on hand-made inputs with known answers."""

import base64
import csv
import html.parser
import math
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

import missu_keras
from missu_keras import reports
from missu_keras.data import PreprocessingConfig, find_brats_cases, write_synthetic_brats
from missu_keras.data.io import write_nifti
from missu_keras.scoring import score_to_folder
from tests.conftest import NO_DROPOUT, TINY
from tests.helpers import run_command

SHAPE = (40, 36, 28)
REGIONS = ("WT", "TC", "ET")


class Page(html.parser.HTMLParser):
    """What the tests read from a page: tables' body rows, images, box plots, links,
    script text and the case blocks of the overlays."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.headers, self.images, self.boxplots = {}, {}, [], []
        self.links, self.cases, self.script, self.text = [], [], "", []
        self._table, self._in_body, self._in_script, self._cell = None, False, False, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "table":
            self._table = attrs.get("id")
            self.rows[self._table], self.headers[self._table] = [], []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[self._table].append([])
        elif tag == "td" and self._in_body:  # a cell: its data-sort, else its text
            self.rows[self._table][-1].append(attrs.get("data-sort"))
            self._cell = "data-sort" not in attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "svg" and "boxplot" in attrs.get("class", ""):
            self.boxplots.append(attrs["data-region"])
        elif tag == "div" and attrs.get("class") == "case":
            self.cases.append(attrs["data-case"])
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        self._cell = False
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script += data
        elif self._cell:
            self.rows[self._table][-1][-1] = data
        elif self._table and not self._in_body and data.strip():
            self.headers[self._table].append(data.strip())
        self.text.append(data)


def read_page(path):
    return Page(path.read_text(encoding="utf-8"))


def png_size(uri):
    """(width, height) of a PNG data URI, after decoding it completely."""
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert tf.io.decode_png(data).shape[:2] == (height, width)
    return width, height


def check_self_contained(page):
    for link in page.links:
        assert not re.match(r"(https?:|//)", link), link
        assert link.startswith(("data:", "#")), link[:60]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A 3-case evaluation of a tiny (untrained) model, predictions saved."""
    root = tmp_path_factory.mktemp("reports")
    write_synthetic_brats(root / "data", num_cases=3, seed=4, shape=SHAPE)
    model = missu_keras.MISSU.from_preset("tiny", **TINY, **NO_DROPOUT,
                                          preprocessing=PreprocessingConfig.brats(patch_size=32).to_dict())
    model.save(root / "model.keras")
    run_command(["evaluate", str(root / "data"), "--out", str(root / "eval"), "--model",
                 str(root / "model.keras"), "--save-predictions", "--quiet"])
    return root


def test_evaluate_writes_a_self_contained_report(evaluated):
    out = evaluated / "eval"
    rows = read_csv(out / "cases.csv")
    page = read_page(out / "report.html")
    # the table: one row per case, every column of cases.csv, in its order
    assert page.headers["cases"] == list(rows[0])
    assert [r[0] for r in page.rows["cases"]] == [r["case"] for r in rows]
    assert float(page.rows["cases"][0][1]) == pytest.approx(float(rows[0]["WT_dice"]))
    assert page.boxplots == list(REGIONS)
    # best, median and worst case by mean Dice over the regions, three planes each
    ranked = sorted(rows, key=lambda r: np.mean([float(r[f"{g}_dice"]) for g in REGIONS]))
    assert page.cases == [ranked[2]["case"], ranked[1]["case"], ranked[0]["case"]]
    assert [i["data-plane"] for i in page.images] == list(reports.PLANES) * 3
    for image in page.images:
        width, height = png_size(image["src"])
        assert (str(width), str(height)) == (image["width"], image["height"])
        assert 100 <= min(width, height) and max(width, height) <= 2 * reports.OVERLAY_PIXELS
    check_self_contained(page)
    assert "addEventListener" in page.script and "data-sort" in page.script
    text = "".join(page.text)
    assert "95th percentile" in text and "mean Dice over the regions WT, TC, ET" in text


def test_view_a_case_folder_and_its_files(evaluated, tmp_path, capsys):
    case = find_brats_cases(evaluated / "data")[0]
    pred = evaluated / "eval" / "predictions" / f"{case.case_id}.nii.gz"
    out = tmp_path / "page.html"
    assert run_command(["view", str(case.directory), "--pred", str(pred), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = read_page(out)
    assert page.cases == [case.case_id] and len(page.images) == 3
    assert all(min(png_size(i["src"])) >= 100 for i in page.images)
    check_self_contained(page)
    row = next(r for r in read_csv(evaluated / "eval" / "cases.csv") if r["case"] == case.case_id)
    scores = {r[0]: r[1:] for r in page.rows["scores"]}  # region -> its metrics
    assert page.headers["scores"][:3] == ["region", "dice", "hd95"]
    assert float(scores["ET"][1]) == pytest.approx(float(row["ET_hd95"]))
    with pytest.raises(FileExistsError, match="--overwrite"):
        reports.view_case(case.directory, pred, out)
    # the same case as NIfTI files: the FLAIR and the ground truth by their names
    files = [case.image_paths["t1"], case.image_paths["flair"], case.seg_path]
    again = reports.view_case(files, pred, tmp_path / "files.html")
    assert read_page(again).rows["scores"] == page.rows["scores"]
    assert "image: " + case.image_paths["flair"].name in again.read_text()
    # a prediction in another convention: --convention is the prediction's only; the _seg
    # file stays BraTS 2021 (read as 2023 it would be refused: 2023 has no label 4)
    from missu_keras.data.io import read_nifti

    labels, affine = read_nifti(pred, dtype=None)
    pred_2023 = tmp_path / "pred_2023.nii.gz"
    write_nifti(pred_2023, np.where(labels == 4, 3, labels).astype(np.uint8), affine)
    other = reports.view_case(files, pred_2023, tmp_path / "2023.html", convention="brats2023")
    assert read_page(other).rows["scores"] == page.rows["scores"]
    # without a ground truth: the prediction alone, no scores
    alone = read_page(reports.view_case([case.image_paths["flair"]], pred, tmp_path / "alone.html"))
    assert len(alone.images) == 3 and "scores" not in alone.rows
    assert "fill: prediction (no ground truth)" in "".join(alone.text)


def test_score_writes_a_report_over_the_flair_beside_the_ground_truth(tmp_path):
    gt = np.zeros((20, 18, 16), np.uint8)
    gt[5:14, 4:12, 4:12], gt[7:11, 6:10, 6:10] = 2, 4
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for i, case in enumerate(["c1", "c2", "c3"]):
        write_nifti(tmp_path / "gt" / case / f"{case}_seg.nii.gz", gt, affine)
        write_nifti(tmp_path / "pred" / f"{case}.nii.gz", np.roll(gt, i, axis=0), affine)
    flair = np.random.default_rng(0).random(gt.shape).astype(np.float32) + gt
    write_nifti(tmp_path / "gt" / "c2" / "c2_flair.nii.gz", flair, affine)
    (tmp_path / "gt" / "c3" / "c3_flair.nii.gz").write_bytes(b"not a NIfTI")  # only decoration
    logged = []
    rows, _, _, paths = score_to_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out",
                                        log=logged.append)
    assert any("c3" in line and "labels alone" in line and "c3_flair" in line for line in logged)
    page = read_page(tmp_path / "out" / "report.html")
    assert paths["report"] == str(tmp_path / "out" / "report.html")
    assert [r[0] for r in page.rows["cases"]] == ["c1", "c2", "c3"]
    assert page.cases == ["c1", "c2", "c3"]  # no shift, 1 voxel, 2 voxels: best to worst
    assert len(page.images) == 9 and page.boxplots == list(REGIONS)
    check_self_contained(page)
    text = (tmp_path / "out" / "report.html").read_text()
    assert text.count("image: c2_flair.nii.gz") == 1 and text.count("no image") == 2


def test_the_table_and_box_plots_show_every_column_the_rows_have():
    rows = [{"case": f"c{i}", "fold": i % 2, "WT_dice": d, "WT_lesion_dice": d / 2, "WT_nsd": 1.0,
             "ET_dice": 1.0, "ET_hd95": 373.13 * (i == 0), "mean_entropy_wrong": 0.3 + i}
            for i, d in enumerate((0.2, 0.9, 0.5, 0.7))]
    page = Page(reports.render_report(rows, convention="brats"))
    assert page.headers["cases"] == list(rows[0])
    assert page.boxplots == ["WT", "ET"]  # TC: no column
    panels = re.findall(r'data-metric="([^"]+)"', reports.render_report(rows, convention="brats"))
    assert panels == ["dice", "lesion_dice", "nsd", "dice", "hd95"]
    assert page.rows["cases"][0] == ["c0", "0.0", "0.2", "0.1", "1.0", "1.0", "373.13", "0.3"]
    assert page.images == []  # no slices given: no overlays


def test_box_plot_numbers():
    stats = reports.box_stats([0.0, 0.25, 0.5, 0.75, 1.0, 3.0])
    assert (stats["q1"], stats["median"], stats["q3"]) == (0.3125, 0.625, 0.9375)
    assert (stats["low"], stats["high"], stats["outliers"]) == (0.0, 1.0, [3.0])
    svg = reports.box_plot_svg("ET", {"dice": [(f"c{i}", v) for i, v in enumerate([0, .25, .5, .75, 1])]})
    top, plot = reports._PANEL["top"], reports._PANEL["height"] - reports._PANEL["top"] - reports._PANEL["bottom"]
    y = lambda v: top + (1 - v) * plot  # noqa: E731  the [0, 1] axis of a Dice panel
    box = re.search(r'<rect class="box"[^>]* y="([\d.]+)" height="([\d.]+)"', svg)
    assert float(box.group(1)) == pytest.approx(y(0.75)) and float(box.group(2)) == pytest.approx(plot / 2)
    assert float(re.search(r'class="median"[^>]* y1="([\d.]+)"', svg).group(1)) == pytest.approx(y(0.5))
    whisker = re.search(r'class="whisker"[^>]* y1="([\d.]+)" y2="([\d.]+)"', svg)
    assert (float(whisker.group(1)), float(whisker.group(2))) == (y(1.0), y(0.0))
    assert len(re.findall(r'<circle class="case"', svg)) == 5 and "<title>c3: 0.75</title>" in svg
    assert reports.axis_range([0.5, 12.0]) == (0.0, 20.0)


def test_slices_go_through_the_tumour_centre_in_radiological_display():
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[8:11, 2:5, 3:6] = 2  # towards +x: the patient's right in a RAS grid
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    ras = reports.case_view("c", labels, gt=labels, image=image, affine=np.eye(4))
    assert ras.centre == (9, 3, 4)
    axial = ras.planes["axial"].pred
    assert axial.shape == (10, 12)  # rows: anterior to posterior, columns: right to left
    assert np.argwhere(axial).mean(axis=0).tolist() == [6.0, 2.0]  # right of the patient: left
    # the same scan stored LPS (x and y flipped, as BraTS files are): the same pictures
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = reports.case_view("c", labels[::-1, ::-1], gt=labels[::-1, ::-1], image=image[::-1, ::-1],
                            affine=flip)
    assert lps.centre == (2, 6, 4)
    for plane in reports.PLANES:
        for part in ("image", "gt", "pred"):
            np.testing.assert_array_equal(getattr(lps.planes[plane], part), getattr(ras.planes[plane], part))
    # no foreground: the prediction's centre, then the volume's
    assert reports.choose_centre(np.zeros_like(labels), labels) == (9, 3, 4)
    assert reports.choose_centre(None, np.zeros_like(labels)) == (5, 4, 3)


def test_overlay_colours_fill_the_prediction_and_outline_the_ground_truth():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:8, 2:8] = 4
    plane = reports.PlaneSlice(None, gt, np.zeros_like(gt), (1.0, 1.0), 0)
    rgb = reports.overlay_rgb(plane, "brats")
    assert rgb.shape == (300, 300, 3)
    yellow = np.all(rgb == reports.label_colour(3), axis=-1)  # label 4 is class 3
    assert yellow[60:62, 60:240].all() and not yellow[150, 150] and not yellow[10, 10]
    filled = reports.overlay_rgb(reports.PlaneSlice(None, None, gt, (1.0, 1.0), 0), "brats")
    expected = (1 - reports.FILL_ALPHA) * 40 + reports.FILL_ALPHA * np.asarray(reports.label_colour(3))
    np.testing.assert_array_equal(filled[150, 150], np.round(expected))
    assert filled[10, 10].tolist() == [40, 40, 40]


def test_best_median_worst_use_the_mean_region_dice():
    rows = [{"case": "a", "WT_dice": 0.9, "TC_dice": 0.1, "WT_lesion_dice": 1.0},
            {"case": "b", "WT_dice": 0.6, "TC_dice": 0.6, "WT_lesion_dice": 0.0},
            {"case": "c", "WT_dice": "0.2", "TC_dice": "nan"}]
    assert reports.pick_cases(rows, ["WT", "TC"]) == [("best", "b", 0.6), ("median", "a", 0.5),
                                                      ("worst", "c", 0.2)]
    assert math.isnan(reports.mean_dice({"case": "x"}, ["WT"]))

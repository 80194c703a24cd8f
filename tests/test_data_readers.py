"""BraTS layouts and the CHAOS reader, on files written by the synthetic generator."""

import shutil
import sys

import numpy as np
import pytest

from missu_keras.data import (
    PreprocessingConfig,
    chaos_split,
    crop,
    detect_brats_layout,
    find_brats_cases,
    find_chaos_cases,
    preprocess_case,
    read_chaos_mask,
    read_dicom_series,
    read_nifti,
    write_synthetic_brats,
    write_synthetic_chaos,
)
from missu_keras.data.brats import MODALITY_2023_NAMES
from missu_keras.data.synthetic import synthetic_chaos_volumes
from missu_keras.labels import get_label_convention

SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One root per layout (2 cases each) plus the 2020 layout with uncompressed .nii."""
    roots = {}
    for layout in ("2019", "2020", "2021", "2023"):
        roots[layout] = tmp_path_factory.mktemp(f"brats{layout}")
        write_synthetic_brats(roots[layout], num_cases=2, seed=7, shape=SHAPE, layout=layout)
    roots["nii"] = tmp_path_factory.mktemp("brats_nii")
    write_synthetic_brats(roots["nii"], num_cases=2, seed=7, shape=SHAPE, layout="2020", extension=".nii")
    return roots


@pytest.mark.parametrize("layout", ["2019", "2020", "2021", "2023", "nii"])
def test_each_layout_is_found_and_read(layouts, layout):
    root = layouts[layout]
    expected_layout = "2020" if layout == "nii" else layout
    assert detect_brats_layout(root) == expected_layout
    cases = find_brats_cases(root)
    assert len(cases) == 2 and all(c.layout == expected_layout for c in cases)
    ext = ".nii" if layout == "nii" else ".nii.gz"
    for case in cases:
        assert case.modalities == ("flair", "t1ce", "t1", "t2")
        assert all(str(p).endswith(ext) and p.is_file() for p in case.image_paths.values())
        assert case.has_seg and str(case.seg_path).endswith("seg" + ext)
        loaded = case.load()
        assert loaded.image.shape == SHAPE + (4,) and loaded.image.dtype == np.float32
        assert loaded.labels.shape == SHAPE
        expected = {0, 1, 2, 3} if layout == "2023" else {0, 1, 2, 4}
        assert set(np.unique(loaded.labels).tolist()) == expected
        np.testing.assert_allclose(loaded.spacing, (1.0, 1.0, 1.0))
        # Channel c is exactly the file of modality c (2023: flair is the -t2f file).
        for c, modality in enumerate(case.modalities):
            suffix = MODALITY_2023_NAMES[modality] if layout == "2023" else modality
            assert case.image_paths[modality].name.split(".")[0].endswith(suffix)
            np.testing.assert_array_equal(loaded.image[..., c], read_nifti(case.image_paths[modality])[0])
    if layout == "2019":
        assert sorted(c.grade for c in cases) == ["HGG", "LGG"]


def test_explicit_layout_and_root_above_the_data(layouts, tmp_path):
    cases = find_brats_cases(layouts["2021"], layout="2021")
    assert [c.case_id for c in cases] == ["BraTS2021_SYNTH_00000", "BraTS2021_SYNTH_00001"]
    # The 2023 naming is not the 2021 one: asking for the wrong layout finds nothing.
    with pytest.raises(FileNotFoundError, match="2023 layout"):
        find_brats_cases(layouts["2021"], layout="2023")
    with pytest.raises(ValueError, match="Unknown BraTS layout"):
        find_brats_cases(layouts["2021"], layout="2018")
    # 2019 passed from above the training folder: <tmp>/MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<case>
    shutil.copytree(layouts["2019"], tmp_path / "MICCAI_BraTS_2019_Data_Training")
    assert detect_brats_layout(tmp_path) == "2019"
    assert len(find_brats_cases(tmp_path)) == 2


def test_modality_order_is_configurable(layouts):
    default = find_brats_cases(layouts["2021"])[0].load()
    order = ("t1", "t2", "flair", "t1ce")
    case = find_brats_cases(layouts["2021"], modalities=order)[0]
    assert case.modalities == order
    loaded = case.load()
    default_index = {m: i for i, m in enumerate(("flair", "t1ce", "t1", "t2"))}
    for c, m in enumerate(order):
        np.testing.assert_array_equal(loaded.image[..., c], default.image[..., default_index[m]])
    # 2023 names are accepted and mapped to the 2019-2021 names.
    case23 = find_brats_cases(layouts["2023"], modalities=("t1n", "t2f"))[0]
    assert case23.modalities == ("t1", "flair")
    assert case23.image_paths["flair"].name.endswith("-t2f.nii.gz")
    with pytest.raises(ValueError, match="Unknown BraTS modality 'pd'"):
        find_brats_cases(layouts["2021"], modalities=("flair", "pd"))


@pytest.mark.parametrize("layout,convention", [("2021", "brats"), ("2023", "brats2023")])
def test_label_mapping_round_trip(layouts, layout, convention):
    case = find_brats_cases(layouts[layout])[0]
    loaded = case.load()
    assert loaded.label_convention == convention
    pre = preprocess_case(loaded, PreprocessingConfig.brats(label_convention=convention))
    assert set(np.unique(pre.classes).tolist()) == {0, 1, 2, 3}
    conv = get_label_convention(convention)
    np.testing.assert_array_equal(conv.to_labels(pre.classes), crop(loaded.labels, pre.box))
    if convention == "brats":  # ET: label 4 <-> class 3
        np.testing.assert_array_equal(pre.classes == 3, crop(loaded.labels, pre.box) == 4)


def test_cases_without_seg_are_kept_for_prediction(tmp_path):
    write_synthetic_brats(tmp_path, num_cases=2, seed=1, shape=SHAPE, layout="2020", with_seg=False)
    cases = find_brats_cases(tmp_path)
    assert [c.has_seg for c in cases] == [False, False]
    loaded = cases[0].load()
    assert loaded.labels is None and loaded.image.shape == SHAPE + (4,)
    pre = preprocess_case(loaded, PreprocessingConfig.brats())
    assert pre.classes is None
    with pytest.raises(FileNotFoundError, match="segmentation of case"):
        find_brats_cases(tmp_path, require_seg=True)


def test_oddly_named_2020_segmentation_is_found(tmp_path):
    (case_dir,) = write_synthetic_brats(tmp_path, num_cases=1, seed=2, shape=SHAPE, layout="2020")
    seg = case_dir / f"{case_dir.name}_seg.nii.gz"
    seg.rename(case_dir / "W39_1998.09.19_Segm.nii.gz")  # as BraTS 2020 case 355 ships it
    (case,) = find_brats_cases(tmp_path)
    assert case.seg_path.name == "W39_1998.09.19_Segm.nii.gz"
    assert case.load().labels is not None


def test_no_brats_files_gives_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="no BraTS images found"):
        find_brats_cases(tmp_path)


# ----------------------------------------------------------------------------- CHAOS

CHAOS_SHAPE = (48, 40, 8)


@pytest.fixture(scope="module")
def chaos_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    write_synthetic_chaos(root, num_cases=3, seed=11, shape=CHAOS_SHAPE)
    return root


def _expected_chaos_case(seed, num_cases, index):
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(num_cases)[index])
    return synthetic_chaos_volumes(CHAOS_SHAPE, rng)


def test_chaos_t1dual_is_read_with_spacing_order_and_liver_threshold(chaos_root):
    import pydicom

    cases = find_chaos_cases(chaos_root)
    assert [c.case_id for c in cases] == ["1", "2", "3"]
    assert find_chaos_cases(chaos_root / "Train_Sets")[0].series_dirs == cases[0].series_dirs
    for i, case in enumerate(cases):
        loaded = case.load()
        expected = _expected_chaos_case(11, 3, i)
        assert loaded.image.shape == CHAOS_SHAPE + (2,)
        assert loaded.channel_names == ("in_phase", "out_phase")
        np.testing.assert_array_equal(loaded.image[..., 0], expected["images"]["in_phase"])
        np.testing.assert_array_equal(loaded.image[..., 1], expected["images"]["out_phase"])
        mask = expected["mask"]
        # liver only: kidneys (126, 189) and spleen (252) are in the PNGs but not liver
        assert {126, 189, 252} <= set(np.unique(mask).tolist())
        np.testing.assert_array_equal(loaded.labels, (mask == 63).astype(np.uint8))
        assert loaded.labels.sum() < (mask > 0).sum()
        first = sorted((case.series_dirs["in_phase"]).glob("*.dcm"))[0]
        ds = pydicom.dcmread(str(first))
        expected_spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]), float(ds.SpacingBetweenSlices))
        np.testing.assert_allclose(loaded.spacing, expected_spacing)
        assert 1.4 <= loaded.spacing[0] <= 1.9 and 5.5 <= loaded.spacing[2] <= 9.0
        np.testing.assert_allclose(np.linalg.norm(loaded.affine[:3, :3], axis=0), loaded.spacing)


def test_chaos_t2spir_single_channel_spacing_from_slice_thickness(chaos_root):
    import pydicom

    case = find_chaos_cases(chaos_root, sequence="T2SPIR")[1]
    loaded = case.load()
    assert loaded.image.shape == CHAOS_SHAPE + (1,) and loaded.channel_names == ("t2spir",)
    first = sorted(case.series_dirs["t2spir"].glob("*.dcm"))[0]
    ds = pydicom.dcmread(str(first))
    assert "SpacingBetweenSlices" not in ds
    np.testing.assert_allclose(loaded.spacing[2], float(ds.SliceThickness))
    np.testing.assert_array_equal(loaded.image[..., 0], _expected_chaos_case(11, 3, 1)["images"]["t2spir"])


def test_chaos_slice_order_follows_file_names(chaos_root, tmp_path):
    case = find_chaos_cases(chaos_root)[0]
    original, _, _ = read_dicom_series(case.series_dirs["in_phase"])
    files = sorted(case.series_dirs["in_phase"].glob("*.dcm"))
    # Unpadded names whose natural order reverses the slices (InstanceNumber and
    # ImagePositionPatient still say the original order): the reader follows the names.
    renamed = tmp_path / "InPhase"
    renamed.mkdir()
    n = len(files)
    for k, f in enumerate(files):
        shutil.copy(f, renamed / f"IMG{n - k}.dcm")
    volume, spacing, _ = read_dicom_series(renamed)
    np.testing.assert_array_equal(volume, original[:, :, ::-1])
    masks = sorted(case.ground_dir.glob("*.png"))
    ground = tmp_path / "Ground"
    ground.mkdir()
    for k, f in enumerate(masks):
        shutil.copy(f, ground / f"m{n - k}.png")
    np.testing.assert_array_equal(read_chaos_mask(ground), read_chaos_mask(case.ground_dir)[:, :, ::-1])


def test_chaos_mask_threshold_bounds(tmp_path):
    from PIL import Image

    grey = np.array([[0, 54, 55, 63, 70, 71, 126, 189, 252]], np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "IMG-0001.png")
    mask = read_chaos_mask(tmp_path)
    assert mask[..., 0].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 0]]
    assert read_chaos_mask(tmp_path, organ="spleen")[..., 0].tolist() == [[0, 0, 0, 0, 0, 0, 0, 0, 1]]


def test_chaos_paper_split():
    ids = ["1", "2", "3", "5", "8", "10", "13", "15", "19", "20",
           "21", "22", "31", "32", "33", "34", "36", "37", "38", "39"]
    shuffled = list(np.random.default_rng(0).permutation(ids))
    split = chaos_split(shuffled, "paper_15_5")
    assert split["train"] == ids[:15] and split["val"] == ["34", "36", "37", "38", "39"]
    assert chaos_split(ids) == split
    with pytest.raises(ValueError, match="Unknown CHAOS split"):
        chaos_split(ids, "random")
    small = chaos_split(["3", "1", "2", "10"])
    assert small == {"train": ["1", "2", "3"], "val": ["10"]}


def test_chaos_without_pydicom_names_the_extra(chaos_root, monkeypatch):
    case = find_chaos_cases(chaos_root)[0]
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r'pip install "missu-keras\[chaos\]"'):
        read_dicom_series(case.series_dirs["in_phase"])
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "missu-keras\[chaos\]"'):
        read_chaos_mask(case.ground_dir)

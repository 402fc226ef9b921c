"""The embedded IXI population (checksums, the split by individual, the 2-D brain mask), the lesion kinds (kinds,
proportions, polarity, masks equal to what changed), the floors of both polarities, the best floor per kind, and
the 2-D slice benchmark folder."""

import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from addmlib.data import ixi, lesion_kinds
from addmlib.data.datasets import DatasetError
from addmlib.data.prepare import PrepareSettings, PreparedDataset, build
from addmlib.baselines import dark_floor, intensity_floor
from addmlib.eval_report import best_floor, kind_table


def test_every_embedded_slice_matches_its_checksum():
    assert ixi.verify() == 521


def test_a_changed_slice_is_named(tmp_path, monkeypatch):
    copy = tmp_path / "ixi"
    shutil.copytree(ixi.IXI_DIR, copy)
    path = copy / "png" / "sub-IXI002.png"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(ixi, "IXI_DIR", copy)
    with pytest.raises(ixi.IXIError, match="sub-IXI002.png: sha256 differs"):
        ixi.verify()


def test_the_split_is_by_individual_fixed_and_complete():
    splits = ixi.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 421, "calib": 30, "tune": 30, "test": 40}
    ids = [sid for v in splits.values() for sid in v]
    assert len(ids) == len(set(ids)) == 521, "no individual in two splits"
    assert set(ids) == set(ixi.subject_ids())


@pytest.mark.parametrize("sid", ["IXI002", "IXI175", "IXI404", "IXI548", "IXI639"])
def test_the_2d_brain_mask_holds_the_brain_not_the_scalp(sid):
    img = ixi.read_png(sid)
    brain = ixi.brain_mask(img)
    head = ndimage.binary_fill_holes(img > img.max() * 0.1)
    assert 0.45 < brain.sum() / head.sum() < 0.85  # the scalp and skull are outside
    assert brain[img.shape[0] // 2, img.shape[1] // 2], "the centre of the slice (ventricles) is brain"
    assert ndimage.label(brain)[1] == 1, "one piece: both hemispheres"
    eroded_head = ndimage.binary_erosion(head, iterations=3)
    assert not (brain & ~eroded_head).any(), "nothing in the scalp's outer rim"


def _slice(size: int = 64, depth: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    brain = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.42) ** 2)[:, :, None].repeat(depth, 2)
    image = np.where(brain, 0.4 + 0.1 * rng.standard_normal(brain.shape), -1.0).astype(np.float32)
    v = size // 12
    image[size // 2 - v:size // 2 + v, size // 2 - v:size // 2 + v] = -0.8  # ventricles: the CSF level
    return image, brain, np.array([2.5, 2.5, 2.5])


@pytest.mark.parametrize("depth", [1, 12])
def test_every_kind_changes_exactly_its_mask_inside_the_brain(depth):
    image, brain, spacing = _slice(depth=depth)
    for index, kind in enumerate(lesion_kinds.KINDS):
        out = lesion_kinds.draw(image, brain, spacing, index, np.random.default_rng(index))
        assert out.detail["kind"] == kind and out.mask.any()
        assert np.array_equal(out.image != image, out.mask), "changed exactly where the mask is"
        assert not (out.mask & ~brain).any()


@pytest.mark.parametrize("kind", lesion_kinds.KINDS)
def test_each_kind_has_its_polarity(kind):
    image, brain, spacing = _slice(size=96)
    yy, xx = np.mgrid[:96, :96]
    region = (((yy - 30) ** 2 + (xx - 62) ** 2) < 8 ** 2)[:, :, None] & brain  # 20 mm across, in tissue
    out = lesion_kinds.insert(image, brain, region, kind, spacing, np.random.default_rng(1))
    inside, tissue = out.image[region], image[region]
    if kind == "hypo":
        assert inside.mean() < tissue.mean() - 0.2
    elif kind == "hyper":
        assert inside.mean() > tissue.mean() + 0.1
    elif kind == "ring":
        depth_mm = ndimage.distance_transform_edt(region, sampling=spacing)
        rim, core = region & (depth_mm <= 2.5), region & (depth_mm > 5)
        assert out.image[core].mean() < image[core].mean() - 0.1
        assert out.image[rim].mean() > image[rim].mean() + 0.1
    else:
        assert abs(inside.mean() - tissue.mean()) < 0.1
        assert inside.std() > 1.5 * tissue.std()


def test_kinds_come_in_equal_proportions_and_sizes_in_range():
    image, brain, spacing = _slice(size=96)
    drawn = [lesion_kinds.draw(image, brain, spacing, i, np.random.default_rng(i)) for i in range(16)]
    kinds = [d.detail["kind"] for d in drawn]
    assert {k: kinds.count(k) for k in lesion_kinds.KINDS} == {k: 4 for k in lesion_kinds.KINDS}
    assert all(4.0 <= d.detail["diameter_mm"] <= 25.0 for d in drawn)


@pytest.mark.parametrize("depth", [1, 12])
def test_tissue_sites_keep_every_lesion_off_the_ventricles(depth):
    image, brain, spacing = _slice(depth=depth)
    tissue = lesion_kinds.tissue_mask(image, brain, spacing)
    assert not (tissue & (image < -0.5)).any(), "the ventricles are not tissue"
    assert tissue.sum() > 0.8 * (brain & (image > -0.5)).sum(), "the parenchyma is"
    donor = np.zeros((40, 40, 10), bool)
    donor[10:30, 12:22, 3:7] = True
    hit_csf = 0
    for i in range(24):  # every kind, ellipses and a real tumour's shape
        args = (image, brain, spacing, i, np.random.default_rng(i), [("d", donor, np.ones(3))])
        hit_csf += (lesion_kinds.draw(*args).mask & ~tissue).any()
        out = lesion_kinds.draw(*args, sites="tissue")
        assert out.mask.any() and not (out.mask & ~tissue).any()
        assert np.array_equal(out.image != image, out.mask)
    assert hit_csf, "anywhere in the brain, some lesions do cover the ventricles: the test can tell the two apart"


def test_a_hypointense_lesion_in_tissue_is_darker_than_the_tissue_around_it():
    image, brain, spacing = _slice(size=96)
    for i in range(0, 16, 4):  # the hypo draws
        out = lesion_kinds.draw(image, brain, spacing, i, np.random.default_rng(i), sites="tissue")
        assert out.detail["kind"] == "hypo"
        assert out.image[out.mask].mean() < out.detail["tissue_mean"] - 0.2


def test_an_unknown_lesion_site_is_refused():
    image, brain, spacing = _slice()
    with pytest.raises(ValueError, match="lesion sites must be 'brain' or 'tissue'.*'wm'"):
        lesion_kinds.draw(image, brain, spacing, 0, np.random.default_rng(0), sites="wm")


def test_a_real_tumour_shape_is_scaled_and_placed_inside_the_brain():
    image, brain, spacing = _slice(size=96)
    donor = np.zeros((40, 40, 10), bool)
    donor[10:30, 12:22, 3:7] = True  # an elongated "tumour"
    out = lesion_kinds.draw(image, brain, spacing, 8, np.random.default_rng(3), [("d", donor, np.ones(3))])
    assert out.detail["shape"] == "donor:d" and out.mask.any() and not (out.mask & ~brain).any()


def test_floors_of_both_polarities_and_the_best_floor_per_kind():
    vol = np.linspace(-1, 1, 27, dtype=np.float32).reshape(3, 3, 3)
    assert np.allclose(dark_floor(vol, np.arange(3))[1], 1 - vol)
    assert np.allclose(intensity_floor(vol, np.arange(3))[1], vol + 1)

    def res(pooled, kinds):
        return {"ixi_test": {"pooled": {"auroc": pooled, "auprc": pooled},
                             "by_kind": {k: {"auroc": v, "auprc": v} for k, v in kinds.items()}}}
    results = {"addm": res(0.5, {"hypo": 0.4, "hyper": 0.3}),
               "intensity floor (x itself)": res(0.2, {"hypo": 0.01, "hyper": 0.35}),
               "dark floor (−x)": res(0.1, {"hypo": 0.2, "hyper": 0.01}),
               "floor |x − brain median|": res(0.15, {"hypo": 0.1, "hyper": 0.1})}
    assert best_floor(results, "ixi_test") == ("intensity floor (x itself)", 0.2, 0.2)
    assert best_floor(results, "ixi_test", "hypo")[0] == "dark floor (−x)"
    last = kind_table(results, "ixi_test").splitlines()[-1]
    assert last.startswith("| **best floor**") and "0.200 (bright)" in last and "0.200 (dark)" in last
    assert "0.350 (bright)" in last


def _settings(**kw) -> PrepareSettings:
    base = dict(image_size=32, healthy_sources=(), holdout_hosts=(), tumour_sources=(), paste_donors=(),
                lesions_per_host=0, min_brain_fraction=0.25, strip_margin_mm=2.0, seed=0, ixi="train", ixi_draws=1,
                ixi_train_max=3)
    return PrepareSettings(**{**base, **kw})


def test_the_ixi_splits_are_prepared_by_individual_with_every_kind(tmp_path):
    manifest = build(_settings(), tmp_path)
    data = PreparedDataset(tmp_path)
    assert manifest["counts"]["train"]["slices"] == 3
    assert manifest["counts"]["ixi_calib"]["slices"] == 30
    assert manifest["counts"]["ixi_test"]["lesion_slices"] == 40
    subjects = {split: {v.meta["subject"] for v in data.volumes(split)} for split in ("ixi_calib", "ixi_tune",
                                                                                      "ixi_test")}
    assert not (subjects["ixi_calib"] & subjects["ixi_tune"]) and not (subjects["ixi_tune"] & subjects["ixi_test"])
    kinds = [v.meta["lesion_kind"] for v in data.volumes("ixi_tune")]
    assert {k: kinds.count(k) for k in set(kinds)} == {"hypo": 8, "ring": 8, "hyper": 7, "iso": 7}
    v = data.volume("ixi_test", data.ids("ixi_test")[0])
    assert v.image.shape == (32, 32, 1) and v.lesion.any() and not (v.lesion & ~v.brain).any()
    assert manifest["population"]["licence"].startswith("CC BY-SA 3.0")


def _write_png(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_a_folder_of_2d_slices_is_a_benchmark_split(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    img = ixi.read_png("IXI002")
    mask = np.zeros_like(img)
    mask[100:112, 60:72] = 255
    _write_png(folder / "case1.png", np.clip(img * np.where(mask > 0, 0.5, 1.0), 0, 255))
    _write_png(folder / "case1_mask.png", mask)
    # a single-slice NIfTI of the same kind, in the slice's RAS orientation
    ras = np.ascontiguousarray(img.T[:, ::-1])[:, :, None]
    nib.save(nib.Nifti1Image(ras, np.eye(4)), str(folder / "case2.nii.gz"))
    nib.save(nib.Nifti1Image((np.ascontiguousarray(mask.T[:, ::-1])[:, :, None] > 0).astype(np.uint8), np.eye(4)),
             str(folder / "case2_mask.nii.gz"))
    build(_settings(slices_root=str(folder)), tmp_path / "data")
    data = PreparedDataset(tmp_path / "data")
    assert data.ids("slices_test") == ["case1", "case2"]
    for v in data.volumes("slices_test"):
        assert v.lesion.any() and v.image.shape == (32, 32, 1)
    (folder / "case3.png").write_bytes((folder / "case1.png").read_bytes())
    with pytest.raises(DatasetError, match="case3.png: no lesion mask case3_mask.png"):
        build(_settings(slices_root=str(folder), seed=1), tmp_path / "data2")


def test_lesion_sites_move_the_lesions_but_not_the_training_data():
    brain, tissue = _settings(), _settings(lesion_sites="tissue")
    assert brain.fingerprint() != tissue.fingerprint()
    assert brain.training_fingerprint() == tissue.training_fingerprint()
    assert brain.fingerprint() == _settings(lesion_sites="brain").fingerprint(), "the default keeps older builds valid"


def test_smooth_lesions_differ_from_textured_ones_only_in_their_texture():
    image, brain, spacing = _slice(size=96)
    for i in range(4):  # one of each kind, from the same random stream
        rough = lesion_kinds.draw(image, brain, spacing, i, np.random.default_rng(i), sites="tissue")
        smooth = lesion_kinds.draw(image, brain, spacing, i, np.random.default_rng(i), sites="tissue", texture=0.0)
        assert np.array_equal(rough.mask, smooth.mask) and rough.detail == smooth.detail
        core = smooth.mask & (ndimage.distance_transform_edt(smooth.mask, sampling=spacing) > 3)
        if smooth.detail["kind"] in ("hypo", "hyper") and core.any():
            assert smooth.image[core].std() < 0.2 * rough.image[core].std()


def test_lesion_texture_out_of_range_is_refused_by_name():
    from addmlib.config import ConfigError, PrepareConfig, validate
    with pytest.raises(ConfigError, match="lesion_texture must be in \\[0, 2\\]"):
        validate(PrepareConfig, {"lesion_texture": -1.0}, "p.yaml")


def test_larger_lesions_are_drawn_from_their_own_range_and_leave_the_training_data_alone():
    image, brain, spacing = _slice(size=96)
    for i in range(8):
        big = lesion_kinds.draw(image, brain, spacing, i, np.random.default_rng(i), sites="tissue",
                                diameter_mm=(30.0, 40.0))
        assert 30.0 <= big.detail["diameter_mm"] <= 40.0 and big.mask.any()
    default, large = _settings(), _settings(lesion_diameter_mm=(25.0, 50.0))
    assert default.fingerprint() != large.fingerprint()
    assert default.training_fingerprint() == large.training_fingerprint()
    assert default.fingerprint() == _settings(lesion_diameter_mm=(4.0, 25.0)).fingerprint(), "older builds stay valid"


@pytest.mark.parametrize("value, message", [([30.0, 10.0], "0 < low <= high"), ([10.0], "tuple\\[float, float\\]"),
                                            ([0.0, 5.0], "0 < low <= high")])
def test_a_bad_lesion_diameter_range_is_refused_by_name(value, message):
    from addmlib.config import ConfigError, PrepareConfig, validate
    with pytest.raises(ConfigError, match=f"lesion_diameter_mm.*{message}"):
        validate(PrepareConfig, {"lesion_diameter_mm": value}, "p.yaml")

"""Preprocessing steps on small volumes made in the test; readers' errors; lesion insertion; augmentation."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from addmlib.data.augment import Augment
from addmlib.data.io import VolumeError, read_mask, read_volume
from addmlib.data.lesions import paste_tumour, synthetic_lesion
from addmlib.data.preprocess import (Volume, brain_from_background, crop_to_brain, match_landmarks,
                                     normalise_intensity, preprocess, resample_isotropic, select_slices, to_native,
                                     to_ras, to_square_slices)


def _affine(codes, zooms=(1.0, 1.0, 1.0), origin=(-40.0, -50.0, -30.0)):
    """Affine whose array axes point along the given axis codes (e.g. 'LPS')."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    a = np.zeros((4, 4))
    for i, (axis, flip) in enumerate(ornt):
        a[int(axis), i] = flip * zooms[i]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def _phantom(shape=(40, 48, 36), codes="RAS", zooms=(1.0, 1.0, 1.0)):
    """An ellipsoidal 'brain' (intensity ~100 with structure) and a bright blob lesion, in given orientation."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (g ** 2).sum(0) < 0.7
    image = np.where(brain, 100 + 20 * g[0] + 10 * np.sin(6 * g[1]), 0).astype(np.float32)
    lesion = ((g[0] - 0.3) ** 2 + (g[1] + 0.1) ** 2 + g[2] ** 2) < 0.04
    image[lesion] = 200
    return Volume(image, _affine(codes, zooms), brain, lesion)


def _world(vol, mask):
    idx = np.argwhere(mask).mean(0)
    return (vol.affine @ np.r_[idx, 1])[:3]


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LIA", "LAS"])
def test_to_ras_reorders_axes_and_keeps_world_positions(codes):
    vol = _phantom(codes=codes, zooms=(1.0, 1.2, 0.9))
    ras = to_ras(vol)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert np.allclose(_world(vol, vol.lesion), _world(ras, ras.lesion), atol=1e-6)
    assert ras.lesion.sum() == vol.lesion.sum()


def test_resample_isotropic_spacing_and_world_positions():
    vol = _phantom(zooms=(0.8, 1.0, 2.5))
    iso = resample_isotropic(vol, 1.0)
    assert np.allclose(iso.spacing, 1.0)
    assert np.allclose(_world(vol, vol.lesion), _world(iso, iso.lesion), atol=1.0)
    assert abs(iso.lesion.sum() - vol.lesion.sum() * 0.8 * 2.5) / (vol.lesion.sum() * 2) < 0.1


def test_masks_follow_the_image_through_the_whole_chain():
    vol = _phantom(codes="LPS", zooms=(0.9, 0.9, 1.4))
    out = preprocess(vol, 32, "given")
    assert out.image.shape[:2] == (32, 32) and out.image.min() >= -1 and out.image.max() <= 1
    assert out.lesion.any()
    # the lesion is the bright blob: its voxels are brighter than the rest of the brain
    assert out.image[out.lesion].mean() > out.image[out.brain & ~out.lesion].mean() + 0.3
    assert np.allclose(_world(vol, vol.lesion), _world(out, out.lesion), atol=2.0)


@pytest.mark.parametrize("codes, zooms", [("LPS", (0.9, 0.9, 1.4)), ("PIR", (1.0, 1.0, 1.3)),
                                          ("RAS", (1.0, 1.0, 1.0))])
def test_to_native_brings_a_map_back_onto_the_input_grid(codes, zooms):
    vol = _phantom(codes=codes, zooms=zooms)
    out = preprocess(vol, 48, "given")
    back = to_native(out.lesion.astype(np.float32), out.affine, vol.affine, vol.image.shape, order=0) > 0.5
    assert back.shape == vol.image.shape
    dice = 2 * (back & vol.lesion).sum() / (back.sum() + vol.lesion.sum())
    assert dice > 0.7


def test_crop_normalise_square_and_slice_selection():
    vol = _phantom()
    c = crop_to_brain(vol, margin=2)
    assert c.image.shape[0] < vol.image.shape[0] and c.brain.sum() == vol.brain.sum()
    assert np.allclose(_world(vol, vol.brain), _world(c, c.brain))
    n = normalise_intensity(c, 1, 99)
    vals = n.image[n.brain]
    assert vals.min() == -1 and vals.max() == 1 and np.all(n.image[~n.brain] == -1)
    assert np.isclose(np.percentile(vals, 50), np.percentile((c.image[c.brain] - np.percentile(c.image[c.brain], 1))
                      / np.ptp(np.percentile(c.image[c.brain], [1, 99])) * 2 - 1, 50), atol=1e-4)
    sq = to_square_slices(n, 24)
    assert sq.image.shape == (24, 24, n.image.shape[2])
    sel = select_slices(sq.brain, 0.5)
    area = sq.brain.sum((0, 1))
    assert np.all(area[sel] >= 0.5 * area.max()) and np.all(np.delete(area, sel) < 0.5 * area.max())
    with pytest.raises(ValueError, match="empty"):
        select_slices(np.zeros((4, 4, 4), bool))


def test_brain_from_background_and_landmark_matching():
    vol = _phantom()
    b = brain_from_background(Volume(vol.image, vol.affine))
    assert (b.brain == vol.brain).mean() > 0.98
    n = normalise_intensity(vol)
    ref = np.linspace(-0.6, 0.8, 9)
    m = match_landmarks(n, ref)
    assert np.allclose(np.percentile(m.image[m.brain], range(10, 100, 10)), ref, atol=0.05)


def _write(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_reader_errors_name_the_file_and_problem(tmp_path):
    good = _write(tmp_path / "good.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    assert read_volume(good).shape == (8, 8, 8)
    single = _write(tmp_path / "s.nii.gz", np.random.rand(8, 8, 8, 1).astype(np.float32))
    assert read_volume(single).shape == (8, 8, 8)
    cases = {
        "4d.nii.gz": (np.random.rand(8, 8, 8, 3).astype(np.float32), "4-D"),
        "2d.nii.gz": (np.random.rand(8, 8).astype(np.float32), "3-D"),
        "nan.nii.gz": (np.full((8, 8, 8), np.nan, np.float32), "NaN"),
        "zero.nii.gz": (np.zeros((8, 8, 8), np.float32), "empty"),
    }
    for name, (data, match) in cases.items():
        with pytest.raises(VolumeError, match=match) as err:
            read_volume(_write(tmp_path / name, data))
        assert name in str(err.value)
    raw = gzip.decompress(good.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(VolumeError, match="trunc.nii.gz.*corrupt or truncated"):
        read_volume(trunc)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti at all")
    with pytest.raises(VolumeError, match="junk.nii.gz"):
        read_volume(junk)
    bad_nrrd = tmp_path / "bad.nrrd"
    bad_nrrd.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n\x00\x01")
    with pytest.raises(VolumeError, match="bad.nrrd"):
        read_volume(bad_nrrd)
    with pytest.raises(VolumeError, match="unknown volume format"):
        (tmp_path / "x.mha").write_text("x")
        read_volume(tmp_path / "x.mha")
    with pytest.raises(VolumeError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")


def test_nrrd_lps_is_placed_like_nifti(tmp_path):
    import nrrd
    data = np.zeros((10, 12, 6), np.int16)
    data[2, 3, 4] = 7
    nrrd.write(str(tmp_path / "v.nrrd"), data, {"space": "left-posterior-superior",
                                                "space directions": np.diag([0.5, 0.5, 2.0]),
                                                "space origin": np.array([10.0, 20.0, 30.0])})
    img = read_volume(tmp_path / "v.nrrd")
    world = img.affine @ np.array([2, 3, 4, 1])
    assert np.allclose(world[:3], [-(10 + 1.0), -(20 + 1.5), 30 + 8.0])  # LPS -> RAS flips x and y
    mask = read_mask(tmp_path / "v.nrrd", label=7)
    assert np.asarray(mask.dataobj).sum() == 1
    with pytest.raises(VolumeError, match="no voxel has label 3"):
        read_mask(tmp_path / "v.nrrd", label=3)


def _normalised_host():
    vol = preprocess(_phantom(shape=(48, 48, 40)), 48, "given")
    return Volume(vol.image, vol.affine, vol.brain)


def test_synthetic_lesion_mask_is_exact():
    host = _normalised_host()
    rng = np.random.default_rng(0)
    for polarity in ("hyper", "hypo"):
        out, info = synthetic_lesion(host, rng, radius_mm=(3, 6), polarity=polarity)
        assert out.lesion.sum() == info.voxels > 0
        assert not (out.lesion & ~host.brain).any(), "lesion stays inside the brain"
        changed = np.abs(out.image - host.image) > 1e-6
        assert np.all(changed[out.lesion] | (np.abs(out.image[out.lesion]) == 1))
        # outside the mask only a thin partial-volume rim (rim_mm = 2) may change, and at most half-way
        rim = ~out.lesion & changed
        dist = ndimage.distance_transform_edt(~out.lesion, sampling=host.spacing)
        assert dist[rim].max() <= 2.0 + host.spacing.max()
        inside_shift = np.abs(out.image - host.image)[out.lesion].mean()
        assert np.abs(out.image - host.image)[rim].max() <= 0.5 * np.abs(out.image - host.image).max() + 1e-6
        assert inside_shift > 0
        sign = 1 if polarity == "hyper" else -1
        assert sign * (out.image[out.lesion].mean() - host.image[out.lesion].mean()) > 0.2


def test_paste_tumour_mask_is_exact_and_intensity_matched():
    host = _normalised_host()
    donor_raw = _phantom(shape=(40, 48, 36))
    donor = preprocess(donor_raw, 40, "given")
    out, info = paste_tumour(host, donor, np.random.default_rng(1), "phantom")
    assert out.lesion.sum() == info.voxels > 0 and not (out.lesion & ~host.brain).any()
    assert np.array_equal(out.image[~out.lesion], host.image[~out.lesion]), "only masked voxels change"
    assert out.image[out.lesion].mean() > host.image[host.brain].mean(), "the bright tumour stays bright"


def test_augment_keeps_range_background_and_shape():
    host = _normalised_host()
    x = torch.from_numpy(np.stack([host.image[:, :, k] for k in (15, 20, 25)]))[:, None]
    out = Augment()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert (out == -1).float().mean() > 0.2, "background stays -1"
    assert not torch.allclose(out, x)
    same = Augment(p=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-3)

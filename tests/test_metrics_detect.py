"""Metrics against scikit-learn, threshold calibration, post-processing, NIfTI maps in native space."""

import zlib

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, precision_score, recall_score, \
    roc_auc_score

from addmlib.detect import score_volume, to_native_nifti
from addmlib.diffusion import GaussianDiffusion
from addmlib.metrics import BinnedScores, calibrate_threshold, confusion, mean_std, overlap_metrics
from addmlib.evaluate import PostProcessing, post_process
from addmlib.post_processing import gaussian_filter, median_filter, remove_small_components, restrict_to_brain
from tests.test_data_preprocess import _phantom
from addmlib.data.preprocess import preprocess


def _scores(n=200_000, seed=0, pos_frac=0.05):
    rng = np.random.default_rng(seed)
    gt = rng.random(n) < pos_frac
    scores = np.clip(rng.normal(0.4, 0.15, n) + gt * rng.normal(0.25, 0.15, n), 0, 2)
    return scores, gt


def test_binned_auroc_and_ap_match_sklearn():
    scores, gt = _scores()
    h = BinnedScores(0, 2, bins=20000)
    for part in np.array_split(np.arange(len(gt)), 7):  # streaming in chunks
        h.update(scores[part], gt[part])
    assert h.auroc() == pytest.approx(roc_auc_score(gt, scores), abs=2e-4)
    assert h.auprc() == pytest.approx(average_precision_score(gt, scores), abs=2e-3)


def test_overlap_metrics_match_sklearn_and_are_not_swapped():
    rng = np.random.default_rng(1)
    gt = rng.random(5000) < 0.1
    pred = gt ^ (rng.random(5000) < 0.05)
    m = overlap_metrics(*confusion(pred, gt)[:3])
    assert m["dice"] == pytest.approx(f1_score(gt, pred))
    assert m["iou"] == pytest.approx(jaccard_score(gt, pred))
    assert m["precision"] == pytest.approx(precision_score(gt, pred))
    assert m["recall"] == pytest.approx(recall_score(gt, pred))
    # a prediction covering everything: recall 1, precision = prevalence
    allpos = overlap_metrics(*confusion(np.ones_like(gt), gt)[:3])
    assert allpos["recall"] == 1 and allpos["precision"] == pytest.approx(gt.mean())


def test_edge_cases():
    h = BinnedScores()
    h.update(np.full(100, 0.3), np.zeros(100, bool))
    assert np.isnan(h.auroc()) and np.isnan(h.auprc()), "no positives: undefined, not a number"
    c = BinnedScores()
    gt = np.arange(100) < 10
    c.update(np.full(100, 0.7), gt)
    assert c.auroc() == pytest.approx(0.5) and c.auprc() == pytest.approx(0.1)
    assert overlap_metrics(0, 0, 0) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert overlap_metrics(0, 5, 0)["dice"] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        h.update(np.array([np.nan]), np.array([True]))
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros(3, bool), np.zeros(4, bool))
    assert mean_std([1.0, 3.0, float("nan")]) == (2.0, 1.0)


def test_best_dice_is_the_maximum_over_thresholds():
    scores, gt = _scores(20000)
    h = BinnedScores(0, 2, bins=400)
    h.update(scores, gt)
    best, thr = h.best_dice()
    brute = max(f1_score(gt, scores >= t) for t in h.edges[::5])
    assert best >= brute - 1e-9 and best == pytest.approx(f1_score(gt, scores >= thr), abs=1e-3)


@pytest.mark.parametrize("fpr", [0.01, 0.05])
def test_calibrated_threshold_gives_the_requested_fpr_on_healthy_data(fpr):
    rng = np.random.default_rng(2)
    healthy = np.abs(rng.normal(0, 0.2, 500_000))
    h = BinnedScores(0, 2, bins=20000)
    h.update(healthy, np.zeros(len(healthy), bool))
    thr = calibrate_threshold(h, fpr)
    assert (healthy >= thr).mean() == pytest.approx(fpr, abs=0.002)
    fresh = np.abs(rng.normal(0, 0.2, 500_000))  # new healthy data from the same law
    assert (fresh >= thr).mean() == pytest.approx(fpr, abs=0.003)


def test_post_processing_on_blobs():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:10, 5:10, 5:10] = 1.0  # a 125-voxel blob
    vol[15, 15, 15] = 1.0  # an isolated voxel
    brain = np.zeros_like(vol, bool)
    brain[3:18, 3:18, 3:18] = True
    pred = remove_small_components(vol > 0.5, 10)
    assert pred.sum() == 125 and not pred[15, 15, 15]
    med = median_filter(vol, 3)
    assert med[15, 15, 15] == 0 and med[7, 7, 7] == 1
    r = restrict_to_brain(vol, brain, erode_mm=3.0)
    assert r[15, 15, 15] == 0 and r[7, 7, 7] == 1 and r[5, 5, 5] == 0  # 5 is within 3 mm of the brain's edge
    assert np.array_equal(restrict_to_brain(vol, brain), np.where(brain, vol, 0))


def test_the_in_plane_median_keeps_a_lesion_one_scored_slice_thick_that_the_cube_removes():
    stack = np.zeros((12, 12, 5), np.float32)
    stack[3:8, 3:8, 2] = 1.0  # 5 x 5 voxels in one slice of the stack
    cube, plane = median_filter(stack, 3), median_filter(stack, 3, in_plane=True)
    assert cube.max() == 0  # at most 9 of a 3 x 3 x 3 window's 27 voxels are in the lesion
    assert plane[4:7, 4:7, 2].min() == 1 and plane[stack == 0].max() == 0  # kept in its slice (corners rounded)
    one = np.random.default_rng(0).random((12, 12, 1)).astype(np.float32)  # a single slice: filtered alike
    assert np.array_equal(median_filter(one, 5), median_filter(one, 5, in_plane=True))


def test_the_gaussian_keeps_a_small_lesion_that_a_wide_median_deletes_and_never_crosses_slices():
    stack = np.zeros((16, 16, 3), np.float32)
    stack[7:10, 7:10, 1] = 1.0  # 3 x 3 pixels: under half of a 5 x 5 median window
    assert median_filter(stack, 5, in_plane=True).max() == 0
    smooth = gaussian_filter(stack, 1.5)
    assert np.unravel_index(np.argmax(smooth), smooth.shape) == (8, 8, 1) and smooth[8, 8, 1] > 0.3
    assert smooth[:, :, [0, 2]].max() == 0  # in each slice's plane only
    assert smooth.sum() == pytest.approx(stack.sum(), rel=1e-4)  # mass kept (edges extended, far from them here)
    assert gaussian_filter(stack, 0.0) is stack
    pp = PostProcessing(erode_mm=0.0, median_size=1, gaussian_sigma=1.5)
    brain = np.ones(stack.shape, bool)
    assert np.allclose(post_process(stack, brain, np.ones(3), pp), smooth)


def test_a_single_slice_is_eroded_in_its_plane_only():
    brain = np.zeros((20, 20, 1), bool)
    brain[4:16, 4:16] = True
    kept = restrict_to_brain(np.ones(brain.shape, np.float32), brain, erode_mm=3.0, spacing=(1.0, 1.0, 1.0)) > 0
    assert kept.sum() == 6 * 6 and kept[10, 10, 0]  # 3 mm off each in-plane edge, nothing off along z


@pytest.mark.parametrize("codes, zooms", [("LPS", (0.9, 0.9, 1.4)), ("PIR", (1.0, 1.0, 1.3)),
                                          ("RAS", (1.2, 0.8, 2.0))])
def test_nifti_map_has_the_input_shape_and_affine(tmp_path, codes, zooms):
    vol = _phantom(codes=codes, zooms=zooms)
    out = preprocess(vol, 32, "given")
    amap = out.lesion.astype(np.float32)  # a "map" that lights up exactly the lesion
    path = to_native_nifti(amap, out.affine, vol.affine, vol.image.shape, tmp_path / "map.nii.gz")
    img = nib.load(str(path))
    assert img.shape == vol.image.shape and np.allclose(img.affine, vol.affine)
    back = np.asarray(img.dataobj) > 0.5
    assert 2 * (back & vol.lesion).sum() / (back.sum() + vol.lesion.sum()) > 0.6


def test_score_volume_with_an_oracle_model_finds_the_difference():
    """A 'model' that always predicts the noise of a healthy reference reconstructs the reference: the map is the
    difference between the volume and the reference."""
    d = GaussianDiffusion(100)
    rng = np.random.default_rng(0)
    ref = rng.uniform(-0.5, 0.5, (16, 16, 6)).astype(np.float32)
    vol = ref.copy()
    vol[4:8, 4:8, 2] += 0.4

    def make_oracle(batch_ref):
        def eps_model(xt, t):
            ab = d.alphas_cumprod[t].reshape(-1, 1, 1, 1).float()
            return (xt - ab.sqrt() * batch_ref[: len(xt)]) / (1 - ab).sqrt()
        return eps_model

    slices = np.array([1, 2, 3])
    batch_ref = torch.from_numpy(ref[:, :, slices].transpose(2, 0, 1))[:, None]
    s = score_volume(make_oracle(batch_ref), d, vol, slices, 25, 5, "ddim", batch_size=8)
    assert np.allclose(s.abs_error[4:8, 4:8, 2], 0.4, atol=1e-4)
    assert s.abs_error[:, :, [1, 3]].max() < 1e-4 and s.abs_error[:, :, [0, 4, 5]].max() == 0
    assert np.allclose(s.squared_error, s.abs_error ** 2, atol=1e-5)


def _scored(amap, lesion, brain, vid="v"):
    from addmlib.evaluate import ScoredVolume
    z = np.zeros_like(amap)
    return ScoredVolume(vid, "eval_b", np.arange(amap.shape[2]), z, z, amap, amap ** 2, brain, lesion, None)


def test_protocol_calibrates_on_healthy_and_measures_a_perfect_map():
    from addmlib.evaluate import PostProcessing, calibrate, healthy_histograms, measure
    rng = np.random.default_rng(0)
    brain = np.ones((16, 16, 8), bool)
    healthy = [_scored(rng.uniform(0, 0.3, brain.shape).astype(np.float32), np.zeros_like(brain), brain, "h1"),
               _scored(rng.uniform(0, 0.6, brain.shape).astype(np.float32), np.zeros_like(brain), brain, "h2")]
    hists = healthy_histograms(healthy)
    assert 0.25 < calibrate(hists, 0.05, exclude="h2") < 0.3, "leave-one-host-out uses only the other brain"
    assert 0.55 < calibrate(hists, 0.05, exclude="h1") < 0.6
    with pytest.raises(ValueError, match="at least two hosts"):
        calibrate({"h1": hists["h1"]}, 0.05, exclude="h1")
    thr = calibrate(hists, 0.05, exclude="h2")
    lesion = np.zeros_like(brain)
    lesion[4:8, 4:8, 2:5] = True
    amap = np.where(lesion, 0.9, rng.uniform(0, 0.3, brain.shape)).astype(np.float32)
    res = measure([_scored(amap, lesion, brain)], {"v": thr}, PostProcessing(min_component_voxels=1))
    p = res["pooled"]
    assert p["auroc"] == pytest.approx(1.0) and p["auprc"] == pytest.approx(1.0, abs=1e-3)
    assert p["recall"] == 1.0 and p["precision"] < 1.0  # 5 % of healthy voxels exceed the threshold
    assert p["best_dice"] == pytest.approx(1.0, abs=1e-3)
    assert res["per_slice_dice"][2] == 3 and res["anoddpm"]["recall"] == 1.0


def test_measure_pools_each_host_apart():
    """``by_host``: the metrics of each host brain's volumes pooled on their own (a two-host tuning split shows
    whether its hosts agree); volumes that name no host (set A) are in the pooled metrics only."""
    from types import SimpleNamespace

    from addmlib.evaluate import PostProcessing, measure
    rng = np.random.default_rng(1)
    brain = np.ones((16, 16, 8), bool)
    lesion = np.zeros_like(brain)
    lesion[4:8, 4:8, 2:5] = True
    perfect = np.where(lesion, 0.9, rng.uniform(0, 0.3, brain.shape)).astype(np.float32)
    blind = rng.uniform(0, 1, brain.shape).astype(np.float32)
    vols = [_scored(perfect, lesion, brain, "a1"), _scored(blind, lesion, brain, "b1"), _scored(perfect, lesion, brain, "t")]
    for v, host in zip(vols, ("a", "b", None)):
        object.__setattr__(v, "volume", SimpleNamespace(meta={} if host is None else {"host": host}))
    res = measure(vols, {v.id: 0.5 for v in vols}, PostProcessing(min_component_voxels=1), anoddpm=False)
    assert sorted(res["by_host"]) == ["a", "b"]
    assert res["by_host"]["a"]["auprc"] == pytest.approx(1.0, abs=1e-3)
    assert res["by_host"]["b"]["auroc"] == pytest.approx(0.5, abs=0.1) and res["by_host"]["b"]["auprc"] < 0.3
    assert res["by_host"]["a"]["lesion_voxels"] == int(lesion.sum())
    assert res["by_host"]["b"]["auprc"] < res["pooled"]["auprc"] < res["by_host"]["a"]["auprc"]


def test_size_classes_split_the_drawn_diameters_at_their_edges():
    from addmlib.evaluate import size_class, size_classes
    assert size_classes() == ["<10 mm", "10-17 mm", ">=17 mm"]
    assert [size_class(d) for d in (4, 9.9, 10, 16.9, 17, 50)] == ["<10 mm"] * 2 + ["10-17 mm"] * 2 + [">=17 mm"] * 2
    assert size_class(30, (20, 40, 60)) == "20-40 mm"
    for bad in (0, -3, float("nan")):
        with pytest.raises(ValueError, match="diameter must be a positive number of mm"):
            size_class(bad)


def test_measure_pools_each_kind_and_size_apart():
    """``by_kind_size``: a map that finds the small bright lesions and misses the large ones shows it there, while
    ``by_kind`` mixes both; ``by_size`` pools the kinds of one size class; a real tumour (no drawn lesion) is in
    the pooled metrics only."""
    from types import SimpleNamespace

    from addmlib.evaluate import PostProcessing, measure
    rng = np.random.default_rng(2)
    brain = np.ones((16, 16, 8), bool)
    lesion = np.zeros_like(brain)
    lesion[4:8, 4:8, 2:5] = True
    found = np.where(lesion, 0.9, rng.uniform(0, 0.3, brain.shape)).astype(np.float32)
    missed = np.where(lesion, 0.0, rng.uniform(0.1, 0.3, brain.shape)).astype(np.float32)
    drawn = [("hyper", 6.0, found), ("hyper", 20.0, missed), ("hypo", 6.0, found), ("hypo", 12.0, found),
             (None, None, found)]
    vols = []
    for i, (kind, diameter, amap) in enumerate(drawn):
        v = _scored(amap, lesion, brain, f"v{i}")
        meta = {} if kind is None else {"lesion_kind": kind, "lesion": {"kind": kind, "diameter_mm": diameter}}
        object.__setattr__(v, "volume", SimpleNamespace(meta=meta))
        vols.append(v)
    res = measure(vols, {v.id: 0.5 for v in vols}, PostProcessing(min_component_voxels=1), anoddpm=False)
    by = res["by_kind_size"]
    assert list(by) == ["hyper", "hypo"] and list(by["hyper"]) == ["<10 mm", ">=17 mm"]
    assert list(by["hypo"]) == ["<10 mm", "10-17 mm"]
    assert by["hyper"]["<10 mm"]["auroc"] == pytest.approx(1.0)
    assert by["hyper"][">=17 mm"]["auroc"] == pytest.approx(0.0)
    assert 0.3 < res["by_kind"]["hyper"]["auroc"] < 0.8
    assert list(res["by_size"]) == ["<10 mm", "10-17 mm", ">=17 mm"]
    assert res["by_size"]["<10 mm"]["lesion_voxels"] == 2 * int(lesion.sum())  # hyper and hypo, not the tumour
    assert res["by_size"][">=17 mm"]["auroc"] == pytest.approx(0.0)


def test_fast_denoiser_channels_last_matches_the_plain_model():
    from addmlib.detect import fast_denoiser
    from addmlib.nets import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,)), 16)
    for p in net.parameters():  # non-zero output layer, so the comparison means something
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 50, 500])
    with torch.no_grad():
        plain = net(x, t)
        fast = fast_denoiser(net, channels_last=True)(x, t)
    assert fast.dtype == torch.float32 and torch.allclose(plain, fast, atol=1e-5)


def test_channels_last_auto_is_on_for_cpu_scoring_only():
    from addmlib.evaluate import use_channels_last

    assert use_channels_last("auto", torch.device("cpu")) and not use_channels_last("auto", torch.device("cuda"))
    assert use_channels_last("on", torch.device("cuda")) and not use_channels_last("off", torch.device("cpu"))
    with pytest.raises(ValueError, match="channels_last"):
        use_channels_last("yes", torch.device("cpu"))


def test_evaluation_kernels_get_the_allocator_settings_unless_set_or_disabled(monkeypatch):
    import os

    from addmlib.pipeline import SCORING_MALLOC_ENV, kernel_env

    for k in SCORING_MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "123")  # the user's own setting wins
    with kernel_env("03_evaluate"):
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "33554432" and os.environ["MALLOC_TOP_PAD_"] == "123"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_TOP_PAD_"] == "123"
    with kernel_env("02_train"):
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ, "training was not measured faster with them"
    monkeypatch.setenv("ADDM_MALLOC_TUNING", "0")
    with kernel_env("03_evaluate"):
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


def test_intensity_fusion_ranks_by_the_sum_of_z_scores_and_stays_in_range():
    from scipy.stats import rankdata
    from addmlib.post_processing import fuse_intensity, intensity_scale
    rng = np.random.default_rng(1)
    r, x = rng.uniform(0, 2, 5000), rng.uniform(-1, 1, 5000)
    sr, sx, w = 0.1, 0.4, 3.0
    m = fuse_intensity(r, x, intensity_scale(sr, sx, w))
    assert np.array_equal(rankdata(m), rankdata(r / sr + w * x / sx))  # the same order as z(r) + w z(x)
    m32 = fuse_intensity(r.astype(np.float32), x.astype(np.float32), intensity_scale(sr, sx, w))
    assert m32.min() >= 0 and m32.max() <= 2 and m32.dtype == np.float32
    assert fuse_intensity(r, x, 0.0) is r, "weight 0 is the residual alone"
    with pytest.raises(ValueError, match="weight >= 0"):
        intensity_scale(sr, sx, -1.0)
    with pytest.raises(ValueError, match="image_std > 0"):
        intensity_scale(sr, 0.0, 1.0)


class _Vol:
    """The fields of a PreparedVolume that the evaluation reads."""

    def __init__(self, vid, split, image, brain, lesion=None, host=None):
        self.id, self.split, self.image, self.brain, self.lesion = vid, split, image, brain, lesion
        self.affine, self.slices, self.meta = np.eye(4), np.arange(image.shape[2]), {"host": host} if host else {}


def test_evaluation_fuses_the_map_with_the_intensity_scaled_on_the_other_healthy_brains():
    """A residual that sees the lesion weakly, and an image where the lesion is bright but so is a tissue: each alone
    ranks the lesion below some healthy voxels; fused, each covers the other's false alarms."""
    from addmlib.evaluate import (PostProcessing, evaluate_model, fusion_scale, healthy_moments, score_split)
    rng = np.random.default_rng(0)
    shape = (24, 24, 6)
    brain = np.zeros(shape, bool)
    brain[2:22, 2:22] = True
    tissue = np.zeros(shape, bool)
    tissue[4:10, 12:20] = True  # bright healthy tissue, which the model reconstructs

    def brain_image(lesion=None):
        img = np.where(brain, rng.normal(0.0, 0.1, shape), -1.0)
        img[tissue] += 0.6
        if lesion is not None:
            img[lesion] += 0.6
        return np.clip(img, -1, 1).astype(np.float32)

    lesion = np.zeros(shape, bool)
    lesion[13:19, 5:11, 1:5] = True
    hosts = {f"h{i}": brain_image() for i in range(2)}
    data = {"val_healthy": [_Vol(h, "val_healthy", img, brain) for h, img in hosts.items()],
            "eval_b": [_Vol("h0-les", "eval_b", brain_image(lesion), brain, lesion, host="h0")]}
    spread = {"h0": 0.1, "h1": 0.15}  # the two healthy brains' residuals differ in spread

    def scorer(vol, slices):
        sd = spread.get(vol.meta.get("host", vol.id))
        r = np.abs(np.random.default_rng(zlib.crc32(vol.id.encode())).normal(0, sd, shape)).astype(np.float32)
        if vol.lesion is not None:
            r[vol.lesion] += sd  # the lesion is not healed: a weak, noisy excess
        return vol.image, r, r ** 2

    dataset = type("D", (), {"volumes": lambda self, split: data[split]})()
    pp = PostProcessing(erode_mm=0.0, median_size=1, min_component_voxels=1)
    plain, _ = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None)
    fused, scored = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 2.0)
    assert "intensity_fusion" not in plain
    floor = np.concatenate([v.image[brain] for v in data["eval_b"]])
    floor_ap = average_precision_score(lesion[brain], floor)
    assert fused["eval_b"]["pooled"]["auprc"] > max(plain["eval_b"]["pooled"]["auprc"], floor_ap) + 0.1, \
        (fused["eval_b"]["pooled"]["auprc"], plain["eval_b"]["pooled"]["auprc"], floor_ap)
    # the set-B volume is scaled on the other host only, as its threshold is calibrated
    moments = healthy_moments(score_split(scorer, data["val_healthy"], 1, pp), pp)
    info = fused["intensity_fusion"]
    assert info["weight"] == 2.0 and set(info["val_healthy"]) == {"h0", "h1"}
    assert info["eval_b"]["h0-les"] == pytest.approx(fusion_scale(moments, 2.0, exclude="h0"), rel=0.1)
    assert fusion_scale(moments, 2.0, exclude="h0") > 1.3 * fusion_scale(moments, 2.0, exclude="h1")
    assert scored["eval_b"][0].amap.max() <= 2.0
    with pytest.raises(ValueError, match="no healthy brain other than 'h0'"):
        fusion_scale({"h0": moments["h0"]}, 2.0, exclude="h0")
    # nothing of h0's own scan reaches the threshold of its set-B volume: change h0's residuals, it stays
    spread["h0"] = 0.3
    again, _ = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 2.0)
    assert again["thresholds_without_host"]["h0"] == fused["thresholds_without_host"]["h0"]
    assert again["eval_b"]["per_volume"][0]["threshold"] == fused["thresholds_without_host"]["h0"]
    assert again["thresholds_without_host"]["h1"] != fused["thresholds_without_host"]["h1"]


def test_the_gaussian_filter_setting_is_validated_by_name():
    from addmlib.config import ConfigError, EvalConfig, validate

    assert validate(EvalConfig, {"run_dir": "x", "gaussian_sigma": 2.0}, "p").gaussian_sigma == 2.0
    with pytest.raises(ConfigError, match="gaussian_sigma must be a finite number >= 0"):
        validate(EvalConfig, {"run_dir": "x", "gaussian_sigma": -1.0}, "p")

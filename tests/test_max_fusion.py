"""The max fusion: the larger of the fused map and the residual alone, each read against the healthy brains."""

import zlib

import numpy as np
import pytest

from addmlib.config import ConfigError, EvalConfig, LeverConfig, validate
from addmlib.evaluate import PostProcessing, evaluate_model, fusion_params, healthy_moments, score_split
from addmlib.post_processing import fuse_intensity, max_fusion
from tests.test_metrics_detect import _Vol


def test_max_fusion_puts_the_residual_on_the_fused_scale_by_two_quantiles():
    rng = np.random.default_rng(0)
    f, r = rng.uniform(0, 1.5, 1000).astype(np.float32), rng.uniform(0, 0.5, 1000).astype(np.float32)
    m = max_fusion(f, r, (0.5, 0.8), (0.01, 0.3))
    g = 0.5 + 0.3 * (r - 0.01) / 0.29
    assert m.dtype == np.float32 and np.allclose(m, np.maximum(f, g), atol=1e-6)
    assert max_fusion(np.array([0.0]), np.array([0.3]), (0.5, 0.8), (0.01, 0.3))[0] == pytest.approx(0.8)  # r_q -> f_q
    assert max_fusion(np.array([0.0]), np.array([0.01]), (0.5, 0.8), (0.01, 0.3))[0] == pytest.approx(0.5)
    assert max_fusion(np.array([0.1]), np.array([1.9]), (0.5, 0.8), (0.01, 0.3))[0] == 2.0  # clipped to the range
    with pytest.raises(ValueError, match="quantiles must exceed the medians"):
        max_fusion(f, r, (0.5, 0.5), (0.01, 0.3))


def _two_lesions():
    """Two healthy hosts and a set-B volume of host h0 with two lesions: a bright one that the residual barely sees,
    and one of ordinary intensity that only the residual sees (a lesion the intensity term of the sum hides)."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 6)
    brain = np.zeros(shape, bool)
    brain[2:22, 2:22] = True
    bright, plain = np.zeros(shape, bool), np.zeros(shape, bool)
    bright[4:9, 4:9, 1:5] = True
    plain[14:19, 14:19, 1:5] = True

    def image(lesion=False):
        img = np.where(brain, rng.normal(0.0, 0.15, shape), -1.0)
        if lesion:
            img[bright] += 0.7
        return np.clip(img, -1, 1).astype(np.float32)

    data = {"val_healthy": [_Vol(h, "val_healthy", image(), brain) for h in ("h0", "h1")],
            "eval_b": [_Vol("h0-les", "eval_b", image(True), brain, bright | plain, host="h0")]}
    spread = {"h0": 0.05, "h1": 0.05}

    def scorer(vol, slices):
        sd = spread[vol.meta.get("host", vol.id)]
        r = np.abs(np.random.default_rng(zlib.crc32(vol.id.encode())).normal(0, sd, shape)).astype(np.float32)
        if vol.lesion is not None:
            r[plain] += 6 * sd  # healed: a strong residual, at an ordinary intensity
            r[bright] += 0.5 * sd  # barely healed
        return vol.image, r, r ** 2

    return data, scorer, spread, bright, plain


def test_the_max_fusion_finds_what_either_map_finds_and_keeps_the_host_out():
    data, scorer, spread, bright, plain = _two_lesions()
    dataset = type("D", (), {"volumes": lambda self, split: data[split]})()
    pp = PostProcessing(erode_mm=0.0, median_size=1, min_component_voxels=1)
    alone, _ = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None)
    summed, _ = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 4.0)
    larger, scored = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 4.0, "max", 0.99)
    ap = {name: res["eval_b"]["pooled"]["auprc"] for name, res in (("alone", alone), ("sum", summed), ("max", larger))}
    assert ap["max"] > max(ap["alone"], ap["sum"]) + 0.05, ap
    info = larger["intensity_fusion"]
    assert info["rule"] == "max" and info["quantile"] == 0.99 and "quantile" not in summed["intensity_fusion"]
    # the set-B volume's anchors come from the other host alone, as its threshold does
    healthy = score_split(scorer, data["val_healthy"], 1, pp)
    moments = healthy_moments(healthy, pp)
    own = fusion_params(healthy, moments, 4.0, pp, "max", 0.99, exclude="h0")
    assert info["anchors"]["h0"] == own.anchors and info["anchors"]["None"] != own.anchors
    h1 = healthy[1]
    f1 = fuse_intensity(h1.raw[h1.brain], h1.image[h1.brain], own.scale)
    assert own.anchors[0] == pytest.approx(tuple(np.quantile(f1, [0.5, 0.99])))
    assert own.anchors[1] == pytest.approx(tuple(np.quantile(h1.raw[h1.brain], [0.5, 0.99])))
    assert 0 <= scored["eval_b"][0].amap.min() and scored["eval_b"][0].amap.max() <= 2.0
    spread["h0"] = 0.2  # h0's own scan changes: its set-B volume's map and threshold do not
    again, rescored = evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 4.0, "max", 0.99)
    assert again["intensity_fusion"]["anchors"]["h0"] == own.anchors
    assert again["thresholds_without_host"]["h0"] == larger["thresholds_without_host"]["h0"]
    with pytest.raises(ValueError, match="needs an intensity_weight > 0"):
        evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 0.0, "max")
    with pytest.raises(ValueError, match="fusion must be 'sum' or 'max'"):
        evaluate_model(scorer, dataset, ["eval_b"], 1, 0.05, pp, False, None, None, 4.0, "product")


def test_the_max_fusion_parameters_are_checked_where_they_are_set():
    assert validate(EvalConfig, {"intensity_weight": 4, "fusion": "max"}, "test").fusion == "max"
    with pytest.raises(ConfigError, match="fusion 'max'.*needs intensity_weight > 0"):
        validate(EvalConfig, {"fusion": "max"}, "test")
    with pytest.raises(ConfigError, match="fusion_quantile must be in"):
        validate(EvalConfig, {"intensity_weight": 4, "fusion": "max", "fusion_quantile": 1.0}, "test")
    with pytest.raises(ConfigError, match="fusion"):
        validate(EvalConfig, {"intensity_weight": 4, "fusion": "product"}, "test")
    with pytest.raises(ConfigError, match="baseline_fusions must hold"):
        validate(LeverConfig, {"baseline_fusions": ["sum", "mean"]}, "test")
    with pytest.raises(ConfigError, match="baseline_fusion_quantile"):
        validate(LeverConfig, {"baseline_fusion_quantile": 0.2}, "test")

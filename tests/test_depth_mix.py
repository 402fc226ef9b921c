"""The mix of a shallow and a deep map (``evaluate.with_deep_map``): each map read in units of its healthy quantile,
the scales set on the IXI calibration individuals, recorded in detector.json and reused when a scan is scored."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from addmlib import evaluate, pipeline, score
from addmlib.config import ConfigError, EvalConfig, validate
from addmlib.data import ixi
from addmlib.data.prepare import PreparedDataset, PreparedVolume
from addmlib.evaluate import MIX_QUANTILE, PostProcessing, mix_scales, mixed_scorer, with_deep_map

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "params" / "ci" / "ci.yaml"
NO_PP = PostProcessing(0.0, 1, 1)


def _volume(vid: str, n: int = 16) -> PreparedVolume:
    brain = np.zeros((n, n, 1), bool)
    brain[2:-2, 2:-2] = True
    return PreparedVolume(vid, "ixi_calib", np.zeros((n, n, 1), np.float32), brain, None, np.eye(4), np.array([0]), {})


def _constant_part(values: dict[str, np.ndarray]):
    """A scorer whose map of volume ``v`` is ``values[v.id]`` (reconstruction: the map + 1; squared error: its
    square)."""
    def part(vol, slices):
        m = values[vol.id].astype(np.float32)
        return m + 1, m, m ** 2
    return part


def test_the_mix_is_the_mean_of_the_maps_in_units_of_their_scales():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (16, 16, 1)), rng.uniform(0, 5, (16, 16, 1))
    vol = _volume("v")
    rec, amap, sq = mixed_scorer([_constant_part({"v": a}), _constant_part({"v": b})], [0.5, 2.0])(vol, vol.slices)
    assert np.allclose(amap, 0.5 * (a / 0.5 + b / 2.0) / 2, atol=1e-6)
    assert np.allclose(rec, b + 1) and np.allclose(sq, b ** 2)  # the last (deep) map's reconstruction
    # a map scaled by c with its scale scaled by c leaves the mix as it was: only the calibrated units count
    _, again, _ = mixed_scorer([_constant_part({"v": a}), _constant_part({"v": 10 * b})], [0.5, 20.0])(vol, vol.slices)
    assert np.allclose(amap, again, atol=1e-5)
    with pytest.raises(ValueError, match="one scale and one weight per map"):
        mixed_scorer([_constant_part({"v": a})], [1.0, 2.0])
    with pytest.raises(ValueError, match="must be > 0"):
        mixed_scorer([_constant_part({"v": a}), _constant_part({"v": b})], [1.0, 0.0])


def test_the_scales_are_the_healthy_quantile_over_the_kept_brain():
    rng = np.random.default_rng(1)
    vols = [_volume("h1"), _volume("h2")]
    maps = {v.id: rng.exponential(1.0, (16, 16, 1)) for v in vols}
    doubled = {k: 2 * m for k, m in maps.items()}
    scales = mix_scales([_constant_part(maps), _constant_part(doubled)], vols, NO_PP)
    inside = np.concatenate([maps[v.id][v.brain] for v in vols])  # outside the brain never counts
    assert scales[0] == pytest.approx(np.quantile(inside, MIX_QUANTILE), rel=1e-5)
    assert scales[1] == pytest.approx(2 * scales[0], rel=1e-5)
    with pytest.raises(ValueError, match="ixi_calib"):
        mix_scales([_constant_part(maps)], [], NO_PP)
    with pytest.raises(ValueError, match="zero on the healthy brains"):
        mix_scales([_constant_part({k: 0 * m for k, m in maps.items()})], vols, NO_PP)


def test_bad_mix_parameters_are_named():
    with pytest.raises(ConfigError, match="deep_t_star_ensemble"):
        validate(EvalConfig, {"deep_t_star_ensemble": [0, 100]}, "test")
    with pytest.raises(ConfigError, match="deep_draws"):
        validate(EvalConfig, {"deep_t_star_ensemble": [100], "deep_draws": 0}, "test")


@pytest.mark.slow
@pytest.mark.registry
def test_an_evaluated_mix_records_its_scales_and_a_scan_is_scored_with_them(ci_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(ci_run, folder, ignore=shutil.ignore_patterns("notebooks", "maps", "figures"))
    mix = {"sample_steps": 1, "eval_noise": "none", "baselines": [], "eval_sets": ["ixi_test"], "write_nifti": False,
           "intensity_weight": 0, "fusion": "sum", "deep_t_star_ensemble": [50, 100], "normative_weight": 0}
    pipeline.run(CI, folder, notebooks=["03_evaluate"], overrides=mix, cell_timeout=600)
    record = json.loads((folder / "eval" / "detector.json").read_text())
    assert record["scoring"]["deep_t_star"] == [50, 100] and record["scoring"]["deep_draws"] == 1
    scales = record["models"]["addm"]["mix_scales"]
    assert len(scales) == 2 and all(s > 0 for s in scales)
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    (label,) = [k for k in metrics["results"] if k.startswith("addm")]
    assert "mixed with the noised input's at t*=[50, 100]" in label
    # the recorded scales are what the mix measures on the IXI calibration individuals
    data = PreparedDataset(folder / "data")
    det = score.load_detector(folder)
    main, info = evaluate.diffusion_scorer(det.checkpoint, 25, 1, "ddpm", "none", 1, 16, 0, torch.device("cpu"))
    _, info = with_deep_map(main, info, det.checkpoint, [50, 100], 1, 16, 0, torch.device("cpu"), False, "off", "abs",
                            det.post_processing, data.volumes("ixi_calib"))
    assert info["mix"]["set_on"] == "ixi_calib"
    assert np.allclose(info["mix"]["scales"], scales, rtol=0.05)
    # a scan of one's own is scored with the recorded mix: its map differs from the shallow map alone
    png = ixi.IXI_DIR / "png" / "sub-IXI002.png"
    assert score.main([str(folder), str(png), "--out", str(tmp_path / "mixed")]) == 0, capsys.readouterr().err
    shallow = dict(record, scoring={**record["scoring"], "deep_t_star": []})
    (folder / "eval" / "detector.json").write_text(json.dumps(shallow))
    assert score.main([str(folder), str(png), "--out", str(tmp_path / "shallow")]) == 0, capsys.readouterr().err
    maps = [np.asarray(nib.load(tmp_path / out / "sub-IXI002" / "sub-IXI002_map.nii.gz").dataobj)
            for out in ("mixed", "shallow")]
    assert maps[0].any() and not np.allclose(maps[0], maps[1])
    summary = json.loads((tmp_path / "mixed" / "sub-IXI002" / "summary.json").read_text())
    assert summary["threshold"] == record["models"]["addm"]["calibrations"]["ixi_calib"]["threshold"]

"""Detection levers: amp choice, coarse noise, t* ensembles and one-step maps, floors, the DAE, the tuning split,
the Debian fetcher and the lever campaign's parameters."""

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from addmlib import runtime
from addmlib.baselines import dae_error_maps, intensity_floor, median_floor, train_dae
from addmlib.config import ConfigError, EvalConfig, LeverConfig, load_yaml, validate
from addmlib.data.prepare import PrepareSettings, subjects_for
from addmlib.data.sources import SOURCES, SourceError, _extract
from addmlib.detect import score_volume
from addmlib.diffusion import GaussianDiffusion
from addmlib.levers import beside_summaries, lever_table, load_campaign_params, summarise
from addmlib.noise import CoarseNoise, make_noise

ROOT = Path(__file__).resolve().parent.parent


# ----- amp: auto -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expected", [(["avx2", "avx512f", "avx512_bf16"], "bf16"), (["avx2", "amx_bf16"], "bf16"),
                                            (["avx2", "avx512f"], "off"), ([], "off")])
def test_amp_auto_follows_the_cpu_flags(flags, expected):
    assert runtime.resolve_amp("auto", torch.device("cpu"), flags) == expected


def test_amp_auto_reads_this_cpu_when_no_flags_are_given(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert runtime.resolve_amp("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert runtime.resolve_amp("auto", torch.device("cpu")) == "off"


def test_amp_auto_on_cuda_and_explicit_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_amp("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_amp("auto", torch.device("cuda")) == "fp16"
    assert runtime.resolve_amp("off", torch.device("cpu"), ["avx512_bf16"]) == "off"
    assert runtime.resolve_amp("bf16", torch.device("cpu"), []) == "bf16"
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        runtime.resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="amp must be"):
        runtime.resolve_amp("fp8", torch.device("cpu"))
    assert runtime.amp_dtype("off") is None and runtime.amp_dtype("bf16") is torch.bfloat16


def test_describe_cpu_names_flags():
    assert "logical CPUs" in runtime.describe_cpu()


# ----- coarse noise ----------------------------------------------------------------------------------------------
def test_coarse_noise_is_standardised_independent_and_low_frequency():
    noise = CoarseNoise(8)
    g = torch.Generator().manual_seed(0)
    x = noise(torch.empty(64, 1, 64, 64), g)
    assert x.shape == (64, 1, 64, 64)
    assert torch.allclose(x.mean((1, 2, 3)), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x.std((1, 2, 3)), torch.ones(64), atol=1e-4)
    assert abs(torch.corrcoef(x.reshape(64, -1))[0, 1]) < 0.3  # fields differ between samples
    power = torch.fft.fft2(x[:, 0]).abs().pow(2).mean(0)
    freqs = torch.fft.fftfreq(64).abs()
    high = (freqs[:, None] > 1 / 8) | (freqs[None, :] > 1 / 8)  # above the lattice's frequency
    assert power[high].sum() / power.sum() < 0.05
    white = torch.fft.fft2(torch.randn(64, 64, generator=g)).abs().pow(2)
    assert white[high].sum() / white.sum() > 0.7
    again = noise(torch.empty(64, 1, 64, 64), torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_coarse_noise_errors_and_factory():
    with pytest.raises(ValueError, match="spacing"):
        CoarseNoise(0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        CoarseNoise(4)(torch.empty(8, 8))
    assert isinstance(make_noise("coarse", coarse_spacing=4), CoarseNoise)
    with pytest.raises(ValueError, match="'gaussian', 'simplex' or 'coarse'"):
        make_noise("pink")


# ----- scoring: one-step estimate and ensembles ------------------------------------------------------------------
def _toy_model(x, t):
    return 0.1 * x + 0.001 * t[:, None, None, None].float()


def test_one_step_reconstruction_is_the_x0_estimate():
    d = GaussianDiffusion(100)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rec = d.reconstruct(_toy_model, x0, 40, steps=1, generator=g1)
    xt = d.q_sample(x0, 40, torch.randn(x0.shape, generator=g2))
    t = torch.full((3,), 40)
    expected = d.predict_x0(xt, t, _toy_model(xt, t)).clamp(-1, 1)
    assert torch.allclose(rec, expected, atol=1e-6)


def test_t_star_ensemble_averages_the_maps_of_each_depth():
    """Deterministic noise (all ones) and eps = 0: x0_hat = x0 + sqrt((1 - abar) / abar), a known error per depth."""
    d = GaussianDiffusion(100)
    vol = np.random.default_rng(0).uniform(-0.2, 0.2, (8, 8, 5)).astype(np.float32)
    slices = np.array([1, 3])
    ones = lambda like, gen: torch.ones_like(like)  # noqa: E731
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    single = {t: score_volume(zero_eps, d, vol, slices, t, 1, noise_fn=ones) for t in (5, 10)}
    for t, s in single.items():
        ab = float(d.alphas_cumprod[t])
        expected = np.abs(np.clip(vol + np.sqrt((1 - ab) / ab), -1, 1) - vol)
        assert np.allclose(s.abs_error[:, :, slices], expected[:, :, slices], atol=1e-5)
    ens = score_volume(zero_eps, d, vol, slices, [5, 10], 1, noise_fn=ones)
    assert np.allclose(ens.abs_error, (single[5].abs_error + single[10].abs_error) / 2, atol=1e-6)
    assert not ens.abs_error[:, :, [0, 2, 4]].any()
    with pytest.raises(ValueError, match="at least one depth"):
        score_volume(_toy_model, d, vol, slices, [])


def test_unnoised_scoring_removes_what_the_model_reads_as_noise():
    """eval_noise 'none': x_t = sqrt(abar) x0 exactly, so the one-step estimate is x0 - sqrt((1 - abar) / abar) eps
    (eps a constant 0.1 here), the same every call; the scorer refuses more than one draw of it."""
    from addmlib.noise import zero_noise

    d = GaussianDiffusion(100)
    vol = np.random.default_rng(2).uniform(-0.5, 0.5, (8, 8, 4)).astype(np.float32)
    slices = np.array([0, 3])
    seen = []

    def const_eps(x, t):
        seen.append(x.clone())
        return torch.full_like(x, 0.1)

    s = score_volume(const_eps, d, vol, slices, 20, 1, noise_fn=zero_noise, residual="positive")
    ab = float(d.alphas_cumprod[20])
    x0 = torch.from_numpy(np.ascontiguousarray(vol[:, :, slices].transpose(2, 0, 1)))[:, None]
    assert torch.allclose(seen[0], (ab ** 0.5) * x0, atol=1e-6)
    assert np.allclose(s.abs_error[:, :, slices], 0.1 * np.sqrt((1 - ab) / ab), atol=1e-5)
    assert np.array_equal(s.abs_error, score_volume(const_eps, d, vol, slices, 20, 1, noise_fn=zero_noise,
                                                    residual="positive").abs_error)
    with pytest.raises(ConfigError, match="draws must be 1"):
        validate(EvalConfig, {"eval_noise": "none", "draws": 4}, "p")
    assert validate(EvalConfig, {"eval_noise": "none"}, "p").eval_noise == "none"


def test_ensemble_of_one_depth_equals_that_depth():
    d = GaussianDiffusion(100)
    vol = np.random.default_rng(1).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    a = score_volume(_toy_model, d, vol, np.array([0, 2]), 30, steps=5, generator=torch.Generator().manual_seed(0))
    b = score_volume(_toy_model, d, vol, np.array([0, 2]), [30], steps=5, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(a.abs_error, b.abs_error)


# ----- floors and the DAE ----------------------------------------------------------------------------------------
def test_floors_are_the_intensity_and_the_deviation_from_the_brain_median():
    vol = np.full((4, 4, 3), -1.0, dtype=np.float32)
    vol[1:3, 1:3, :] = np.array([[0.2, 0.4], [0.6, 0.9]])[:, :, None]
    brain = vol > -1
    rec, err, sq = intensity_floor(vol, np.array([0, 2]))
    assert np.allclose(err[:, :, [0, 2]], vol[:, :, [0, 2]] + 1) and not err[:, :, 1].any()
    assert np.allclose(sq, err ** 2) and (rec == -1).all()
    rec, err, _ = median_floor(vol, np.array([1]), brain)
    med = np.median([0.2, 0.4, 0.6, 0.9])
    assert np.allclose(err[:, :, 1], np.abs(vol[:, :, 1] - med)) and not err[:, :, 0].any()


def test_dae_trains_caches_and_maps(tmp_path):
    imgs = np.random.default_rng(0).uniform(-1, 1, (6, 16, 16)).astype(np.float32)
    model, info = train_dae(imgs, tmp_path, "fp", steps=3, batch_size=2, noise_res=4)
    assert info["settings"]["steps"] == 3 and (tmp_path / "dae.pt").is_file()
    again, info2 = train_dae(imgs, tmp_path, "fp", steps=3, batch_size=2, noise_res=4)
    assert info2 == info  # loaded, not retrained
    vol = np.stack([imgs[0]] * 3, axis=-1)
    rec, err = dae_error_maps(again, vol, np.array([0, 2]))
    assert rec.shape == vol.shape and np.allclose(err[:, :, 0], np.abs(vol[:, :, 0] - rec[:, :, 0]))
    assert not err[:, :, 1].any()
    with pytest.raises(ValueError, match="noise_res 5 must divide"):
        train_dae(imgs, tmp_path / "x", "fp", steps=1, noise_res=5)


def test_autoencoders_depend_on_their_seed_alone_not_on_what_ran_before(tmp_path):
    """The AE's and DAE's initial weights are drawn from their seed: the same seed after different work gives the same
    model (the demo trains the AE before the DAE; a lever campaign does not), and the caller's random state is kept."""
    from addmlib.baselines import train_autoencoder

    imgs = np.random.default_rng(0).uniform(-1, 1, (6, 16, 16)).astype(np.float32)
    weights = []
    for run, before in enumerate((0, 5)):
        torch.manual_seed(123)
        torch.rand(before)  # some earlier work that used the global generator
        dae, _ = train_dae(imgs, tmp_path / f"dae{run}", "fp", steps=2, batch_size=2, noise_res=4, seed=1)
        ae, _ = train_autoencoder(imgs, tmp_path / f"ae{run}", "fp", steps=2, batch_size=2, seed=1)
        weights.append([p.detach().clone() for m in (dae, ae) for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_dae(imgs, tmp_path / "dae0", "fp", steps=2, batch_size=2, noise_res=4, seed=1)  # loaded from the cache
    assert torch.equal(torch.rand(3), expected), "loading a cached model leaves the caller's random state alone"


def test_lever_rows_of_autoencoders_are_keyed_by_their_seeded_initialisation():
    """A campaign's cached AE/DAE rows name the seeded initialisation, so the rows of models trained before it (their
    keys lack it) are not reused; the floors' keys do not change."""
    from addmlib.baselines import SEEDED_INIT
    from addmlib.levers import _baseline_key

    cfg = validate(LeverConfig, {}, "test")
    for name in ("ae", "dae"):
        key = _baseline_key(name, 0, "fp", cfg, {}, {}, "positive", 4.0)
        assert key["init"] == SEEDED_INIT and key["residual"] == "positive" and key["intensity_weight"] == 4.0
    floor = _baseline_key("floor_intensity", 0, "fp", cfg, {}, {}, "abs", 0.0)
    assert "init" not in floor and "residual" not in floor and "intensity_weight" not in floor


# ----- tuning split and its source -------------------------------------------------------------------------------
def _settings(**kw):
    base = dict(image_size=32, healthy_sources=("mrhead",), holdout_hosts=("colin27", "sri24"),
                tumour_sources=("qtim_tumor2",), paste_donors=("qtim_tumor2",), lesions_per_host=2,
                min_brain_fraction=0.25, strip_margin_mm=2.0, seed=0, tune_hosts=("itk_t1",))
    base.update(kw)
    return PrepareSettings(**base)


def test_tuning_hosts_are_neither_trained_on_nor_evaluated():
    with pytest.raises(ValueError, match="tuning hosts \\['colin27'\\].*neither trained on nor evaluated"):
        subjects_for(_settings(tune_hosts=("colin27",)))
    with pytest.raises(ValueError, match="tuning hosts \\['mrhead'\\]"):
        subjects_for(_settings(tune_hosts=("mrhead",)))
    with pytest.raises(ValueError, match="tumour scan and cannot be used as a healthy"):
        subjects_for(_settings(tune_hosts=("qtim_shape",)))
    assert _settings().fingerprint() != _settings(tune_hosts=()).fingerprint()


def test_lesion_draws_change_their_own_split_only():
    """More lesion draws on the tuning (or set-B) hosts make other data (fingerprint) on which the same models stand
    (training fingerprint); a build with one draw keeps the fingerprint it had before ``tune_draws`` existed."""
    from addmlib.config import ConfigError, PrepareConfig, validate

    one, six = _settings(), _settings(tune_draws=6)
    assert one.fingerprint() != six.fingerprint()
    assert one.training_fingerprint() == six.training_fingerprint() == one.fingerprint()
    assert _settings(lesions_per_host=3, tune_draws=6).training_fingerprint() != one.training_fingerprint()
    more_b = _settings(tune_draws=6, eval_b_draws=3)  # a larger set B: other data, the same training data
    assert more_b.fingerprint() not in (one.fingerprint(), six.fingerprint())
    assert more_b.training_fingerprint() == one.fingerprint()
    with pytest.raises(ConfigError, match="tune_draws must be >= 1, got 0"):
        validate(PrepareConfig, {"tune_draws": 0}, "test")
    with pytest.raises(ConfigError, match="eval_b_draws must be >= 1, got 0"):
        validate(PrepareConfig, {"eval_b_draws": 0}, "test")


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':16s}{'0':12s}{'0':6s}{'0':6s}{'100644':8s}{len(data):<10d}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def test_debian_package_members_are_extracted(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        payload = b"brain bytes"
        info = tarfile.TarInfo("./usr/share/scan.nii.gz")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"x", "data.tar.xz": buf.getvalue()}))
    _extract(deb, "./usr/share/scan.nii.gz", tmp_path / "out.nii.gz")
    assert (tmp_path / "out.nii.gz").read_bytes() == b"brain bytes"
    with pytest.raises(SourceError, match="no member"):
        _extract(deb, "./missing", tmp_path / "m")
    (tmp_path / "bad.deb").write_bytes(b"not an ar file")
    with pytest.raises(SourceError, match="not a Debian package"):
        _extract(tmp_path / "bad.deb", "x", tmp_path / "b")


def test_the_tuning_host_comes_from_debian():
    src = SOURCES["itk_t1"]
    assert src.archive.registry == "debian" and src.role == "healthy" and src.archive.filename.endswith(".deb")


# ----- configs ---------------------------------------------------------------------------------------------------
def test_eval_config_checks_baselines_and_ensembles():
    with pytest.raises(ConfigError, match="baselines \\['vae'\\] unknown"):
        validate(EvalConfig, {"baselines": ["vae"]}, "p")
    with pytest.raises(ConfigError, match="t_star_ensemble"):
        validate(EvalConfig, {"t_star_ensemble": [0, 250]}, "p")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        validate(EvalConfig, {"models": [], "baselines": []}, "p")
    assert validate(EvalConfig, {"eval_sets": ["tune"]}, "p").eval_sets == ("tune",)


def test_lever_campaign_params_are_checked():
    validate(LeverConfig, load_yaml(ROOT / "params" / "ci" / "levers_ci.yaml"), "levers_ci.yaml")
    cfg = validate(LeverConfig, load_yaml(ROOT / "params" / "levers_demo.yaml"), "levers_demo.yaml")
    base = load_campaign_params(cfg)
    assert base["image_size"] == 64 and "coarse8" in cfg.variants
    res = validate(LeverConfig, load_yaml(ROOT / "params" / "campaigns" / "levers_res96.yaml"), "levers_res96.yaml")
    assert load_campaign_params(res)["image_size"] == 96
    draw2 = validate(LeverConfig, load_yaml(ROOT / "params" / "campaigns" / "levers_draw2.yaml"), "levers_draw2.yaml")
    assert load_campaign_params(draw2)["seed"] == 1  # the data seed: the tuning lesions are drawn anew
    few = validate(LeverConfig, load_yaml(ROOT / "params" / "campaigns" / "levers_templates.yaml"),
                   "levers_templates.yaml")
    assert "mrhead" not in load_campaign_params(few)["healthy_sources"]
    with pytest.raises(ConfigError, match="base_overrides: .*'image_sise'"):
        load_campaign_params(dataclasses.replace(res, base_overrides={"image_sise": 96}))
    bad = validate(LeverConfig, {"variants": {"x": {"nois": "coarse"}}}, "p")
    with pytest.raises(ConfigError, match="variant 'x': \\['nois'\\] are not training parameters"):
        load_campaign_params(bad)
    bad = validate(LeverConfig, {"scorings": {"s": {"t_starr": 3}}}, "p")
    with pytest.raises(ConfigError, match="scoring 's'"):
        load_campaign_params(bad)
    with pytest.raises(ConfigError, match="may only hold"):
        validate(LeverConfig, {"variants": {"a b": {}}}, "p")
    for sizes in ([0], [5, 5]):
        with pytest.raises(ConfigError, match="baseline_median_sizes must hold distinct sizes >= 1"):
            validate(LeverConfig, {"baseline_median_sizes": sizes}, "p")
    deep = validate(LeverConfig, {**load_yaml(ROOT / "params" / "ci" / "levers_ci.yaml"), "adv_profile_t": [5, 500]},
                    "p")
    with pytest.raises(ConfigError, match="adv_profile_t \\[5, 500\\] goes beyond T = 100 of variant 'coarse'"):
        load_campaign_params(deep)
    ci = load_yaml(ROOT / "params" / "ci" / "levers_ci.yaml")
    unnoised = validate(LeverConfig, {**ci, "base_overrides": {"draws": 4},
                                      "scorings": {"x0-none": {"t_star": 25, "sample_steps": 1, "eval_noise": "none"}}},
                        "p")
    with pytest.raises(ConfigError, match="scoring 'x0-none': eval_noise 'none' .* draws is 4: set draws 1"):
        load_campaign_params(unnoised)
    two = validate(LeverConfig, load_yaml(ROOT / "params" / "campaigns" / "levers_twohost.yaml"), "levers_twohost.yaml")
    assert "oasis30" not in load_campaign_params(two)["healthy_sources"] and two.tune_hosts == ("itk_t1", "oasis30")
    # the campaign's reference point stays the paper's reading whatever the demo adopts (cached rows keep their meaning)
    assert (base["noise"], base["sample_steps"], base["t_star_ensemble"], base["draws"], base["residual"],
            base["median_size"]) == ("gaussian", 25, [], 1, "abs", 3)


def test_summary_gives_mean_and_spread_over_seeds():
    rows = [{"kind": "diffusion", "variant": "v", "scoring": "s", "seed": s, "auroc": a, "auprc": p, "dice": 0.1,
             "best_dice": 0.2, "seconds": 1.0} for s, a, p in ((0, 0.8, 0.1), (1, 0.9, 0.3))]
    rows.append({"kind": "baseline", "variant": "floor", "scoring": "-", "seed": 0, "auroc": 0.7, "auprc": 0.05,
                 "dice": 0.0, "best_dice": 0.1, "seconds": 0.1})
    out = summarise(rows)
    assert [e["variant"] for e in out] == ["v", "floor"]
    assert out[0]["seeds"] == 2 and out[0]["auprc_mean"] == pytest.approx(0.2)
    assert out[0]["auprc_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1)) and out[1]["auprc_std"] == 0.0
    assert out[0]["auroc_min"] == 0.8 and out[0]["auroc_max"] == 0.9


def test_summary_and_host_table_give_each_tuning_host_its_auprc():
    from addmlib.levers import host_table

    def row(seed, pa, pb, hosts=True):
        r = {"kind": "diffusion", "variant": "v", "scoring": "s", "seed": seed, "auroc": 0.9, "auprc": (pa + pb) / 2,
             "dice": 0.1, "best_dice": 0.2, "seconds": 1.0}
        return {**r, "by_host": {"itk": {"auroc": 0.9, "auprc": pa}, "oasis": {"auroc": 0.8, "auprc": pb}}} if hosts else r

    rows = [row(0, 0.4, 0.1), row(1, 0.6, 0.1),
            {"kind": "baseline", "variant": "floor |x|", "scoring": "-", "seed": 0, "auroc": 0.8, "auprc": 0.3,
             "dice": 0.0, "best_dice": 0.1, "seconds": 0.1, "by_host": {"itk": {"auroc": 0.8, "auprc": 0.35},
                                                                          "oasis": {"auroc": 0.8, "auprc": 0.25}}}]
    out = summarise(rows)
    assert out[0]["auprc@itk_mean"] == pytest.approx(0.5) and out[0]["auprc@itk_std"] == pytest.approx(0.1 * 2 ** 0.5)
    assert out[0]["auprc@oasis_mean"] == pytest.approx(0.1) and out[1]["auprc@oasis_std"] == 0.0
    table = host_table(out).splitlines()
    assert table[0] == "| variant | scoring | seeds | AUPRC (pooled) | AUPRC itk | AUPRC oasis |"
    assert table[2] == "| v | s | 2 | 0.300 ± 0.071 | 0.500 ± 0.141 | 0.100 ± 0.000 |"
    assert table[3] == "| *floor \\|x\\|* | - | 1 | 0.300 | 0.350 | 0.250 |"
    # a group with a seed cached before per-host metrics has none; an entry without any is left out of the table
    mixed = summarise([row(0, 0.4, 0.1), row(1, 0.6, 0.1, hosts=False)])
    assert not any(k.startswith("auprc@") for k in mixed[0]) and len(host_table(mixed).splitlines()) == 2


def test_beside_runs_join_the_table_marked_with_their_folder(tmp_path):
    rows = [{"kind": "diffusion", "variant": "v96", "scoring": "s", "seed": 0, "auroc": 0.9, "auprc": 0.2,
             "dice": 0.1, "best_dice": 0.2, "seconds": 1.0}]
    (tmp_path / "levers96" / "levers").mkdir(parents=True)
    (tmp_path / "levers96" / "levers" / "levers.json").write_text(json.dumps({"summary": summarise(rows)}))
    cfg = LeverConfig(beside_runs=(str(tmp_path / "levers96"), str(tmp_path / "not-yet")))
    beside, missing = beside_summaries(cfg)
    assert [e["variant"] for e in beside] == ["v96 [levers96]"] and missing == [str(tmp_path / "not-yet")]
    assert "| v96 [levers96] | s | 1 | 0.900 | 0.200 |" in lever_table(beside)


# ----- patch-wise noising (pDDPM) --------------------------------------------------------------------------------
def test_patch_masks_cover_the_image_and_random_masks_are_squares():
    from addmlib.diffusion import patch_masks, random_patch_masks

    like = torch.zeros(1)
    masks = patch_masks(16, 8, 4, like)
    assert len(masks) == 9 and (sum(masks) >= 1).all()
    assert len(patch_masks(10, 4, 4, like)) == 9  # 0, 4 and the border patch at 6
    with pytest.raises(ValueError, match="patch"):
        patch_masks(8, 9, 4, like)
    m = random_patch_masks(5, 16, 6, torch.Generator().manual_seed(0), like)
    assert m.shape == (5, 1, 16, 16) and (m.sum((1, 2, 3)) == 36).all()


def test_patch_reconstruction_keeps_the_context_exactly():
    from addmlib.diffusion import patch_masks

    d = GaussianDiffusion(50)
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = patch_masks(16, 8, 8, x0)[0]
    rec = d.reconstruct(_toy_model, x0, 30, steps=5, generator=torch.Generator().manual_seed(0), mask=mask)
    assert torch.equal(rec[..., 8:, :], x0[..., 8:, :]) and torch.equal(rec[..., :, 8:], x0[..., :, 8:])
    assert not torch.allclose(rec[..., :8, :8], x0[..., :8, :8])


def test_patch_loss_only_counts_the_patch():
    from addmlib.losses import addm_generator_terms

    d = GaussianDiffusion(50)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = torch.zeros(3, 1, 8, 8)
    mask[..., :4, :4] = 1
    seen = {}

    def model(x, t):
        seen["x"] = x
        out = torch.zeros_like(x)
        out[..., 4:, 4:] = 100.0  # a huge error outside the patch must not count
        return out

    g = torch.Generator().manual_seed(1)
    terms = addm_generator_terms(model, d, x0, 0.0, patch_mask=mask, generator=g)
    assert torch.equal(seen["x"][..., 4:, :], x0[..., 4:, :])  # context is clean
    g2 = torch.Generator().manual_seed(1)
    torch.randint(1, 51, (3,), generator=g2)  # the same draws as the loss: t, then eps
    eps = torch.randn(x0.shape, generator=g2)
    # the model predicts 0 inside the patch: the loss is the patch's mean eps^2; the 100s outside are ignored
    assert terms.ddpm.item() == pytest.approx((eps[..., :4, :4] ** 2).mean().item(), rel=1e-5)


def test_positive_residual_keeps_only_what_is_brighter_than_its_reconstruction():
    """eps = 0 and noise +1 / -1: x0_hat = x0 +/- sqrt((1 - abar) / abar); only the second leaves x above x_hat."""
    d = GaussianDiffusion(100)
    vol = np.random.default_rng(0).uniform(-0.2, 0.2, (8, 8, 3)).astype(np.float32)
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for sign in (1.0, -1.0):
        noise = lambda like, gen, s=sign: torch.full_like(like, s)  # noqa: E731
        a = score_volume(zero_eps, d, vol, np.array([1]), 10, 1, noise_fn=noise)
        p = score_volume(zero_eps, d, vol, np.array([1]), 10, 1, noise_fn=noise, residual="positive")
        assert np.allclose(p.squared_error, a.squared_error) and a.abs_error[:, :, 1].min() > 0.1
        if sign > 0:
            assert not p.abs_error.any()
        else:
            assert np.allclose(p.abs_error, a.abs_error)
    with pytest.raises(ValueError, match="residual must be"):
        score_volume(zero_eps, d, vol, np.array([1]), 10, 1, residual="signed")


def test_baseline_scorers_share_the_residual_rule(tmp_path):
    from types import SimpleNamespace

    from addmlib.evaluate import baseline_scorers

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (6, 16, 16)).astype(np.float32)
    data = SimpleNamespace(training_fingerprint="f", slices=lambda split: {"image": images})
    vol = SimpleNamespace(image=np.stack([images[0]] * 3, -1), brain=np.ones((16, 16, 3), bool))
    scorers = {}
    for residual in ("abs", "positive"):
        ((name, scorer, info),) = baseline_scorers(data, tmp_path, ["dae"], dae_steps=2, dae_noise_res=4,
                                                   residual=residual)
        scorers[residual] = scorer(vol, np.array([0, 2]))
    (rec, err_abs, sq), (rec2, err_pos, sq2) = scorers["abs"], scorers["positive"]
    assert np.array_equal(rec, rec2) and np.allclose(sq, sq2)  # the same trained DAE (cached), same squared error
    diff = vol.image - rec
    assert np.allclose(err_abs[:, :, [0, 2]], np.abs(diff[:, :, [0, 2]]), atol=1e-6)
    assert np.allclose(err_pos[:, :, [0, 2]], np.clip(diff[:, :, [0, 2]], 0, None), atol=1e-6)
    assert not err_pos[:, :, 1].any() and not sq[:, :, 1].any()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_scorers(data, tmp_path, ["vae"])


def test_patch_scoring_stitches_every_patch():
    """eps = 0 and noise +1: every patch that covers a pixel reconstructs it as x0 + c, so the stitched map equals
    the whole-image map (a pixel counted twice or missed would not)."""
    from addmlib.diffusion import patch_masks

    d = GaussianDiffusion(100)
    vol = np.random.default_rng(0).uniform(-0.2, 0.2, (16, 16, 2)).astype(np.float32)
    ones = lambda like, gen: torch.ones_like(like)  # noqa: E731
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    whole = score_volume(zero_eps, d, vol, np.array([0, 1]), 10, 1, noise_fn=ones)
    patched = score_volume(zero_eps, d, vol, np.array([0, 1]), 10, 1, noise_fn=ones, patch=(8, 4))
    assert np.allclose(patched.abs_error, whole.abs_error, atol=1e-6) and whole.abs_error.min() > 0.1
    with pytest.raises(ValueError, match="stride 9 in \\[1, 8\\]"):
        patch_masks(16, 8, 9, torch.zeros(1))


def test_demo_data_fingerprint_is_pinned():
    """Settings added later at their defaults (tuning hosts, mask checks, the IXI splits, the lesion mix) must not
    rebuild existing datasets: the demo's volumes-only data (as the earlier campaigns pin it) keeps the fingerprint it
    had before them, and the population's settings make another one."""
    from addmlib.config import PrepareConfig, load_checked
    from addmlib.data.prepare import settings_from_config

    volumes_only = {"ixi": "", "lesion_mix": "legacy", "lesions_per_host": 2,
                    "healthy_sources": list(PrepareConfig.healthy_sources)}
    cfg = load_checked(PrepareConfig, [ROOT / "params" / "demo.yaml"], volumes_only, pipeline=True)
    assert settings_from_config(cfg).fingerprint() == "b961c39bce3387b8"
    assert settings_from_config(cfg).tune_hosts == ()
    assert cfg.lesion_sites == "tissue", "the demo's lesion sites do not move the volumes-only data, which has none"
    demo = load_checked(PrepareConfig, [ROOT / "params" / "demo.yaml"], pipeline=True)
    assert demo.ixi == "train" and settings_from_config(demo).fingerprint() != "b961c39bce3387b8"
    for name in ("campaigns/levers_base.yaml", "reports/demo_seeds.yaml", "reports/demo_setb6.yaml"):
        pinned = load_checked(PrepareConfig, [ROOT / "params" / "demo.yaml", ROOT / "params" / name], pipeline=True)
        assert pinned.healthy_sources == PrepareConfig.healthy_sources, f"{name} keeps the 8 training volumes"


def _fake_apt(tmp_path, monkeypatch, deb: bytes, fail_until_update: bool):
    """An ``apt-get`` on PATH that logs its calls and answers ``download`` with ``deb`` (after ``update`` if asked)."""
    import stat

    bindir = tmp_path / "bin"
    bindir.mkdir()
    payload = tmp_path / "payload.deb"
    payload.write_bytes(deb)
    log = tmp_path / "apt.log"
    script = bindir / "apt-get"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi
if [ "$1" = download ]; then
  if [ {int(fail_until_update)} = 1 ] && [ ! -e {tmp_path}/updated ]; then echo "E: Unable to locate package" >&2; exit 100; fi
  name=$(echo "$2" | sed 's/=/_/'); cp {payload} "./${{name}}_all.deb"; exit 0
fi
exit 1
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    return log


def _deb_with(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"x", "data.tar.xz": buf.getvalue()})


@pytest.mark.parametrize("root", [True, False])
def test_debian_source_is_downloaded_checked_and_extracted(tmp_path, monkeypatch, root):
    import hashlib
    import os

    from addmlib.data import sources as S

    deb = _deb_with("./usr/share/scan.nii.gz", b"scan")
    log = _fake_apt(tmp_path, monkeypatch, deb, fail_until_update=True)
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    archive = S.Archive("fakepkg=1.0", "fakepkg_1.0_all.deb", hashlib.sha256(deb).hexdigest(), registry="debian")
    src = S.Source("fake", archive, "./usr/share/scan.nii.gz", "healthy", True, "a fake scan", "none")
    if root:  # the package lists are refreshed once, then the download goes through
        out = S.fetch(src, tmp_path / "cache")
        assert out["image"].read_bytes() == b"scan"
        assert log.read_text().split("\n")[:3] == ["download fakepkg=1.0", "update -qq", "download fakepkg=1.0"]
    else:  # not root: no update, a clear error that says what to do
        with pytest.raises(S.SourceError, match="(?s)apt-get update.*Unable to locate package"):
            S.fetch(src, tmp_path / "cache")
        assert "update" not in log.read_text()


def test_variant_seeds_must_name_a_variant_or_baseline_and_a_subset_of_seeds():
    ok = validate(LeverConfig, {"variants": {"a": {}}, "seeds": [0, 1], "variant_seeds": {"a": [0], "dae": [1]}}, "p")
    assert ok.variant_seeds == {"a": (0,), "dae": (1,)}
    with pytest.raises(ConfigError, match="variant_seeds names 'b'"):
        validate(LeverConfig, {"variants": {"a": {}}, "variant_seeds": {"b": [0]}}, "p")
    with pytest.raises(ConfigError, match="subset of seeds"):
        validate(LeverConfig, {"variants": {"a": {}}, "seeds": [0, 1], "variant_seeds": {"a": [2]}}, "p")


def test_lever_table_escapes_the_pipes_of_a_floor_label():
    from addmlib.levers import lever_table

    row = {"kind": "baseline", "variant": "floor |x − brain median|", "scoring": "-", "seed": 0, "auroc": 0.9,
           "auprc": 0.1, "dice": 0.1, "best_dice": 0.2, "seconds": 1.0}
    line = lever_table(summarise([row])).splitlines()[-1]
    assert line.startswith("| *floor \\|x − brain median\\|* | - | 1 |") and line.count(" | ") == 7


def test_evaluation_scores_a_lever_campaigns_models_only_on_their_training_data(tmp_path):
    """EvalConfig.models_from: 03 finds a campaign's model by name, and refuses one that is missing or was trained on
    other data, naming the folder and both fingerprints."""
    from addmlib.config import EvalConfig, validate
    from addmlib.evaluate import _model_json

    folder = tmp_path / "campaign" / "levers" / "models" / "coarse8-s1"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"checkpoint": str(folder / "checkpoint.pt")}))
    (folder / "data.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    cfg = validate(EvalConfig, {"models_from": str(tmp_path / "campaign"), "models": ["coarse8-s1"]}, "p")
    assert _model_json(cfg, tmp_path / "run", "coarse8-s1", "aaaa") == (folder / "model.json").resolve()
    with pytest.raises(ValueError, match="trained on data aaaa, this run's training data is bbbb"):
        _model_json(cfg, tmp_path / "run", "coarse8-s1", "bbbb")
    with pytest.raises(FileNotFoundError, match=r"model 'coarse8-s9' .* has not been trained there"):
        _model_json(cfg, tmp_path / "run", "coarse8-s9", "aaaa")
    own = validate(EvalConfig, {"models": ["addm"]}, "p")
    with pytest.raises(FileNotFoundError, match="train it with notebooks/02_train.ipynb"):
        _model_json(own, tmp_path / "run", "addm", "aaaa")

"""The adversarial-gradient profile (addmlib.diagnostics) and the stronger augmentation (elastic, noise, strength)."""

import math

import numpy as np
import pytest
import torch

from addmlib.config import ConfigError, LeverConfig, TrainConfig, validate
from addmlib.data.augment import Augment
from addmlib.diagnostics import adversarial_profile
from addmlib.training import model_dir, train

from .test_training import _blobs


def _cfg(tmp_path, **kw):
    base = dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50, unet_base_channels=8,
                unet_channel_mult=(1, 2), unet_attention_resolutions=(8,), disc_base_channels=8,
                disc_channel_mult=(1, 2), batch_size=4, max_steps=6, lr=2e-3, checkpoint_every=3, log_every=1,
                augment=False, t_star=10, sample_steps=5, amp="off")
    base.update(kw)
    return TrainConfig(**base)


def test_profile_measures_both_gradients_and_scales_with_lambda(tmp_path):
    images = _blobs()
    rows = {}
    for lam in (0.05, 0.5):
        cfg = _cfg(tmp_path, lambda_adv=lam, model_name=f"lam{lam}")
        train(cfg, images)
        ckpt = model_dir(tmp_path, cfg.model_name) / "checkpoint.pt"
        rows[lam] = adversarial_profile(ckpt, images.numpy(), [5, 25, 50], batch=8, seed=0)
    for lam, rs in rows.items():
        assert [r["t"] for r in rs] == [5, 25, 50]
        for r in rs:
            assert r["grad_ddpm"] > 0 and r["grad_adv"] > 0 and math.isclose(r["ratio"], r["grad_adv"] / r["grad_ddpm"])
            assert -1 <= r["cosine"] <= 1 and 0 <= r["d_acc_real"] <= 1 and 0 <= r["d_acc_fake"] <= 1
            assert r["lambda_adv"] == lam
    # the same batch and noise (seed 0) at the same t: lambda scales the adversarial gradient's share
    assert np.mean([r["ratio"] for r in rows[0.5]]) > np.mean([r["ratio"] for r in rows[0.05]])


def test_profile_refuses_a_ddpm_and_bad_depths(tmp_path):
    images = _blobs()
    train(_cfg(tmp_path, lambda_adv=0.0, model_name="ddpm"), images)
    with pytest.raises(ValueError, match="without the adversarial term"):
        adversarial_profile(model_dir(tmp_path, "ddpm") / "checkpoint.pt", images, [5])
    train(_cfg(tmp_path, lambda_adv=0.05, model_name="addm"), images)
    with pytest.raises(ValueError, match=r"t_values must be .* \[1, 50\]"):
        adversarial_profile(model_dir(tmp_path, "addm") / "checkpoint.pt", images, [0, 60])
    with pytest.raises(ValueError, match=r"images must be \(N, 1, 16, 16\)"):
        adversarial_profile(model_dir(tmp_path, "addm") / "checkpoint.pt", images[:, :, :8, :8], [5])


def test_stronger_augmentation_keeps_range_and_background_and_default_is_unchanged():
    x = _blobs(n=6, size=32)
    plain = Augment()(x, torch.Generator().manual_seed(3))
    assert torch.equal(Augment.of_strength(1.0)(x, torch.Generator().manual_seed(3)), plain), \
        "strength 1 without elastic or noise is the default augmentation, draw for draw"
    strong = Augment.of_strength(2.0, elastic=1.5, noise=0.05)
    out = strong(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert ((out == -1) | (out > -1 + 1e-3)).all() and (out == -1).float().mean() > 0.2, "background stays -1"
    assert (out - plain).abs().mean() > 0.01, "elastic warp and noise change the slices"
    tissue = (x > -1 + 1e-3) & (out > -1 + 1e-3)
    warp_only = Augment.of_strength(0.0, elastic=1.5)(x, torch.Generator().manual_seed(3))
    assert (warp_only != x).any() and warp_only.min() >= -1
    noisy = Augment.of_strength(0.0, noise=0.1)(x, torch.Generator().manual_seed(3))
    inside = (x > -1 + 1e-3) & (noisy > -1 + 1e-3)
    assert 0.03 < (noisy - x)[inside].std() < 0.2 and tissue.any()
    with pytest.raises(ValueError, match="must be >= 0"):
        Augment.of_strength(1.0, elastic=-1.0)


def test_augmentation_and_profile_parameters_are_validated():
    with pytest.raises(ConfigError, match="augment_elastic must be >= 0"):
        validate(TrainConfig, {"augment_elastic": -0.5}, "test")
    with pytest.raises(ConfigError, match="adv_profile_t depths must be >= 1"):
        validate(LeverConfig, {"adv_profile_t": [0, 100]}, "test")

"""Min-SNR loss weighting (min_snr_gamma): the weights, its identity with the x0 loss where SNR >= gamma, the
unweighted default, the trainer's wiring and the config check."""

import json
import math

import pytest
import torch

from addmlib.config import ConfigError, TrainConfig, validate
from addmlib.diffusion import GaussianDiffusion
from addmlib.losses import addm_generator_terms, min_snr_weight
from addmlib.training import LOG, CheckpointError, finished_model, model_dir, train

from .test_nets_losses import _setup
from .test_training import _blobs, _cfg


def test_weights_are_min_snr_over_snr():
    diff = GaussianDiffusion(1000)
    t = torch.tensor([1, 25, 50, 100, 500, 999])
    ab = diff.alphas_cumprod[t].double()
    snr = ab / (1 - ab)
    w = min_snr_weight(diff.alphas_cumprod, t, 5.0)
    assert torch.allclose(w.double(), torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr, rtol=1e-6)
    assert w[0] < w[1] < w[2] < w[3] < 1 and w[4] == w[5] == 1  # shallow depths count less; deep ones (SNR < 5) as before
    assert torch.allclose(min_snr_weight(diff.alphas_cumprod, t, 5.0, "x0").double(),
                          torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)), rtol=1e-6)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weight(diff.alphas_cumprod, t, 0.0)


def test_weighted_epsilon_loss_is_gamma_times_the_x0_loss_where_snr_is_above_gamma():
    unet, _, _, x0 = _setup()
    diff = GaussianDiffusion(1000)
    t = torch.tensor([25, 40, 60, 100])  # SNR from 115 down to 8.3, all above gamma = 5
    kw = dict(t=t, noise_fn=lambda x, g: torch.randn(x.shape, generator=g))
    weighted = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(0), min_snr_gamma=5.0,
                                    **kw).ddpm
    x0_loss = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(0), prediction="x0",
                                   **kw).ddpm
    plain = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(0), **kw).ddpm
    assert torch.allclose(weighted, 5.0 * x0_loss, rtol=1e-4)
    assert not torch.allclose(weighted, plain, rtol=0.1)  # the weighting changes the loss
    again = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(0), min_snr_gamma=0.0,
                                 **kw).ddpm
    assert torch.equal(again, plain)  # 0: unweighted, the paper's loss


def test_weights_reach_the_patch_loss():
    unet, _, diff, x0 = _setup()
    t = torch.tensor([2, 5, 20, 60])
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    kw = dict(t=t, patch_mask=mask)
    plain = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(1), **kw).ddpm
    weighted = addm_generator_terms(unet, diff, x0, 0.0, generator=torch.Generator().manual_seed(1), min_snr_gamma=1.0,
                                    **kw).ddpm
    assert weighted < plain  # every weight here is below 1 (SNR > 1 at these depths of T = 100)


def test_trainer_uses_it_and_a_resumed_model_must_agree(tmp_path):
    result = train(_cfg(tmp_path, max_steps=3, min_snr_gamma=5.0), _blobs())
    log = [json.loads(line) for line in (model_dir(str(tmp_path), "addm") / LOG).read_text().splitlines()]
    assert result["step"] == 3 and all(math.isfinite(e["l_ddpm"]) for e in log if "l_ddpm" in e)
    assert finished_model(_cfg(tmp_path, max_steps=3, min_snr_gamma=5.0))["step"] == 3
    with pytest.raises(CheckpointError, match="min_snr_gamma: 5.0 -> 0.0"):
        finished_model(_cfg(tmp_path, max_steps=3))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_config_rejects_a_bad_gamma(bad):
    with pytest.raises(ConfigError, match="min_snr_gamma"):
        validate(TrainConfig, {"min_snr_gamma": bad}, "test")

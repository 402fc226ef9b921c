"""Noise confined to the head (``noise_region: head``, the coarse-noise DAE's region): the field, the forward process,
the reverse chain, and training with it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from addmlib.config import ConfigError, TrainConfig, validate
from addmlib.diffusion import GaussianDiffusion
from addmlib.losses import addm_generator_terms
from addmlib.noise import CoarseNoise, HeadOnlyNoise, head_mask, noise_from_config
from addmlib.training import CheckpointError, model_dir, read_log, train


def _head(size: int = 16, batch: int = 3) -> torch.Tensor:
    """x0: a square 'head' of tissue at 0.3 on the background -1."""
    x0 = torch.full((batch, 1, size, size), -1.0)
    x0[:, :, 4:12, 3:13] = 0.3
    return x0


def test_head_only_noise_is_the_base_noise_inside_the_head_and_zero_outside() -> None:
    x0 = _head()
    base = CoarseNoise(4)
    masked = HeadOnlyNoise(base)(x0, torch.Generator().manual_seed(3))
    plain = base(x0, torch.Generator().manual_seed(3))
    inside = head_mask(x0).bool()
    assert torch.equal(masked[inside], plain[inside]) and plain[inside].abs().sum() > 0
    assert (masked[~inside] == 0).all()


def test_noise_from_config_confines_the_model_noise_and_its_overrides() -> None:
    cfg = SimpleNamespace(noise="coarse", simplex_octaves=6, simplex_persistence=0.8, simplex_frequency=64.0,
                          coarse_spacing=4, noise_region="head")
    assert isinstance(noise_from_config(cfg), HeadOnlyNoise)
    assert isinstance(noise_from_config(cfg, "gaussian"), HeadOnlyNoise)
    assert isinstance(noise_from_config(SimpleNamespace(**{**vars(cfg), "noise_region": "image"})), CoarseNoise)


class _ZeroEps(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_the_reverse_chain_draws_its_noise_like_x0_so_the_background_stays_noise_free() -> None:
    diffusion = GaussianDiffusion(100)
    x0 = _head()
    noise = HeadOnlyNoise(CoarseNoise(4))
    runs = [diffusion.reconstruct(_ZeroEps(), x0, 40, 10, "ddpm", noise, torch.Generator().manual_seed(s))
            for s in (0, 1)]
    inside = head_mask(x0).bool()
    assert torch.equal(runs[0][~inside], runs[1][~inside])  # no noise drawn outside the head, at any step
    assert not torch.allclose(runs[0][inside], runs[1][inside])
    # unconditional samples have no x0: their noise covers the whole image
    sample = diffusion.sample(_ZeroEps(), (2, 1, 16, 16), steps=5, noise_fn=noise,
                              generator=torch.Generator().manual_seed(0))
    assert (sample != 0).float().mean() > 0.9


def _train_cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50,
                                 unet_base_channels=8, unet_channel_mult=(1, 2), unet_attention_resolutions=(),
                                 disc_base_channels=8, disc_channel_mult=(1, 2), batch_size=4, max_steps=30, lr=2e-3,
                                 checkpoint_every=10, log_every=1, augment=False, t_star=10, noise="coarse",
                                 coarse_spacing=4, lambda_adv=0.1), **kw})


def test_training_with_head_only_noise_learns_and_a_resume_must_agree_on_the_region(tmp_path) -> None:
    images = _head(batch=12) + 0.2 * torch.rand(12, 1, 16, 16) * head_mask(_head(batch=12))
    result = train(_train_cfg(tmp_path, noise_region="head"), images)
    log = read_log(model_dir(tmp_path, "addm") / "train_log.jsonl")
    assert result["finished"] and all(torch.isfinite(torch.tensor(r["l_ddpm"])) for r in log)
    assert sum(r["l_ddpm"] for r in log[-5:]) < sum(r["l_ddpm"] for r in log[:5])
    with pytest.raises(CheckpointError, match="noise_region: 'head' -> 'image'"):
        train(_train_cfg(tmp_path, max_steps=40), images)


def test_noise_region_is_validated() -> None:
    with pytest.raises(ConfigError, match="params.yaml: parameter 'noise_region' must be"):
        validate(TrainConfig, {"noise_region": "brain"}, "params.yaml")


def test_the_training_loss_noises_inside_the_head_only() -> None:
    diffusion = GaussianDiffusion(100)
    x0 = _head()
    terms = addm_generator_terms(_ZeroEps(), diffusion, x0, 0.0, noise_fn=HeadOnlyNoise(CoarseNoise(4)),
                                 generator=torch.Generator().manual_seed(0))
    scaled = diffusion.alphas_cumprod[terms.t].float().sqrt().view(-1, 1, 1, 1) * x0  # sqrt(abar_t) x0
    outside = ~head_mask(x0).bool()
    assert torch.allclose(terms.x_t[outside], scaled[outside])  # the background is never noised
    assert not torch.allclose(terms.x_t[~outside], scaled[~outside])

"""The training depths: t ~ U{train_t_min..train_t_max} (train_t_min = train_t_max: one noise level, as the DAE's)."""

from __future__ import annotations

import pytest
import torch

from addmlib.config import ConfigError, TrainConfig, validate
from addmlib.diffusion import GaussianDiffusion
from addmlib.losses import addm_generator_terms, sample_timesteps
from addmlib.training import CheckpointError, train


class _ZeroEps(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_depths_are_drawn_between_t_min_and_t_max_and_t_min_1_keeps_the_old_draws() -> None:
    t = sample_timesteps(4000, 60, torch.device("cpu"), torch.Generator().manual_seed(0), t_min=40)
    assert t.min() == 40 and t.max() == 60
    old = torch.randint(1, 101, (64,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_timesteps(64, 100, torch.device("cpu"), torch.Generator().manual_seed(1)), old)
    x0 = torch.zeros((256, 1, 8, 8))
    terms = addm_generator_terms(_ZeroEps(), GaussianDiffusion(100), x0, 0.0,
                                 generator=torch.Generator().manual_seed(0), t_max=50, t_min=50)
    assert (terms.t == 50).all()


def test_train_t_min_is_validated_against_train_t_max() -> None:
    assert validate(TrainConfig, {}, "params.yaml").train_t_min == 1
    with pytest.raises(ConfigError, match="train_t_min must be in \\[1, train_t_max\\]"):
        validate(TrainConfig, {"train_t_max": 50, "train_t_min": 60}, "params.yaml")
    with pytest.raises(ConfigError, match="train_t_min"):
        validate(TrainConfig, {"train_t_min": 0}, "params.yaml")


def test_a_resume_must_agree_on_the_depths(tmp_path) -> None:
    cfg = dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50, unet_base_channels=8,
               unet_channel_mult=(1, 2), unet_attention_resolutions=(), batch_size=4, max_steps=4, lambda_adv=0.0,
               checkpoint_every=2, augment=False, t_star=10, train_t_max=20, train_t_min=20)
    images = torch.rand((8, 1, 16, 16)) * 2 - 1
    assert train(TrainConfig(**cfg), images)["finished"]
    with pytest.raises(CheckpointError, match="train_t_min: 20 -> 1"):
        train(TrainConfig(**{**cfg, "train_t_min": 1, "max_steps": 6}), images)

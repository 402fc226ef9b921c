"""x0-prediction models (``prediction: x0``, MONAI's "sample"): the U-Net's x0_hat read as epsilon, the x0 loss, and
training, resuming and scoring with it."""

from __future__ import annotations

import pytest
import torch

from addmlib.config import ConfigError, TrainConfig, validate
from addmlib.diffusion import EpsFromX0, GaussianDiffusion
from addmlib.losses import addm_generator_terms
from addmlib.models import build_unet, load_ema_unet
from addmlib.nets import UNet
from addmlib.training import CheckpointError, model_dir, read_log, train


class _Fixed(torch.nn.Module):
    """A 'network' that returns the same x0_hat for any input."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.x0[: len(x)]


def _x0(batch: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand((batch, 1, size, size), generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_eps_from_x0_is_read_back_as_the_networks_x0_and_gives_the_true_noise_for_the_true_x0() -> None:
    diffusion = GaussianDiffusion(100)
    x0, guess = _x0(), _x0() * 0.5
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 40, 100])
    x_t = diffusion.q_sample(x0, t, eps)
    wrapped = EpsFromX0(_Fixed(guess), diffusion.alphas_cumprod)
    assert torch.allclose(diffusion.predict_x0(x_t, t, wrapped(x_t, t)), guess, atol=1e-4)
    assert torch.allclose(EpsFromX0(_Fixed(x0), diffusion.alphas_cumprod)(x_t, t), eps, atol=1e-3)


def test_the_x0_loss_is_the_mean_squared_error_of_x0_hat_and_the_epsilon_loss_is_unchanged() -> None:
    diffusion = GaussianDiffusion(100)
    x0, guess = _x0(), _x0() * 0.5
    wrapped = EpsFromX0(_Fixed(guess), diffusion.alphas_cumprod)
    terms = addm_generator_terms(wrapped, diffusion, x0, 0.0, generator=torch.Generator().manual_seed(0),
                                 prediction="x0")
    assert terms.ddpm.item() == pytest.approx(((guess - x0) ** 2).mean().item(), rel=1e-4)
    perfect = addm_generator_terms(EpsFromX0(_Fixed(x0), diffusion.alphas_cumprod), diffusion, x0, 0.0,
                                   generator=torch.Generator().manual_seed(0), prediction="x0")
    assert perfect.ddpm.item() < 1e-8
    # the same model judged in epsilon space: its loss is the x0 error weighted by abar_t / (1 - abar_t)
    eps_terms = addm_generator_terms(wrapped, diffusion, x0, 0.0, generator=torch.Generator().manual_seed(0))
    ab = diffusion.alphas_cumprod[eps_terms.t].float()
    weighted = (ab / (1 - ab) * ((guess - x0) ** 2).mean(dim=(1, 2, 3))).mean()
    assert eps_terms.ddpm.item() == pytest.approx(weighted.item(), rel=1e-3)
    with pytest.raises(ValueError, match="prediction must be 'epsilon' or 'x0'"):
        addm_generator_terms(wrapped, diffusion, x0, 0.0, prediction="v")


def _train_cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50,
                                 unet_base_channels=8, unet_channel_mult=(1, 2), unet_attention_resolutions=(),
                                 disc_base_channels=8, disc_channel_mult=(1, 2), batch_size=4, max_steps=30, lr=2e-3,
                                 checkpoint_every=10, log_every=1, augment=False, t_star=10, lambda_adv=0.1), **kw})


def test_an_x0_model_trains_scores_and_refuses_a_resume_as_an_epsilon_model(tmp_path) -> None:
    cfg = _train_cfg(tmp_path, prediction="x0")
    net = build_unet(cfg)
    assert isinstance(net, EpsFromX0) and isinstance(net.net, UNet)
    assert all(k.startswith("net.") for k in net.state_dict())  # the schedule is not saved with the weights
    assert isinstance(build_unet(_train_cfg(tmp_path)), UNet)
    images = _x0(batch=12) * 0.5
    result = train(cfg, images)
    log = read_log(model_dir(tmp_path, "addm") / "train_log.jsonl")
    assert result["finished"] and sum(r["l_ddpm"] for r in log[-5:]) < sum(r["l_ddpm"] for r in log[:5])
    unet, loaded = load_ema_unet(result["checkpoint"])
    assert loaded.prediction == "x0" and isinstance(unet, EpsFromX0)
    t = torch.full((2,), 10)
    with torch.no_grad():
        eps = unet(images[:2], t)
    assert eps.shape == images[:2].shape and torch.isfinite(eps).all()
    with pytest.raises(CheckpointError, match="prediction: 'x0' -> 'epsilon'"):
        train(_train_cfg(tmp_path, max_steps=40), images)


def test_prediction_is_validated_and_defaults_to_the_papers_epsilon() -> None:
    assert validate(TrainConfig, {}, "params.yaml").prediction == "epsilon"
    with pytest.raises(ConfigError, match="params.yaml: parameter 'prediction' must be"):
        validate(TrainConfig, {"prediction": "sample"}, "params.yaml")

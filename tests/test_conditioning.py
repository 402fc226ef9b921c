"""The U-Net's scale-shift norm and its input conditioning (cDDPM): what reaches the features, what is trained, what
is refused, and that detection conditions each slice on itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from addmlib.config import ConfigError, TrainConfig, validate
from addmlib.detect import fast_denoiser, score_volume
from addmlib.diffusion import GaussianDiffusion, conditioned_on
from addmlib.losses import addm_generator_terms
from addmlib.models import build_diffusion, build_unet, load_ema_unet
from addmlib.nets import UNet, UNetConfig
from addmlib.training import CheckpointError, train

SMALL = UNetConfig(base_channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=32)


def _two_brightness_disks(n: int = 32, size: int = 16) -> torch.Tensor:
    """Disks on a dark background, alternately at -0.4 and 0.6: one shape, two global intensities."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    disk = xx ** 2 + yy ** 2 < 0.7
    return torch.tensor(np.stack([np.where(disk, 0.6 if i % 2 else -0.4, -1.0) for i in range(n)]),
                        dtype=torch.float32)[:, None]


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50,
                                 unet_base_channels=8, unet_channel_mult=(1, 2), unet_attention_resolutions=(),
                                 disc_base_channels=8, disc_channel_mult=(1, 2), batch_size=8, max_steps=200,
                                 lr=3e-3, ema_decay=0.9, checkpoint_every=100, log_every=10, augment=False, t_star=10,
                                 lambda_adv=0.0, prediction="x0"), **kw})


def test_the_time_embedding_added_before_a_one_channel_group_norm_is_lost_and_scale_shift_keeps_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    for scale_shift, changes in ((False, False), (True, True)):
        net = UNet(UNetConfig(**{**SMALL.__dict__, "scale_shift_norm": scale_shift}), 16)
        for block in net.modules():  # open the zero-initialised exits so that every path reaches the output
            if isinstance(block, torch.nn.Conv2d) and not block.weight.abs().sum():
                torch.nn.init.normal_(block.weight, std=0.1)
        with torch.no_grad():
            a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([40, 40]))
        assert (not torch.allclose(a, b, atol=1e-6)) == changes, scale_shift


def test_a_conditioned_unet_starts_as_the_unconditioned_one_and_refuses_a_missing_or_stray_condition() -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(**{**SMALL.__dict__, "scale_shift_norm": True, "condition_channels": 8})
    net = UNet(cfg, 16)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 10, 40])
    with torch.no_grad():
        assert torch.equal(net(x, t, torch.zeros_like(x)), net(x, t, torch.randn_like(x)))  # zero-initialised exit
    with pytest.raises(ValueError, match="conditioned on the clean image .*pass cond"):
        net(x, t)
    with pytest.raises(ValueError, match="not conditioned"):
        UNet(SMALL, 16)(x, t, x)


def test_the_loss_feeds_a_conditioned_model_its_clean_batch_through_any_wrapper() -> None:
    """addm_generator_terms asks the model (or a DDP wrapper's ``module``) whether it reads x0: a conditioned U-Net is
    trained on eps_theta(x_t, t, x0), with its encoder in the graph; an unconditioned one is called as
    eps_theta(x_t, t)."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(50)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    t = torch.tensor([1, 10, 25, 40])
    cond_net = UNet(UNetConfig(**{**SMALL.__dict__, "scale_shift_norm": True, "condition_channels": 8}), 16)
    for layer in cond_net.modules():  # open the zero-initialised exits (the encoder's too): x0 now reaches eps
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and not layer.weight.abs().sum():
            torch.nn.init.normal_(layer.weight, std=0.1)

    class Wrapper(torch.nn.Module):  # what DDP looks like to the loss: the network under ``module``
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.module(*args)

    def loss(model: torch.nn.Module) -> torch.Tensor:
        return addm_generator_terms(model, diffusion, x0, 0.0, t=t, generator=torch.Generator().manual_seed(1)).ddpm

    plain, wrapped = loss(cond_net), loss(Wrapper(cond_net))
    assert torch.equal(plain, wrapped)
    with torch.no_grad():  # the same draw by hand: eps ~ N(0, I) from the generator, eps_theta(x_t, t, x0)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        by_hand = ((cond_net(diffusion.q_sample(x0, t, eps), t, x0) - eps) ** 2).mean()
    assert torch.allclose(plain.detach(), by_hand, atol=1e-6)
    plain.backward()
    grad = cond_net.cond_encoder.net[-1].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.isfinite(loss(UNet(SMALL, 16)))  # unconditioned: called without x0 (it would refuse one)


def test_conditioning_is_validated_by_name_and_needs_the_scale_shift_norm() -> None:
    assert validate(TrainConfig, {}, "p.yaml").unet_condition_channels == 0
    with pytest.raises(ConfigError, match="p.yaml: unet_condition_channels > 0 needs unet_scale_shift_norm"):
        validate(TrainConfig, {"unet_condition_channels": 16}, "p.yaml")
    with pytest.raises(ConfigError, match="unet_condition_channels must be 0"):
        validate(TrainConfig, {"unet_condition_channels": -1, "unet_scale_shift_norm": True}, "p.yaml")


def test_the_condition_carries_the_global_intensity_that_pure_noise_hides(tmp_path) -> None:
    """Two images of one shape at two brightnesses: from x_t at t = 45 of 50 (almost pure noise) an unconditioned
    model can only return their mean; the conditioned one reads the brightness from its condition."""
    images = _two_brightness_disks()
    inside = images[0, 0] > -1
    errors = {}
    for name, kw in (("plain", {"unet_scale_shift_norm": True}),
                     ("conditioned", {"unet_scale_shift_norm": True, "unet_condition_channels": 8})):
        cfg = _cfg(tmp_path, model_name=name, **kw)
        unet, _ = load_ema_unet(train(cfg, images)["checkpoint"])
        diffusion, t = build_diffusion(cfg), torch.full((len(images),), 45)
        xt = diffusion.q_sample(images, t, torch.randn(images.shape, generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            eps = unet(xt, t, images) if kw.get("unet_condition_channels") else unet(xt, t)
        x0_hat = diffusion.predict_x0(xt, t, eps)
        errors[name] = float((x0_hat[:, 0][:, inside] - images[:, 0][:, inside]).abs().mean())
    assert errors["plain"] > 0.3 and errors["conditioned"] < 0.1, errors


def test_a_conditioned_model_resumes_only_as_itself(tmp_path) -> None:
    images = _two_brightness_disks()
    train(_cfg(tmp_path, max_steps=3, unet_scale_shift_norm=True, unet_condition_channels=8), images)
    with pytest.raises(CheckpointError, match="unet_condition_channels: 8 -> 0"):
        train(_cfg(tmp_path, max_steps=6, unet_scale_shift_norm=True), images)


def test_detection_conditions_each_slice_on_itself(tmp_path) -> None:
    """score_volume(condition=True) equals the one-step estimate eps_theta(x_t, t, x) of each slice x, computed by
    hand; conditioning every slice on another one gives another map."""
    images = _two_brightness_disks(n=8)
    cfg = _cfg(tmp_path, max_steps=20, unet_scale_shift_norm=True, unet_condition_channels=8, prediction="epsilon")
    unet, _ = load_ema_unet(train(cfg, images)["checkpoint"])
    diffusion, eps = build_diffusion(cfg), fast_denoiser(unet)
    volume = images[:, 0].numpy().transpose(1, 2, 0)  # N x N x Z
    gen = torch.Generator().manual_seed(3)
    score = score_volume(eps, diffusion, volume, np.arange(8), 20, 1, generator=gen, condition=True)
    gen = torch.Generator().manual_seed(3)
    xt = diffusion.q_sample(images, 20, torch.randn(images.shape, generator=gen))
    t = torch.full((8,), 20)
    with torch.no_grad():
        by_hand = diffusion.predict_x0(xt, t, unet(xt, t, images)).clamp(-1, 1)
        swapped = diffusion.predict_x0(xt, t, conditioned_on(unet, images.flip(0))(xt, t)).clamp(-1, 1)
    assert np.allclose(score.reconstruction, by_hand[:, 0].numpy().transpose(1, 2, 0), atol=1e-5)
    assert not np.allclose(score.reconstruction, swapped[:, 0].numpy().transpose(1, 2, 0), atol=1e-3)
    with pytest.raises(ValueError, match="pass cond"):
        score_volume(eps, diffusion, volume, np.arange(8), 20, 1, generator=gen)


def test_build_unet_wires_both_settings_through_an_x0_model() -> None:
    net = build_unet(TrainConfig(image_size=16, unet_channel_mult=(1, 2), unet_attention_resolutions=(),
                                 unet_scale_shift_norm=True, unet_condition_channels=8, prediction="x0"))
    assert net.conditioned and net.net.config.scale_shift_norm and net.net.config.condition_channels == 8
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert net(x, torch.tensor([5, 9]), x).shape == x.shape


def test_notebook_02s_figures_condition_a_conditioned_model_on_the_slices_they_show(tmp_path) -> None:
    import matplotlib.pyplot as plt

    from addmlib.visualization.trained_model import reconstruction_figure, samples_figure

    cfg = _cfg(tmp_path, unet_scale_shift_norm=True, unet_condition_channels=8)
    unet, diffusion = build_unet(cfg).eval(), build_diffusion(cfg)
    images, gen = _two_brightness_disks(n=6)[:, 0].numpy(), torch.Generator().manual_seed(0)
    fig = samples_figure(unet, diffusion, 16, 5, gen, torch.device("cpu"), n=3, images=images)
    assert len(fig.axes) == 6  # the condition row above the samples
    plt.close(fig)
    with pytest.raises(ValueError, match="pass images"):
        samples_figure(unet, diffusion, 16, 5, gen, torch.device("cpu"), n=3)
    fig, err = reconstruction_figure(unet, diffusion, lambda like, g: torch.randn(like.shape, generator=g), images, 10,
                                     2, gen, torch.device("cpu"), n=3)
    assert np.isfinite(err)
    plt.close(fig)

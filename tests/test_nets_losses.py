"""U-Net and discriminator shapes; L_ADDM wiring: gradients of L_Adv reach the U-Net; lambda=0 is plain DDPM."""

import pytest
import torch

from addmlib.diffusion import GaussianDiffusion
from addmlib.losses import addm_generator_terms, ddpm_loss, discriminator_step_loss
from addmlib.nets import Discriminator, DiscriminatorConfig, UNet, UNetConfig

SMALL = UNetConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(16,), groups=8)


@pytest.mark.parametrize("size", [64, 256])
def test_unet_and_discriminator_shapes(size):
    torch.manual_seed(0)
    unet = UNet(SMALL, size)
    x = torch.randn(2, 1, size, size)
    t = torch.tensor([1, 999])
    with torch.no_grad():
        assert unet(x, t).shape == x.shape
        for conditional in (False, True):
            d = Discriminator(DiscriminatorConfig(base_channels=8, conditional=conditional))
            assert d(x, t, x if conditional else None).shape == (2,)


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        UNet(SMALL, 30)


def test_conditional_discriminator_needs_x_t():
    d = Discriminator(DiscriminatorConfig(base_channels=8, conditional=True))
    with pytest.raises(ValueError, match="x_t"):
        d(torch.zeros(1, 1, 16, 16), torch.tensor([1]))


def _setup(seed=0):
    torch.manual_seed(seed)
    unet = UNet(SMALL, 32)
    # zero-initialised output layers would make eps_pred == 0 and hide wiring errors: perturb every parameter
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    disc = Discriminator(DiscriminatorConfig(base_channels=8))
    return unet, disc, GaussianDiffusion(100), torch.rand(4, 1, 32, 32) * 2 - 1


def test_adversarial_gradient_reaches_unet():
    unet, disc, diff, x0 = _setup()
    t = torch.tensor([1, 10, 50, 100])
    terms = addm_generator_terms(unet, diff, x0, 1.0, disc, t=t, generator=torch.Generator().manual_seed(0))
    unet.zero_grad()
    terms.adv.backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_lambda_zero_is_exactly_ddpm():
    unet, disc, diff, x0 = _setup()
    t = torch.tensor([3, 20, 70, 99])

    class Boom(torch.nn.Module):
        config = DiscriminatorConfig()

        def forward(self, *a):
            raise AssertionError("D must not be called when lambda = 0")

    terms = addm_generator_terms(unet, diff, x0, 0.0, Boom(), t=t, generator=torch.Generator().manual_seed(1))
    unet.zero_grad()
    terms.total.backward()
    g_addm = [p.grad.clone() for p in unet.parameters()]
    # plain DDPM, written out by hand with the same draws
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t = diff.q_sample(x0, t, eps)
    unet.zero_grad()
    loss = ddpm_loss(unet(x_t, t), eps)
    loss.backward()
    assert torch.equal(terms.total, loss)
    assert terms.real_prev is None and terms.fake_prev is None
    for a, b in zip(g_addm, (p.grad for p in unet.parameters())):
        assert torch.equal(a, b)


def test_total_is_ddpm_plus_lambda_adv_and_d_loss_is_finite():
    unet, disc, diff, x0 = _setup()
    terms = addm_generator_terms(unet, diff, x0, 0.05, disc, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(terms.total, terms.ddpm + 0.05 * terms.adv)
    d_loss, acc_real, acc_fake = discriminator_step_loss(disc, terms)
    d_loss.backward()
    assert torch.isfinite(d_loss) and 0 <= acc_real <= 1 and 0 <= acc_fake <= 1
    assert all(p.grad is not None for p in disc.parameters() if p.requires_grad)


def test_real_sample_is_the_forward_posterior_given_same_x_t():
    unet, disc, diff, x0 = _setup()
    t = torch.tensor([5, 5, 5, 5])
    terms = addm_generator_terms(unet, diff, x0, 0.1, disc, t=t, generator=torch.Generator().manual_seed(3))
    mean, var = diff.q_posterior_mean_variance(x0, terms.x_t, t)
    z = (terms.real_prev - mean) / var.sqrt()
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1


def test_negative_lambda_and_missing_discriminator_are_errors():
    unet, disc, diff, x0 = _setup()
    with pytest.raises(ValueError, match="lambda"):
        addm_generator_terms(unet, diff, x0, -0.1, disc)
    with pytest.raises(ValueError, match="discriminator"):
        addm_generator_terms(unet, diff, x0, 0.1, None)


def test_adv_target_x0_judges_the_one_step_estimate_against_x0():
    unet, disc, diff, x0 = _setup()
    t = torch.tensor([2, 30, 60, 90])
    terms = addm_generator_terms(unet, diff, x0, 0.5, disc, t=t, generator=torch.Generator().manual_seed(4),
                                 adv_target="x0")
    with torch.no_grad():
        x0_hat = diff.predict_x0(terms.x_t, t, unet(terms.x_t, t))
    assert torch.equal(terms.real_prev, x0)
    assert torch.allclose(terms.fake_prev, x0_hat, atol=1e-6)
    unet.zero_grad()
    terms.adv.backward()
    assert sum(float(p.grad.abs().sum()) for p in unet.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError, match="adv_target"):
        addm_generator_terms(unet, diff, x0, 0.5, disc, t=t, adv_target="x_t")

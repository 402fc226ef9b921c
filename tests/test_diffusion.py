"""The diffusion maths against its closed forms (float64 where exactness is claimed)."""

import pytest
import torch

from addmlib.diffusion import GaussianDiffusion, beta_schedule, scale_t_star, strided_timesteps


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [300, 500, 1000])
def test_schedule_identities(name, T):
    d = GaussianDiffusion(T, name)
    assert d.betas.shape == (T + 1,) and d.betas[0] == 0 and d.alphas_cumprod[0] == 1
    assert torch.all((d.betas[1:] > 0) & (d.betas[1:] < 1))
    ab = d.alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1]), "alpha_bar must decrease strictly"
    assert torch.allclose(ab, torch.cumprod(1 - d.betas, 0))
    assert ab[-1] < 1e-3, "x_T must be close to pure noise for every T"


def test_linear_schedule_matches_ho_at_1000():
    b = beta_schedule("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="positive integer"):
        beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion(10, variance="learned")


def test_q_sample_moments_match_closed_form():
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([10, 250, 900])
    n = 20000
    draws = torch.stack([d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
                         for _ in range(n)])
    ab = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    se = ((1 - ab) / n).sqrt()
    assert ((draws.mean(0) - ab.sqrt() * x0).abs() / se).max() < 5
    assert torch.allclose(draws.var(0), (1 - ab).expand_as(x0), rtol=0.06)


def test_q_sample_t0_is_identity_and_closed_form():
    d = GaussianDiffusion(100)
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    assert torch.equal(d.q_sample(x0, 0, eps), x0)
    ab = d.alphas_cumprod[37]
    assert torch.allclose(d.q_sample(x0, 37, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


def test_posterior_matches_ho_eq7():
    d = GaussianDiffusion(1000)
    x0 = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    xt = torch.randn_like(x0)
    t = torch.tensor([1, 2, 500, 1000])
    mean, var = d.q_posterior_mean_variance(x0, xt, t)
    b, a, ab, ab_prev = d.betas[t], d.alphas[t], d.alphas_cumprod[t], d.alphas_cumprod[t - 1]
    r = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    exp_mean = r(ab_prev.sqrt() * b / (1 - ab)) * x0 + r(a.sqrt() * (1 - ab_prev) / (1 - ab)) * xt
    exp_var = r((1 - ab_prev) / (1 - ab) * b)
    assert torch.allclose(mean, exp_mean, atol=1e-12)
    assert torch.allclose(var, exp_var.expand_as(x0), atol=1e-15)
    assert torch.all(var[0] == 0), "posterior variance at t=1 is 0"


def test_posterior_is_consistent_with_forward_marginals():
    """Sampling x_t ~ q(x_t|x0) then x_{t-1} ~ q(x_{t-1}|x_t, x0) must give q(x_{t-1}|x0)."""
    d = GaussianDiffusion(200)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 60)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    prev = d.q_posterior_sample(x0, xt, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = d.alphas_cumprod[59]
    assert prev.mean().item() == pytest.approx((ab.sqrt() * 0.7).item(), abs=0.02)
    assert prev.var().item() == pytest.approx((1 - ab).item(), rel=0.05)


def _oracle(d, x0):
    def eps_model(xt, t):
        ab = d.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(xt.dtype)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
    return eps_model


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_reverse_step_with_true_eps_has_posterior_mean(variance):
    d = GaussianDiffusion(1000, variance=variance)
    x0 = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    t = torch.tensor([1, 300, 1000])
    xt = d.q_sample(x0, t)
    eps = _oracle(d, x0)(xt, t)
    mu, x0_hat = d.p_mean(xt, t, eps)
    post_mean, post_var = d.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-9)
    assert torch.allclose(mu, post_mean, atol=1e-9)
    z = torch.randn_like(x0)
    step = d.p_sample_from_eps(xt, t, eps, z)
    sigma2 = post_var if variance == "beta_tilde" else d.betas[t].reshape(-1, 1, 1, 1).expand_as(x0)
    expected = post_mean + sigma2.sqrt() * z
    expected[0] = post_mean[0]  # no noise on the step into x_0
    assert torch.allclose(step, expected, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 7, 50, 250])
def test_ddim_with_true_eps_reconstructs_exactly(steps):
    d = GaussianDiffusion(1000)
    x0 = torch.rand(2, 1, 16, 16, dtype=torch.float64) * 2 - 1
    rec = d.reconstruct(_oracle(d, x0), x0, 250, steps=steps, sampler="ddim")
    assert torch.allclose(rec, x0, atol=1e-10)


def test_respaced_ddpm_with_true_eps_converges_to_x0():
    d = GaussianDiffusion(1000)
    x0 = torch.rand(2, 1, 16, 16, dtype=torch.float64) * 2 - 1
    rec = d.reconstruct(_oracle(d, x0), x0, 250, steps=25, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    # the last step (into t=0) adds no noise and uses x0_hat = x0 exactly
    assert torch.allclose(rec, x0, atol=1e-10)


def test_reconstruct_t_star_zero_returns_input():
    d = GaussianDiffusion(100)
    x0 = torch.rand(2, 1, 8, 8)

    def never_called(xt, t):
        raise AssertionError("model must not be called at t*=0")

    assert torch.equal(d.reconstruct(never_called, x0, 0), x0)


def test_reconstruct_rejects_bad_depth_and_sampler():
    d = GaussianDiffusion(100)
    x0 = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="t_star"):
        d.reconstruct(lambda x, t: x, x0, 101)
    with pytest.raises(ValueError, match="sampler"):
        d.reconstruct(lambda x, t: x, x0, 10, sampler="euler")


def test_strided_timesteps():
    assert strided_timesteps(250, 250) == list(range(250, -1, -1))
    ts = strided_timesteps(250, 50)
    assert ts[0] == 250 and ts[-1] == 0 and len(ts) == 51 and ts == sorted(set(ts), reverse=True)
    assert strided_timesteps(0, 5) == [0]
    with pytest.raises(ValueError):
        strided_timesteps(10, 11)


def test_sample_runs_the_full_chain_from_pure_noise():
    d = GaussianDiffusion(20)
    calls = []

    def model(xt, t):
        calls.append(int(t[0]))
        return torch.zeros_like(xt)

    out = d.sample(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8) and calls == list(range(20, 0, -1))
    assert out.abs().max() <= 1 + 1e-6  # x0_hat is clamped and the last step adds no noise


def test_t_star_scales_with_T():
    assert scale_t_star(250, 1000) == 250
    assert scale_t_star(250, 500) == 125
    assert scale_t_star(200, 300) == 60


def test_oracle_eps_makes_ddim_return_the_data():
    from addmlib.diffusion import GaussianDiffusion, oracle_eps, strided_timesteps

    d = GaussianDiffusion(100)
    x0 = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).double()
    out = d.denoise(oracle_eps(d, x0), d.q_sample(x0, 60), strided_timesteps(60, 7), sampler="ddim")
    assert torch.allclose(out, x0, atol=1e-9)


def test_lag1_correlation_of_white_and_smooth_fields():
    from addmlib.noise import CoarseNoise, lag1_correlation

    g = torch.Generator().manual_seed(0)
    assert abs(lag1_correlation(torch.randn(8, 1, 32, 32, generator=g))) < 0.05
    assert lag1_correlation(CoarseNoise(8)(torch.empty(8, 1, 32, 32), g)) > 0.9

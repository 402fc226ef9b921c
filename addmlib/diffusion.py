"""One home for the diffusion maths (Ho et al. 2020; the ADDM paper, Eqs. 1-2).

Time convention: t in {0, 1, ..., T}. ``x_0`` is the data, ``x_T`` is (nearly) pure noise.
All schedule tensors have length T + 1 and index 0 is the identity step (beta_0 = 0, alpha_bar_0 = 1),
so ``q_sample(x0, 0) == x0`` and the model is only ever called with t >= 1.

The reverse step between any two times s < t uses the general posterior q(x_s | x_t, x_0); with s = t - 1 it is the
DDPM posterior, with a strided subset of times it is "respaced" DDPM (improved-diffusion), and ``ddim_step`` is
DDIM with eta = 0 (Song et al. 2021). The anomaly-detection primitive is ``reconstruct``: noise to depth t* and
denoise back (AnoDDPM protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

ScheduleName = Literal["linear", "cosine"]
VarianceName = Literal["beta", "beta_tilde"]
SamplerName = Literal["ddpm", "ddim"]
NoiseFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beta_schedule(name: ScheduleName, num_steps: int) -> torch.Tensor:
    """beta_1..beta_T (float64, length T).

    linear: Ho et al.'s 1e-4 -> 0.02 for T = 1000, rescaled by 1000 / T so that any T spans the same noise range
    (improved-diffusion's rule; T = 300/500/1000 all end near pure noise); clamped at 0.999 for very small T.
    cosine: Nichol & Dhariwal 2021, alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, beta <= 0.999.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if name == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64).clamp(max=0.999)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear' or 'cosine'")


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to broadcast over ``like`` (B, ...), in like's dtype and device."""
    out = values.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _as_time(t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=torch.long).expand(batch) if t.dim() == 0 else t.to(device).long()
    return torch.full((batch,), int(t), dtype=torch.long, device=device)


def gaussian_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """epsilon ~ N(0, I) shaped like ``like``."""
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def strided_timesteps(t_star: int, steps: int) -> list[int]:
    """Descending times [t*, ..., 0] with ``steps`` reverse steps, evenly spaced (rounded, unique).

    steps == t_star gives every step (t*, t*-1, ..., 0).
    """
    if t_star < 0:
        raise ValueError(f"t_star must be >= 0, got {t_star}")
    if t_star == 0:
        return [0]
    if not 1 <= steps <= t_star:
        raise ValueError(f"steps must be in [1, t_star={t_star}], got {steps}")
    grid = torch.linspace(float(t_star), 0.0, steps + 1, dtype=torch.float64).round().long().tolist()
    out: list[int] = []
    for v in grid:
        if not out or v < out[-1]:
            out.append(int(v))
    return out


def eps_from_x0(alphas_cumprod: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The noise that takes ``x0`` to ``xt`` at t: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) (the inverse of
    ``GaussianDiffusion.predict_x0``; t >= 1), in xt's dtype."""
    ab = _gather(alphas_cumprod, t, xt)
    return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()


def oracle_eps(diffusion: "GaussianDiffusion", x0: torch.Tensor) -> EpsModel:
    """The exact noise predictor for known data ``x0`` (``eps_from_x0``). With it every sampler must return x0
    (deterministic ones exactly): a check of the sampling maths."""
    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_from_x0(diffusion.alphas_cumprod, x_t, t, x0[: len(x_t)])
    return eps


def conditioned_on(model: Callable[..., torch.Tensor], cond: torch.Tensor) -> EpsModel:
    """eps(x_t, t) = model(x_t, t, cond): a conditioned model (cDDPM) bound to the clean images ``cond`` it reads, so
    that the samplers call it as any other model."""
    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, cond)
    return eps


class EpsFromX0(torch.nn.Module):
    """A network that predicts x0 (MONAI's prediction_type "sample"), read as the epsilon-prediction the rest of the
    maths takes (``eps_from_x0``), so that ``predict_x0`` returns x0_hat again. Computed in fp32 whatever the
    network's autocast dtype; t >= 1 (alpha_bar_0 = 1 has no eps). ``alphas_cumprod`` (length T + 1) is not saved
    with the weights: it is the model's schedule."""

    def __init__(self, net: torch.nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    @property
    def conditioned(self) -> bool:
        """Whether the wrapped network needs the clean image (``nets.UNet.conditioned``)."""
        return bool(getattr(self.net, "conditioned", False))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x0_hat = self.net(x, t) if cond is None else self.net(x, t, cond)
        return eps_from_x0(self.alphas_cumprod, x.float(), t, x0_hat.float())


def resolve_steps(steps: int | None, t_star: int) -> int:
    """The one rule for the number of reverse steps from depth t*: None or 0 = every step (t*), otherwise
    min(steps, t*). ``steps = 1`` is the one-step estimate x0_hat."""
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0 (0 or None = every step), got {steps}")
    return t_star if not steps else min(int(steps), t_star)


@dataclass(frozen=True)
class PosteriorTerms:
    """q(x_s | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, variance)."""

    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    variance: torch.Tensor


class GaussianDiffusion:
    """The forward process q and the reverse process p_theta for an epsilon-prediction model.

    ``variance`` picks the fixed reverse variance sigma_t^2 of Eq. 2: "beta" (sigma^2 = beta_t, Ho's upper bound)
    or "beta_tilde" (sigma^2 = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t, the true posterior variance).
    """

    def __init__(self, num_steps: int, schedule: ScheduleName = "linear",
                 variance: VarianceName = "beta_tilde", clip_x0: bool = True) -> None:
        if variance not in ("beta", "beta_tilde"):
            raise ValueError(f"unknown variance {variance!r}; expected 'beta' or 'beta_tilde'")
        self.num_steps = num_steps
        self.schedule = schedule
        self.variance = variance
        self.clip_x0 = clip_x0
        betas = beta_schedule(schedule, num_steps)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])  # beta_0 = 0
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar_0 = 1

    # ----- forward process -------------------------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (closed form of Eq. 1)."""
        t = _as_time(t, x0.shape[0], x0.device)
        ab = _gather(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0, (1 - ab).expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        t = _as_time(t, x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        ab = _gather(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    # ----- posterior ------------------------------------------------------------------------------------------
    def posterior_terms(self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> PosteriorTerms:
        """q(x_s | x_t, x_0) for 0 <= s < t, with alpha_{t|s} = alpha_bar_t / alpha_bar_s, beta_{t|s} = 1 - alpha_{t|s}:

        mean = sqrt(alpha_bar_s) beta_{t|s} / (1 - alpha_bar_t) x_0 + sqrt(alpha_{t|s}) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
        var  = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_{t|s}.
        With s = t - 1 this is Ho et al.'s Eq. 7.
        """
        ab_t = self.alphas_cumprod.to(like.device)[t]
        ab_s = self.alphas_cumprod.to(like.device)[s]
        a_ts = ab_t / ab_s
        b_ts = 1 - a_ts
        coef_x0 = ab_s.sqrt() * b_ts / (1 - ab_t)
        coef_xt = a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
        var = (1 - ab_s) / (1 - ab_t) * b_ts
        shape = (-1, *([1] * (like.dim() - 1)))
        return PosteriorTerms(coef_x0.to(like.dtype).reshape(shape), coef_xt.to(like.dtype).reshape(shape),
                              var.to(like.dtype).reshape(shape))

    def q_posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor,
                                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 6-7), t >= 1."""
        t = _as_time(t, x0.shape[0], x0.device)
        p = self.posterior_terms(t, t - 1, x0)
        return p.coef_x0 * x0 + p.coef_xt * xt, p.variance.expand_as(x0)

    def q_posterior_sample(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                           noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x_0). Marginally over x_t ~ q(x_t|x_0) this is a draw of q(x_{t-1} | x_0)."""
        mean, var = self.q_posterior_mean_variance(x0, xt, t)
        if noise is None:
            noise = torch.randn_like(x0)
        return mean + var.sqrt() * noise

    # ----- reverse process ------------------------------------------------------------------------------------
    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        ab = _gather(self.alphas_cumprod, t, xt)
        return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def reverse_variance(self, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """sigma^2 for the step t -> s: "beta_tilde" (the posterior variance) or "beta", beta_{t|s} = 1 - alpha_bar_t /
        alpha_bar_s (= beta_t for s = t - 1). No noise is added on the step into s = 0 whichever is chosen."""
        p = self.posterior_terms(t, s, like)
        if self.variance == "beta_tilde":
            return p.variance
        ab_t = self.alphas_cumprod.to(like.device)[t]
        ab_s = self.alphas_cumprod.to(like.device)[s]
        return (1 - ab_t / ab_s).to(like.dtype).reshape(p.variance.shape)

    def p_mean(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, s: torch.Tensor | None = None,
               clip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu_theta(x_t, t) of Eq. 2 for the step t -> s (default s = t - 1) and the x0_hat it came from.

        mu_theta = posterior mean with x_0 replaced by x0_hat; if ``clip`` x0_hat is clamped to [-1, 1] first
        (sampling only: clamping would cut gradients in training).
        """
        t = _as_time(t, xt.shape[0], xt.device)
        s = t - 1 if s is None else _as_time(s, xt.shape[0], xt.device)
        x0_hat = self.predict_x0(xt, t, eps)
        if self.clip_x0 if clip is None else clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        p = self.posterior_terms(t, s, xt)
        return p.coef_x0 * x0_hat + p.coef_xt * xt, x0_hat

    def p_sample_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor,
                          s: torch.Tensor | None = None, clip: bool | None = None) -> torch.Tensor:
        """x_s = mu_theta(x_t, t) + sigma z, z = ``noise`` (reparameterised; differentiable in eps).

        No noise is added where s == 0 (Ho et al., Algorithm 2).
        """
        t = _as_time(t, xt.shape[0], xt.device)
        s = t - 1 if s is None else _as_time(s, xt.shape[0], xt.device)
        mean, _ = self.p_mean(xt, t, eps, s, clip)
        var = self.reverse_variance(t, s, xt)
        nonzero = (s > 0).to(xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
        return mean + nonzero * var.sqrt() * noise

    def ddim_step(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, s: torch.Tensor,
                  clip: bool | None = None) -> torch.Tensor:
        """DDIM, eta = 0: x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps (deterministic)."""
        t = _as_time(t, xt.shape[0], xt.device)
        s = _as_time(s, xt.shape[0], xt.device)
        x0_hat = self.predict_x0(xt, t, eps)
        if self.clip_x0 if clip is None else clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            eps = eps_from_x0(self.alphas_cumprod, xt, t, x0_hat)
        ab_s = _gather(self.alphas_cumprod, s, xt)
        return ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps

    # ----- loops ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, model: EpsModel, xt: torch.Tensor, timesteps: Sequence[int], sampler: SamplerName = "ddpm",
                noise_fn: NoiseFn = gaussian_noise, generator: torch.Generator | None = None,
                keep: tuple[torch.Tensor, torch.Tensor] | None = None,
                noise_like: torch.Tensor | None = None) -> torch.Tensor:
        """Run the reverse chain over descending ``timesteps`` (t_start, ..., 0) starting from x_{t_start}.

        ``keep = (mask, x0)``: patch-wise denoising (pDDPM, Behrendt et al. 2023): only where mask = 1 is denoised;
        elsewhere the clean context x0 is put back after every step, as the model saw it in training.
        ``noise_like``: the image each step's noise is drawn like (the clean x0, for a noise confined to the head,
        ``noise.HeadOnlyNoise``); None: the current x_t.
        """
        if list(timesteps) != sorted(set(timesteps), reverse=True) or timesteps[-1] != 0:
            raise ValueError(f"timesteps must be strictly descending and end at 0, got {list(timesteps)[:5]}...")
        if timesteps[0] > self.num_steps:
            raise ValueError(f"timesteps start at {timesteps[0]} > T = {self.num_steps}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")
        x = xt
        b = x.shape[0]
        for t_i, s_i in zip(timesteps[:-1], timesteps[1:]):
            t = torch.full((b,), t_i, dtype=torch.long, device=x.device)
            s = torch.full((b,), s_i, dtype=torch.long, device=x.device)
            eps = model(x, t).to(x.dtype)
            if sampler == "ddim":
                x = self.ddim_step(x, t, eps, s)
            else:
                x = self.p_sample_from_eps(x, t, eps, noise_fn(x if noise_like is None else noise_like, generator), s)
            if keep is not None:
                x = keep[0] * x + (1 - keep[0]) * keep[1]
        return x

    @torch.no_grad()
    def sample(self, model: EpsModel, shape: Sequence[int], steps: int | None = None, sampler: SamplerName = "ddpm",
               noise_fn: NoiseFn = gaussian_noise, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Unconditional samples from x_T ~ N(0, I) with ``steps`` reverse steps (default: all T). The noise covers the
        whole image (there is no x0, so no head to confine it to)."""
        whole = torch.zeros(tuple(shape), device=device)
        x = noise_fn(whole, generator)
        ts = strided_timesteps(self.num_steps, resolve_steps(steps, self.num_steps))
        return self.denoise(model, x, ts, sampler, noise_fn, generator, noise_like=whole)

    @torch.no_grad()
    def reconstruct(self, model: EpsModel, x0: torch.Tensor, t_star: int, steps: int | None = None,
                    sampler: SamplerName = "ddpm", noise_fn: NoiseFn = gaussian_noise,
                    generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``x0`` to depth t* with q(x_{t*} | x_0) and denoise back with ``resolve_steps(steps, t*)`` reverse
        steps (None or 0: all t*; more than t*: t*).

        The anomaly map is then |x0 - reconstruct(...)|. t* = 0 returns x0 unchanged. ``mask`` (1 = noise, 0 = keep)
        noises and denoises only a patch, with the clean input as context (``patch_noise``, pDDPM).
        """
        if not 0 <= t_star <= self.num_steps:
            raise ValueError(f"t_star must be in [0, T={self.num_steps}], got {t_star}")
        if t_star == 0:
            return x0.clone()
        xt = self.q_sample(x0, t_star, noise_fn(x0, generator))
        if mask is not None:
            xt = patch_noise(x0, xt, mask)
        return self.denoise(model, xt, strided_timesteps(t_star, resolve_steps(steps, t_star)), sampler, noise_fn,
                            generator, None if mask is None else (mask, x0), noise_like=x0)


def patch_noise(x0: torch.Tensor, xt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pDDPM's partially noised input: x_t inside the patch (mask = 1), the clean x0 outside it."""
    return mask * xt + (1 - mask) * x0


def patch_masks(size: int, patch: int, stride: int, like: torch.Tensor) -> list[torch.Tensor]:
    """Square patch masks (1, 1, size, size) on a grid of ``stride`` that covers the whole image (the last row and
    column of patches end on the border)."""
    if not 1 <= patch <= size or not 1 <= stride <= patch:
        raise ValueError(f"patch {patch} must be in [1, image size {size}] and its stride {stride} in [1, {patch}] "
                         f"(a longer stride would leave pixels no patch covers)")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    out = []
    for y in starts:
        for x in starts:
            m = torch.zeros((1, 1, size, size), dtype=like.dtype, device=like.device)
            m[..., y:y + patch, x:x + patch] = 1
            out.append(m)
    return out


def random_patch_masks(batch: int, size: int, patch: int, generator: torch.Generator | None,
                       like: torch.Tensor) -> torch.Tensor:
    """(B, 1, size, size) masks, each a ``patch`` x ``patch`` square at a uniformly random position (training)."""
    gdev = like.device if generator is None else generator.device
    pos = torch.randint(0, size - patch + 1, (batch, 2), generator=generator, device=gdev).tolist()
    m = torch.zeros((batch, 1, size, size), dtype=like.dtype, device=like.device)
    for i, (y, x) in enumerate(pos):
        m[i, :, y:y + patch, x:x + patch] = 1
    return m


def scale_t_star(t_star_at_1000: int, num_steps: int) -> int:
    """Scale a noising depth given for T = 1000 (AnoDDPM: 200 or 250) to another T, keeping t*/T fixed."""
    return max(1, round(t_star_at_1000 * num_steps / 1000))

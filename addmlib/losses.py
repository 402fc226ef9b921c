"""ADDM's objective (paper Eq. 5): L_ADDM = L_DDPM + lambda * L_Adv.

How we read Eq. 5 (the paper is ambiguous; see notebooks/00_method.ipynb for the full discussion):

* L_DDPM is Ho et al.'s simple loss ||eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t)||^2.
  Eq. 5 prints sqrt(alpha_t); we read it as alpha_bar_t, as in the paper's own Eq. 4 and in DDPM.
* "Real" samples are forward-process draws x_{t-1} ~ q(x_{t-1} | x_0). We draw them as x_{t-1} ~ q(x_{t-1} | x_t, x_0)
  with the same x_t the model sees; marginally over x_t that is exactly q(x_{t-1} | x_0), and it keeps the pair
  (x_{t-1}, x_t) consistent for the conditional (DDGAN-style) discriminator.
* "Fake" samples are the model's reverse step x_{t-1} = mu_theta(x_t, t) + sigma_t z (Eq. 2), reparameterised so
  gradients reach theta through mu_theta, with sigma_t^2 = beta_tilde_t, the real samples' own variance, whatever
  variance the sampler uses (otherwise D could tell them apart by the noise level alone, which theta cannot change).
* Eq. 5 writes the GAN value function E[log D(real)] + E[log(1 - D(fake))], which D maximises. For the U-Net we use the
  standard non-saturating generator loss L_Adv = -E[log D(fake)] (Goodfellow et al. 2014), scaled by lambda.
  D minimises the binary cross-entropy -log D(real) - log(1 - D(fake)).
* lambda = 0 is exactly the DDPM baseline (Pinaya et al.): the discriminator is not evaluated at all.
* ``adv_target = "x0"`` is not the paper's: D compares the model's one-step estimate
  x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) with the clean x_0. With T = 1000 small steps the
  paper's real and fake x_{t-1} differ by a mean shift far below sigma_t, so its D has nothing to see
  (docs/results/paper-claims.md, the adversarial-gradient profile); x0_hat is what one-step detection reads, and at
  large t it is visibly blurred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .diffusion import GaussianDiffusion, NoiseFn, gaussian_noise, patch_noise
from .nets import Discriminator


def ddpm_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_DDPM = mean ||eps - eps_theta||^2 (Ho et al.'s L_simple), or mean ||x0 - x0_hat||^2 for an x0-prediction
    model; with ``weight`` (B,), the batch mean of w_b times sample b's mean squared error."""
    if weight is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return (weight.float() * per_sample).mean()


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float,
                   prediction: Prediction = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), per sample: with SNR_t = alpha_bar_t / (1 - alpha_bar_t),
    w_t = min(SNR_t, gamma) / SNR_t for the epsilon loss and min(SNR_t, gamma) for the x0 loss. Where SNR_t >= gamma
    the weighted epsilon loss is gamma * ||x0 - x0_hat||^2: every depth's x0 error counts alike, as in the DAE's loss,
    while the network still predicts eps (its x0_hat = x_t / sqrt(abar) minus a correction, not a fresh image)."""
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 here (0 turns the weighting off), got {gamma}")
    ab = alphas_cumprod.to(t.device)[t.long()].double()
    snr = ab / (1 - ab)
    capped = snr.clamp(max=gamma)
    return (capped / snr if prediction == "epsilon" else capped).float()


def generator_adv_loss(fake_logits: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Non-saturating L_Adv = -log D(fake) = softplus(-logit), averaged over the batch (or over ``weight`` > 0)."""
    return _weighted_mean(F.softplus(-fake_logits.float()), weight)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weight is None else (values * weight).sum() / weight.sum().clamp(min=1.0)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE for D: -log D(real) - log(1 - D(fake)) = softplus(-real) + softplus(fake), averaged (over weight > 0)."""
    return _weighted_mean(F.softplus(-real_logits.float()) + F.softplus(fake_logits.float()), weight)


@dataclass
class ADDMTerms:
    """Everything one training step needs: the U-Net's loss and the (detached) samples D is trained on."""

    total: torch.Tensor
    ddpm: torch.Tensor
    adv: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    real_prev: torch.Tensor | None
    fake_prev: torch.Tensor | None
    adv_weight: torch.Tensor | None = None  # 1 for the samples L_Adv (and D) use, 0 otherwise; None: all


AdvTarget = Literal["x_prev", "x0"]
Prediction = Literal["epsilon", "x0"]


def sample_timesteps(batch: int, num_steps: int, device: torch.device,
                     generator: torch.Generator | None = None, t_min: int = 1) -> torch.Tensor:
    """t ~ Uniform{t_min, ..., T} (t_min = 1: every depth)."""
    gdev = device if generator is None else generator.device
    return torch.randint(t_min, num_steps + 1, (batch,), generator=generator, device=gdev).to(device)


def addm_generator_terms(model: torch.nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor, lam: float,
                         discriminator: Discriminator | None = None, t: torch.Tensor | None = None,
                         noise_fn: NoiseFn = gaussian_noise, generator: torch.Generator | None = None,
                         adv_t_max: int | None = None, t_max: int | None = None, t_min: int = 1,
                         patch_mask: torch.Tensor | None = None, adv_target: AdvTarget = "x_prev",
                         prediction: Prediction = "epsilon", min_snr_gamma: float = 0.0) -> ADDMTerms:
    """L_ADDM = L_DDPM + lambda * L_Adv for one batch x0 (B, C, H, W) in [-1, 1].

    With lam == 0 this computes L_DDPM alone and never touches ``discriminator``; with lam > 0 a discriminator is
    required. ``adv_t_max`` restricts L_Adv to the samples with t <= adv_t_max (None: every t); ``t_max`` draws
    t ~ U{t_min..t_max} instead of U{1..T} (detection only ever noises to t*, so training may focus there; t_min =
    t_max is the DAE's one noise level). The discriminator's parameters would receive gradients from ``total`` too:
    the trainer freezes them during the U-Net's update.
    ``patch_mask`` (B, 1, H, W; pDDPM): only the patch is noised, the rest of x_t is the clean x0; L_DDPM is the mean
    over the patch, and D's real and fake x_{t-1} carry the same clean context.
    ``adv_target``: what D judges, the paper's x_{t-1} ("x_prev") or the one-step estimate x0_hat against x_0 ("x0").
    ``prediction``: the model's (``ModelConfig.prediction``): "epsilon", L_DDPM = ||eps - eps_theta||^2; "x0" (a model
    wrapped by ``EpsFromX0``), L_DDPM = ||x0 - x0_hat||^2.
    ``min_snr_gamma`` > 0 weights each sample's L_DDPM by ``min_snr_weight`` (0: unweighted, the paper's).
    A conditioned model (``conditioned``, cDDPM; read through a DDP wrapper's ``module``) also reads the clean image:
    eps_theta(x_t, t, x0).
    """
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    if prediction not in ("epsilon", "x0"):
        raise ValueError(f"prediction must be 'epsilon' or 'x0', got {prediction!r}")
    b = x0.shape[0]
    if t is None:
        t = sample_timesteps(b, min(t_max or diffusion.num_steps, diffusion.num_steps), x0.device, generator, t_min)
    eps = noise_fn(x0, generator)
    x_t = diffusion.q_sample(x0, t, eps)
    if patch_mask is not None:
        x_t = patch_noise(x0, x_t, patch_mask)
    eps_pred = model(x_t, t, x0) if getattr(getattr(model, "module", model), "conditioned", False) else model(x_t, t)
    pred, target = ((diffusion.predict_x0(x_t.float(), t, eps_pred.float()), x0) if prediction == "x0"
                    else (eps_pred, eps))
    weight = min_snr_weight(diffusion.alphas_cumprod, t, min_snr_gamma, prediction) if min_snr_gamma else None
    if patch_mask is None:
        l_ddpm = ddpm_loss(pred, target, weight)
    else:
        sq = (pred.float() - target.float()) ** 2 * patch_mask
        if weight is not None:
            sq = sq * weight.to(sq.device).reshape(-1, *([1] * (sq.dim() - 1)))
        l_ddpm = sq.sum() / (patch_mask.sum() * eps.shape[1]).clamp(min=1.0)
    zero = torch.zeros((), device=x0.device)
    if lam == 0:
        return ADDMTerms(l_ddpm, l_ddpm, zero, t, x_t, None, None)
    if discriminator is None:
        raise ValueError(f"lambda = {lam} > 0 needs a discriminator")
    if adv_target == "x0":  # fake: x0_hat(x_t, eps_theta), unclipped so gradients flow everywhere; real: x_0
        fake_prev, real_prev = diffusion.predict_x0(x_t, t, eps_pred.to(x_t.dtype)), x0
    elif adv_target == "x_prev":
        # Fake: the model's reverse step, reparameterised (no x0 clipping so gradients flow everywhere).
        mu_theta, _ = diffusion.p_mean(x_t, t, eps_pred.to(x_t.dtype), clip=False)
        _, post_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
        fake_prev = mu_theta + post_var.sqrt() * noise_fn(x0, generator)
        # Real: forward-process x_{t-1}, drawn given the same x_t (marginally q(x_{t-1} | x_0)).
        real_prev = diffusion.q_posterior_sample(x0, x_t, t, noise_fn(x0, generator))
    else:
        raise ValueError(f"adv_target must be 'x_prev' or 'x0', got {adv_target!r}")
    if patch_mask is not None:
        fake_prev, real_prev = patch_noise(x0, fake_prev, patch_mask), patch_noise(x0, real_prev, patch_mask)
    cond = x_t if discriminator.config.conditional else None
    weight = None if adv_t_max is None else (t <= adv_t_max).float()
    l_adv = generator_adv_loss(discriminator(fake_prev, t, cond), weight)
    return ADDMTerms(l_ddpm + lam * l_adv, l_ddpm, l_adv, t, x_t, real_prev.detach(), fake_prev.detach(), weight)


def discriminator_step_loss(discriminator: Discriminator, terms: ADDMTerms) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """D's BCE on the detached real/fake pair of ``terms`` (only the samples L_Adv used, see ``adv_t_max``);
    also returns D's accuracy on real and on fake."""
    if terms.real_prev is None or terms.fake_prev is None:
        raise ValueError("no adversarial samples: lambda was 0")
    cond = terms.x_t.detach() if getattr(discriminator, "module", discriminator).config.conditional else None
    real_logits = discriminator(terms.real_prev, terms.t, cond)
    fake_logits = discriminator(terms.fake_prev, terms.t, cond)
    w = terms.adv_weight
    acc_real = _weighted_mean((real_logits > 0).float(), w)
    acc_fake = _weighted_mean((fake_logits < 0).float(), w)
    return discriminator_loss(real_logits, fake_logits, w), acc_real, acc_fake

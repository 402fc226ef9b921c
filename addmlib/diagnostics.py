"""Does ADDM's adversarial term act? Gradient sizes of L_DDPM and lambda * L_Adv, and D's accuracy, by timestep.

For a trained ADDM checkpoint (its raw U-Net weights and its discriminator, as the last update saw them) and a batch
of healthy training slices, each row holds, at one t:

* ``grad_ddpm`` = ||d L_DDPM / d theta|| and ``grad_adv`` = ||d (lambda L_Adv) / d theta|| (paper Eq. 5, the two
  terms of the U-Net's loss, each differentiated alone), their ratio, and the cosine between the two gradients;
* D's accuracy on the real x_{t-1} ~ q(x_{t-1} | x_t, x_0) and on the model's reverse step (chance: 0.5), and
  ``l_adv`` = -log D(fake) (2 ln 2 summed with the real side is D at chance).

A ratio far below 1 at every t means lambda * L_Adv hardly moves the U-Net: the model is a DDPM in practice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import TrainConfig, validate
from .diffusion import random_patch_masks
from .losses import addm_generator_terms, discriminator_step_loss
from .models import build_diffusion, build_discriminator, build_unet, load_checkpoint
from .noise import noise_from_config


def _norm(grads: Sequence[torch.Tensor | None]) -> float:
    return math.sqrt(sum(float((g.float() ** 2).sum()) for g in grads if g is not None))


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().reshape(-1)
                      for g, p in zip(grads, params)])


def adversarial_profile(checkpoint: str | Path, images: np.ndarray | torch.Tensor, t_values: Sequence[int],
                        batch: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """One row per t in ``t_values`` (see the module docstring), on ``batch`` slices drawn from ``images``
    ((N, 1, H, W) in [-1, 1]) with ``seed``; on the CPU, in fp32."""
    ckpt = load_checkpoint(checkpoint)
    cfg = validate(TrainConfig, ckpt["config"], f"{checkpoint} (config)")
    if cfg.lambda_adv <= 0 or ckpt.get("disc") is None:
        raise ValueError(f"{checkpoint}: trained without the adversarial term (lambda_adv = {cfg.lambda_adv}); "
                         f"there is nothing to profile")
    bad = [t for t in t_values if not 1 <= int(t) <= cfg.num_steps]
    if bad or not t_values:
        raise ValueError(f"t_values must be a non-empty list in [1, {cfg.num_steps}], got {list(t_values)}")
    unet, disc = build_unet(cfg), build_discriminator(cfg)
    unet.load_state_dict(ckpt["unet"])
    disc.load_state_dict(ckpt["disc"])
    unet.train()
    disc.eval().requires_grad_(False)
    diffusion, noise_fn = build_diffusion(cfg), noise_from_config(cfg)
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != cfg.image_size:
        raise ValueError(f"images must be (N, 1, {cfg.image_size}, {cfg.image_size}), got {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    x0 = x[torch.randperm(len(x), generator=gen)[:batch]]
    params = [p for p in unet.parameters() if p.requires_grad]
    rows = []
    for t in t_values:
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        mask = random_patch_masks(len(x0), cfg.image_size, cfg.patch_size, gen, x0) if cfg.patch_size else None
        terms = addm_generator_terms(unet, diffusion, x0, cfg.lambda_adv, disc, t=tt, noise_fn=noise_fn,
                                     generator=gen, patch_mask=mask, adv_target=cfg.adv_target,
                                     prediction=cfg.prediction)
        g_ddpm = torch.autograd.grad(terms.ddpm, params, retain_graph=True, allow_unused=True)
        g_adv = torch.autograd.grad(cfg.lambda_adv * terms.adv, params, allow_unused=True)
        n_ddpm, n_adv = _norm(g_ddpm), _norm(g_adv)
        cosine = float(torch.nn.functional.cosine_similarity(_flat(g_ddpm, params), _flat(g_adv, params), dim=0))
        with torch.no_grad():
            _, acc_real, acc_fake = discriminator_step_loss(disc, terms)
        rows.append({"t": int(t), "grad_ddpm": n_ddpm, "grad_adv": n_adv,
                     "ratio": n_adv / n_ddpm if n_ddpm > 0 else float("nan"), "cosine": cosine,
                     "d_acc_real": float(acc_real), "d_acc_fake": float(acc_fake), "l_adv": float(terms.adv.detach()),
                     "l_ddpm": float(terms.ddpm.detach()), "lambda_adv": cfg.lambda_adv})
    return rows

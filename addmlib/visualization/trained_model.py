"""What notebooks/02_train.ipynb shows of a trained model: a summary of the training session, samples from pure noise
and reconstructions of healthy slices from depth t*."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..diffusion import GaussianDiffusion, conditioned_on, gaussian_noise, strided_timesteps
from ..nets import count_parameters
from .slices import slice_rows


def session_summary(result: Mapping[str, Any], log: Sequence[Mapping[str, Any]], amp_setting: str,
                    unet: torch.nn.Module) -> str:
    """Two lines on a ``training.train`` result: resumed or new, step, device and amp; this call's wall time (a resumed
    run counts from its resume), the steps/s of the second half of the log, peak memory and the U-Net's size."""
    rate = float(np.mean([r["steps_per_s"] for r in log[len(log) // 2:]])) if log else float("nan")
    start = "new run" if result["resumed_from"] is None else f"resumed from step {result['resumed_from']}"
    cpu = f"; {result['cpu']}" if "cpu" in result else ""
    return (f"{start}; now at step {result['step']}/{result['total_steps']} ({result['steps_per_epoch']} steps per "
            f"epoch) on {result['device']}, amp {result['amp']} (setting {amp_setting!r}){cpu}\n"
            f"this call: {result['wall_time_s']} s, {rate:.2f} steps/s (2nd half of the log), "
            f"peak memory {result['peak_memory_mb']} MB; U-Net {count_parameters(unet):,} parameters")


def samples_figure(unet: torch.nn.Module, diffusion: GaussianDiffusion, size: int, steps: int,
                   generator: torch.Generator, device: torch.device, n: int = 8,
                   noise_fn: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = gaussian_noise,
                   images: np.ndarray | None = None) -> plt.Figure:
    """``n`` samples of ``unet`` from pure noise with DDIM in ``min(steps, T)`` steps, in one row; ``noise_fn`` is the
    noise the model was trained with (x_T is drawn from it). A conditioned U-Net (cDDPM) samples given ``n`` slices
    evenly through ``images`` (N x H x W), shown in a row above."""
    steps = min(steps, diffusion.num_steps)
    model, rows = unet, {}
    if getattr(unet, "conditioned", False):
        if images is None:
            raise ValueError("a conditioned U-Net samples given images: pass images")
        cond = torch.from_numpy(images[np.linspace(0, len(images) - 1, n).round().astype(int)])[:, None].to(device)
        model, rows = conditioned_on(unet, cond), {"condition (the clean slices E reads)": cond.cpu().numpy()}
    x = diffusion.sample(model, (n, 1, size, size), steps=steps, sampler="ddim", noise_fn=noise_fn,
                         generator=generator, device=device)
    return slice_rows({**rows, f"samples from noise (DDIM, {steps} steps)": x.cpu().numpy()})


def reconstruction_figure(unet: torch.nn.Module, diffusion: GaussianDiffusion,
                          noise_fn: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
                          images: np.ndarray, t_star: int, steps: int, generator: torch.Generator,
                          device: torch.device, n: int = 6) -> tuple[plt.Figure, float]:
    """``n`` slices evenly through ``images`` (N x H x W) noised to ``t_star`` and denoised back with ``min(steps,
    t*)`` strided DDPM steps (a conditioned U-Net reads each input): rows input, x_t*, reconstruction,
    |input - reconstruction|; and the mean of the last."""
    pick = np.linspace(0, len(images) - 1, n).round().astype(int)
    x0 = torch.from_numpy(images[pick])[:, None].to(device)
    steps = min(steps, t_star)
    xt = diffusion.q_sample(x0, t_star, noise_fn(x0, generator))
    model = conditioned_on(unet, x0) if getattr(unet, "conditioned", False) else unet
    rec = diffusion.denoise(model, xt, strided_timesteps(t_star, steps), "ddpm", noise_fn, generator, noise_like=x0)
    error = (x0 - rec).abs()
    rows = {"input": x0, f"x_t* (t*={t_star})": xt, f"reconstruction ({steps} steps)": rec, "|input − rec|": error}
    fig = slice_rows({k: v.detach().cpu().numpy() for k, v in rows.items()}, maps=["|input − rec|"])
    return fig, float(error.mean())

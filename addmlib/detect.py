"""Anomaly maps of whole volumes: reconstruct each axial slice from depth t* and score |x - x_hat|.

``score_volume`` batches the selected slices of a preprocessed N x N x Z volume through ``GaussianDiffusion.reconstruct``
(Gaussian or simplex noise; every step or a strided subset; DDPM or DDIM), optionally averaging the map over several
noise draws, and restacks the result to 3-D. ``to_native_nifti`` writes a map on the input's own grid (same shape and
affine as the input file), so it opens over the scan in ITK-SNAP, FSLeyes or nilearn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import nibabel as nib
import numpy as np
import torch

from .data.preprocess import to_native
from .diffusion import GaussianDiffusion, NoiseFn, SamplerName, conditioned_on, gaussian_noise, patch_masks
from .fileio import atomic_path

ErrorName = Literal["abs", "squared"]
Residual = Literal["abs", "positive"]


@dataclass
class VolumeScore:
    """Reconstruction and anomaly maps of one volume (N x N x Z); slices that were not scored hold 0."""

    reconstruction: np.ndarray
    abs_error: np.ndarray
    squared_error: np.ndarray
    scored: np.ndarray  # indices of the scored slices


def fast_denoiser(model: torch.nn.Module, channels_last: bool = False,
                  amp_dtype: torch.dtype | None = None) -> Callable[..., torch.Tensor]:
    """eps_theta(x, t) (eps_theta(x, t, cond) for a conditioned model) in eval mode for scoring, with the fast path's
    switches: channels-last memory layout (model and input; measured 1.1-1.2x on a 2-core AVX2 CPU, see
    notebooks/06_benchmark.ipynb) and optional autocast to ``amp_dtype``. Returns fp32, so the diffusion maths stays in
    fp32."""
    model.eval()
    device_type = next(model.parameters()).device.type
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def eps(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            cond = None if cond is None else cond.contiguous(memory_format=torch.channels_last)
        args = (x, t) if cond is None else (x, t, cond)
        if amp_dtype is None:
            return model(*args).float()
        with torch.autocast(device_type, dtype=amp_dtype):
            return model(*args).float()

    return eps


@torch.no_grad()
def score_volume(model: Callable[..., torch.Tensor], diffusion: GaussianDiffusion,
                 volume: np.ndarray, slices: np.ndarray, t_star: int | Sequence[int], steps: int | None = None,
                 sampler: SamplerName = "ddpm", noise_fn: NoiseFn = gaussian_noise, draws: int = 1,
                 batch_size: int = 16, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", patch: tuple[int, int] | None = None,
                 residual: Residual = "abs", condition: bool = False) -> VolumeScore:
    """Reconstruct ``volume[:, :, k]`` for k in ``slices`` and return the maps, averaged over ``draws`` noise draws
    and, when ``t_star`` is a sequence, over those depths (the t* ensemble of pDDPM/cDDPM: mean of the maps).

    Each depth t uses ``resolve_steps(steps, t)`` strided steps (all t when None or 0). ``steps = 1`` is the one-step estimate:
    the step t* -> 0 of the posterior q(x_0 | x_t*, x0_hat) returns x0_hat = (x_t* - sqrt(1 - abar) eps) / sqrt(abar).
    ``patch = (size, stride)``: pDDPM scoring of a patch-trained model: each patch of a grid covering the slice is
    noised and denoised with the clean rest of the slice as context; overlapping reconstructions are averaged.
    ``residual``: the map is |x - x_hat| ("abs", either polarity) or max(x - x_hat, 0) ("positive": only what is
    brighter than its reconstruction, the usual choice for hyperintense lesions, Baur et al. 2021); ``abs_error``
    holds that map, ``squared_error`` is always (x - x_hat)^2 (AnoDDPM's protocol).
    ``condition``: the model is conditioned on the clean image (cDDPM): every call reads the slice being scored,
    eps_theta(x_t, t, x) (``conditioned_on``).
    """
    if residual not in ("abs", "positive"):
        raise ValueError(f"residual must be 'abs' or 'positive', got {residual!r}")
    if volume.ndim != 3:
        raise ValueError(f"expected an N x N x Z volume, got shape {volume.shape}")
    slices = np.asarray(slices, dtype=int)
    depths = [int(t_star)] if isinstance(t_star, (int, np.integer)) else [int(t) for t in t_star]
    if not depths:
        raise ValueError("t_star: at least one depth is needed")
    n = draws * len(depths)
    rec = np.zeros(volume.shape, dtype=np.float32)
    err_abs = np.zeros(volume.shape, dtype=np.float32)
    err_sq = np.zeros(volume.shape, dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        ks = slices[start:start + batch_size]
        x0 = torch.from_numpy(np.ascontiguousarray(volume[:, :, ks].transpose(2, 0, 1)))[:, None].float().to(device)
        acc_rec = torch.zeros_like(x0)
        acc_abs = torch.zeros_like(x0)
        acc_sq = torch.zeros_like(x0)
        masks = patch_masks(x0.shape[-1], patch[0], patch[1], x0) if patch else [None]
        net = conditioned_on(model, x0) if condition else model
        for depth in depths:
            for _ in range(draws):
                x_hat = torch.zeros_like(x0)
                for m in masks:
                    r = diffusion.reconstruct(net, x0, depth, steps, sampler, noise_fn, generator, m)
                    x_hat += r if m is None else r * m
                if patch:
                    x_hat /= sum(masks)
                acc_rec += x_hat
                acc_abs += (x0 - x_hat).abs() if residual == "abs" else (x0 - x_hat).clamp(min=0)
                acc_sq += (x0 - x_hat) ** 2
        for arr, acc in ((rec, acc_rec), (err_abs, acc_abs), (err_sq, acc_sq)):
            arr[:, :, ks] = (acc / n)[:, 0].cpu().numpy().transpose(1, 2, 0)
    return VolumeScore(rec, err_abs, err_sq, slices)


def to_native_nifti(amap: np.ndarray, affine: np.ndarray, native_affine: np.ndarray,
                    native_shape: tuple[int, ...], path: str | Path, order: int = 1) -> Path:
    """Resample a map from the preprocessed grid onto the input's grid and write it as NIfTI (atomically)."""
    data = to_native(amap, np.asarray(affine), np.asarray(native_affine), tuple(native_shape), order=order)
    img = nib.Nifti1Image(data.astype(np.float32), np.asarray(native_affine))
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + suffix)
        nib.save(img, str(target))
        target.replace(tmp)
    return path

"""Noise fields for the forward process: Gaussian, coarse Gaussian (Kascenas et al. 2022) and fractal simplex noise
(AnoDDPM, Wyatt et al. 2022).

Coarse noise is N(0, 1) drawn on a lattice ``spacing`` pixels apart, bilinearly upsampled and randomly shifted by a
sub-lattice offset, then standardised per image. It has no power above the lattice's frequency, so a model that must
remove it sees the input's fine anatomy intact and only has to heal structures of lesion size.

Simplex noise here is Gustavson's 2-D simplex noise written in torch and vectorised over the batch: every sample gets
its own permutation table, so one call draws B independent fields (AnoDDPM's numba code draws one field per call and
works at batch size 1). The field does not depend on the diffusion time t (AnoDDPM issue #10: their 3-D noise used t as
the third coordinate). Octaves follow AnoDDPM's convention: ``frequency`` is the wavelength in pixels of the coarsest
octave, each further octave halves the wavelength and multiplies the amplitude by ``persistence``. Each field is then
standardised to zero mean and unit variance per sample, so it can stand in for epsilon in Eq. 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .diffusion import NoiseFn, gaussian_noise

NoiseName = Literal["gaussian", "simplex", "coarse"]

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)
_G2 = (3.0 - math.sqrt(3.0)) / 6.0
# 12 gradient directions of Gustavson's reference implementation (the 3-D edge set projected on x, y).
_GRADS = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0], [1, 0], [-1, 0],
                       [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float32)


def _permutations(batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(B, 512) int64: a random permutation of 0..255 per sample, repeated twice (avoids index wrapping)."""
    keys = torch.rand((batch, 256), generator=generator, device=device if generator is None else generator.device)
    perm = keys.argsort(dim=1).to(device)
    return torch.cat([perm, perm], dim=1)


def simplex2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """2-D simplex noise at coordinates x, y (each (B, N)) with per-sample tables ``perm`` (B, 512); values in ~[-1, 1].

    n = 70 * sum_k max(0, 0.5 - |d_k|^2)^4 <g_k, d_k> over the three simplex corners d_k (Gustavson 2005).
    """
    s = (x + y) * _F2
    i = torch.floor(x + s)
    j = torch.floor(y + s)
    t = (i + j) * _G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    i1 = (x0 > y0).long()  # which triangle of the skewed cell: lower (1, 0) or upper (0, 1)
    j1 = 1 - i1
    corners = ((x0, y0, 0, 0),
               (x0 - i1 + _G2, y0 - j1 + _G2, i1, j1),
               (x0 - 1.0 + 2.0 * _G2, y0 - 1.0 + 2.0 * _G2, 1, 1))
    ii = torch.remainder(i, 256).long()
    jj = torch.remainder(j, 256).long()
    grads = _GRADS.to(x.device, x.dtype)
    total = torch.zeros_like(x)
    for dx, dy, oi, oj in corners:
        gi = torch.gather(perm, 1, ii + oi + torch.gather(perm, 1, jj + oj)) % 12
        g = grads[gi]
        falloff = (0.5 - dx * dx - dy * dy).clamp(min=0.0)
        total = total + falloff ** 4 * (g[..., 0] * dx + g[..., 1] * dy)
    return 70.0 * total


@dataclass(frozen=True)
class SimplexNoise:
    """Fractal simplex noise with AnoDDPM's defaults (6 octaves, persistence 0.8, frequency 64)."""

    octaves: int = 6
    persistence: float = 0.8
    frequency: float = 64.0

    def __post_init__(self) -> None:
        if self.octaves < 1:
            raise ValueError(f"simplex octaves must be >= 1, got {self.octaves}")
        if not 0 < self.persistence <= 1:
            raise ValueError(f"simplex persistence must be in (0, 1], got {self.persistence}")
        if self.frequency <= 0:
            raise ValueError(f"simplex frequency must be > 0, got {self.frequency}")

    def __call__(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A field shaped like ``like`` (B, C, H, W): independent per sample and channel, zero mean, unit variance."""
        if like.dim() != 4:
            raise ValueError(f"simplex noise needs a (B, C, H, W) tensor, got shape {tuple(like.shape)}")
        b, c, h, w = like.shape
        n = b * c
        device = like.device
        perm = _permutations(n, generator, device)
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        xs = xs.reshape(1, -1).expand(n, -1)
        ys = ys.reshape(1, -1).expand(n, -1)
        # A random sub-lattice offset per field decorrelates the pixel grid from the simplex grid.
        gdev = device if generator is None else generator.device
        offset = torch.rand((n, 2, 1), generator=generator, device=gdev).to(device) * 256.0
        field = torch.zeros((n, h * w), device=device)
        wavelength, amplitude = float(self.frequency), 1.0
        for _ in range(self.octaves):
            field = field + amplitude * simplex2d(xs / wavelength + offset[:, 0], ys / wavelength + offset[:, 1], perm)
            wavelength /= 2.0
            amplitude *= self.persistence
        field = field - field.mean(dim=1, keepdim=True)
        field = field / field.std(dim=1, keepdim=True).clamp(min=1e-8)
        return field.reshape(b, c, h, w).to(like.dtype)


@dataclass(frozen=True)
class CoarseNoise:
    """Coarse Gaussian noise: N(0, 1) on a lattice about ``spacing`` px apart, bilinear upsampling, a random shift of
    the lattice per field, standardised to zero mean and unit variance per field.

    The n = H // spacing + 2 lattice points per side are upsampled ``spacing``-fold with aligned corners, so their
    actual distance is (n * spacing - 1) / (n - 1) px: 8.8 px for ``spacing`` 8 at 64 px, 19 px for 16. (Kept so,
    since the lever campaign's models were trained with it; the lattice's scale is what matters, not its exact step.)
    """

    spacing: int = 8

    def __post_init__(self) -> None:
        if self.spacing < 1:
            raise ValueError(f"coarse noise spacing must be >= 1 pixel, got {self.spacing}")

    def __call__(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A field shaped like ``like`` (B, C, H, W): independent per sample and channel, zero mean, unit variance."""
        if like.dim() != 4:
            raise ValueError(f"coarse noise needs a (B, C, H, W) tensor, got shape {tuple(like.shape)}")
        b, c, h, w = like.shape
        s = self.spacing
        gdev = like.device if generator is None else generator.device
        lattice = torch.randn((b * c, 1, h // s + 2, w // s + 2), generator=generator, device=gdev)
        up = torch.nn.functional.interpolate(lattice.to(like.device, torch.float32), scale_factor=s,
                                             mode="bilinear", align_corners=True)
        shift = torch.randint(0, s, (b * c, 2), generator=generator, device=gdev).tolist()
        field = torch.stack([up[i, 0, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shift)])
        field = field - field.mean(dim=(1, 2), keepdim=True)
        field = field / field.std(dim=(1, 2), keepdim=True).clamp(min=1e-8)
        return field.reshape(b, c, h, w).to(like.dtype)


BACKGROUND_MAX = -0.99
"""Preprocessing sets everything outside the head/brain to -1: a voxel above this value is inside."""


def head_mask(x: torch.Tensor) -> torch.Tensor:
    """1 where ``x`` is above the background value -1 (inside the head/brain), 0 elsewhere."""
    return (x > BACKGROUND_MAX).to(x.dtype)


@dataclass(frozen=True)
class HeadOnlyNoise:
    """``base`` noise inside the head only, eps * 1[x0 > -0.99]: the coarse-noise DAE's noise region (Kascenas et al.
    2022). ``like`` must be the clean image x0; its background stays noise-free, so q(x_t | x0) leaves it at
    sqrt(abar_t) * (-1) at every t, as the unnoised input is at scoring time. The field is standardised over the whole
    image before the mask, so inside the head its variance is still 1."""

    base: NoiseFn

    def __call__(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base(like, generator) * head_mask(like)


def lag1_correlation(field: torch.Tensor) -> float:
    """Mean correlation between horizontally adjacent pixels, sum f[x] f[x+1] / sum f^2 (0 for white noise; near 1
    for smooth fields)."""
    return float((field[..., 1:] * field[..., :-1]).mean() / (field * field).mean())


def make_noise(name: NoiseName, octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0,
               coarse_spacing: int = 8) -> NoiseFn:
    """The noise sampler by name: ``noise_fn(like, generator) -> tensor shaped like ``like``."""
    if name == "gaussian":
        return gaussian_noise
    if name == "simplex":
        return SimplexNoise(octaves, persistence, frequency)
    if name == "coarse":
        return CoarseNoise(coarse_spacing)
    raise ValueError(f"unknown noise {name!r}; expected 'gaussian', 'simplex' or 'coarse'")


def zero_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """No noise: q(x_t | x_0) then gives sqrt(abar_t) x_0, and the one-step estimate from it is the model's denoising of
    the input itself, x0_hat = x_0 - sqrt((1 - abar_t) / abar_t) eps(sqrt(abar_t) x_0, t): whatever the model reads as
    noise is removed (a DAE's reading of an unnoised input; the score at x_0, as in Mahmood et al. 2021)."""
    return torch.zeros_like(like)


def noise_from_config(cfg: Any, name: str | None = None) -> NoiseFn:
    """The noise of a model config (``cfg.noise`` unless ``name`` is given) with its simplex / coarse settings, inside
    the head only when the model's ``noise_region`` is "head" (``HeadOnlyNoise``; ``like`` must then be the clean
    x0)."""
    noise = make_noise(name or cfg.noise, cfg.simplex_octaves, cfg.simplex_persistence, cfg.simplex_frequency,
                       getattr(cfg, "coarse_spacing", 8))
    return HeadOnlyNoise(noise) if getattr(cfg, "noise_region", "image") == "head" else noise

"""Training-time augmentation of healthy slices (batched, in torch): small affine, gamma, smooth bias field, and
optionally an elastic deformation and additive noise.

Our healthy set is small and partly made of population averages (smooth, little individual texture), so training
sees each slice slightly moved, re-contrasted and shaded (and, when asked, warped and noised). All keep the background
at -1 and the range [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Per-sample random: rotation +-``rotate_deg``, scale 1 +- ``scale``, shift +-``shift`` (fraction of the side),
    gamma exp(U(-g, g)) on intensities mapped to [0, 1], and a multiplicative bias field exp(b * smooth noise).

    ``elastic`` > 0: a smooth random displacement (N(0, 1) on a 5 x 5 lattice, bicubically upsampled) of standard
    deviation ``elastic`` pixels, composed with the affine in the same resampling. ``noise`` > 0: Gaussian noise of that
    standard deviation (in [-1, 1] units) added inside the head. Both draw nothing from the generator when 0, so the
    default augmentation is unchanged."""

    rotate_deg: float = 5.0
    scale: float = 0.05
    shift: float = 0.03
    gamma: float = 0.2
    bias: float = 0.1
    p: float = 1.0
    elastic: float = 0.0
    noise: float = 0.0

    @classmethod
    def of_strength(cls, strength: float = 1.0, elastic: float = 0.0, noise: float = 0.0) -> "Augment":
        """The default augmentation with its rotation, scale, shift, gamma and bias ranges multiplied by
        ``strength`` (the trainer's ``augment_strength``), plus ``elastic`` and ``noise``."""
        if strength < 0 or elastic < 0 or noise < 0:
            raise ValueError(f"augmentation strength, elastic and noise must be >= 0, "
                             f"got {strength}, {elastic}, {noise}")
        d = cls()
        return cls(d.rotate_deg * strength, d.scale * strength, d.shift * strength, d.gamma * strength,
                   d.bias * strength, d.p, elastic, noise)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, 1, H, W) in [-1, 1] with background -1."""
        b = x.shape[0]
        dev = x.device

        def u(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator).to(dev) * 2 - 1

        apply = (torch.rand(b, generator=generator).to(dev) < self.p).float()
        angle = u(b) * math.radians(self.rotate_deg) * apply
        scale = 1 + u(b) * self.scale * apply
        shift = u(b, 2) * self.shift * 2 * apply[:, None]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        if self.elastic > 0:  # pixels -> normalised coordinates (2 / side per pixel)
            lattice = torch.randn((b, 2, 5, 5), generator=generator).to(dev)
            disp = F.interpolate(lattice, size=x.shape[-2:], mode="bicubic", align_corners=True)
            scale_px = torch.tensor([2 / x.shape[-1], 2 / x.shape[-2]], device=dev).reshape(1, 2, 1, 1)
            grid = grid + (disp * self.elastic * scale_px * apply.reshape(b, 1, 1, 1)).permute(0, 2, 3, 1).to(x.dtype)
        out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
        brain = out > -1 + 1e-3
        unit = ((out + 1) / 2).clamp(0, 1)
        gamma = torch.exp(u(b) * self.gamma * apply).reshape(b, 1, 1, 1)
        unit = unit ** gamma
        coarse = torch.randn((b, 1, 4, 4), generator=generator).to(dev)
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False)
        unit = unit * torch.exp(self.bias * field * apply.reshape(b, 1, 1, 1))
        if self.noise > 0:
            noise = torch.randn(unit.shape, generator=generator).to(dev, unit.dtype)
            unit = unit + noise * (self.noise / 2) * apply.reshape(b, 1, 1, 1)
        return torch.where(brain, unit.clamp(0, 1) * 2 - 1, torch.full_like(out, -1.0))

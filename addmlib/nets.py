"""Networks: the epsilon-prediction U-Net (Ho et al. 2020) and ADDM's time-conditioned discriminator.

U-Net: residual blocks (GroupNorm, SiLU, 3x3 conv, time embedding added as a per-channel shift), sinusoidal time
embedding followed by an MLP, self-attention (``scaled_dot_product_attention``) at the resolutions listed in
``attention_resolutions``, skip connections between encoder and decoder. Sizes are set by ``UNetConfig``.

Discriminator: judges a candidate x_{t-1} at time t. ``conditional=False`` is the paper's reading (D(x_{t-1}, t));
``conditional=True`` is the DDGAN-style variant (Xiao et al. 2022) that also sees x_t, i.e. D(x_{t-1}, x_t, t).
Time enters through a projection of the same sinusoidal embedding, added to the features of every block.

Input conditioning (cDDPM, Behrendt et al. 2025, "Guided reconstruction with conditioned diffusion models"): with
``condition_channels`` > 0 the U-Net holds an encoder E that reads the clean image c (the training slice, or at
detection the scan itself) down to one global vector, projected and added to the time embedding:
emb = MLP(sinusoid(t)) + W E(c). The global average pool is the bottleneck: the vector carries the image's intensity
and contrast, too little of where a small lesion lies to copy it. E is trained jointly with the U-Net.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al.; Ho et al.): [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h += Linear(SiLU(emb)); h = conv(dropout(SiLU(GN(h)))); return skip(x) + h.

    ``scale_shift`` (improved-diffusion's use_scale_shift_norm, Nichol & Dhariwal 2021): [s, b] = Linear(SiLU(emb)),
    h = conv(dropout(SiLU(GN(h) (1 + s) + b))). Added before GN, a per-channel shift is removed by it wherever a
    group holds one channel (GroupNorm(32) of a 32-channel layer); after GN it always acts."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int,
                 scale_shift: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (improved-diffusion's zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


@dataclass
class UNetConfig:
    """U-Net sizes. ``attention_resolutions`` are feature-map sizes (e.g. 16 means the 16x16 level)."""

    in_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 32
    scale_shift_norm: bool = False
    condition_channels: int = 0


class ConditionEncoder(nn.Module):
    """E(c): the clean image to one vector of ``out_dim``: stem conv3x3 to ``channels``, then (SiLU, conv3x3
    stride 2) while the side exceeds 8, doubling the width up to 4x, then SiLU, the global average pool and a linear
    layer (zero at initialisation: it starts as the unconditioned U-Net). No normalisation: a per-image norm would
    remove the global intensity and contrast that the condition is there to carry."""

    def __init__(self, in_channels: int, channels: int, out_dim: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        ch, side = channels, image_size
        while side > 8:
            out = min(2 * ch, 4 * channels)
            layers += [nn.SiLU(), nn.Conv2d(ch, out, 3, stride=2, padding=1)]
            ch, side = out, side // 2
        layers += [nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, out_dim)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)


class UNet(nn.Module):
    """epsilon_theta(x_t, t) for images of side ``image_size`` divisible by 2^(len(channel_mult) - 1); with
    ``condition_channels`` > 0, epsilon_theta(x_t, t, c), conditioned on the clean image c (module docstring)."""

    def __init__(self, config: UNetConfig, image_size: int) -> None:
        super().__init__()
        cfg = self.config = config
        levels = len(cfg.channel_mult)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} "
                             f"(channel_mult has {levels} levels)")
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_encoder = (ConditionEncoder(cfg.in_channels, cfg.condition_channels, emb_dim, image_size)
                             if cfg.condition_channels else None)
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        res = image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, cfg.base_channels * mult, emb_dim, cfg.dropout, cfg.groups,
                                                cfg.scale_shift_norm)])
                ch = cfg.base_channels * mult
                if res in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.heads, cfg.groups))
                self.down.append(block)
                skips.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups, cfg.scale_shift_norm),
                                  AttentionBlock(ch, cfg.heads, cfg.groups),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups, cfg.scale_shift_norm)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), cfg.base_channels * mult, emb_dim, cfg.dropout,
                                                cfg.groups, cfg.scale_shift_norm)])
                ch = cfg.base_channels * mult
                if res in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.heads, cfg.groups))
                if level > 0 and i == cfg.num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(block)
        self.out = nn.Sequential(_norm(ch, cfg.groups), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    @property
    def conditioned(self) -> bool:
        """Whether the network needs the clean image c (``condition_channels`` > 0)."""
        return self.cond_encoder is not None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.cond_encoder is not None:
            if cond is None:
                raise ValueError(f"this U-Net is conditioned on the clean image (condition_channels = "
                                 f"{self.config.condition_channels}): pass cond")
            emb = emb + self.cond_encoder(cond.to(x.dtype)).to(emb.dtype)
        elif cond is not None:
            raise ValueError("this U-Net is not conditioned (condition_channels = 0): cond must be None")
        h = self.stem(x)
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


@dataclass
class DiscriminatorConfig:
    """D sizes; ``conditional`` adds x_t as an input channel group (DDGAN-style)."""

    in_channels: int = 1
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    conditional: bool = False
    spectral_norm: bool = True
    time_dim: int = 128


class Discriminator(nn.Module):
    """Logit of "x_{t-1} is a forward-process sample" given t (and x_t when conditional).

    Each block: conv3x3 -> LeakyReLU(0.2) -> + Linear(time embedding) -> conv3x3 stride 2 -> LeakyReLU(0.2).
    The head sums features over space and applies a linear layer, so any image size >= 2^levels works.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        cfg = self.config = config
        wrap = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        c_in = cfg.in_channels * (2 if cfg.conditional else 1)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.LeakyReLU(0.2))
        self.stem = wrap(nn.Conv2d(c_in, cfg.base_channels, 3, padding=1))
        self.convs = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.temb = nn.ModuleList()
        ch = cfg.base_channels
        for mult in cfg.channel_mult:
            out = cfg.base_channels * mult
            self.convs.append(wrap(nn.Conv2d(ch, out, 3, padding=1)))
            self.temb.append(nn.Linear(cfg.time_dim, out))
            self.downs.append(wrap(nn.Conv2d(out, out, 3, stride=2, padding=1)))
            ch = out
        self.head = wrap(nn.Linear(ch, 1))

    def forward(self, x_prev: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.conditional:
            if x_t is None:
                raise ValueError("the conditional discriminator needs x_t")
            x_prev = torch.cat([x_prev, x_t], dim=1)
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        h = F.leaky_relu(self.stem(x_prev), 0.2)
        for conv, temb, down in zip(self.convs, self.temb, self.downs):
            h = F.leaky_relu(conv(h), 0.2) + temb(emb)[:, :, None, None]
            h = F.leaky_relu(down(h), 0.2)
        return self.head(h.sum(dim=(2, 3))).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

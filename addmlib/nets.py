"""Networks: the epsilon-prediction U-Net (Ho et al. 2020) and ADDM's time-conditioned discriminator.

U-Net: residual blocks (GroupNorm, SiLU, 3x3 conv, time embedding added as a per-channel shift), sinusoidal time
embedding followed by an MLP, self-attention (``scaled_dot_product_attention``) at the resolutions listed in
``attention_resolutions``, skip connections between encoder and decoder. Sizes are set by ``UNetConfig``.

Discriminator: judges a candidate x_{t-1} at time t. ``conditional=False`` is the paper's reading (D(x_{t-1}, t));
``conditional=True`` is the DDGAN-style variant (Xiao et al. 2022) that also sees x_t, i.e. D(x_{t-1}, x_t, t).
Time enters through a projection of the same sinusoidal embedding, added to the features of every block.
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
    """h = conv(SiLU(GN(x))); h += Linear(SiLU(emb)); h = conv(dropout(SiLU(GN(h)))); return skip(x) + h."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (improved-diffusion's zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
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


class UNet(nn.Module):
    """epsilon_theta(x_t, t) for images of side ``image_size`` divisible by 2^(len(channel_mult) - 1)."""

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
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        res = image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, cfg.base_channels * mult, emb_dim, cfg.dropout, cfg.groups)])
                ch = cfg.base_channels * mult
                if res in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.heads, cfg.groups))
                self.down.append(block)
                skips.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups),
                                  AttentionBlock(ch, cfg.heads, cfg.groups),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.groups)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), cfg.base_channels * mult, emb_dim, cfg.dropout,
                                                cfg.groups)])
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

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
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

"""Non-diffusion baselines on the same data and metrics; every one is a reconstruction x_hat with map |x - x_hat|.

* Floors, no training: the **intensity floor** (x_hat = -1, so the map is the input's own intensity x + 1: bright =
  anomalous) and the **median floor** (x_hat = the brain's median intensity, map |x - median|). A detector means
  something only once it beats them.
* The convolutional autoencoder with a spatial bottleneck (the "AE (spatial)" family of Baur et al. 2021, which the
  paper's Table 1 quotes).
* The denoising autoencoder with coarse noise (Kascenas et al. 2022): a U-Net trained to remove coarse Gaussian noise
  (N(0, sigma^2) on a ``res`` x ``res`` lattice, bilinearly upsampled, added inside the head only); at test time it
  sees the *clean* input, and what it changes is the map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.augment import Augment
from .nets import UNet, UNetConfig
from .noise import CoarseNoise, HeadOnlyNoise
from .fileio import atomic_path, write_json_atomic

SEEDED_INIT = "seeded"
"""In the cache key of the AE and DAE: their initial weights are drawn right after seeding. Models cached before that
(whose initial weights came from the process's random state, i.e. from whatever ran before) are trained again."""


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with its initial weights drawn from ``seed`` alone (the caller's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ConvAutoencoder(nn.Module):
    """Encoder: 4 stride-2 conv blocks (ch, 2ch, 4ch, 4ch) to an N/16 x N/16 x ``bottleneck`` map; mirrored decoder."""

    def __init__(self, channels: int = 32, bottleneck: int = 16) -> None:
        super().__init__()
        c = channels
        enc, dec = [], []
        widths = [1, c, 2 * c, 4 * c, 4 * c]
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2)]
        enc += [nn.Conv2d(widths[-1], bottleneck, 1)]
        dec += [nn.Conv2d(bottleneck, widths[-1], 1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths[:0:-1], widths[-2:0:-1]):
            dec += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2)]
        dec += [nn.ConvTranspose2d(widths[1], 1, 4, stride=2, padding=1), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.channels, self.bottleneck = channels, bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(images: np.ndarray, out_dir: str | Path, data_fingerprint: str, steps: int = 1500,
                      batch_size: int = 16, lr: float = 1e-3, seed: int = 0, channels: int = 32,
                      bottleneck: int = 16, augment: bool = True) -> tuple[ConvAutoencoder, dict]:
    """Train (or load, if ``out_dir/ae.pt`` exists for the same data and settings) the autoencoder, L1 loss."""
    out_dir = Path(out_dir)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "channels": channels,
                "bottleneck": bottleneck, "augment": augment, "data": data_fingerprint, "init": SEEDED_INIT}
    model = _seeded(lambda: ConvAutoencoder(channels, bottleneck), seed)
    ckpt = out_dir / "ae.pt"
    info_path = out_dir / "model.json"
    if ckpt.is_file() and info_path.is_file() and json.loads(info_path.read_text()).get("settings") == settings:
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        return model.eval(), json.loads(info_path.read_text())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    aug = Augment() if augment else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        x = x_all[torch.randint(len(x_all), (batch_size,), generator=gen)]
        if aug is not None:
            x = aug(x, gen)
        loss = F.l1_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), _save_trained(model, ckpt, info_path, settings, losses)


def _save_trained(model: nn.Module, ckpt: Path, info_path: Path, settings: dict, losses: list[float]) -> dict:
    """Write a trained baseline's weights and ``model.json`` (its settings: the cache key) atomically."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt) as tmp:
        torch.save(model.state_dict(), tmp)
    info = {"checkpoint": str(ckpt), "settings": settings, "final_loss": float(np.mean(losses[-50:]))}
    write_json_atomic(info_path, info)
    return info


@torch.no_grad()
def ae_error_maps(model: ConvAutoencoder, volume: np.ndarray, slices: np.ndarray,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, |x - AE(x)|) for the given axial slices of an N x N x Z volume; other slices 0."""
    rec = np.zeros(volume.shape, dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        ks = np.asarray(slices[start:start + batch_size])
        x = torch.from_numpy(np.ascontiguousarray(volume[:, :, ks].transpose(2, 0, 1)))[:, None].float()
        rec[:, :, ks] = model(x)[:, 0].numpy().transpose(1, 2, 0)
    err = np.zeros(volume.shape, dtype=np.float32)
    err[:, :, slices] = np.abs(volume[:, :, slices] - rec[:, :, slices])
    return rec, err


def intensity_floor(volume: np.ndarray, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trivial floor: x_hat = -1 (the background), so |x - x_hat| = x + 1 is the input's own intensity."""
    rec = np.full(volume.shape, -1.0, dtype=np.float32)
    err = np.zeros(volume.shape, dtype=np.float32)
    err[:, :, slices] = volume[:, :, slices] + 1.0
    return rec, err, err ** 2


def dark_floor(volume: np.ndarray, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dark floor: x_hat = +1 (the brightest value), so |x - x_hat| = 1 - x: dark = anomalous."""
    rec = np.ones(volume.shape, dtype=np.float32)
    err = np.zeros(volume.shape, dtype=np.float32)
    err[:, :, slices] = 1.0 - volume[:, :, slices]
    return rec, err, err ** 2


def median_floor(volume: np.ndarray, slices: np.ndarray,
                 brain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|x - median of the brain| on the scored slices: deviation from the typical tissue, either polarity."""
    med = float(np.median(volume[:, :, slices][brain[:, :, slices]])) if brain[:, :, slices].any() else 0.0
    rec = np.full(volume.shape, med, dtype=np.float32)
    err = np.zeros(volume.shape, dtype=np.float32)
    err[:, :, slices] = np.abs(volume[:, :, slices] - med)
    return rec, err, err ** 2


DAE_UNET = UNetConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=())
"""The DAE's network: our U-Net without attention, called at t = 0 (the time input is unused)."""


class DenoisingAE(nn.Module):
    """x_hat = x - U(x): the U-Net predicts the noise to remove (residual form of Kascenas et al.'s DAE)."""

    def __init__(self, image_size: int, config: UNetConfig = DAE_UNET) -> None:
        super().__init__()
        self.unet = UNet(config, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.unet(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))


def train_dae(images: np.ndarray, out_dir: str | Path, data_fingerprint: str, steps: int = 1500,
              batch_size: int = 16, lr: float = 1e-4, seed: int = 0, noise_std: float = 0.2, noise_res: int = 16,
              augment: bool = True, amp: torch.dtype | None = None,
              progress: Callable[..., object] | None = None) -> tuple[DenoisingAE, dict]:
    """Train (or load, if ``out_dir/dae.pt`` exists for the same data and settings) the coarse-noise DAE, L2 loss.

    Noise: ``noise_std`` x standardised coarse noise on a ``noise_res`` x ``noise_res`` lattice, inside the head.
    ``amp`` (bf16 autocast) is not part of the cache key: the weights are fp32 either way, so a DAE trained with
    autocast is reused without it.
    """
    images = np.asarray(images, dtype=np.float32)
    size = images.shape[-1]
    if size % noise_res:
        raise ValueError(f"dae noise_res {noise_res} must divide the image size {size}")
    out_dir = Path(out_dir)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "noise_std": noise_std,
                "noise_res": noise_res, "augment": augment, "data": data_fingerprint, "unet": repr(DAE_UNET),
                "init": SEEDED_INIT}
    model = _seeded(lambda: DenoisingAE(size), seed)
    ckpt, info_path = out_dir / "dae.pt", out_dir / "model.json"
    if ckpt.is_file() and info_path.is_file() and json.loads(info_path.read_text()).get("settings") == settings:
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        return model.eval(), json.loads(info_path.read_text())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    noise = HeadOnlyNoise(CoarseNoise(size // noise_res))
    x_all = torch.as_tensor(images)[:, None]
    aug = Augment() if augment else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in (progress(range(steps), desc="DAE") if progress else range(steps)):
        x = x_all[torch.randint(len(x_all), (batch_size,), generator=gen)]
        if aug is not None:
            x = aug(x, gen)
        noisy = x + noise_std * noise(x, gen)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.mse_loss(model(noisy).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return model.eval(), _save_trained(model, ckpt, info_path, settings, losses)


@torch.no_grad()
def dae_error_maps(model: DenoisingAE, volume: np.ndarray, slices: np.ndarray, batch_size: int = 32,
                   amp: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, |x - DAE(x)|) of the given axial slices of an N x N x Z volume, the input *not* noised."""
    rec = np.zeros(volume.shape, dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        ks = np.asarray(slices[start:start + batch_size])
        x = torch.from_numpy(np.ascontiguousarray(volume[:, :, ks].transpose(2, 0, 1)))[:, None].float()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(x).float()
        rec[:, :, ks] = out.clamp(-1, 1)[:, 0].numpy().transpose(1, 2, 0)
    err = np.zeros(volume.shape, dtype=np.float32)
    err[:, :, slices] = np.abs(volume[:, :, slices] - rec[:, :, slices])
    return rec, err

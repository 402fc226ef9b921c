"""A non-diffusion baseline on the same data and metrics: a convolutional autoencoder with a spatial bottleneck
(the "AE (spatial)" family of Baur et al. 2021, which the paper's Table 1 quotes). Anomaly map = |x - AE(x)|."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.augment import Augment
from .fileio import atomic_path, write_json_atomic


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
                "bottleneck": bottleneck, "augment": augment, "data": data_fingerprint}
    model = ConvAutoencoder(channels, bottleneck)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt) as tmp:
        torch.save(model.state_dict(), tmp)
    info = {"checkpoint": str(ckpt), "settings": settings, "final_loss": float(np.mean(losses[-50:]))}
    write_json_atomic(info_path, info)
    return model.eval(), info


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

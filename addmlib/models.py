"""A model from its definition: the U-Net, the discriminator and the diffusion built from a ``ModelConfig``, and a
trained model's EMA U-Net loaded from its checkpoint. Training, evaluation, the benchmark and notebook 00 build their
networks here, so a model is defined in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, TrainConfig, validate
from .diffusion import EpsFromX0, GaussianDiffusion
from .nets import Discriminator, DiscriminatorConfig, UNet, UNetConfig


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the current configuration."""


def model_dir(run_dir: str | Path, model_name: str) -> Path:
    """Where a model's checkpoints, log and record live: ``<run_dir>/models/<model_name>``."""
    return Path(run_dir).resolve() / "models" / model_name


def recorded_checkpoint(model_json: str | Path) -> Path:
    """The checkpoint a model record (``model.json``) names, as a path: recorded relative to the record's folder, so
    that a copied or moved run loads its own weights. Records written with an absolute path are read too; the file of
    that name beside the record wins over the absolute one (the run was copied after training)."""
    model_json = Path(model_json)
    recorded = Path(json.loads(model_json.read_text())["checkpoint"])
    if not recorded.is_absolute():
        return model_json.parent / recorded
    beside = model_json.parent / recorded.name
    return beside if beside.is_file() else recorded


def campaign_models_root(campaign_dir: str | Path) -> Path:
    """A lever campaign's models root: its models are ``model_dir(root, "<variant>-s<seed>")``."""
    return Path(campaign_dir).resolve() / "levers"


def trained_on(folder: Path) -> str | None:
    """The training fingerprint a campaign model recorded (``data.json``), or None where it recorded none."""
    record = folder / "data.json"
    return json.loads(record.read_text()).get("fingerprint") if record.is_file() else None


def unet_config(cfg: ModelConfig) -> UNetConfig:
    """The U-Net's sizes of a model definition."""
    return UNetConfig(base_channels=cfg.unet_base_channels, channel_mult=tuple(cfg.unet_channel_mult),
                      num_res_blocks=cfg.unet_num_res_blocks,
                      attention_resolutions=tuple(cfg.unet_attention_resolutions), dropout=cfg.unet_dropout,
                      scale_shift_norm=cfg.unet_scale_shift_norm, condition_channels=cfg.unet_condition_channels)


def build_unet(cfg: ModelConfig) -> torch.nn.Module:
    """The U-Net of ``cfg`` (untrained) as an epsilon-predictor: itself, or for ``prediction`` "x0" the U-Net's x0_hat
    read as epsilon (``EpsFromX0``, its weights under ``net.``)."""
    unet = UNet(unet_config(cfg), cfg.image_size)
    if cfg.prediction == "x0":
        return EpsFromX0(unet, build_diffusion(cfg).alphas_cumprod)
    return unet


def build_discriminator(cfg: ModelConfig) -> Discriminator:
    """ADDM's discriminator of ``cfg``: the paper's D(x_{t-1}, t) or the conditional D(x_{t-1}, x_t, t)."""
    return Discriminator(DiscriminatorConfig(base_channels=cfg.disc_base_channels,
                                             channel_mult=tuple(cfg.disc_channel_mult),
                                             conditional=cfg.discriminator == "conditional"))


def build_diffusion(cfg: ModelConfig) -> GaussianDiffusion:
    """The forward/reverse process of ``cfg`` (its schedule and T; the reverse variance of a TrainConfig)."""
    return GaussianDiffusion(cfg.num_steps, cfg.schedule, getattr(cfg, "variance", "beta_tilde"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, zipfile errors...
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (corrupt or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or "ema" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not an addmlib training checkpoint")
    return ckpt


def load_ema_unet(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The EMA U-Net of a checkpoint (for sampling and detection) and the config it was trained with."""
    ckpt = load_checkpoint(path, device)
    cfg = validate(TrainConfig, ckpt["config"], f"{path} (config)")
    unet = build_unet(cfg)
    unet.load_state_dict(ckpt["ema"])
    return unet.to(device).eval(), cfg

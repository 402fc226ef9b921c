"""The ADDM trainer (lambda_adv > 0) and the DDPM baseline (lambda_adv = 0): one code path.

One step (Algorithm of the paper, Fig. 1, with the readings written out in ``addmlib.losses``):

1. t ~ U{1..T}, eps ~ noise, x_t = q_sample(x_0, t, eps); L_DDPM = ||eps - eps_theta(x_t, t)||^2.
2. lambda > 0: fake x_{t-1} = mu_theta(x_t, t) + sigma_t z (reparameterised); real x_{t-1} ~ q(x_{t-1} | x_t, x_0);
   the U-Net minimises L_DDPM + lambda * (-log D(fake)) with D frozen, then D takes ``d_steps`` BCE steps on the
   (detached) real/fake pair. lambda = 0 never builds D.
3. EMA of the U-Net's weights (used for sampling and detection).

Choices the paper leaves open, as parameters (``TrainConfig``) with these defaults and reasons:

* D's optimiser: Adam, lr 1e-4, betas (0.5, 0.999): the usual GAN setting (DCGAN), same lr as the U-Net.
* D steps per U-Net step: 1 (the paper's Fig. 1 shows one alternating update).
* t range for L_Adv: every t (``adv_t_max = 0``); set it to t* to focus D on the depths detection uses.
* What D judges: the paper's x_{t-1} (``adv_target = "x_prev"``); ``"x0"`` judges the one-step estimate x0_hat
  against x_0 instead (not the paper's; see ``addmlib.losses``).
* Gradient clipping: global norm 1.0 on both networks (improved-diffusion clips at 1.0).
* EMA rate: 0.999, because our runs are short (thousands of steps); 0.9999 suits paper-length runs.
* "Epoch" = one pass over the training slices; the lr decays x0.999 every 200 epochs as in the paper.

Checkpoints hold the U-Net, its EMA, D, both optimisers, the lr schedule, the step and every RNG state, are written
atomically every ``checkpoint_every`` steps and at the end (the previous one is kept as ``checkpoint-prev.pt``), and
are read with ``torch.load(weights_only=True)``. Starting again with the same folder resumes; the next step's loss is
the same as in an uninterrupted run.

Multi-process data parallel: ``torchrun --nproc_per_node N -m addmlib.training PARAMS.yaml --run-dir DIR`` (gloo on
CPU, nccl on CUDA). Each rank takes a strided share of the same per-epoch permutation; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .cli import ArgumentParser, run_main
from .config import TrainConfig, load_checked
from .data.augment import Augment
from .diffusion import random_patch_masks
from .fileio import atomic_path, write_json_atomic
from .losses import addm_generator_terms, discriminator_step_loss
from .models import CheckpointError, build_diffusion, build_discriminator, build_unet, load_checkpoint, model_dir
from .noise import noise_from_config
from .provenance import write_run_record
from .runtime import amp_dtype, describe_cpu, resolve_amp, resolve_device, set_threads

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint-prev.pt"
LOG = "train_log.jsonl"
# Parameters that change what is learned: a resumed run must agree with its checkpoint on all of these.
ARCHITECTURE_KEYS = ("image_size", "num_steps", "schedule", "variance", "noise", "noise_region", "prediction",
                     "simplex_octaves", "simplex_persistence", "simplex_frequency", "coarse_spacing", "lambda_adv",
                     "discriminator", "unet_base_channels", "unet_channel_mult", "unet_num_res_blocks",
                     "unet_attention_resolutions", "unet_dropout", "disc_base_channels", "disc_channel_mult",
                     "batch_size", "lr", "lr_decay", "lr_decay_every_epochs", "d_lr", "d_beta1", "d_steps", "adv_t_max",
                     "adv_target", "train_t_max", "train_t_min", "min_snr_gamma", "patch_size", "unet_scale_shift_norm",
                     "unet_condition_channels", "grad_clip", "ema_decay", "augment", "augment_strength",
                     "augment_elastic", "augment_noise", "seed")


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON/checkpoint-safe dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


class Trainer:
    """Trains one model on a (N, 1, H, W) tensor of healthy slices in [-1, 1]."""

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, out_dir: str | Path,
                 device: torch.device | None = None) -> None:
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[-1] != cfg.image_size:
            raise ValueError(f"training images must be (N, 1, {cfg.image_size}, {cfg.image_size}) for image_size = "
                             f"{cfg.image_size}, got {tuple(images.shape)}: prepare the data at this size first")
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = device or resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":  # one GPU per rank, whatever device names
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.amp = resolve_amp(cfg.amp, self.device)  # "auto": bf16 on CPUs with native bf16 and on CUDA
        torch.manual_seed(cfg.seed)
        self.images = images.to(self.device)
        self.diffusion = build_diffusion(cfg)
        self.noise_fn = noise_from_config(cfg)
        self.unet = build_unet(cfg).to(self.device)
        self.ema = AveragedModel(self.unet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.disc = build_discriminator(cfg).to(self.device) if cfg.lambda_adv > 0 else None
        self.opt_g = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr)
        self.opt_d = (torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr, betas=(cfg.d_beta1, 0.999))
                      if self.disc is not None else None)
        per_rank = math.ceil(len(images) / self.world)
        self.steps_per_epoch = max(1, per_rank // cfg.batch_size)
        decay_steps = cfg.lr_decay_every_epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda s: cfg.lr_decay ** (s // decay_steps))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.perm_gen = torch.Generator().manual_seed(cfg.seed)  # data order: the same on every rank
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919 * self.rank)  # t, noise, augmentation: per rank
        self.augment = (Augment.of_strength(cfg.augment_strength, cfg.augment_elastic, cfg.augment_noise)
                        if cfg.augment else None)
        self.step = 0
        self._perm: torch.Tensor | None = None
        self.g_model: torch.nn.Module = self.unet
        self.d_model: torch.nn.Module | None = self.disc
        if self.world > 1:
            self.g_model = DDP(self.unet)
            self.d_model = DDP(self.disc) if self.disc is not None else None

    # ----- state ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": 1, "config": config_dict(self.cfg), "step": self.step,
            "unet": self.unet.state_dict(), "ema": self.ema.module.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict() if self.opt_d else None,
            "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "scaler_d": self.scaler_d.state_dict(), "perm_gen": self.perm_gen.get_state(),
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "perm": self._perm, "world_size": self.world,
        }

    def load_state(self, ckpt: dict[str, Any], source: str) -> None:
        _check_settings(ckpt["config"], self.cfg, source)
        if ckpt.get("world_size", 1) != self.world:
            raise CheckpointError(f"{source}: written by {ckpt.get('world_size')} processes, resumed with {self.world}")
        self.unet.load_state_dict(ckpt["unet"])
        self.ema.module.load_state_dict(ckpt["ema"])
        self.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
        if self.disc is not None:
            self.disc.load_state_dict(ckpt["disc"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.sched.load_state_dict(ckpt["sched"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.scaler_d.load_state_dict(ckpt["scaler_d"])
        self.perm_gen.set_state(ckpt["perm_gen"])
        self.gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        if torch.cuda.is_available() and ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self._perm = ckpt["perm"]
        self.step = int(ckpt["step"])

    def save(self) -> Path:
        """Atomic checkpoint (rank 0); the previous checkpoint is kept as checkpoint-prev.pt.

        The new checkpoint is written and synced to a temporary file first; only then is the old one renamed to
        checkpoint-prev.pt and the new one into place. A crash or a full disk while writing leaves both checkpoints
        as they were (the error names the file); a crash between the two renames leaves checkpoint-prev.pt, which
        ``resume`` falls back to.
        """
        path = self.out / CHECKPOINT
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            state = self.state()
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                if path.is_file():
                    os.replace(path, self.out / PREVIOUS)
        return path

    def _remove_stale_temporaries(self) -> None:
        """Temporary checkpoint files left by a process killed while writing (never a complete checkpoint)."""
        if self.rank == 0 and self.out.is_dir():
            for tmp in self.out.glob(f".{CHECKPOINT}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def resume(self) -> bool:
        """Load the latest readable checkpoint of ``out``; False when there is none. A corrupt latest checkpoint
        falls back to the previous one, with a warning naming the corrupt file."""
        latest, previous = self.out / CHECKPOINT, self.out / PREVIOUS
        self._remove_stale_temporaries()
        errors = []
        for path in (latest, previous):
            if not path.is_file():
                continue
            try:
                # RNG states must stay CPU tensors; load_state_dict moves weights to the model's device
                self.load_state(load_checkpoint(path, "cpu"), str(path))
            except CheckpointError as exc:
                if "other settings" in str(exc) or "processes" in str(exc):
                    raise
                errors.append(str(exc))
                print(f"warning: {exc}; trying the previous checkpoint", file=sys.stderr)
                continue
            self._truncate_log()
            return True
        if errors:
            raise CheckpointError("no readable checkpoint: " + " | ".join(errors))
        return False

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be written again)."""
        log = self.out / LOG
        if self.rank != 0 or not log.is_file():
            return
        keep = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
        with atomic_path(log) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))

    # ----- training -------------------------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        epoch, within = divmod(self.step, self.steps_per_epoch)
        if within == 0 or self._perm is None:
            self._perm = torch.randperm(len(self.images), generator=self.perm_gen)
        mine = self._perm[self.rank::self.world]
        idx = mine[within * self.cfg.batch_size:(within + 1) * self.cfg.batch_size]
        x = self.images[idx.to(self.images.device)]
        if self.augment is not None:
            x = self.augment(x, self.gen)
        return x

    def _autocast(self):
        dtype = amp_dtype(self.amp)
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def train_step(self) -> dict[str, float]:
        """One U-Net update (and D updates when lambda > 0); returns the logged quantities."""
        cfg = self.cfg
        self.unet.train()
        x0 = self._batch()
        if self.disc is not None:
            self.disc.requires_grad_(False)  # D is judged, not trained, in the U-Net's update (unwrapped: no sync)
        mask = (random_patch_masks(len(x0), cfg.image_size, cfg.patch_size, self.gen, x0) if cfg.patch_size
                else None)
        with self._autocast():
            terms = addm_generator_terms(self.g_model, self.diffusion, x0, cfg.lambda_adv, self.disc, t=None,
                                         noise_fn=self._noise, generator=self.gen,
                                         adv_t_max=cfg.adv_t_max or None, t_max=cfg.train_t_max or None,
                                         t_min=cfg.train_t_min, patch_mask=mask, adv_target=cfg.adv_target,
                                         prediction=cfg.prediction, min_snr_gamma=cfg.min_snr_gamma)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.opt_g)
        g_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.sched.step()
        self.ema.update_parameters(self.unet)
        out = {"loss": terms.total.item(), "l_ddpm": terms.ddpm.item(), "l_adv": terms.adv.item(),
               "grad_norm": float(g_norm), "lr": self.sched.get_last_lr()[0]}
        if self.disc is not None:
            self.disc.requires_grad_(True)
            for _ in range(cfg.d_steps):
                with self._autocast():
                    d_loss, acc_real, acc_fake = discriminator_step_loss(self.d_model, terms)
                self.opt_d.zero_grad(set_to_none=True)
                self.scaler_d.scale(d_loss).backward()
                self.scaler_d.unscale_(self.opt_d)
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
                self.scaler_d.step(self.opt_d)
                self.scaler_d.update()
            out.update(d_loss=d_loss.item(), d_acc_real=acc_real.item(), d_acc_fake=acc_fake.item())
        self.step += 1
        return out

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Noise drawn on the CPU generator (reproducible, resumable), then moved to the device (``like`` is copied
        to the CPU with it: a noise confined to the head reads its values)."""
        if like.device.type == "cpu":
            return self.noise_fn(like, generator)
        return self.noise_fn(like.detach().cpu(), self.gen).to(like.device)

    def fit(self, progress: Callable[..., Any] | None = None, stop_after: int | None = None) -> dict[str, Any]:
        """Train until ``total_steps`` (or ``stop_after`` more steps); checkpoint and log as configured."""
        cfg = self.cfg
        end = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        bar = progress(total=self.total_steps, initial=self.step, desc=f"train {cfg.model_name}",
                       disable=self.rank != 0) if progress else None
        log = self.out / LOG
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        t_last, s_last = time.perf_counter(), self.step
        while self.step < end:
            metrics = self.train_step()
            # grad_norm may be inf on an fp16 overflow step, which the GradScaler skips: check the losses only
            finite = all(math.isfinite(v) for k, v in metrics.items() if k != "grad_norm")
            if self.world > 1:  # every rank stops together instead of hanging in the next all-reduce
                flag = torch.tensor([float(finite)], device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag.item())
            if not finite:
                raise FloatingPointError(f"step {self.step}: non-finite training loss {metrics}; lower lr or "
                                         f"turn amp off")
            if bar is not None:
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                now = time.perf_counter()
                metrics.update(step=self.step, epoch=self.step / self.steps_per_epoch,
                               steps_per_s=(self.step - s_last) / max(now - t_last, 1e-9))
                t_last, s_last = now, self.step
                if self.rank == 0:
                    with open(log, "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['l_ddpm']:.4f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.save()
        if bar is not None:
            bar.close()
        return {"step": self.step, "total_steps": self.total_steps, "checkpoint": str(self.out / CHECKPOINT)}


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSONL training log as a list of dicts."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def train(cfg: TrainConfig, images: np.ndarray | torch.Tensor, progress: Callable[..., Any] | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume, or find finished) the model ``cfg.model_name`` of ``cfg.run_dir`` on ``images``.

    Writes ``checkpoint.pt``, ``train_log.jsonl``, ``run.json`` and ``model.json`` (what the evaluation reads) into
    ``<run_dir>/models/<model_name>/``.
    """
    started = dt.datetime.now(dt.timezone.utc)
    set_threads(cfg.threads)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) if not torch.is_tensor(images) else images).float()
    if x.dim() == 3:
        x = x[:, None]
    out = model_dir(cfg.run_dir, cfg.model_name)
    trainer = Trainer(cfg, x, out)
    if cfg.fresh and trainer.rank == 0:
        for name in (CHECKPOINT, PREVIOUS, LOG):
            (out / name).unlink(missing_ok=True)
    resumed_from = trainer.step if (not cfg.fresh and trainer.resume()) else None
    t0 = time.perf_counter()
    result = trainer.fit(progress, stop_after)
    result.update(resumed_from=resumed_from, wall_time_s=round(time.perf_counter() - t0, 2),
                  steps_per_epoch=trainer.steps_per_epoch, train_slices=len(x), world_size=trainer.world,
                  device=str(trainer.device), amp=trainer.amp, finished=trainer.step >= trainer.total_steps)
    if trainer.device.type == "cpu":
        result["cpu"] = describe_cpu()
    if trainer.rank == 0:
        peak = _peak_memory_mb(trainer.device)
        result["peak_memory_mb"] = peak
        # the checkpoint relative to model.json's folder: a copied or moved run loads its own weights
        write_json_atomic(out / "model.json", {"checkpoint": CHECKPOINT, "config": config_dict(cfg),
                                               **{k: v for k, v in result.items() if k != "checkpoint"}})
        write_run_record(out / "run.json", config_dict(cfg), cfg.seed, started, extra={"amp_resolved": trainer.amp})
    return result


def _check_settings(saved_config: dict[str, Any], cfg: TrainConfig, source: str) -> None:
    """CheckpointError naming every ARCHITECTURE_KEYS setting in which ``saved_config`` (a checkpoint's or model
    record's) differs from ``cfg``. A key the record lacks was added to the trainer later; its default reproduces
    the old behaviour."""
    saved = {**config_dict(TrainConfig()), **saved_config}
    current = config_dict(cfg)
    diff = [k for k in ARCHITECTURE_KEYS if saved.get(k) != current.get(k)]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise CheckpointError(f"{source}: was trained with other settings ({changes}); "
                              f"use another model_name or fresh=True")


def finished_model(cfg: TrainConfig) -> dict[str, Any]:
    """The record (``model.json``) of the finished model ``cfg.model_name`` of ``cfg.run_dir``, checked against
    ``cfg`` (ARCHITECTURE_KEYS, and the budget: ``max_steps``, ``epochs``): to score a model that another run trained
    without writing into its folder. A CheckpointError says what is missing, unfinished or different."""
    path = model_dir(cfg.run_dir, cfg.model_name) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the model {cfg.model_name!r} has not been trained there")
    record = json.loads(path.read_text())
    _check_settings(record["config"], cfg, str(path))
    if not record.get("finished"):
        raise CheckpointError(f"{path}: the model stopped at step {record.get('step')} of "
                              f"{record.get('total_steps')}; finish its training first")
    budget = {k: record["config"].get(k) for k in ("max_steps", "epochs")}
    if budget["max_steps"] != cfg.max_steps or (not cfg.max_steps and budget["epochs"] != cfg.epochs):
        raise CheckpointError(f"{path}: trained with max_steps {budget['max_steps']}, epochs {budget['epochs']}; "
                              f"asked for max_steps {cfg.max_steps}, epochs {cfg.epochs}")
    return record


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else the resident-set high-water mark."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: Sequence[str] | None = None) -> int:
    """``[torchrun ...] python -m addmlib.training PARAMS.yaml --run-dir DIR``: train on ``DIR/data`` (prepared by
    notebooks/01_prepare_data.ipynb) with the training parameters of PARAMS.yaml."""
    parser = ArgumentParser(prog="python -m addmlib.training", description=main.__doc__)
    parser.add_argument("params", help="a pipeline parameter file (e.g. params/demo.yaml); keys of the other "
                        "pipeline notebooks are allowed, keys no notebook declares are refused")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    return run_main(lambda: _train_cli(args.params, args.run_dir), failures=(CheckpointError, FileNotFoundError))


def _train_cli(params_file: str, run_dir: str) -> int:
    """``main`` after argument parsing: validate everything, then (and only then) train."""
    from .data.prepare import PreparedDataset

    cfg = load_checked(TrainConfig, [params_file], {"run_dir": run_dir}, pipeline=True)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        device = resolve_device(cfg.device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    try:
        images = PreparedDataset(Path(run_dir) / "data").slices("train")["image"]
        result = train(cfg, images)
        if not distributed or dist.get_rank() == 0:
            print(json.dumps(result))
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

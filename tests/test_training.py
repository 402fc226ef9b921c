"""The trainer: learning, D, lambda = 0, exact resume, corrupt checkpoints, 2-process gloo DDP."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from addmlib.config import TrainConfig
from addmlib.data.prepare import SPLITS, _store
from addmlib.data.preprocess import Volume
from addmlib.fileio import write_json_atomic
from addmlib.models import load_ema_unet, recorded_checkpoint
from addmlib.training import (CHECKPOINT, PREVIOUS, CheckpointError, Trainer, finished_model, load_checkpoint,
                              model_dir, read_log, train)

ROOT = Path(__file__).resolve().parent.parent


def _blobs(n=24, size=16, seed=0):
    """Smooth random 'slices' in [-1, 1]: an ellipse of tissue with a few darker blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    out = []
    for _ in range(n):
        a, b = rng.uniform(0.6, 0.9, 2)
        img = np.where((xx / a) ** 2 + (yy / b) ** 2 < 1, 0.5, -1.0)
        for _ in range(3):
            cx, cy, r = rng.uniform(-0.4, 0.4, 2).tolist() + [rng.uniform(0.1, 0.25)]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = -0.2
        out.append(img)
    return torch.tensor(np.stack(out), dtype=torch.float32)[:, None]


def _cfg(tmp_path, **kw):
    base = dict(run_dir=str(tmp_path), threads=1, device="cpu", image_size=16, num_steps=50, unet_base_channels=8,
                unet_channel_mult=(1, 2), unet_attention_resolutions=(8,), disc_base_channels=8,
                disc_channel_mult=(1, 2), batch_size=4, epochs=1000, max_steps=40, lr=2e-3, checkpoint_every=10,
                log_every=1, augment=False, t_star=10, sample_steps=5)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_and_discriminator_accuracy_moves(tmp_path):
    cfg = _cfg(tmp_path, lambda_adv=0.1, max_steps=60)
    result = train(cfg, _blobs())
    log = read_log(model_dir(tmp_path, "addm") / "train_log.jsonl")
    assert result["finished"] and len(log) == 60
    first = np.mean([r["l_ddpm"] for r in log[:10]])
    last = np.mean([r["l_ddpm"] for r in log[-10:]])
    assert last < 0.7 * first, (first, last)
    acc = [r["d_acc_real"] + r["d_acc_fake"] for r in log]
    assert len(set(acc)) > 3, "D's accuracy moves"
    assert all(np.isfinite(r["d_loss"]) for r in log)
    record = model_dir(tmp_path, "addm") / "model.json"
    assert json.loads(record.read_text())["checkpoint"] == CHECKPOINT  # relative: a copied run loads its own weights
    unet, saved_cfg = load_ema_unet(recorded_checkpoint(record))
    assert saved_cfg.lambda_adv == 0.1 and unet(torch.zeros(1, 1, 16, 16), torch.tensor([3])).shape == (1, 1, 16, 16)


def test_discriminator_on_x0_hat_learns_where_the_papers_stays_at_chance(tmp_path):
    """The paper's D (x_{t-1}) sits at 2 ln 2; a D on the one-step estimate x0_hat sees the blur and learns."""
    last = {}
    for target in ("x_prev", "x0"):
        train(_cfg(tmp_path / target, lambda_adv=0.1, max_steps=60, adv_target=target), _blobs())
        log = read_log(model_dir(tmp_path / target, "addm") / "train_log.jsonl")[-20:]
        last[target] = (np.mean([r["d_loss"] for r in log]), np.mean([r["d_acc_real"] + r["d_acc_fake"] for r in log]))
    assert last["x0"][0] < last["x_prev"][0] - 0.15 and last["x0"][0] < 2 * np.log(2) - 0.15, last
    assert last["x0"][1] > 1.15, last


def test_lambda_zero_never_builds_or_updates_a_discriminator(tmp_path):
    cfg = _cfg(tmp_path, lambda_adv=0.0, max_steps=5, model_name="ddpm")
    trainer = Trainer(cfg, _blobs(), model_dir(tmp_path, "ddpm"))
    assert trainer.disc is None and trainer.opt_d is None
    metrics = trainer.train_step()
    assert "d_loss" not in metrics and metrics["l_adv"] == 0.0 and metrics["loss"] == metrics["l_ddpm"]
    ckpt = load_checkpoint(trainer.save())
    assert ckpt["disc"] is None and ckpt["opt_d"] is None


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(tmp_path, lam):
    images = _blobs()
    full = Trainer(_cfg(tmp_path / "a", lambda_adv=lam, augment=True), images, tmp_path / "a")
    reference = [full.train_step() for _ in range(9)]

    first = Trainer(_cfg(tmp_path / "b", lambda_adv=lam, augment=True), images, tmp_path / "b")
    first.fit(stop_after=6)  # checkpoint written at step 6 (the end of this call)
    del first
    again = Trainer(_cfg(tmp_path / "b", lambda_adv=lam, augment=True), images, tmp_path / "b")
    assert again.resume() and again.step == 6
    for expected in reference[6:]:
        got = again.train_step()
        assert got["loss"] == expected["loss"] and got.get("d_loss") == expected.get("d_loss")


def test_corrupt_or_truncated_checkpoint_is_a_clear_error_and_previous_survives(tmp_path):
    out = tmp_path / "m"
    trainer = Trainer(_cfg(tmp_path, max_steps=20), _blobs(), out)
    trainer.fit()  # checkpoints at 10 and 20: latest = 20, previous = 10
    latest, previous = out / CHECKPOINT, out / PREVIOUS
    assert load_checkpoint(previous)["step"] == 10
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot be read as a checkpoint .corrupt or truncated"):
        load_checkpoint(latest)
    resumed = Trainer(_cfg(tmp_path, max_steps=20), _blobs(), out)
    assert resumed.resume() and resumed.step == 10, "falls back to the previous checkpoint"
    assert previous.is_file()
    latest.write_bytes(b"garbage")
    previous.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Trainer(_cfg(tmp_path, max_steps=20), _blobs(), out).resume()


def test_resume_with_other_settings_names_them(tmp_path):
    train(_cfg(tmp_path, max_steps=3), _blobs())
    with pytest.raises(CheckpointError, match="lambda_adv: 0.05 -> 0.2"):
        train(_cfg(tmp_path, max_steps=6, lambda_adv=0.2), _blobs())
    result = train(_cfg(tmp_path, max_steps=6, lambda_adv=0.2, fresh=True), _blobs())
    assert result["resumed_from"] is None and result["step"] == 6


def test_finished_run_is_not_trained_again(tmp_path):
    train(_cfg(tmp_path, max_steps=4), _blobs())
    again = train(_cfg(tmp_path, max_steps=4), _blobs())
    assert again["resumed_from"] == 4 and again["step"] == 4 and again["wall_time_s"] < 5


def test_finished_model_is_read_only_when_finished_and_trained_as_asked(tmp_path):
    with pytest.raises(CheckpointError, match="model.json not found: the model 'addm' has not been trained there"):
        finished_model(_cfg(tmp_path, max_steps=4))
    train(_cfg(tmp_path, max_steps=4), _blobs(), stop_after=2)
    with pytest.raises(CheckpointError, match="stopped at step 2 of 4; finish its training first"):
        finished_model(_cfg(tmp_path, max_steps=4))
    train(_cfg(tmp_path, max_steps=4), _blobs())
    folder = model_dir(str(tmp_path), "addm")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert finished_model(_cfg(tmp_path, max_steps=4))["step"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing written
    with pytest.raises(CheckpointError, match="trained with max_steps 4, epochs 1000; asked for max_steps 8"):
        finished_model(_cfg(tmp_path, max_steps=8))  # a longer run of the same model is another model
    with pytest.raises(CheckpointError, match="other settings \\(noise: 'gaussian' -> 'coarse'\\)"):
        finished_model(_cfg(tmp_path, max_steps=4, noise="coarse"))


def _prepared_folder(run_dir: Path, images: torch.Tensor) -> None:
    """A minimal prepared dataset (train split only) in the format notebooks/01 writes."""
    arrays, volumes = {}, {s: [] for s in SPLITS}
    vol = images[:, 0].permute(1, 2, 0).numpy()
    _store(arrays, volumes, "train", "blobs", Volume(vol, np.eye(4), vol > -1), {"slices": list(range(len(images)))})
    (run_dir / "data").mkdir(parents=True)
    with open(run_dir / "data" / "dataset.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    write_json_atomic(run_dir / "data" / "manifest.json",
                      {"split": {s: [v["id"] for v in volumes[s]] for s in SPLITS}, "volumes": volumes})


@pytest.mark.slow
def test_two_process_gloo_ddp_run_completes_and_its_checkpoint_loads(tmp_path):
    _prepared_folder(tmp_path, _blobs(32))
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
              vars(replace(_cfg(tmp_path, lambda_adv=0.1, max_steps=6, checkpoint_every=3))).items()
              if k != "run_dir"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "addmlib.training", str(tmp_path / "p.yaml"), "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["step"] == 6
    ckpt = load_checkpoint(model_dir(tmp_path, "addm") / CHECKPOINT)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6
    unet, _ = load_ema_unet(model_dir(tmp_path, "addm") / CHECKPOINT)
    assert unet(torch.zeros(2, 1, 16, 16), torch.tensor([1, 5])).shape == (2, 1, 16, 16)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(tmp_path):
    """A training process killed with SIGKILL loses at most one checkpoint interval; rerunning resumes."""
    import signal
    import time

    _prepared_folder(tmp_path, _blobs(32))
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
              vars(_cfg(tmp_path, max_steps=150, checkpoint_every=5, log_every=5)).items() if k != "run_dir"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "addmlib.training", str(tmp_path / "p.yaml"), "--run-dir", str(tmp_path)]
    ckpt = model_dir(tmp_path, "addm") / CHECKPOINT
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run was killed before it finished"
    saved = load_checkpoint(ckpt)["step"]
    assert saved >= 5
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] >= saved and result["step"] == 150 and result["finished"]
    steps = [r["step"] for r in read_log(model_dir(tmp_path, "addm") / "train_log.jsonl")]
    assert steps == sorted(set(steps)), "the log has no duplicated steps after the resume"


def test_images_of_another_size_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\) for image_size = 16, got \(24, 1, 32, 32\): prepare the data "
                                         r"at this size first"):
        train(_cfg(tmp_path), _blobs(size=32))
    assert not model_dir(tmp_path, "addm").exists() or not any(model_dir(tmp_path, "addm").iterdir())

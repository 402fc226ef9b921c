"""Fault drills: a sweep worker killed mid-cell, a trainer killed while writing its checkpoint, a truncated checkpoint
at resume, a full disk while writing a checkpoint or the prepared dataset, a parameter file changed between runs."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from addmlib import sweep
from addmlib.data import prepare
from addmlib.data.prepare import PreparedDataset
from addmlib.training import CHECKPOINT, PREVIOUS, Trainer, load_checkpoint, model_dir, read_log, train
from tests.test_bad_input import _build, _folders
from tests.test_training import _blobs, _cfg, _prepared_folder

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "params" / "ci" / "ablation_ci.yaml"
KILLED_CELL = "lam0_T50_seed0"


def _no_temporaries(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


# ----- a sweep worker killed with SIGKILL in the middle of a cell ------------------------------------------------

def _cell_killed_once(cell: sweep.Cell) -> dict:
    """Stands in for ``sweep.run_cell`` in the worker processes: marks the cell running, then, the first time for
    KILLED_CELL, kills its own worker with SIGKILL; otherwise finishes the cell."""
    record = {"cell": cell.name, "status": "running", "fingerprint": cell.fingerprint, "pid": os.getpid()}
    cell.folder.mkdir(parents=True, exist_ok=True)
    (cell.folder / "cell.json").write_text(json.dumps(record))
    marker = Path(cell.sweep_dir) / "killed-once"
    if cell.name == KILLED_CELL and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    record["status"] = "ok"
    (cell.folder / "cell.json").write_text(json.dumps(record))
    return record


def test_a_sweep_worker_killed_mid_cell_has_its_cell_resubmitted_and_the_sweep_finishes(tmp_path, monkeypatch):
    cfg = sweep.load_config([CI], {"lambda_grid": [0.0, 0.05], "num_steps_grid": [50], "workers": 1})
    monkeypatch.setattr(sweep, "run_cell", _cell_killed_once)
    monkeypatch.setattr(sweep, "prepare_data", lambda cfg, folder: None)
    records = sweep.run_sweep(cfg, tmp_path, progress=None)
    killer = int((tmp_path / "killed-once").read_text())
    assert [r["status"] for r in records] == ["ok", "ok"], records
    assert next(r for r in records if r["cell"] == KILLED_CELL)["pid"] != killer, "ran again in a new worker"
    summary = json.loads((tmp_path / "sweep.json").read_text())["cells"]
    assert {c: s["status"] for c, s in summary.items()} == {KILLED_CELL: "ok", "lam0.05_T50_seed0": "ok"}


# ----- the trainer: killed while writing, truncated checkpoint, full disk -------------------------------------

DRIVER = """
import io, sys, time
import torch
from addmlib import training

real_save, calls = torch.save, []

def slow_save(obj, f, *args, **kwargs):  # the second checkpoint: half written, then the process hangs (and is killed)
    calls.append(f)
    if len(calls) == 2:
        buf = io.BytesIO()
        real_save(obj, buf)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        open(sys.argv[3], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = slow_save
sys.exit(training.main([sys.argv[1], "--run-dir", sys.argv[2]]))
"""


def _params_file(tmp_path: Path, cfg) -> Path:
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items() if k != "run_dir"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_leaves_a_checkpoint_that_loads_and_the_next_run_resumes(tmp_path):
    images = _blobs(32)
    _prepared_folder(tmp_path, images)
    cfg = _cfg(tmp_path, max_steps=20, checkpoint_every=5, log_every=5)
    (tmp_path / "driver.py").write_text(DRIVER)
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(_params_file(tmp_path, cfg)),
                             str(tmp_path), str(marker)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL, in the middle of torch.save of the step-10 checkpoint
    _, err = proc.communicate(timeout=30)
    assert marker.exists(), f"the second checkpoint was never being written: {err[-2000:]}"
    out = model_dir(tmp_path, "addm")
    assert list(out.glob(f".{CHECKPOINT}.*.tmp")), "the half-written temporary file is there"
    assert load_checkpoint(out / CHECKPOINT)["step"] == 5, "the last complete checkpoint is intact"
    result = train(cfg, images)
    assert result["resumed_from"] == 5 and result["step"] == 20 and result["finished"]
    assert load_checkpoint(out / CHECKPOINT)["step"] == 20 and _no_temporaries(out)
    steps = [r["step"] for r in read_log(out / "train_log.jsonl")]
    assert steps == [5, 10, 15, 20], "the log has each step once after the resume"


def test_a_truncated_checkpoint_at_resume_falls_back_to_the_previous_one_end_to_end(tmp_path, capfd):
    images = _blobs(16)
    cfg = _cfg(tmp_path, max_steps=20, checkpoint_every=5, log_every=5)
    train(cfg, images, stop_after=10)  # checkpoints at 5 (previous) and 10 (latest)
    out = model_dir(tmp_path, "addm")
    data = (out / CHECKPOINT).read_bytes()
    (out / CHECKPOINT).write_bytes(data[: len(data) // 2])
    result = train(cfg, images)
    assert "checkpoint.pt: cannot be read as a checkpoint" in capfd.readouterr().err
    assert result["resumed_from"] == 5 and result["step"] == 20 and result["finished"]
    assert load_checkpoint(out / CHECKPOINT)["step"] == 20 and load_checkpoint(out / PREVIOUS)["step"] == 15
    assert [r["step"] for r in read_log(out / "train_log.jsonl")] == [5, 10, 15, 20]


def _disk_full_after(nbytes: int, file_arg: int, only: str = ""):
    """A writer standing in for torch.save (``file_arg`` 1) or np.savez_compressed (0): writes ``nbytes`` to its
    file, then fails like a full disk."""
    def write(*args, **kwargs):
        f = args[file_arg]
        name = getattr(f, "name", f)
        if only not in str(name):
            raise AssertionError(f"unexpected write of {name}")
        with (open(f, "wb") if isinstance(f, (str, Path)) else f) as fh:
            fh.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_disk_full_while_writing_a_checkpoint_is_a_clear_error_and_both_checkpoints_stay(tmp_path, monkeypatch):
    out = tmp_path / "m"
    trainer = Trainer(_cfg(tmp_path, max_steps=20), _blobs(), out)
    trainer.fit(stop_after=20)  # checkpoints at 10 (previous) and 20 (latest)
    before = {name: (out / name).read_bytes() for name in (CHECKPOINT, PREVIOUS)}
    monkeypatch.setattr(torch, "save", _disk_full_after(1000, file_arg=1))
    with pytest.raises(OSError, match=r"cannot write .*checkpoint.pt: No space left on device") as err:
        trainer.save()
    assert err.value.errno == errno.ENOSPC
    assert {name: (out / name).read_bytes() for name in before} == before, "neither checkpoint was touched"
    assert load_checkpoint(out / CHECKPOINT)["step"] == 20 and _no_temporaries(out)


def test_disk_full_while_writing_the_dataset_keeps_the_earlier_dataset_readable(tmp_path, monkeypatch):
    _folders(tmp_path)
    first = _build(tmp_path)
    data = tmp_path / "data"
    before = {name: (data / name).read_bytes() for name in ("dataset.npz", "manifest.json")}
    monkeypatch.setattr(np, "savez_compressed", _disk_full_after(4096, file_arg=0, only="dataset.npz"))
    with pytest.raises(OSError, match=r"cannot write .*dataset.npz: No space left on device") as err:
        _build(tmp_path, size=24)
    assert err.value.errno == errno.ENOSPC
    assert {name: (data / name).read_bytes() for name in before} == before and _no_temporaries(data)
    assert PreparedDataset(data).manifest["fingerprint"] == first["fingerprint"]
    assert PreparedDataset(data).volume("eval_a", "folder-p1").image.shape[0] == 16


def test_a_manifest_lost_to_a_full_disk_is_detected_and_the_next_build_repairs_it(tmp_path, monkeypatch):
    _folders(tmp_path)
    _build(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "cannot write manifest.json: No space left on device")
    with monkeypatch.context() as m:
        m.setattr(prepare, "write_json_atomic", full)
        with pytest.raises(OSError, match="manifest.json"):
            _build(tmp_path, size=24)  # dataset.npz of the new build is written, the manifest is the old one
    with pytest.raises(ValueError, match="dataset.npz and .*manifest.json come from different builds"):
        PreparedDataset(tmp_path / "data")
    again = _build(tmp_path, size=24)
    assert not again["reused"] and PreparedDataset(tmp_path / "data").volume("eval_a", "folder-p1").image.shape[0] == 24


# ----- a parameter file changed between a sweep's runs ----------------------------------------------------------

def test_a_base_params_file_changed_between_runs_makes_its_cells_retrain_from_scratch(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "params" / "ci" / "ci.yaml").read_text())
    overrides = {"base_params": [str(base)], "lambda_grid": [0.0], "num_steps_grid": [50]}
    cell = sweep.grid(sweep.load_config([CI], overrides), tmp_path)[0]
    cell.folder.mkdir(parents=True)
    (cell.folder / "cell.json").write_text(json.dumps({"cell": cell.name, "status": "ok",
                                                       "fingerprint": cell.fingerprint}))
    calls = []
    monkeypatch.setattr(sweep, "run_params", lambda params, folder, notebooks, *a: calls.append((notebooks, params)))
    assert sweep.run_cell(cell)["skipped"] and calls == [], "unchanged: skipped"

    base.write_text(base.read_text().replace("disc_base_channels: 8", "disc_base_channels: 16"))
    changed = sweep.grid(sweep.load_config([CI], overrides), tmp_path)[0]
    assert changed.fingerprint != cell.fingerprint and sweep.cell_status(changed) == "stale"
    record = sweep.run_cell(changed)
    assert record["status"] == "ok" and record["fingerprint"] == changed.fingerprint
    (train_nb, train_params), (eval_nb, _) = calls
    assert train_nb == ["02_train"] and train_params["fresh"] is True, "retrained from scratch"
    assert train_params["disc_base_channels"] == 16 and train_params["max_steps"] == 10, "cell_params still win"
    assert eval_nb == ["03_evaluate"] and sweep.cell_status(changed) == "ok"

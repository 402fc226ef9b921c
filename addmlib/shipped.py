"""Detectors that ship with the package, and the export that makes one from an evaluated run.

A shipped detector is a compact run folder under ``addmlib/detectors/<name>/``: one model's EMA weights
(``models/<model>/checkpoint.pt``, without the optimiser, discriminator and random states), its record
(``model.json``, its training run record ``run.json`` and loss log), the evaluation's calibrated detector record
(``eval/detector.json``: preparation, scoring, post-processing, thresholds and mix scales) and ``SHA256SUMS`` over
every file, checked before it is used. ``score.load_detector`` takes its name where a run folder is expected, so a
scan can be scored without training anything:

    python -m addmlib.score ixi-2400 scan.nii.gz --out scored/

Make one from any evaluated run (the folder must not exist yet; it is written whole or not at all):

    python -m addmlib.shipped RUN_DIR --eval-name eval --model addm --out my-detector/
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from .cli import ArgumentParser, run_main
from .config import ConfigError
from .data.sources import sha256_of
from .evaluate import DETECTOR_FILE
from .models import CheckpointError, load_checkpoint, recorded_checkpoint

SHIPPED_ROOT = Path(__file__).resolve().parent / "detectors"
CHECKSUMS = "SHA256SUMS"
# what scoring needs from a training checkpoint (models.load_ema_unet); the rest resumes training only
_SCORING_KEYS = ("format", "config", "step", "ema", "ema_n_averaged")
_RECORD_FILES = ("run.json", "train_log.jsonl")


class ShippedDetectorError(ConfigError):
    """A shipped detector is unknown, incomplete or altered, or an export cannot be made; the message says which."""


def names() -> list[str]:
    """The detectors shipped with this installation."""
    if not SHIPPED_ROOT.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / CHECKSUMS).is_file())


def verify(folder: Path) -> None:
    """Every file that ``folder/SHA256SUMS`` lists is there with its checksum; a ShippedDetectorError naming the first
    that is missing or differs."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise ShippedDetectorError(f"{folder}: no {CHECKSUMS}; not a shipped detector")
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, rel = line.split(maxsplit=1)
        path = folder / rel.strip()
        if not path.is_file():
            raise ShippedDetectorError(f"{path}: listed in {sums} but missing; reinstall the package")
        if sha256_of(path) != expected:
            raise ShippedDetectorError(f"{path}: checksum differs from {sums} (altered or truncated); reinstall "
                                       f"the package")


def path(name: str) -> Path:
    """The folder of shipped detector ``name``, its checksums verified."""
    shipped = names()
    if name not in shipped:
        raise ShippedDetectorError(f"no shipped detector {name!r}; shipped: {', '.join(shipped) or 'none'}")
    folder = SHIPPED_ROOT / name
    verify(folder)
    return folder


def export(run_dir: str | Path, eval_name: str, model: str, out: str | Path) -> Path:
    """Write the compact detector of ``model`` as evaluated in ``run_dir/eval_name`` to the new folder ``out``
    (layout in the module docstring). ``out`` must not exist; it appears whole, by a rename, or not at all."""
    run_dir, out = Path(run_dir), Path(out)
    record_path = run_dir / eval_name / DETECTOR_FILE
    if not record_path.is_file():
        raise ShippedDetectorError(f"{record_path} not found: evaluate the run first (notebooks/03_evaluate.ipynb)")
    if out.exists():
        raise ShippedDetectorError(f"{out} exists; export writes a new folder and never overwrites one")
    record = json.loads(record_path.read_text())
    if model not in record.get("models", {}):
        raise ShippedDetectorError(f"{record_path}: no model {model!r}; it has {', '.join(record.get('models', {}))}")
    entry = dict(record["models"][model])
    model_json = run_dir / entry["model_json"]
    ckpt = load_checkpoint(recorded_checkpoint(model_json))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_out = work / "models" / model
        model_out.mkdir(parents=True)
        torch.save({k: ckpt[k] for k in _SCORING_KEYS if k in ckpt}, model_out / "checkpoint.pt")
        model_record = {**json.loads(model_json.read_text()), "checkpoint": "checkpoint.pt"}
        (model_out / "model.json").write_text(json.dumps(model_record, indent=2, sort_keys=True) + "\n")
        for name in _RECORD_FILES:
            if (model_json.parent / name).is_file():
                shutil.copyfile(model_json.parent / name, model_out / name)
        entry["model_json"] = f"models/{model}/model.json"
        (work / "eval").mkdir()
        detector = {**record, "eval_name": "eval", "models": {model: entry},
                    "exported_from": {"run_dir": run_dir.as_posix(), "eval_name": eval_name, "model": model}}
        (work / "eval" / DETECTOR_FILE).write_text(json.dumps(detector, indent=2, sort_keys=True) + "\n")
        files = sorted(p for p in work.rglob("*") if p.is_file())
        (work / CHECKSUMS).write_text("".join(f"{sha256_of(p)}  {p.relative_to(work).as_posix()}\n" for p in files))
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Export an evaluated model as a compact detector folder (its EMA weights, records and calibrated detector)."""
    parser = ArgumentParser(prog="python -m addmlib.shipped", description=main.__doc__)
    parser.add_argument("run_dir", help="a run folder after training and evaluation (e.g. outputs/demo)")
    parser.add_argument("--eval-name", default="eval", help="the evaluation whose detector.json is exported")
    parser.add_argument("--model", required=True, help="the evaluated model to export")
    parser.add_argument("--out", required=True, help="the new folder to write")
    args = parser.parse_args(argv)

    def body() -> int:
        print(f"wrote {export(args.run_dir, args.eval_name, args.model, args.out)}")
        return 0
    return run_main(body, (CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

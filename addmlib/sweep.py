"""Ablation sweeps over lambda x T x seeds: ``python -m addmlib.sweep params/ablation_demo.yaml --run-dir DIR``.

Layout of a sweep folder::

    DIR/data/                          prepared once (notebook 01) and shared by every cell (symlinked)
    DIR/cells/<cell>/                  one pipeline run folder per cell: notebooks/02_train-model.ipynb,
                                       notebooks/03_evaluate-steps<n>.ipynb, models/, steps<n>/metrics.json
    DIR/cells/<cell>/cell.json         the cell's status ("running", "ok", "failed"), error, wall times, metrics
    DIR/sweep.json                     the sweep's settings and the status of every cell

Each cell runs the training and evaluation *notebooks* through papermill, so every number traces to an executed
notebook. Cells run in parallel on a local process pool, or on a Dask distributed cluster (``engine: dask``; an
address such as ``tcp://host:8786`` or one from dask-jobqueue's Slurm/PBS clusters, or a ``LocalCluster`` when empty).
A restarted sweep skips cells whose ``cell.json`` says "ok" and redoes the others (training resumes from its last
checkpoint). A failing cell is recorded with its notebook and error; the other cells go on.

This module only runs sweeps; ``addmlib.ablation`` reads their results and judges the paper's two claims.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .cli import ArgumentParser, run_main
from .config import AblationConfig, ConfigError, check_pipeline_parameters, load_checked
from .diffusion import resolve_steps, scale_t_star
from .fileio import write_json_atomic
from .pipeline import REPO_ROOT, NotebookFailed, load_params, run_params


NEUTRAL = {"intensity_weight": 0}
"""Parameters added after cells were run, at the value that reproduces the cells run without them: left out of the
fingerprint at that value, so that those cells stay valid."""


@dataclass(frozen=True)
class Cell:
    """One grid point: everything a worker needs to train and evaluate it (picklable)."""

    lambda_adv: float
    num_steps: int
    seed: int
    sweep_dir: str
    params: dict[str, Any] = field(default_factory=dict)
    eval_steps: tuple[int, ...] = (0,)
    threads: int = 1
    cell_timeout: int = 7200

    @property
    def name(self) -> str:
        return f"lam{self.lambda_adv:g}_T{self.num_steps}_seed{self.seed}"

    @property
    def folder(self) -> Path:
        return Path(self.sweep_dir) / "cells" / self.name

    @property
    def fingerprint(self) -> str:
        """What determines the cell's numbers (its parameters but threads, its evaluation steps)."""
        params = {k: v for k, v in self.params.items() if k != "threads" and NEUTRAL.get(k, ...) != v}
        key = {"params": params, "eval_steps": list(self.eval_steps)}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_param_file(path: str) -> Path:
    """A ``base_params`` entry: absolute, or relative to the repository root (``params/demo.yaml``)."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def base_parameters(cfg: AblationConfig) -> dict[str, Any]:
    """The pipeline parameters every cell starts from: the merged ``base_params`` files, then ``cell_params``."""
    return {**load_params([resolve_param_file(p) for p in cfg.base_params]), **cfg.cell_params}


def grid(cfg: AblationConfig, sweep_dir: str | Path) -> list[Cell]:
    """The cells of the sweep, lambda-major (``control_lambda``, when set, last); t* of each cell is
    ``t_star_at_1000`` scaled to its T (t*/T fixed)."""
    base = base_parameters(cfg)
    cells = []
    for lam in (*cfg.lambda_grid, *([cfg.control_lambda] if cfg.control_lambda else [])):
        for T in cfg.num_steps_grid:
            for seed in cfg.seed_grid:
                params = {**base, "lambda_adv": lam, "num_steps": T, "seed": seed,
                          "t_star": scale_t_star(cfg.t_star_at_1000, T), "model_name": "model",
                          "threads": cfg.threads_per_cell}
                cells.append(Cell(lam, T, seed, str(Path(sweep_dir).resolve()), params, tuple(cfg.eval_steps),
                                  cfg.threads_per_cell, cfg.cell_timeout))
    return cells


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON record at ``path``, or None when it is missing or unreadable (a cell interrupted mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cell_status(cell: Cell, record: dict[str, Any] | None = None) -> str:
    """"ok", "failed", "running" (or interrupted), "todo", or "stale" (finished with other settings: rerun).

    ``record``: the cell's ``cell.json`` if already read, else it is read here."""
    record = read_json(cell.folder / "cell.json") if record is None else record
    if not record:
        return "todo"
    if record.get("fingerprint") != cell.fingerprint:
        return "stale"
    return record.get("status", "todo")


def _error_text(exc: BaseException) -> str:
    """The error of a failed notebook: papermill's exception name and value, not the whole traceback."""
    parts = [f"{type(exc).__name__}: {exc}"]
    cause = exc.__cause__
    if cause is not None:
        ename, evalue = getattr(cause, "ename", None), getattr(cause, "evalue", None)
        parts.append(f"{ename}: {evalue}" if ename else f"{type(cause).__name__}: {cause}")
    return "\n".join(parts)


def _wall_times(run_dir: Path) -> dict[str, float]:
    """Seconds per executed notebook, summed over invocations (a resumed cell has several)."""
    log = read_json(run_dir / "pipeline.json") or {}
    totals: dict[str, float] = {}
    for inv in log.get("invocations", []):
        for nb in inv.get("notebooks", []):
            key = Path(nb["output"]).stem
            totals[key] = round(totals.get(key, 0.0) + float(nb.get("wall_time_s", 0.0)), 2)
    return totals


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train and evaluate one cell through its notebooks; never raises (errors are returned and recorded)."""
    folder = cell.folder
    record_path = folder / "cell.json"
    previous = read_json(record_path)
    same = bool(previous) and previous.get("fingerprint") == cell.fingerprint
    if same and previous.get("status") == "ok":
        return {**previous, "skipped": True}
    # settings changed since an earlier run of this cell: train from scratch (a resume would refuse the mismatch)
    params = {**cell.params, "fresh": True} if previous and not same else dict(cell.params)
    # threads for every kernel this worker starts (set before they import torch)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cell.threads)
    folder.mkdir(parents=True, exist_ok=True)
    data_link = folder / "data"
    if not data_link.exists() and not data_link.is_symlink():
        data_link.symlink_to(os.path.relpath(Path(cell.sweep_dir) / "data", folder))
    record: dict[str, Any] = {"cell": cell.name, "lambda_adv": cell.lambda_adv, "num_steps": cell.num_steps,
                              "seed": cell.seed, "t_star": cell.params["t_star"], "status": "running",
                              "fingerprint": cell.fingerprint,
                              "host": os.uname().nodename, "pid": os.getpid(),
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(record_path, record)
    t0 = time.perf_counter()
    evals: list[dict[str, Any]] = []
    try:
        run_params(params, folder, ["02_train"], cell.cell_timeout, f"sweep cell {cell.name}")
        t_star = int(cell.params["t_star"])
        for n in cell.eval_steps:
            steps = resolve_steps(n, t_star)
            name = f"steps{steps}"
            if any(e["eval_name"] == name for e in evals):
                continue  # e.g. 50 and 0 (all) coincide when t* = 50
            eval_params = {**cell.params, "models": ["model"], "sample_steps": steps, "eval_name": name,
                           "baselines": [], "write_nifti": False}
            run_params(eval_params, folder, ["03_evaluate"], cell.cell_timeout, f"sweep cell {cell.name}")
            evals.append({"eval_name": name, "steps": steps, "metrics": f"{name}/metrics.json"})  # relative to the cell
        record.update(status="ok")
    except Exception as exc:  # a failed cell is reported, the sweep goes on
        record.update(status="failed", error=_error_text(exc),
                      notebook=str(exc.notebook) if isinstance(exc, NotebookFailed) else None,
                      traceback=traceback.format_exc(limit=3))
    record.update(evaluations=evals, wall_time_s=round(time.perf_counter() - t0, 1),
                  notebook_wall_time_s=_wall_times(folder))
    write_json_atomic(record_path, record)
    return record


def _run_local(cells: Sequence[Cell], workers: int, on_done: Callable[[dict[str, Any]], None]) -> None:
    """Cells on a process pool (spawn: the parent may hold torch/OpenMP state that must not be copied). A worker that
    dies (killed, out of memory) breaks the whole pool: the cells it took down are resubmitted on a new pool once;
    the cell still failing is reported as "worker died"."""
    attempts = {c.name: 0 for c in cells}
    todo = list(cells)
    while todo:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        retry: list[Cell] = []
        try:
            futures = {pool.submit(run_cell, c): c for c in todo}
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    on_done(fut.result())
                except BrokenProcessPool as exc:
                    attempts[cell.name] += 1
                    if attempts[cell.name] < 2:
                        retry.append(cell)
                    else:
                        on_done({"cell": cell.name, "status": "failed", "error": f"worker died: {_error_text(exc)}"})
                except Exception as exc:
                    on_done({"cell": cell.name, "status": "failed", "error": f"worker died: {_error_text(exc)}"})
        except KeyboardInterrupt:  # stop running cells too (their kernels exit with them); a rerun resumes them
            for proc in mp.active_children():
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        todo = retry


def _run_dask(cells: Sequence[Cell], workers: int, address: str,
              on_done: Callable[[dict[str, Any]], None]) -> None:
    from distributed import Client, LocalCluster, as_completed as dask_completed

    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {client.submit(run_cell, c, key=f"addm-cell-{c.name}-{time.time_ns()}", pure=False): c
                   for c in cells}
        for fut in dask_completed(list(futures)):
            cell = futures[fut]
            try:
                on_done(fut.result())
            except Exception as exc:
                on_done({"cell": cell.name, "status": "failed", "error": f"dask task failed: {_error_text(exc)}"})
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def prepare_data(cfg: AblationConfig, sweep_dir: Path) -> None:
    """Notebook 01 into ``sweep_dir`` with the base parameters (reused when already prepared with them)."""
    params = {**base_parameters(cfg), "seed": cfg.seed, "threads": cfg.threads}
    run_params(params, sweep_dir, ["01_prepare_data"], cfg.cell_timeout, "sweep data")


def run_sweep(cfg: AblationConfig, sweep_dir: str | Path,
              progress: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Prepare the data, run every unfinished cell, write ``sweep.json``; returns one record per cell."""
    sweep_dir = Path(sweep_dir).resolve()
    check_cell_parameters(cfg, "sweep parameters")
    cells = grid(cfg, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if cfg.engine == "local" and cfg.workers * cfg.threads_per_cell > (os.cpu_count() or 1) and progress:
        progress(f"warning: workers x threads_per_cell = {cfg.workers * cfg.threads_per_cell} > "
                 f"{os.cpu_count()} cores; torch slows down badly when processes compete for cores")
    prepare_data(cfg, sweep_dir)
    found = {c.name: read_json(c.folder / "cell.json") for c in cells}
    done = {c.name: found[c.name] for c in cells if cell_status(c, found[c.name]) == "ok"}
    todo = [c for c in cells if c.name not in done]
    if progress:
        progress(f"[sweep] {len(cells)} cells: {len(done)} finished (skipped), {len(todo)} to run on "
                 f"{cfg.engine} with {cfg.workers} worker(s) x {cfg.threads_per_cell} thread(s)")
    records: dict[str, dict[str, Any]] = {n: {**r, "skipped": True} for n, r in done.items()}

    def on_done(record: dict[str, Any]) -> None:
        records[record["cell"]] = record
        if progress:
            extra = f" ({record.get('wall_time_s', '?')} s)" if record["status"] == "ok" else \
                f": {record.get('error', '').splitlines()[-1] if record.get('error') else ''} " \
                f"[notebook {record.get('notebook')}]"
            progress(f"[sweep] {record['cell']}: {record['status']}{extra}")
        _write_sweep(cfg, sweep_dir, cells, records)

    _write_sweep(cfg, sweep_dir, cells, records)
    if todo:
        if cfg.engine == "dask":
            _run_dask(todo, cfg.workers, cfg.dask_address, on_done)
        else:
            _run_local(todo, cfg.workers, on_done)
    return [records[c.name] for c in cells if c.name in records]


def _write_sweep(cfg: AblationConfig, sweep_dir: Path, cells: Sequence[Cell],
                 records: Mapping[str, dict[str, Any]]) -> None:
    write_json_atomic(sweep_dir / "sweep.json", {
        "config": asdict(cfg),
        "cells": {c.name: {"status": records.get(c.name, {}).get("status", "todo"),
                           "error": records.get(c.name, {}).get("error")} for c in cells}})


def load_config(files: Iterable[str | Path], overrides: Mapping[str, Any] | None = None) -> AblationConfig:
    """An AblationConfig from flat YAML files (later override earlier) and overrides; errors name the file.

    The cells' parameters are checked too, before anything runs: each ``base_params`` file must exist, and the
    merged base files plus ``cell_params`` may only hold parameters of the pipeline's notebooks, of their types.
    """
    files = list(files)
    cfg = load_checked(AblationConfig, files, overrides)
    check_cell_parameters(cfg, " + ".join(map(str, files)) or "parameters")
    return cfg


def check_cell_parameters(cfg: AblationConfig, source: str) -> None:
    """Every ``base_params`` file exists, and the base files plus ``cell_params`` hold only parameters of the
    pipeline's notebooks, of their types (a ConfigError naming ``source`` otherwise). The grid's own values (lambda,
    T, seed) are checked by each cell's notebooks: a bad one fails its cell alone."""
    for p in cfg.base_params:
        if not resolve_param_file(p).is_file():
            raise ConfigError(f"{source}: base_params file {p!r} not found")
    check_pipeline_parameters(base_parameters(cfg), f"{source} (base_params {' + '.join(cfg.base_params)} and "
                                                    f"cell_params)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m addmlib.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="+", help="YAML file(s) with notebooks/04_ablation.ipynb's parameters")
    parser.add_argument("--run-dir", required=True, help="the sweep folder (rerun with the same folder to resume)")
    args = parser.parse_args(argv)
    return run_main(lambda: _sweep_cli(args.params, args.run_dir))


def _sweep_cli(files: Sequence[str], run_dir: str) -> int:
    """``main`` after argument parsing: every parameter checked, then the sweep."""
    records = run_sweep(load_config(files), run_dir)
    failed = [r["cell"] for r in records if r.get("status") != "ok"]
    print(f"[sweep] done: {len(records) - len(failed)} ok, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the workbench's notebooks in order through papermill: ``python -m addmlib.pipeline params/demo.yaml``.

The parameter file is a flat YAML mapping (the same file works with ``papermill -f``). Each notebook receives only the
parameters its ``parameters`` cell declares (read with ``papermill.inspect_notebook``); a parameter that no notebook
of the run declares is refused before anything runs, and every value is type-checked against the notebook's config.
Everything of a run lands in one folder: executed notebooks under ``notebooks/``, ``run.json`` (parameters, seed,
versions, git commit) and ``pipeline.json`` (per-notebook status and wall time of every invocation on the folder).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from jupyter_client.manager import AsyncKernelManager

from .cli import ArgumentParser, run_main
from .config import (NOTEBOOK_CONFIGS, PIPELINE_NOTEBOOKS, ConfigError, check_pipeline_parameters, load_yaml_files,
                     validate)
from .fileio import write_json_atomic
from .provenance import write_run_record

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; ``notebook`` is its executed copy (with the error in it)."""

    def __init__(self, name: str, notebook: Path) -> None:
        super().__init__(f"notebook {name} failed; the executed notebook with the error is {notebook}")
        self.notebook = notebook


@dataclass(frozen=True)
class Step:
    """One notebook of a run with the parameters it will receive."""

    name: str
    path: Path
    params: dict[str, Any]


def declared_parameters(notebook: Path) -> set[str]:
    """Names in the notebook's cell tagged ``parameters``."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)).keys())


def plan(params: Mapping[str, Any], notebooks: Sequence[str], run_dir: Path, source: str,
         notebook_dir: Path = NOTEBOOK_DIR) -> list[Step]:
    """Split ``params`` over ``notebooks``; refuse names no notebook declares and values of the wrong type."""
    steps: list[Step] = []
    used: set[str] = set()
    for name in notebooks:
        path = notebook_dir / f"{name}.ipynb"
        if not path.is_file():
            raise ConfigError(f"{source}: notebook {name!r} not found at {path}")
        declared = declared_parameters(path)
        mine = {k: v for k, v in params.items() if k in declared}
        used |= set(mine)
        if "run_dir" in declared:
            mine["run_dir"] = str(run_dir)
        if name in NOTEBOOK_CONFIGS:
            # a config field the parameters cell lacks would be dropped here without a word and run at its default
            missing = sorted({f.name for f in dataclasses.fields(NOTEBOOK_CONFIGS[name])} - declared)
            if missing:
                raise ConfigError(f"notebook {path}: its parameters cell lacks {', '.join(map(repr, missing))} of "
                                  f"{NOTEBOOK_CONFIGS[name].__name__}; declare them there")
            validate(NOTEBOOK_CONFIGS[name], mine, f"{source} (for notebook {name})")
        steps.append(Step(name, path, mine))
    # A parameter for a pipeline notebook that is not run this time is fine (one file serves the whole pipeline);
    # one that no pipeline notebook (nor a notebook run now) declares is a mistake.
    check_pipeline_parameters(params, source, known=used | {"run_dir"})
    return steps


def load_params(files: Sequence[str | Path]) -> dict[str, Any]:
    """Merge flat YAML parameter files; later files override earlier ones (like ``papermill -f a.yaml -f b.yaml``)."""
    return load_yaml_files(files)[0]


def run(params_files: str | Path | Sequence[str | Path], run_dir: str | Path | None = None,
        notebooks: Sequence[str] | None = None, cell_timeout: int = 3600,
        overrides: Mapping[str, Any] | None = None) -> Path:
    """Execute the pipeline with the merged parameter files (then ``overrides``); returns the run folder.

    Raises on the first failing notebook (its executed copy, with the error, is kept).
    """
    files = [Path(params_files)] if isinstance(params_files, (str, Path)) else [Path(f) for f in params_files]
    params = {**load_params(files), **(overrides or {})}
    source = " + ".join(map(str, files)) + (" + overrides" if overrides else "")
    folder = Path(run_dir) if run_dir else REPO_ROOT / "outputs" / files[0].stem
    return run_params(params, folder, notebooks, cell_timeout, source)


def _output_name(step: Step) -> str:
    """``02_train-<model_name>``, ``03_evaluate-<eval_name>`` when not the default "eval", else the notebook stem."""
    defaults = NOTEBOOK_CONFIGS[step.name]() if step.name in NOTEBOOK_CONFIGS else None
    tag = step.params.get("model_name", getattr(defaults, "model_name", None))
    if tag is None and step.params.get("eval_name", "eval") != "eval":
        tag = step.params["eval_name"]
    return f"{step.path.stem}-{tag}" if tag else step.path.stem


SCORING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184",
                      "MALLOC_TOP_PAD_": "1073741824"}
"""glibc allocator settings for the evaluation kernels (read at process start): denoising 1.2x faster at 64² and
1.6x at 128² in notebooks/06_benchmark.ipynb. Settings the user exported win; ADDM_MALLOC_TUNING=0 turns this off."""


@contextmanager
def kernel_env(notebook: str) -> Iterator[None]:
    """Environment for the kernel of ``notebook`` while it starts: the allocator settings for 03_evaluate."""
    added = {}
    if notebook == "03_evaluate" and os.environ.get("ADDM_MALLOC_TUNING", "1") != "0":
        added = {k: v for k, v in SCORING_MALLOC_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class IPCKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel talks over ZeroMQ ``ipc`` (Unix sockets in a private 0700 temporary folder)
    instead of TCP on localhost: no port is opened, and ipykernel has no reason to warn "Kernel is running over TCP
    without encryption" at every start."""

    def __init__(self, **kwargs: Any) -> None:
        self._ipc_dir = tempfile.mkdtemp(prefix="addm-kernel-")
        kwargs.setdefault("transport", "ipc")
        kwargs.setdefault("ip", os.path.join(self._ipc_dir, "kernel"))
        super().__init__(**kwargs)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources


def execute_notebook(notebook: Path, out: Path, params: Mapping[str, Any], cell_timeout: int) -> None:
    """Execute ``notebook`` with ``params`` into ``out`` through papermill, in the notebook's folder, on an IPC kernel
    (``IPCKernelManager``); raises papermill's error when a cell fails."""
    import papermill

    papermill.execute_notebook(str(notebook), str(out), parameters=dict(params), kernel_name="python3",
                               cwd=str(notebook.parent), execution_timeout=cell_timeout, progress_bar=False,
                               log_output=False, kernel_manager_class=IPCKernelManager)


def run_params(params: Mapping[str, Any], run_dir: str | Path, notebooks: Sequence[str] | None = None,
               cell_timeout: int = 3600, source: str = "parameters") -> Path:
    """Execute ``notebooks`` (default: the whole pipeline) with ``params`` into ``run_dir``; returns the folder.

    ``source`` names where the parameters came from in error messages and in the run records.
    """
    names = list(notebooks) if notebooks else list(PIPELINE_NOTEBOOKS)
    folder = Path(run_dir).resolve()
    steps = plan(params, names, folder, source)
    folder.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    write_run_record(folder / "run.json", {"params_file": source, **params}, params.get("seed"), started)
    # pipeline.json keeps every invocation on this folder (e.g. the ADDM and the DDPM training runs of the demo).
    log_path = folder / "pipeline.json"
    history = json.loads(log_path.read_text()).get("invocations", []) if log_path.is_file() else []
    status: dict[str, Any] = {"params_file": source, "cell_timeout_s": cell_timeout,
                              "started_at": started.isoformat(), "notebooks": []}
    history.append(status)
    for step in steps:
        out = folder / "notebooks" / f"{_output_name(step)}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"notebook": step.name, "output": str(out), "params": step.params}
        status["notebooks"].append(entry)
        print(f"[pipeline] {step.name} -> {out}", flush=True)
        t0 = time.perf_counter()
        try:
            with kernel_env(step.name):
                execute_notebook(step.path, out, step.params, cell_timeout)
        except Exception as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         wall_time_s=round(time.perf_counter() - t0, 2))
            write_json_atomic(log_path, {"invocations": history})
            raise NotebookFailed(step.name, out) from exc
        entry.update(status="ok", wall_time_s=round(time.perf_counter() - t0, 2))
        write_json_atomic(log_path, {"invocations": history})
    write_run_record(folder / "run.json", {"params_file": source, **params}, params.get("seed"), started)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m addmlib.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="+", help="flat YAML parameter file(s), e.g. params/demo.yaml; later files "
                        "override earlier ones (params/demo.yaml params/ddpm.yaml trains the DDPM baseline)")
    parser.add_argument("--run-dir", help="run folder (default: outputs/<first params file stem>)")
    parser.add_argument("--notebooks", help="comma-separated notebook names to run (default: the whole pipeline: "
                        + ", ".join(PIPELINE_NOTEBOOKS) + ")")
    parser.add_argument("--cell-timeout", type=int, default=3600, help="seconds one cell may run (default 3600)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.notebooks.split(",")] if args.notebooks else None

    def body() -> int:
        print(f"[pipeline] done: {run(args.params, args.run_dir, names, args.cell_timeout)}")
        return 0
    return run_main(body, failures=(RuntimeError,))


if __name__ == "__main__":
    sys.exit(main())

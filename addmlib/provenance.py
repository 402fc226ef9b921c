"""What every run records next to its outputs: parameters, seed, package versions, git commit, timing."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from .fileio import write_json_atomic
from .runtime import describe_cpu

PACKAGES = ("addm-workbench", "torch", "numpy", "scipy", "nibabel", "scikit-image", "scikit-learn", "papermill",
            "matplotlib", "pyyaml")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """The commit of the repository holding this package and whether the work tree had uncommitted changes."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def run_record(params: Mapping[str, Any], seed: int | None, started: dt.datetime | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready description of a run; ``extra`` adds what the run resolved itself (e.g. the amp it chose)."""
    now = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {
        "params": dict(params),
        "seed": seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": describe_cpu(),
        "packages": package_versions(),
        "git": git_state(),
        "written_at": now.isoformat(),
    }
    if started is not None:
        record["started_at"] = started.isoformat()
        record["wall_time_s"] = round((now - started).total_seconds(), 3)
    record.update(extra or {})
    return record


def write_run_record(path: str | Path, params: Mapping[str, Any], seed: int | None,
                     started: dt.datetime | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``run_record`` to ``path`` (atomically) and return the path."""
    path = Path(path)
    write_json_atomic(path, run_record(params, seed, started, extra))
    return path

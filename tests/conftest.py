"""Shared fixtures: one run of the whole pipeline at ci size, reused by the tests that read its outputs."""

from pathlib import Path

import pytest

from addmlib import pipeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> Path:
    """A run folder after ``python -m addmlib.pipeline params/ci/ci.yaml`` (every pipeline notebook, executed)."""
    return pipeline.run(ROOT / "params" / "ci" / "ci.yaml", tmp_path_factory.mktemp("ci") / "run", cell_timeout=600)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (screenshots): outputs/test-artifacts/ (git-ignored)."""
    path = ROOT / "outputs" / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path

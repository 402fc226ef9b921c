"""Install files agree with each other; atomic writes; provenance records."""

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from addmlib.fileio import write_json_atomic, write_text_atomic
from addmlib.provenance import run_record

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip_section if not p.startswith("-e")}
    assert listed == wanted
    assert "torch==2.13.0" in wanted, "torch must stay pinned to the CPU wheel on disk"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert ci.strip().splitlines()[-1] == "make test"


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"v": Unserialisable()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"], "no temporary file left behind"
    write_text_atomic(target, "x")
    assert target.read_text() == "x"


def test_run_record_has_what_a_reader_needs():
    rec = run_record({"seed": 1, "image_size": 32}, 1)
    assert rec["params"]["image_size"] == 32 and rec["seed"] == 1
    assert rec["packages"]["torch"].startswith("2.13.0")
    assert set(rec["git"]) == {"commit", "dirty"}

"""Install files agree with each other and with what the code imports; atomic writes; provenance records."""

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from addmlib.fileio import write_json_atomic, write_text_atomic
from addmlib.provenance import run_record

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
DEMO_NOTEBOOKS = ["00_method", "01_prepare_data", "02_train", "03_evaluate", "05_browse"]
SELF = re.compile(r"addm-workbench\[(.+)\]")


def expanded(requirements: list[str]) -> set[str]:
    """The requirements with each ``addm-workbench[x,y]`` replaced by the extras it names (recursively)."""
    out: set[str] = set()
    for req in requirements:
        m = SELF.fullmatch(req)
        out |= expanded([r for x in m.group(1).split(",") for r in EXTRAS[x]]) if m else {req}
    return out


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def extra_import_names() -> set[str]:
    """Top-level modules installed by the extras' own packages (not the core's)."""
    core = {dist_name(r).lower() for r in PROJECT["dependencies"]}
    extra = {dist_name(r).lower() for r in expanded(EXTRAS["dev"])} - core
    return {mod for mod, dists in importlib.metadata.packages_distributions().items()
            if any(d.lower().replace("_", "-") in extra for d in dists) and not mod.startswith("_")}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    wanted = set(PROJECT["dependencies"]) | expanded(EXTRAS["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = [p for p in pip_section if not p.startswith("-e")]
    assert len(listed) == len(set(listed)) and set(listed) == wanted
    assert "torch==2.13.0" in PROJECT["dependencies"], "torch must stay pinned to the CPU wheel on disk"


def test_make_test_installs_every_extra_and_make_demo_none():
    assert set(EXTRAS) == {"site", "bench", "sweep", "dev"}
    assert expanded(EXTRAS["dev"]) >= set().union(*(EXTRAS[x] for x in ("site", "bench", "sweep")))
    core = {dist_name(r) for r in PROJECT["dependencies"]}
    assert not core & {"jupyter-book", "diffusers", "distributed", "pytest", "scikit-learn", "playwright"}
    makefile = (ROOT / "Makefile").read_text()
    for target, stamp in (("demo", "$(STAMP)"), ("test", "$(VENV)/.installed-dev"),
                          ("ablation-demo", "$(VENV)/.installed-sweep"), ("bench", "$(VENV)/.installed-bench"),
                          ("site", "$(VENV)/.installed-site")):
        assert re.search(rf"^{re.escape(target)}: .*{re.escape(stamp)}", makefile, re.M), (target, stamp)
    assert "pip install -e .\n" in makefile and "pip install -e '.[$*]'" in makefile


def test_the_demo_notebooks_import_no_extra():
    extras = extra_import_names()
    assert {"diffusers", "distributed", "jupyter_book", "sklearn", "playwright"} <= extras
    for name in DEMO_NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
            {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & extras, f"{name} imports {imported & extras}, not in the core install"


def test_every_addmlib_module_imports_without_the_extras():
    """A core install has no extra: every module must import (extras only inside the functions that use them)."""
    code = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {sorted(extra_import_names())!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} belongs to an extra")
sys.meta_path.insert(0, Block())
import addmlib
for m in pkgutil.walk_packages(addmlib.__path__, "addmlib."):
    importlib.import_module(m.name)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


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

"""The ablation sweep: grid, resumability, failure isolation, Dask engine (result tables and claims: test_ablation)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from addmlib import ablation, sweep
from addmlib.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "params" / "ci" / "ablation_ci.yaml"


def write_params(path: Path, **overrides) -> Path:
    params = {**yaml.safe_load(CI.read_text()), **overrides}
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The ci data prepared once; each sweep test copies it in (the sweep then reuses it: same settings)."""
    folder = tmp_path_factory.mktemp("prepared")
    sweep.prepare_data(sweep.load_config([CI]), folder)
    return folder / "data"


def new_sweep_dir(tmp_path: Path, prepared: Path) -> Path:
    run_dir = tmp_path / "sweep"
    shutil.copytree(prepared, run_dir / "data")
    return run_dir


def test_grid_scales_t_star_and_sets_the_cell_parameters(tmp_path):
    cfg = sweep.load_config([CI])
    cells = sweep.grid(cfg, tmp_path)
    assert [c.name for c in cells] == ["lam0_T50_seed0", "lam0_T100_seed0", "lam0.05_T50_seed0", "lam0.05_T100_seed0"]
    c = cells[2]
    assert c.params["lambda_adv"] == 0.05 and c.params["num_steps"] == 50 and c.params["t_star"] == 12
    assert c.params["max_steps"] == 10 and c.params["image_size"] == 32, "base file, then cell_params"
    assert c.params["threads"] == cfg.threads_per_cell == c.threads == 1
    assert c.folder == tmp_path.resolve() / "cells" / "lam0.05_T50_seed0"


def test_the_control_lambda_gets_cells_of_its_own_after_the_grid(tmp_path):
    cfg = sweep.load_config([write_params(tmp_path / "p.yaml", control_lambda=1e-6)])
    names = [c.name for c in sweep.grid(cfg, tmp_path)]
    assert names[:4] == ["lam0_T50_seed0", "lam0_T100_seed0", "lam0.05_T50_seed0", "lam0.05_T100_seed0"]
    assert names[4:] == ["lam1e-06_T50_seed0", "lam1e-06_T100_seed0"]
    for bad in (0.05, -1.0):
        with pytest.raises(ConfigError, match=f"control_lambda must be >= 0 and not in lambda_grid, got {bad}"):
            sweep.load_config([write_params(tmp_path / "b.yaml", control_lambda=bad)])


def test_sweep_config_errors_name_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match="cell_params may not set \\['lambda_adv'\\]"):
        sweep.load_config([write_params(tmp_path / "a.yaml", cell_params={"lambda_adv": 0.1})])
    with pytest.raises(ConfigError, match="cell_params may not set \\['sample_steps'\\]"):
        sweep.load_config([write_params(tmp_path / "e.yaml", cell_params={"sample_steps": 50})])
    with pytest.raises(ConfigError, match="lambda_grid has repeated values"):
        sweep.load_config([write_params(tmp_path / "b.yaml", lambda_grid=[0.0, 0.0])])
    with pytest.raises(ConfigError, match="'lambda_gird'"):
        sweep.load_config([write_params(tmp_path / "c.yaml", lambda_gird=[0.0])])
    assert sweep.main([str(write_params(tmp_path / "d.yaml", base_params=["params/nope.yaml"])),
                       "--run-dir", str(tmp_path / "s")]) == 2


@pytest.mark.slow
def test_2x2_sweep_on_a_dask_local_cluster_then_the_notebook(tmp_path, prepared):
    cfg = sweep.load_config([write_params(tmp_path / "p.yaml", engine="dask")])
    records = sweep.run_sweep(cfg, new_sweep_dir(tmp_path, prepared))
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("error") for r in records]
    for r in records:
        cell = tmp_path / "sweep" / "cells" / r["cell"]
        assert (cell / "notebooks" / "02_train-model.ipynb").is_file()
        assert (cell / "notebooks" / "03_evaluate-steps5.ipynb").is_file()
        assert json.loads((cell / "steps5" / "metrics.json").read_text())["config"]["sample_steps"] == 5
    table = ablation.summary_table(ablation.results_frame(tmp_path / "sweep"), "eval_a")
    assert len(table) == 4 and {"auprc_mean", "auprc_std", "n_seeds"} <= set(table.columns)
    assert set(zip(table["lambda_adv"], table["num_steps"])) == {(0.0, 50), (0.0, 100), (0.05, 50), (0.05, 100)}
    # the notebook on the finished sweep: every cell is skipped, tables, plots and claims are produced
    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "04_ablation.ipynb"), str(out),
                               parameters={**yaml.safe_load((tmp_path / "p.yaml").read_text()),
                                           "run_dir": str(tmp_path / "sweep")},
                               cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    assert (tmp_path / "sweep" / "figures" / "ablation_eval_a_auprc.png").is_file()
    reading = json.loads((tmp_path / "sweep" / "ablation.json").read_text())["reading"]
    assert "Claim 1" in reading and "Claim 2" in reading
    text = "".join(o.get("text", "") for c in nbformat.read(out, 4).cells if c.cell_type == "code" for o in c.outputs)
    assert "4 cells: 4 finished (skipped), 0 to run" in text


@pytest.mark.slow
def test_killed_sweep_resumes_and_skips_finished_cells(tmp_path, prepared):
    params = write_params(tmp_path / "p.yaml", lambda_grid=[0.0, 0.05], num_steps_grid=[50], workers=1)
    run_dir = new_sweep_dir(tmp_path, prepared)
    cmd = [sys.executable, "-m", "addmlib.sweep", str(params), "--run-dir", str(run_dir)]
    first = run_dir / "cells" / "lam0_T50_seed0" / "cell.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if first.is_file() and json.loads(first.read_text())["status"] == "ok":
                break
            time.sleep(0.5)
        assert json.loads(first.read_text())["status"] == "ok", "the first cell did not finish in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep: runner, worker and its kernel
        proc.wait()
    second = run_dir / "cells" / "lam0.05_T50_seed0" / "cell.json"
    assert not second.is_file() or json.loads(second.read_text())["status"] != "ok"
    finished_at = first.stat().st_mtime_ns
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "2 cells: 1 finished (skipped), 1 to run" in rerun.stdout
    assert first.stat().st_mtime_ns == finished_at, "the finished cell was not touched"
    assert json.loads(second.read_text())["status"] == "ok"


@pytest.mark.slow
def test_a_cell_with_an_invalid_parameter_fails_alone(tmp_path, prepared):
    params = write_params(tmp_path / "p.yaml", lambda_grid=[-1.0, 0.05], num_steps_grid=[50])
    run_dir = new_sweep_dir(tmp_path, prepared)
    result = subprocess.run([sys.executable, "-m", "addmlib.sweep", str(params), "--run-dir", str(run_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, "a sweep with a failed cell exits non-zero"
    assert "lam-1_T50_seed0: failed" in result.stdout and "lambda_adv must be >= 0" in result.stdout
    bad = json.loads((run_dir / "cells" / "lam-1_T50_seed0" / "cell.json").read_text())
    assert bad["status"] == "failed" and "02_train" in bad["error"] and "lambda_adv must be >= 0" in bad["error"]
    good = json.loads((run_dir / "cells" / "lam0.05_T50_seed0" / "cell.json").read_text())
    assert good["status"] == "ok"
    summary = json.loads((run_dir / "sweep.json").read_text())["cells"]
    assert summary["lam-1_T50_seed0"]["status"] == "failed" and summary["lam0.05_T50_seed0"]["status"] == "ok"

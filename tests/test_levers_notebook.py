"""The lever campaign end to end at test size: notebooks/07_levers.ipynb through the pipeline runner, then resumed."""

import json
from pathlib import Path

import pytest

from addmlib import pipeline
from addmlib.levers import main as levers_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.registry
def test_lever_campaign_runs_resumes_and_reports(tmp_path, capsys):
    run_dir = tmp_path / "levers"
    pipeline.run(ROOT / "params" / "levers_ci.yaml", run_dir, ["07_levers"], cell_timeout=1200)
    result = json.loads((run_dir / "levers" / "levers.json").read_text())
    assert result["split"] == "tune" and (run_dir / "notebooks" / "07_levers.ipynb").is_file()
    assert (run_dir / "levers" / "levers.png").is_file() and (run_dir / "levers" / "summary.csv").is_file()
    rows = result["rows"]
    assert len([r for r in rows if r["kind"] == "diffusion"]) == 4  # 2 seeds x 2 scorings
    summary = {(e["variant"], e["scoring"]): e for e in result["summary"]}
    assert summary[("coarse", "x0")]["seeds"] == 2 and summary[("intensity floor (x itself)", "-")]["seeds"] == 1
    assert all(0 <= r["auroc"] <= 1 for r in rows)
    profile = json.loads((run_dir / "levers" / "adv_profile.json").read_text())["rows"]
    assert [(r["variant"], r["t"]) for r in profile] == [("coarse", 5), ("coarse", 25), ("coarse", 90)]
    assert all(r["grad_ddpm"] > 0 and r["ratio"] >= 0 for r in profile)
    assert (run_dir / "levers" / "adv_profile.png").is_file()
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert manifest["counts"]["tune"]["volumes"] > 0 and manifest["settings"]["tune_hosts"] == ["itk_t1"]
    # the command line finds everything done: nothing is trained or scored again
    written = {p: p.stat().st_mtime_ns for p in (run_dir / "levers" / "rows").iterdir()}
    assert levers_main([str(ROOT / "params" / "levers_ci.yaml"), "--run-dir", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "levers" / "rows").iterdir()} == written
    assert "coarse" in capsys.readouterr().out

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
    pipeline.run(ROOT / "params" / "ci" / "levers_ci.yaml", run_dir, ["07_levers"], cell_timeout=1200)
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
    assert levers_main([str(ROOT / "params" / "ci" / "levers_ci.yaml"), "--run-dir", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "levers" / "rows").iterdir()} == written
    assert "coarse" in capsys.readouterr().out
    _scores_its_models_on_more_tuning_draws(run_dir, tmp_path / "second", capsys)


def _scores_its_models_on_more_tuning_draws(first: Path, second: Path, capsys) -> None:
    """``models_from`` + ``tune_draws``: the first campaign's models, untouched, scored on a tuning split with a
    second lesion draw appended; set B gets a second draw too (``eval_b_draws``); every volume of the first campaign's
    data is there, byte for byte."""
    import numpy as np
    import yaml

    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    spec = {"base_params": ["params/ci/ci.yaml"],
            "base_overrides": {"tune_draws": 2, "eval_b_draws": 2, "lesion_mix": "legacy", "lesions_per_host": 2,
                               "ixi": ""},
            "models_from": str(first), "threads": 1, "variants": {"coarse": {"noise": "coarse", "coarse_spacing": 8}},
            "scorings": {"x0": {"t_star": 25, "sample_steps": 1},
                         "x0-int2": {"t_star": 25, "sample_steps": 1, "intensity_weight": 2},
                         "x0-int2-max": {"t_star": 25, "sample_steps": 1, "intensity_weight": 2, "fusion": "max"}},
            "seeds": [0, 1], "baseline_fusions": ["sum", "max"],
            "baselines": ["floor_intensity", "dae"], "variant_seeds": {"dae": [0]}, "dae_steps": 20,
            "baseline_intensity_weights": [0, 2], "baseline_median_sizes": [1], "slice_stride": 4,
            "adv_profile_t": []}
    params = second.parent / "second.yaml"
    params.write_text(yaml.safe_dump(spec))
    assert levers_main([str(params), "--run-dir", str(second)]) == 0
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before  # nothing written there
    assert not (second / "levers" / "models").exists() and (second / "levers" / "seed0" / "models" / "dae").is_dir()
    rows = json.loads((second / "levers" / "levers.json").read_text())["rows"]
    assert sorted((r["variant"], r["seed"], r["scoring"]) for r in rows if r["kind"] == "diffusion") == [
        ("coarse", 0, "x0"), ("coarse", 0, "x0-int2"), ("coarse", 0, "x0-int2-max"),
        ("coarse", 1, "x0"), ("coarse", 1, "x0-int2"), ("coarse", 1, "x0-int2-max")]
    # the fused scoring reuses the plain one's network pass, and counts that pass as its cost
    by = {(r["variant"], r["seed"], r["scoring"]): r for r in rows}
    for seed in (0, 1):
        plain, fused, larger = (by[("coarse", seed, s)] for s in ("x0", "x0-int2", "x0-int2-max"))
        assert not plain["network_pass_reused"] and fused["network_pass_reused"] and larger["network_pass_reused"]
        assert fused["seconds"] == plain["seconds"] and fused["auprc"] != plain["auprc"] != larger["auprc"]
    # the max fusion needs a weight: the DAE's residual alone gets no max row; each map also unfiltered
    # (baseline_median_sizes), from the same pass
    assert sorted(r["scoring"] for r in rows if r["variant"].startswith("DAE")) == [
        "+ intensity w=2", "+ intensity w=2, max", "+ intensity w=2, max, median 1x1", "+ intensity w=2, median 1x1",
        "-", "median 1x1"]
    floor = {r["scoring"]: r for r in rows if r["variant"] == "intensity floor (x itself)"}
    assert set(floor) == {"-", "median 1x1"} and floor["median 1x1"]["network_pass_reused"]
    assert floor["median 1x1"]["auprc"] != floor["-"]["auprc"]

    m1, m2 = (json.loads((d / "data" / "manifest.json").read_text()) for d in (first, second))
    assert m1["fingerprint"] != m2["fingerprint"] and m1["training_fingerprint"] == m2["training_fingerprint"]
    assert m2["counts"]["tune"]["volumes"] == 2 * m1["counts"]["tune"]["volumes"]
    assert m2["split"]["tune"][:len(m1["split"]["tune"])] == m1["split"]["tune"]
    assert any(v.endswith("-draw1") for v in m2["split"]["tune"])
    assert m2["counts"]["eval_b"]["volumes"] == 2 * m1["counts"]["eval_b"]["volumes"]
    assert m2["split"]["eval_b"][:len(m1["split"]["eval_b"])] == m1["split"]["eval_b"]
    assert {v["draw"] for v in m2["volumes"]["eval_b"]} == {0, 1}
    synthetic = [v for v in m2["volumes"]["tune"] if "+synthetic" in v["id"]]
    assert [(v["id"].split("+")[1], v["draw"]) for v in synthetic] == [
        ("synthetic00-hyper", 0), ("synthetic01-hypo", 0),
        ("synthetic00-hyper-draw1", 1), ("synthetic01-hypo-draw1", 1)]
    assert [v["lesion"]["detail"]["radii_mm"] != w["lesion"]["detail"]["radii_mm"]  # new lesions, not copies
            for v, w in zip(synthetic[:2], synthetic[2:])] == [True, True]
    with np.load(first / "data" / "dataset.npz") as a, np.load(second / "data" / "dataset.npz") as b:
        shared = [k for k in a.files if k != "__fingerprint__"]
        assert set(shared) < set(b.files) and all(np.array_equal(a[k], b[k]) for k in shared)

    # a model trained with other settings than the variant asks for is refused, naming the setting
    spec["variants"] = {"coarse": {"noise": "coarse", "coarse_spacing": 4}}
    params.write_text(yaml.safe_dump(spec))
    assert levers_main([str(params), "--run-dir", str(second)]) == 2
    assert "models_from" in (err := capsys.readouterr().err) and "coarse_spacing: 8 -> 4" in err
    # a model the other campaign never trained is named as such
    spec["variants"] = {"gauss": {"noise": "gaussian"}}
    params.write_text(yaml.safe_dump(spec))
    assert levers_main([str(params), "--run-dir", str(second)]) == 2
    err = capsys.readouterr().err
    assert "variant 'gauss'" in err and "the model 'gauss-s0' has not been trained there" in err

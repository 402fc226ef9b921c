"""Reading a sweep: the result table from cell records, mean +- std over seeds, the two claims and their reading."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from addmlib import ablation, sweep

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "params" / "ci" / "ablation_ci.yaml"


def write_params(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump({**yaml.safe_load(CI.read_text()), **overrides}))
    return path


def finished_cell(cell: sweep.Cell, value: float, steps: int = 5, with_metrics: bool = True) -> None:
    """A cell folder as ``sweep.run_cell`` leaves it: ``cell.json`` ("ok") and one ``metrics.json`` per evaluation."""
    (cell.folder / f"steps{steps}").mkdir(parents=True)
    metrics = {"results": {"m": {"threshold": 0.1,
                                 "eval_a": {"pooled": {m: value for m in ablation.METRICS},
                                            "per_volume_summary": {"auprc": [value, 0.0]}}}},
               "models": {"m": {"wall_time_s": 1.0, "slices_scored": 3}}}
    if with_metrics:
        (cell.folder / f"steps{steps}" / "metrics.json").write_text(json.dumps(metrics))
    record = {"cell": cell.name, "status": "ok", "lambda_adv": cell.lambda_adv, "num_steps": cell.num_steps,
              "seed": cell.seed, "t_star": cell.params["t_star"], "fingerprint": cell.fingerprint,
              "notebook_wall_time_s": {"02_train-model": 7.0, "03_evaluate-steps5": 2.0},
              "evaluations": [{"steps": steps, "metrics": f"steps{steps}/metrics.json"}]}
    (cell.folder / "cell.json").write_text(json.dumps(record))


def test_a_cell_finished_with_other_settings_is_stale_and_left_out_of_the_results(tmp_path):
    cfg = sweep.load_config([CI])
    cell = sweep.grid(cfg, tmp_path)[0]
    finished_cell(cell, 0.5)
    assert sweep.cell_status(cell) == "ok" and len(ablation.results_frame(tmp_path, cfg)) == 1
    changed = sweep.load_config([write_params(tmp_path / "p.yaml", cell_params={"max_steps": 20})])
    assert sweep.cell_status(sweep.grid(changed, tmp_path)[0]) == "stale"
    assert ablation.results_frame(tmp_path, changed).empty, "numbers of other settings are not reported"


def test_results_frame_reads_each_evaluation_and_skips_unreadable_metrics(tmp_path):
    cfg = sweep.load_config([CI])
    cells = sweep.grid(cfg, tmp_path)
    finished_cell(cells[0], 0.25)
    finished_cell(cells[1], 0.5, with_metrics=False)
    with pytest.warns(UserWarning, match="missing or unreadable"):
        df = ablation.results_frame(tmp_path, cfg)
    assert list(df["cell"]) == [cells[0].name] and list(df["split"]) == ["eval_a"], "only eval_* sets, one row"
    row = df.iloc[0]
    assert row["auprc"] == 0.25 and row["steps"] == 5 and row["train_wall_s"] == 7.0 and row["eval_wall_s"] == 1.0
    assert row["t_star"] == cells[0].params["t_star"] and row["slices"] == 3


def _frame(values: dict[tuple[float, int, int], list[float]]) -> pd.DataFrame:
    rows = []
    for (lam, T, steps), vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"cell": f"lam{lam:g}_T{T}_seed{seed}", "lambda_adv": lam, "num_steps": T, "seed": seed,
                         "t_star": T // 4, "steps": steps, "split": "eval_a", "auprc": v, "auroc": v, "dice": v,
                         "best_dice": v, "auprc_per_volume_mean": v, "train_wall_s": 10.0, "eval_wall_s": 5.0,
                         "slices": 10})
    return pd.DataFrame(rows)


def test_summary_is_mean_and_std_over_seeds_one_row_per_lambda_and_T():
    df = _frame({(0.0, 1000, 20): [0.10, 0.20], (0.05, 1000, 20): [0.30, 0.50], (0.05, 500, 10): [0.1, 0.1]})
    t = ablation.summary_table(df, "eval_a").set_index(["lambda_adv", "num_steps"])
    assert len(t) == 3 and set(t["n_seeds"]) == {2}
    assert t.loc[(0.05, 1000), "auprc_mean"] == pytest.approx(0.4)
    assert t.loc[(0.05, 1000), "auprc_std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))


def test_summary_tables_hold_every_metric_per_set_at_the_largest_evaluation():
    df = pd.concat([_frame({(0.0, 100, 10): [0.1, 0.3], (0.0, 100, 5): [0.9, 0.9]}),
                    _frame({(0.0, 100, 10): [0.5, 0.5]}).assign(split="eval_b")])
    tables = ablation.summary_tables(df)
    assert sorted(tables) == ["eval_a", "eval_b"]
    a = tables["eval_a"]
    assert list(a.index) == [(0.0, 100, 10)], "each cell's largest evaluation (10 steps), not the 5-step one"
    assert list(a.columns) == ["n_seeds"] + [f"{m}_{s}" for m in ablation.METRICS for s in ("mean", "std")] + \
        ["train_wall_s", "eval_wall_s"]
    assert a.iloc[0]["dice_mean"] == pytest.approx(0.2) and tables["eval_b"].iloc[0]["auprc_mean"] == 0.5
    assert ablation.summary_tables(df.iloc[0:0]) == {}


def test_claims_compare_against_the_seed_spread():
    df = _frame({(0.0, 1000, 20): [0.10, 0.12], (0.5, 1000, 20): [0.30, 0.32], (0.5, 500, 10): [0.05, 0.2],
                 (0.0, 500, 10): [0.11, 0.09]})
    rows = ablation.claims(df, "eval_a")
    one = {r["addm"]: r for r in rows if r["claim"] == 1}
    assert one["λ=0.5, T=1000, 20 steps"]["verdict"] == "better"
    assert one["λ=0.5, T=500, 10 steps"]["verdict"] == "within the seed spread"
    two = [r for r in rows if r["claim"] == 2]
    assert len(two) == 1 and two[0]["ddpm"] == "λ=0, T=1000, 20 steps" and two[0]["note"] == "steps in ratio 1:2"
    assert two[0]["verdict"] == "within the seed spread"
    assert two[0]["control_ddpm_same_T_and_steps_mean"] == pytest.approx(0.10), "DDPM at T=500, 10 steps"
    assert two[0]["control_verdict"] == "within the seed spread"


def test_claims_with_one_seed_are_undecided_and_claim_2_falls_back_to_the_largest_evaluations():
    rows = ablation.claims(_frame({(0.0, 1000, 30): [0.1], (0.5, 1000, 30): [0.9], (0.5, 500, 10): [0.2]}), "eval_a")
    assert [r["verdict"] for r in rows if r["claim"] == 1] == ["undecided (no seed spread to compare with)"]
    two = [r for r in rows if r["claim"] == 2]
    assert len(two) == 1 and two[0]["note"] == "largest evaluation of each (not 1:2)"
    assert two[0]["control_verdict"] == "no control in the grid"
    assert math.isnan(two[0]["control_ddpm_same_T_and_steps_mean"])


def test_reading_counts_verdicts_names_the_largest_difference_and_the_control():
    df = _frame({(0.0, 1000, 20): [0.10, 0.12], (0.5, 1000, 20): [0.30, 0.32], (0.5, 500, 10): [0.05, 0.2],
                 (0.0, 500, 10): [0.11, 0.09]})
    text = ablation.reading(ablation.claims(df, "eval_a"), "eval_a", "auprc", seeds=2)
    lines = text.splitlines()
    assert lines[0].startswith("- **Claim 1** (λ > 0 beats λ = 0 at equal T and steps), eval_a auprc: "
                               "2 comparison(s)")
    assert "better: 1" in lines[0] and "within the seed spread: 1" in lines[0]
    assert "Largest difference: λ=0.5, T=1000, 20 steps vs λ=0, T=1000, 20 steps" in lines[0]
    assert lines[1].startswith("- **Claim 2** (ADDM with T/2 matches DDPM with T)")
    assert lines[2] == ("  - control for λ=0.5, T=500, 10 steps: DDPM with the same T and steps scores 0.1000 "
                        "(ADDM 0.1250; within the seed spread): λ adds nothing beyond the fewer steps")
    assert lines[-1].startswith("- 2 seed(s) per cell")
    assert "Claim 2** (ADDM with T/2 matches DDPM with T): not testable" in ablation.reading([], "eval_a", "auprc", 1)


def test_the_control_lambda_tells_the_terms_gain_from_the_random_streams():
    """lambda 0.5 beats lambda 0 beyond the spread, but so does the control 1e-6 (same stream, no pull): the reading
    says the gain is the stream's; the control is in no comparison of its own."""
    df = _frame({(0.0, 1000, 20): [0.10, 0.11], (0.5, 1000, 20): [0.20, 0.21], (1e-6, 1000, 20): [0.20, 0.215],
                 (0.5, 500, 10): [0.2, 0.21], (1e-6, 500, 10): [0.1, 0.1]})
    rows = ablation.claims(df, "eval_a", control_lambda=1e-6)
    assert [r["addm"] for r in rows if r["claim"] == 1] == ["λ=0.5, T=1000, 20 steps"]
    (one,) = [r for r in rows if r["claim"] == 1]
    assert one["verdict"] == "better" and one["control_lambda_verdict"] == "within the seed spread"
    assert one["control_lambda_mean"] == pytest.approx(0.2075)
    (two,) = [r for r in rows if r["claim"] == 2]
    assert two["addm"] == "λ=0.5, T=500, 10 steps" and two["control_lambda_mean"] == pytest.approx(0.1)
    assert two["control_lambda_verdict"] == "better"
    text = ablation.reading(rows, "eval_a", "auprc", seeds=2).splitlines()
    assert text[1] == ("  - against the control λ=1e-06 (the same discriminator and random stream, no pull): within "
                       "the seed spread: 1; at λ=0.5, T=1000, 20 steps the control scores 0.2075. Where ADDM wins, "
                       "the control does as well: the gain is the random stream's, not the term's.")
    assert text[3] == ("  - against the control λ=1e-06 (the same discriminator and random stream, no pull): better: 1; "
                       "at λ=0.5, T=500, 10 steps the control scores 0.1000.")
    # without the control's cells, or without a control, the rows carry nothing of it
    no_cells = df[df["lambda_adv"] != 1e-6]
    assert all("control_lambda_verdict" not in r for r in ablation.claims(no_cells, "eval_a", control_lambda=1e-6))
    assert all("control_lambda_verdict" not in r for r in ablation.claims(df, "eval_a"))
    assert not any("against the control" in line
                   for line in ablation.reading(ablation.claims(df, "eval_a"), "eval_a", "auprc", 2).splitlines())


def test_status_table_shows_the_last_line_of_each_error():
    t = ablation.status_table([{"cell": "a", "status": "ok", "wall_time_s": 3.0, "skipped": True},
                               {"cell": "b", "status": "failed", "error": "Traceback\nValueError: bad",
                                "notebook": "x"}])
    assert list(t["error"]) == ["", "ValueError: bad"] and list(t["skipped (finished before)"]) == [True, False]


"""Reading an ablation sweep (``addmlib.sweep`` runs it): result tables, mean +- std over seeds, the paper's two claims.

One row per (cell, evaluation steps, evaluation set) from each finished cell's ``metrics.json``; then mean and std
over seeds per (lambda, T, steps); then the claims, each comparison read against the seed spread with
``addmlib.verdict.verdict``. pandas is imported where a table is built, so ``addmlib.sweep`` and this module import
without it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .config import AblationConfig
from .sweep import grid, read_json
from .verdict import verdict

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("auprc", "auroc", "dice", "best_dice")
"""Pooled metrics of each evaluation that the tables carry."""

CLAIMS = {1: "λ > 0 beats λ = 0 at equal T and steps", 2: "ADDM with T/2 matches DDPM with T"}
"""The paper's two claims, as this module tests them."""


def status_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per cell record of ``sweep.run_sweep``: status, skipped, wall time, last line of the error, notebook."""
    import pandas as pd

    return pd.DataFrame([{"cell": r["cell"], "status": r["status"],
                          "skipped (finished before)": r.get("skipped", False), "wall s": r.get("wall_time_s"),
                          "error": ((r.get("error") or "").splitlines() or [""])[-1], "notebook": r.get("notebook")}
                         for r in records])


def results_frame(sweep_dir: str | Path, cfg: AblationConfig | None = None) -> pd.DataFrame:
    """A pandas DataFrame with one row per finished cell x evaluation (steps) x evaluation set.

    With ``cfg``, only the cells of its grid that finished with its settings count (a folder may hold cells of an
    earlier grid); without, every finished cell of the folder.
    """
    import pandas as pd

    if cfg is not None:
        wanted = {c.name: c.fingerprint for c in grid(cfg, sweep_dir)}
        paths = [Path(sweep_dir) / "cells" / n / "cell.json" for n in sorted(wanted)]
    else:
        wanted, paths = {}, sorted((Path(sweep_dir) / "cells").glob("*/cell.json"))
    rows = []
    for path in paths:
        rec = read_json(path)
        if not rec or rec.get("status") != "ok":
            continue
        if wanted and rec.get("fingerprint") != wanted[rec["cell"]]:
            continue
        train_s = sum(v for k, v in rec.get("notebook_wall_time_s", {}).items() if k.startswith("02_train"))
        for ev in rec.get("evaluations", []):
            metrics = read_json(path.parent / ev["metrics"])
            if metrics is None:
                warnings.warn(f"{path.parent / ev['metrics']} is missing or unreadable: cell {rec['cell']} at "
                              f"{ev['steps']} steps left out")
                continue
            # the cell's own scoring: with intensity fusion the evaluation also holds the residual alone (weight 0)
            weight = metrics.get("config", {}).get("intensity_weight", 0.0)
            label = next(lab for lab, inf in metrics["models"].items() if inf.get("intensity_weight", 0.0) == weight)
            res, info = metrics["results"][label], metrics["models"][label]
            for split, values in res.items():
                if not split.startswith("eval_"):
                    continue
                pooled, per_vol = values["pooled"], values["per_volume_summary"]
                rows.append({"cell": rec["cell"], "lambda_adv": rec["lambda_adv"], "num_steps": rec["num_steps"],
                             "seed": rec["seed"], "t_star": rec["t_star"], "steps": ev["steps"], "split": split,
                             **{m: pooled[m] for m in METRICS},
                             "auprc_per_volume_mean": per_vol["auprc"][0],
                             "train_wall_s": train_s, "eval_wall_s": info.get("wall_time_s", math.nan),
                             "slices": info.get("slices_scored")})
    return pd.DataFrame(rows)


def summary_table(df: pd.DataFrame, split: str, metric: str = "auprc", steps: int | None = None) -> pd.DataFrame:
    """Mean and std over seeds per (lambda, T) for one set; ``steps=None`` takes each cell's largest evaluation.

    Columns: lambda_adv, num_steps, steps, n_seeds, <metric>_mean, <metric>_std (NaN with one seed), wall times.
    """
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=["lambda_adv", "num_steps", "steps", "n_seeds", f"{metric}_mean",
                                     f"{metric}_std"])
    d = df[df["split"] == split]
    if steps is None:
        d = d[d["steps"] == d.groupby("cell")["steps"].transform("max")]
    else:
        d = d[d["steps"] == steps]
    g = d.groupby(["lambda_adv", "num_steps", "steps"])
    out = g.agg(n_seeds=("seed", "nunique"), mean=(metric, "mean"), std=(metric, "std"),
                train_wall_s=("train_wall_s", "mean"), eval_wall_s=("eval_wall_s", "mean")).reset_index()
    return out.rename(columns={"mean": f"{metric}_mean", "std": f"{metric}_std"})


def summary_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per evaluation set: one row per (lambda, T, steps) at each cell's largest evaluation, with n_seeds, mean and
    std of every metric of ``METRICS`` and the mean wall times (what ``summary_<set>.csv`` holds)."""
    tables = {}
    for split in sorted(df["split"].unique()) if len(df) else []:
        parts = [summary_table(df, split, m).set_index(["lambda_adv", "num_steps", "steps"]) for m in METRICS]
        t = parts[0][["n_seeds"]].join([p[[f"{m}_mean", f"{m}_std"]] for p, m in zip(parts, METRICS)])
        tables[split] = t.join(parts[0][["train_wall_s", "eval_wall_s"]])
    return tables


def claims(df: pd.DataFrame, split: str, metric: str = "auprc", control_lambda: float = 0.0) -> list[dict[str, Any]]:
    """The paper's two claims on this sweep, each comparison with its difference and the seed spread.

    Claim 1: at equal T and equal sampling steps, lambda > 0 beats lambda = 0. With ``control_lambda`` (a lambda too
    small to pull, ``AblationConfig``), each claim-1 row also carries the control cell at the same T and steps: the
    same random stream as lambda, without the term; a lambda that does no better than it owes its gain over lambda = 0
    to the stream. Claim 2: ADDM with T/2 (so half the steps from the same relative depth t*/T) matches DDPM with T:
    compared at steps in the same 1:2 ratio when the sweep evaluated such a pair, else at each cell's largest
    evaluation (said so in the row). Each claim-2 row also carries the control DDPM with T/2 and the same steps as
    ADDM: if it does as well, the gain is not lambda's; and, with ``control_lambda``, that control's cell at T/2 and the
    same steps. The control lambda is in no comparison of its own.
    """
    out: list[dict[str, Any]] = []
    if df.empty:
        return out
    d = df[df["split"] == split]
    stats = d.groupby(["lambda_adv", "num_steps", "steps"])[metric].agg(["mean", "std", "count"])
    for (lam, T, steps), row in stats.iterrows():
        if lam == 0 or lam == control_lambda or (0.0, T, steps) not in stats.index:
            continue
        base = stats.loc[(0.0, T, steps)]
        diff, spread = row["mean"] - base["mean"], max(row["std"], base["std"])
        entry = {"claim": 1, "addm": f"λ={lam:g}, T={T}, {steps} steps", "ddpm": f"λ=0, T={T}, {steps} steps",
                 "addm_mean": row["mean"], "ddpm_mean": base["mean"], "diff": diff, "seed_spread": spread,
                 "verdict": verdict(diff, spread, int(min(row["count"], base["count"])))}
        entry.update(_against_control(stats, row, control_lambda, T, steps))
        out.append(entry)
    Ts = sorted(d["num_steps"].unique())
    for T_full in Ts:
        T_half = T_full // 2
        if T_half not in Ts or T_full % 2:
            continue
        ddpm_steps = sorted(stats.loc[(0.0, T_full)].index) if (0.0, T_full) in stats.index.droplevel(2) else []
        for lam in sorted(d["lambda_adv"].unique()):
            if lam == 0 or lam == control_lambda or (lam, T_half) not in stats.index.droplevel(2):
                continue
            addm_steps = sorted(stats.loc[(lam, T_half)].index)
            pairs = [(s, 2 * s) for s in addm_steps if 2 * s in ddpm_steps]
            note = "steps in ratio 1:2"
            if not pairs and addm_steps and ddpm_steps:
                pairs, note = [(addm_steps[-1], ddpm_steps[-1])], "largest evaluation of each (not 1:2)"
            for sa, sd in pairs:
                a, b = stats.loc[(lam, T_half, sa)], stats.loc[(0.0, T_full, sd)]
                diff, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
                # control: DDPM with the same T/2 and steps; tells a gain of lambda from a gain of fewer steps
                row = {"claim": 2, "addm": f"λ={lam:g}, T={T_half}, {sa} steps",
                       "ddpm": f"λ=0, T={T_full}, {sd} steps", "addm_mean": a["mean"], "ddpm_mean": b["mean"],
                       "diff": diff, "seed_spread": spread, "note": note,
                       "verdict": verdict(diff, spread, int(min(a["count"], b["count"]))),
                       "control_ddpm_same_T_and_steps_mean": math.nan, "control_verdict": "no control in the grid"}
                if (0.0, T_half, sa) in stats.index:
                    c = stats.loc[(0.0, T_half, sa)]
                    row["control_ddpm_same_T_and_steps_mean"] = c["mean"]
                    row["control_verdict"] = verdict(a["mean"] - c["mean"], max(a["std"], c["std"]),
                                                     int(min(a["count"], c["count"])))
                row.update(_against_control(stats, a, control_lambda, T_half, sa))
                out.append(row)
    return out


def _against_control(stats: pd.DataFrame, cell: pd.Series, control_lambda: float, T: int,
                     steps: int) -> dict[str, Any]:
    """``cell``'s mean over seeds against the control lambda's at the same T and steps (``claims``); empty without
    a control or its cells."""
    if not control_lambda or (control_lambda, T, steps) not in stats.index:
        return {}
    c = stats.loc[(control_lambda, T, steps)]
    return {"control_lambda": control_lambda, "control_lambda_mean": c["mean"],
            "control_lambda_verdict": verdict(cell["mean"] - c["mean"], max(cell["std"], c["std"]),
                                              int(min(cell["count"], c["count"])))}


def _tally(verdicts: Iterable[str]) -> str:
    """"better: 5, within the seed spread: 3": how often each verdict occurs, the most frequent first."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def reading(rows: Sequence[Mapping[str, Any]], split: str, metric: str, seeds: int) -> str:
    """The claims of ``claims(...)`` in words (Markdown): per claim, how many comparisons fell on each verdict and the
    largest difference; for claim 1, what the control lambda says; per claim-2 row with a control, what the control
    says; the seed count."""
    lines = []
    for claim, what in CLAIMS.items():
        sub = [r for r in rows if r["claim"] == claim]
        if not sub:
            lines.append(f"- **Claim {claim}** ({what}): not testable with this grid.")
            continue
        biggest = max(sub, key=lambda r: abs(r["diff"]))
        lines.append(f"- **Claim {claim}** ({what}), {split} {metric}: {len(sub)} comparison(s): "
                     + _tally(r["verdict"] for r in sub) + f". Largest difference: {biggest['addm']} vs "
                     f"{biggest['ddpm']}: {biggest['addm_mean']:.4f} vs {biggest['ddpm_mean']:.4f} "
                     f"(Δ = {biggest['diff']:+.4f}, seed spread {biggest['seed_spread']:.4f}).")
        controlled = [r for r in sub if "control_lambda_verdict" in r]
        if controlled:
            text = (f"  - against the control λ={controlled[0]['control_lambda']:g} (the same discriminator and "
                    f"random stream, no pull): " + _tally(r["control_lambda_verdict"] for r in controlled))
            if "control_lambda_mean" in biggest:
                text += f"; at {biggest['addm']} the control scores {biggest['control_lambda_mean']:.4f}"
            wins = [r for r in controlled if r["verdict"] == "better"]
            if wins and all(r["control_lambda_verdict"] != "better" for r in wins):
                text += (". Where ADDM wins, the control does as well: the gain is the random stream's, not "
                         "the term's")
            lines.append(text + ".")
    for r in rows:
        if r["claim"] == 2 and not math.isnan(r["control_ddpm_same_T_and_steps_mean"]):
            c, cv = r["control_ddpm_same_T_and_steps_mean"], r["control_verdict"]
            meaning = ("λ adds nothing beyond the fewer steps" if cv.startswith("within") else
                       f"ADDM is {cv} than the control" if cv in ("better", "worse") else "")
            lines.append(f"  - control for {r['addm']}: DDPM with the same T and steps scores {c:.4f} "
                         f"(ADDM {r['addm_mean']:.4f}; {cv})" + (f": {meaning}" if meaning else ""))
    lines.append(f"- {seeds} seed(s) per cell; with fewer than 3 seeds the spread itself is a rough estimate.")
    return "\n".join(lines)

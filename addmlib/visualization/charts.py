"""Line charts of results for the notebooks: training losses (02), the ablation's metric against lambda, steps and
cost (04), and the benchmark's quality against sampling steps and scoring time (06). Each returns its figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def moving_average(values: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Means of every ``k`` consecutive values (``len - k + 1`` of them; ``k = 1`` returns the values)."""
    if k < 1:
        raise ValueError(f"the window must be >= 1, got {k}")
    v = np.asarray(values, dtype=float)
    return np.convolve(v, np.ones(k) / k, mode="valid")


def loss_figure(log: Sequence[Mapping[str, Any]], lr0: float) -> plt.Figure:
    """One panel per loss the training log holds (L_DDPM on a log scale, L_Adv, D's loss; raw and smoothed over about
    a 50th of the log), and a last panel with D's accuracy on real and fake samples and the lr relative to ``lr0``."""
    steps = np.array([r["step"] for r in log])
    keys = [k for k in ("l_ddpm", "l_adv", "d_loss") if log and k in log[0]]
    k = max(1, len(log) // 50)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        v = np.array([r[key] for r in log])
        ax.plot(steps, v, alpha=0.3)
        ax.plot(steps[len(steps) - len(moving_average(v, k)):], moving_average(v, k))
        ax.set(title=key, xlabel="step", yscale="log" if key == "l_ddpm" else "linear")
    ax = axes[0, -1]
    if log and "d_acc_real" in log[0]:
        ax.plot(steps, [r["d_acc_real"] for r in log], alpha=0.5, label="D acc real")
        ax.plot(steps, [r["d_acc_fake"] for r in log], alpha=0.5, label="D acc fake")
    ax.plot(steps, np.array([r["lr"] for r in log]) / lr0, label="lr / lr0")
    ax.legend(fontsize=7)
    ax.set(title="D accuracy, lr", xlabel="step")
    fig.tight_layout()
    return fig


def ablation_figure(df: pd.DataFrame, split: str, metric: str, control_lambda: float = 0.0) -> plt.Figure:
    """Three panels of ``ablation.results_frame``'s rows of one set: the metric against lambda, one line per T (at
    each cell's largest evaluation; the control lambda, if any, a hollow square beside lambda = 0, off the line);
    against sampling steps, one line per (lambda, T) (the control dotted); against each cell's training + scoring
    wall time. Error bars: std over seeds."""
    from ..ablation import summary_table

    d = df[df["split"] == split]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for T, g in summary_table(df, split, metric).groupby("num_steps"):
        g = g.sort_values("lambda_adv")
        ctrl, g = g[g["lambda_adv"] == control_lambda], g[g["lambda_adv"] != control_lambda]
        line = axes[0].errorbar(g["lambda_adv"], g[f"{metric}_mean"], yerr=g[f"{metric}_std"].fillna(0), marker="o",
                                capsize=3, label=f"T={T} ({int(g['steps'].iloc[0])} steps)")
        if control_lambda and len(ctrl):
            axes[0].errorbar(ctrl["lambda_adv"], ctrl[f"{metric}_mean"], yerr=ctrl[f"{metric}_std"].fillna(0),
                             marker="s", mfc="none", ls="none", capsize=3, color=line.lines[0].get_color(),
                             label=f"T={T}: control λ={control_lambda:g} (no pull)")
    axes[0].set_xscale("symlog", linthresh=0.01)
    axes[0].set(xlabel="λ (0 = DDPM)", ylabel=metric, title=f"{split}: {metric} vs λ")
    by_steps = d.groupby(["lambda_adv", "num_steps", "steps"])[metric].agg(["mean", "std"]).reset_index()
    for (lam, T), g in by_steps.groupby(["lambda_adv", "num_steps"]):
        axes[1].errorbar(g["steps"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3,
                         ls=":" if lam == control_lambda else "-" if lam > 0 else "--", label=f"λ={lam:g}, T={T}")
    axes[1].set_xscale("log")
    axes[1].set(xlabel="sampling steps per slice", ylabel=metric, title=f"{split}: {metric} vs sampling steps")
    for lam, g in d.groupby("lambda_adv"):
        axes[2].scatter(g["train_wall_s"] + g["eval_wall_s"], g[metric], label=f"λ={lam:g}", alpha=0.8)
    axes[2].set(xlabel="wall time per cell and evaluation: training + scoring (s)", ylabel=metric,
                title="quality vs cost")
    for a in axes:
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def quality_figure(quality: pd.DataFrame, eval_set: str) -> plt.Figure:
    """The benchmark's quality-cost curve, one line per model: AUPRC of the sampled chain against its steps
    (per-volume mean +- std and pooled), and pooled AUPRC against the scoring wall time, where the demo's own scoring
    (rows with ``scoring`` "demo", if any) is a star beside each model's chain."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    has = "scoring" in quality
    chain = (quality["scoring"] == "chain").to_numpy() if has else np.ones(len(quality), dtype=bool)
    demo_rows = (quality["scoring"] == "demo").to_numpy() if has else np.zeros(len(quality), dtype=bool)
    for i, (name, g) in enumerate(quality[chain].groupby("model")):
        axes[0].errorbar(g["steps"], g["auprc_volume_mean"], yerr=g["auprc_volume_std"], marker="o", capsize=3,
                         color=f"C{i}", label=f"{name}: per-volume mean ± std")
        axes[0].plot(g["steps"], g["auprc"], "x--", color=f"C{i}", label=f"{name}: pooled")
        axes[1].plot(g["wall_s"], g["auprc"], "o-", color=f"C{i}", label=f"{name}: chain")
        demo = quality[demo_rows & (quality["model"] == name).to_numpy()]
        if len(demo):
            axes[1].plot(demo["wall_s"], demo["auprc"], "*", ms=12, color=f"C{i}", label=f"{name}: the demo's scoring")
    axes[0].set(xlabel="sampling steps from t*", ylabel="AUPRC", title=f"{eval_set}: quality vs steps", xscale="log")
    axes[1].set(xlabel=f"scoring wall time, {quality['slices'].iloc[0]} slices (s)", ylabel="pooled AUPRC",
                title="quality vs cost")
    for a in axes:
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""Reading the benchmark's rows (``addmlib.benchmark`` measures them): tables, the ratios ``bench.json`` records, and
their reading in Markdown, for notebooks/06_benchmark.ipynb.

Kept apart from ``addmlib.benchmark`` so that the case processes it starts never import pandas (their peak memory
is part of what they measure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from .verdict import verdict

_PER_ROUND = ("label", "s_per_step", "images_per_s", "achieved_gflops", "peak_memory_mb", "round", "process_wall_s")
TRAIN_COLUMNS = ["label", "params", "gflop_per_step", "images_per_s", "images_per_s_range", "s_per_step",
                 "achieved_gflops", "conv_peak_fraction", "gemm_peak_fraction", "compile_s", "peak_memory_mb"]
VOLUME_COLUMNS = ["label", "slices", "batch", "dtype", "channels_last", "malloc", "wall_s", "s_per_slice",
                  "volume_wall_s", "warmup_s", "peak_memory_mb"]
COMPILE_ADOPT = 1.1  # torch.compile is adopted where it wins at least this much, its compile time counted


@dataclass
class Summary:
    """A table to show, the ratios it yields (for ``bench.json``), and its reading in Markdown."""

    table: pd.DataFrame
    ratios: dict[str, float] = field(default_factory=dict)
    text: str = ""


def _peak(peaks: Mapping[str, Mapping[str, Any]], dtype: str, key: str) -> float:
    return float(peaks.get(dtype, {}).get(key, math.nan))


def train_table(train_rows: Sequence[Mapping[str, Any]], peak_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per training configuration (label): the median over its interleaved rounds of seconds per step,
    images/s and achieved GFLOP/s, the largest peak memory, the range of images/s over the rounds, and the achieved
    GFLOP/s as a fraction of the measured channels-last 3x3-convolution and GEMM peaks of its dtype. Failed cases
    are left out; the other columns are the first round's."""
    peaks = {r["dtype"]: r for r in peak_rows}
    train = pd.DataFrame(list(train_rows))
    ok = train[train["images_per_s"].notna()] if "images_per_s" in train else train.iloc[0:0]
    if ok.empty:
        return pd.DataFrame(columns=TRAIN_COLUMNS + ["model", "dtype", "channels_last", "compile"])
    spread = ok.groupby("label")["images_per_s"].agg(["min", "max", "count"])
    ok = ok.groupby("label", sort=False).agg(
        {**{c: "first" for c in ok.columns if c not in _PER_ROUND},
         "s_per_step": "median", "images_per_s": "median", "achieved_gflops": "median",
         "peak_memory_mb": "max"}).reset_index()
    ok["images_per_s_range"] = [f"{spread.loc[l, 'min']:.2f}–{spread.loc[l, 'max']:.2f} "
                                f"({int(spread.loc[l, 'count'])} runs)" for l in ok["label"]]
    ok["conv_peak_fraction"] = [r["achieved_gflops"] / _peak(peaks, r["dtype"], "conv3x3_cl_gflops")
                                for _, r in ok.iterrows()]
    ok["gemm_peak_fraction"] = [r["achieved_gflops"] / _peak(peaks, r["dtype"], "gemm_gflops")
                                for _, r in ok.iterrows()]
    ok["compile"] = ok["compile"].fillna(False).astype(bool) if "compile" in ok else False
    ok["compile_s"] = ok["compile_s"].fillna(0.0) if "compile_s" in ok else 0.0
    return ok


def _images_per_s(table: pd.DataFrame, model: str, dtype: str = "fp32", channels_last: bool = False,
                  compile: bool = False) -> float:
    sel = table[(table["model"] == model) & (table["dtype"] == dtype) & (table["channels_last"] == channels_last)
                & (table["compile"] == compile)]
    return float(sel["images_per_s"].iloc[0]) if len(sel) else math.nan


def compile_summary(table: pd.DataFrame, over_steps: int) -> Summary:
    """For each dtype with a compiled training row of ours: the steady speed-up over eager (same dtype, plain layout)
    and the net speed-up over ``over_steps`` steps with the compile time counted,
    N s_eager / (compile_s + N s_compiled); adopted where the net speed-up is >= ``COMPILE_ADOPT``."""
    if table.empty:
        return Summary(table, {}, "")
    ratios: dict[str, float] = {}
    lines = []
    for _, c in table[(table["model"] == "ours") & table["compile"]].iterrows():
        eager = table[(table["model"] == "ours") & (table["dtype"] == c["dtype"]) & ~table["compile"]
                      & ~table["channels_last"].astype(bool)]
        if eager.empty:
            continue
        s_eager, s_comp = float(eager["s_per_step"].iloc[0]), float(c["s_per_step"])
        net = over_steps * s_eager / (float(c["compile_s"]) + over_steps * s_comp)
        ratios[f"train_compile_{c['dtype']}_steady"] = s_eager / s_comp
        ratios[f"train_compile_{c['dtype']}_net_{over_steps}_steps"] = net
        lines.append(f"- torch.compile, training step in {c['dtype']}: {s_eager / s_comp:.2f}× steady, compiling took "
                     f"{c['compile_s']:.0f} s; over {over_steps} steps **{net:.2f}×** → "
                     f"{'worth adopting' if net >= COMPILE_ADOPT else 'not adopted'} (threshold {COMPILE_ADOPT}×)")
    return Summary(table, ratios, "\n".join(lines))


def _best(table: pd.DataFrame, model: str) -> pd.Series | None:
    rows = table[table["model"] == model]
    return rows.sort_values("images_per_s").iloc[-1] if len(rows) else None


def train_summary(train_rows: Sequence[Mapping[str, Any]], peak_rows: Sequence[Mapping[str, Any]]) -> Summary:
    """``train_table`` with the training ratios: ours / diffusers in plain fp32, best / best (each at its fastest
    dtype and layout), and our plain fp32 step's fraction of the 3x3-convolution peak (NaN where a case is missing)."""
    table = train_table(train_rows, peak_rows)
    best = {m: _best(table, m) for m in ("ours", "diffusers")}
    plain = table[(table["model"] == "ours") & (table["dtype"] == "fp32") & ~table["channels_last"].astype(bool)]
    ratios = {"train_fp32_ours_over_diffusers": _images_per_s(table, "ours") / _images_per_s(table, "diffusers"),
              "train_best_ours_over_best_diffusers": (best["ours"]["images_per_s"] / best["diffusers"]["images_per_s"]
                                                      if best["ours"] is not None and best["diffusers"] is not None
                                                      else math.nan),
              "train_fp32_conv_peak_fraction": float(plain["conv_peak_fraction"].iloc[0]) if len(plain) else math.nan}
    peaks = "; ".join(f"{p['dtype']}: GEMM {p.get('gemm_gflops')} GFLOP/s, 3×3 conv (channels-last) "
                      f"{p.get('conv3x3_cl_gflops')} GFLOP/s" for p in peak_rows)
    labels = {m: (b["label"] if b is not None else "(none)") for m, b in best.items()}
    text = (f"Peak (this run): {peaks}\n\n"
            f"- ours / diffusers, fp32: **{ratios['train_fp32_ours_over_diffusers']:.2f}×** (target ≥ 1.5×)\n"
            f"- best / best: ours {labels['ours']} against diffusers {labels['diffusers']}: "
            f"**{ratios['train_best_ours_over_best_diffusers']:.2f}×**\n"
            f"- our fp32 training step reaches **{ratios['train_fp32_conv_peak_fraction']:.0%}** of the measured "
            f"channels-last 3×3 convolution peak (target ≥ 60 %)")
    return Summary(table, ratios, text)


def denoise_table(denoise_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Seconds per image per reverse step: one row per switch set (the label after "denoise <size>²"), one column per
    batch size, and the speed-up of each row's best batch over plain fp32's best batch."""
    table = pd.DataFrame([{"switches": r["label"].split(" ", 2)[2],
                           **{f"batch {b}": v for b, v in r["s_per_image_step"].items()}}
                          for r in denoise_rows if "s_per_image_step" in r]).set_index("switches")
    base = table.loc["fp32"].min() if "fp32" in table.index else math.nan
    table["speed-up vs plain fp32 (best batch)"] = base / table.min(axis=1)
    return table


def volume_summary(volume_rows: Sequence[Mapping[str, Any]], volume_slices: int, t_star: int) -> Summary:
    """Per size: the fast path's time for a ``volume_slices``-slice volume against the naive loop's (ratio
    ``volume_<size>_batched_over_naive``), the time every step from t* would take, and at 128² the target of one
    150-slice volume in 60 s at the fewest steps (``volume_128_fewest_steps_wall_s``); the volumes scored with the
    demo's scoring (``volume_<size>_demo_scoring[_compiled]_wall_s``), the 60 s target read on the eager 128² one."""
    vol = pd.DataFrame(list(volume_rows))
    if "s_per_slice" not in vol:
        return Summary(vol, {}, "no volume case finished")
    vol["volume_wall_s"] = vol["s_per_slice"] * volume_slices
    done = vol[vol["s_per_slice"].notna()]
    naive_rows = done["label"].str.contains("naive")
    demo_rows = done["label"].str.contains("demo scoring")
    ratios: dict[str, float] = {}
    lines = []
    for size in dict.fromkeys(done["size"]):
        naive_v = done[naive_rows & (done["size"] == size)]
        fast_v = done[~naive_rows & ~demo_rows & (done["size"] == size)]
        if naive_v.empty or fast_v[fast_v["steps"] == naive_v.iloc[0]["steps"]].empty:
            continue
        naive = naive_v.iloc[0]
        same = fast_v[fast_v["steps"] == naive["steps"]].iloc[0]
        ratios[f"volume_{size}_batched_over_naive"] = naive["s_per_slice"] / same["s_per_slice"]
        lines.append(f"- {size}², {int(same['steps'])} steps from t* = {t_star}: {volume_slices} slices in "
                     f"**{same['wall_s']:.1f} s** (fast path, batch {int(same['batch'])}); the naive loop costs "
                     f"{naive['s_per_slice']:.3f} s per slice ({ratios[f'volume_{size}_batched_over_naive']:.1f}× "
                     f"slower; timed on {int(naive['slices'])} slices)")
        full = same["s_per_slice"] / same["steps"] * t_star * volume_slices
        lines.append(f"  - every step from t* ({t_star} steps) would take ≈ {full:.0f} s (linear in steps)")
    for _, d in done[demo_rows].iterrows():
        compiled = "compiled" in d["label"]
        key = f"volume_{d['size']}_demo_scoring{'_compiled' if compiled else ''}_wall_s"
        ratios[key] = float(d["wall_s"])
        lines.append(f"- {d['size']}², the demo's scoring ({d['t_star']} × {int(d['draws'])} draws, {int(d['steps'])} "
                     f"step{'s' if d['steps'] > 1 else ''}), {d['dtype']}{', compiled' if compiled else ''}: "
                     f"{volume_slices} slices in **{d['wall_s']:.1f} s**"
                     + (f" (warm-up with compiling {d['warmup_s']:.0f} s)" if compiled else "")
                     + (f" → the 60 s target is {'met' if d['wall_s'] <= 60 else 'not met'}"
                        if d["size"] == 128 and not compiled else ""))
    big = done[(done["size"] == 128) & ~naive_rows & ~demo_rows]
    if len(big):
        fewest = big.sort_values("steps").iloc[0]
        ratios["volume_128_fewest_steps_wall_s"] = float(fewest["wall_s"])
        lines.append(f"- target: one 150-slice volume at 128² in ≤ 60 s: **{fewest['wall_s']:.1f} s** at "
                     f"{int(fewest['steps'])} steps → {'met' if fewest['wall_s'] <= 60 else 'not met'}")
    return Summary(vol[[c for c in VOLUME_COLUMNS if c in vol]], ratios, "\n".join(lines))


def quality_summary(quality_rows: Sequence[Mapping[str, Any]]) -> Summary:
    """The quality-cost rows as a table, and ADDM (lambda > 0) at each of its chain's steps against DDPM (lambda = 0)
    at about twice as many (within 10 % of 2x, e.g. 12 and 25): pooled AUPRC difference read against the larger
    per-volume AUPRC std of the two (one training seed each: the spread is across volumes)."""
    q = pd.DataFrame(list(quality_rows))
    lines = []
    chain = q[q["scoring"] == "chain"] if "scoring" in q else q
    if len(chain):
        addm, ddpm = chain[chain["lambda_adv"] > 0], chain[chain["lambda_adv"] == 0]
        for _, a in addm.iterrows():
            d = ddpm[(ddpm["steps"] - 2 * a["steps"]).abs() <= 0.1 * 2 * a["steps"]]
            if not len(d):
                continue
            d = d.iloc[0]
            spread = max(a["auprc_volume_std"], d["auprc_volume_std"])
            diff = a["auprc"] - d["auprc"]
            lines.append(f"- ADDM at {int(a['steps'])} steps: pooled AUPRC {a['auprc']:.4f} against DDPM at "
                         f"{int(d['steps'])} steps {d['auprc']:.4f} (Δ {diff:+.4f}, spread {spread:.4f}): "
                         f"**{verdict(diff, spread, spread_name='per-volume spread')}**")
    text = "ADDM with half the steps against DDPM (one training seed each):\n\n" + (
        "\n".join(lines) or "- no ADDM and DDPM pair at steps in ratio 1:2")
    return Summary(q, {}, text)

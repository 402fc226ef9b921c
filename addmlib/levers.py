"""The lever campaign: which settings make the detector detect, measured on the tuning split only.

A campaign trains every *training variant* (overrides of the base parameters: noise, t* range, resolution, budget...)
for every seed, scores each trained model with every *scoring variant* (t*, an ensemble of t*, sampling steps --
1 is the one-step x0 estimate --, draws, median size) on the ``tune`` split, and puts the floors and the coarse-noise
DAE beside them. Sets A and B are never touched here: what wins on ``tune`` becomes a default, and only then are A and
B scored, for the report.

Everything is resumable: a model is trained once (the trainer resumes from its checkpoint), and each (variant, seed,
scoring) result is a small JSON file in ``<run_dir>/levers/rows/``; rerunning skips what exists for the same settings.

``python -m addmlib.levers params/levers_demo.yaml [--run-dir DIR]`` (parameters: ``config.LeverConfig``; the base
parameter set, e.g. params/demo.yaml, is named by ``base_params``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .baselines import SEEDED_INIT
from .cli import ArgumentParser, run_main
from .config import (ConfigError, EvalConfig, LeverConfig, PrepareConfig, TrainConfig, check_pipeline_parameters,
                     load_checked, load_yaml_files, validate)
from .data.prepare import PreparedDataset, build, settings_from_config
from .evaluate import (BASELINE_LABELS, MIX_CALIBRATION, PostProcessing, Scorer, baseline_scorers, diffusion_scorer,
                       evaluate_model, remembering, with_deep_map)
from .fileio import write_json_atomic
from .models import campaign_models_root, trained_on
from .post_processing import FUSION_QUANTILE
from .provenance import write_run_record
from .runtime import resolve_device, set_threads
from .training import CheckpointError, finished_model, model_dir, train

LEARNED_BASELINES = ("ae", "dae")
"""The baselines that are trained (per seed) and scored with a residual; the others are floors."""

SCORING_KEYS = ("t_star", "t_star_ensemble", "sample_steps", "draws", "median_size", "sampler", "patch_stride", "residual",
                "intensity_weight", "eval_noise", "fusion", "fusion_quantile", "deep_t_star_ensemble", "deep_draws")
POST_PROCESSING_KEYS = ("median_size", "intensity_weight", "fusion", "fusion_quantile")
"""Scoring settings applied after the network: scorings that differ only in these share one pass."""
METRICS = ("auroc", "auprc", "dice", "best_dice")


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()[:12]


def _prepare(cfg: LeverConfig, params: Mapping[str, Any], run_dir: Path) -> PreparedDataset:
    """The campaign's data (``run_dir/data``): the base parameters' data with the campaign's ``tune_hosts``."""
    own = {f.name for f in dataclasses.fields(PrepareConfig)}
    pcfg = validate(PrepareConfig, {**{k: v for k, v in params.items() if k in own}, "tune_hosts": cfg.tune_hosts},
                    "lever campaign (data)")
    cache = Path(pcfg.data_cache_dir).expanduser() if pcfg.data_cache_dir else None
    build(settings_from_config(pcfg), run_dir / "data", cache)
    return PreparedDataset(run_dir / "data")


def _row_metrics(res: Mapping[str, Any], split: str = "tune") -> dict[str, Any]:
    """A result row's metrics: pooled over the tuning split, and AUROC/AUPRC pooled per tuning host (``by_host``) and
    per lesion kind (``by_kind``)."""
    p = res[split]["pooled"]
    by = {key: {h: {k: float(m[k]) for k in ("auroc", "auprc")} for h, m in res[split].get(key, {}).items()}
          for key in ("by_host", "by_kind")}
    return {**{k: float(p[k]) for k in METRICS}, **by}


_EVAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig)}


def _changed(base: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The evaluation settings of ``base`` among ``names`` that differ from EvalConfig's defaults (part of a row's key:
    results computed with other settings are not reused; at their defaults they leave older keys valid)."""
    return {n: base[n] for n in names if n in base and base[n] != _EVAL_DEFAULTS[n]}


def _check_model_data(folder: Path, fingerprint: str, write: bool = True) -> None:
    """A campaign model belongs to the data it was trained on (``PreparedDataset.training_fingerprint``): refuse to
    resume or score it on other data. A model's first check records the data (``write``), unless it is another
    campaign's (``models_from``), which must have recorded it."""
    recorded = trained_on(folder)
    if recorded is not None:
        if recorded != fingerprint:
            raise ConfigError(f"{folder}: trained on data {recorded}, the campaign's data is now {fingerprint}; "
                              f"a campaign on other training data needs its own run_dir and models")
    elif write:
        write_json_atomic(folder / "data.json", {"fingerprint": fingerprint})
    else:
        raise ConfigError(f"{folder / 'data.json'} not found: {folder} is not a model of a lever campaign")


def _models_root(cfg: LeverConfig) -> Path:
    """Where the campaign's models are: its own ``run_dir/levers``, or (``models_from``) another campaign's, whose
    models it scores on its own data without training or writing there."""
    from .sweep import resolve_param_file

    return campaign_models_root(resolve_param_file(cfg.models_from) if cfg.models_from else Path(cfg.run_dir))


def _baseline_folder(cfg: LeverConfig, run_dir: Path, models_root: Path, seed: int) -> Path:
    """Where the baselines of ``seed`` are cached: the campaign's own ``levers/seed<seed>``. A ``models_from`` campaign
    starts it as a copy of the source campaign's (its trained AE/DAE are reused when their settings match, retrained
    here when not), so that nothing is written there."""
    own = run_dir / "levers" / f"seed{seed}"
    source = models_root / f"seed{seed}"
    if cfg.models_from and source.is_dir() and not own.exists():
        shutil.copytree(source, own)
    return own


def run_campaign(cfg: LeverConfig, base: Mapping[str, Any], progress: Callable[..., Any] | None = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and score everything of the campaign (skipping what is done); returns all result rows."""
    run_dir = Path(cfg.run_dir).resolve()
    rows_dir = run_dir / "levers" / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    device = resolve_device(str(base.get("device", "auto")))
    data = _prepare(cfg, base, run_dir)
    fingerprint = data.manifest["fingerprint"]
    models_root = _models_root(cfg)
    pp_default = PostProcessing(float(base.get("brain_erode_mm", 3.0)), int(base.get("median_size", 3)),
                                int(base.get("min_component_voxels", 5)), bool(base.get("median_in_plane", False)))
    fpr = float(base.get("fpr", 0.05))
    amp = str(base.get("amp", "auto"))
    eval_key = _changed(base, ("fpr", "brain_erode_mm", "min_component_voxels", "amp", "median_in_plane"))
    medians = (pp_default.median_size, *(m for m in cfg.baseline_median_sizes if m != pp_default.median_size))
    rows: list[dict[str, Any]] = []

    def done(key: dict[str, Any], name: str) -> dict[str, Any] | None:
        path = rows_dir / f"{_fingerprint(key)}.json"
        return {**json.loads(path.read_text()), "scoring": name} if path.is_file() else None

    def save(key: dict[str, Any], row: dict[str, Any]) -> None:
        write_json_atomic(rows_dir / f"{_fingerprint(key)}.json", row)
        rows.append(row)

    own = {f.name for f in dataclasses.fields(TrainConfig)}
    train_images = data.slices("train")["image"]  # read once: every variant and seed trains on it
    for seed in cfg.seeds:  # seed by seed, so that a first complete table comes early; models, then baselines
        for variant, overrides in cfg.variants.items():
            if seed not in cfg.variant_seeds.get(variant, cfg.seeds):
                continue
            params = {k: v for k, v in {**base, **overrides}.items() if k in own}
            params.update(seed=seed, model_name=f"{variant}-s{seed}", run_dir=str(models_root), threads=cfg.threads)
            tcfg = validate(TrainConfig, params, f"lever variant {variant!r}")
            folder = model_dir(tcfg.run_dir, tcfg.model_name)
            if cfg.models_from:
                try:
                    result, train_s = finished_model(tcfg), None
                    _check_model_data(folder, data.training_fingerprint, write=False)
                except (CheckpointError, ConfigError) as exc:
                    raise ConfigError(f"models_from {cfg.models_from}, variant {variant!r}: {exc}") from None
            else:
                folder.mkdir(parents=True, exist_ok=True)
                _check_model_data(folder, data.training_fingerprint)
                t0 = time.perf_counter()
                result = train(tcfg, train_images, progress=progress)
                train_s = round(time.perf_counter() - t0, 1)
            scorings = {name: _scoring(base, tcfg.t_star, cfg.scorings[name])
                        for name in cfg.variant_scorings.get(variant, tuple(cfg.scorings))}
            networks = {name: _fingerprint({k: v for k, v in sc.items() if k not in POST_PROCESSING_KEYS})
                        for name, sc in scorings.items()}
            # one network pass serves the scorings that differ only in post-processing; kept until its last one
            passes: dict[str, tuple[Scorer, dict[str, Any], float]] = {}
            for i, (scoring, sc) in enumerate(scorings.items()):
                key = {"variant": variant, "overrides": overrides, "seed": seed, "scoring": sc, "data": fingerprint,
                       "stride": cfg.slice_stride, "steps_trained": result["step"], **eval_key}
                network = networks[scoring]
                if (row := done(key, scoring)) is not None:
                    rows.append(row)
                else:
                    t1 = time.perf_counter()
                    reused = network in passes
                    if not reused:
                        depths = list(sc["t_star_ensemble"]) or int(sc["t_star"])
                        scorer, info = diffusion_scorer(folder / "checkpoint.pt", depths, int(sc["sample_steps"]),
                                                        sc["sampler"], str(sc.get("eval_noise", "model")),
                                                        int(sc["draws"]),
                                                        int(base.get("eval_batch_size", 16)), seed, device,
                                                        device.type == "cpu", amp, int(sc.get("patch_stride", 0)),
                                                        str(sc.get("residual", "abs")))
                        if sc.get("deep_t_star_ensemble"):
                            scorer, info = with_deep_map(scorer, info, folder / "checkpoint.pt",
                                                         sc["deep_t_star_ensemble"], int(sc.get("deep_draws", 1)),
                                                         int(base.get("eval_batch_size", 16)), seed, device,
                                                         device.type == "cpu", amp, str(sc.get("residual", "abs")),
                                                         pp_default, data.volumes(MIX_CALIBRATION))
                        passes[network] = (remembering(scorer), info, 0.0)
                    scorer, info, pass_s = passes[network]
                    pp = dataclasses.replace(pp_default, median_size=int(sc["median_size"]))
                    res, _ = evaluate_model(scorer, data, [cfg.tune_split], cfg.slice_stride, fpr, pp, False, None, None,
                                            sc.get("intensity_weight", 0.0), sc.get("fusion", "sum"),
                                            float(sc.get("fusion_quantile", FUSION_QUANTILE)))
                    seconds = round(time.perf_counter() - t1, 1)
                    if not reused:
                        passes[network] = (scorer, info, seconds)
                    # seconds: what the scoring costs on its own (a reused pass counts the pass that made it)
                    save(key, {"kind": "diffusion", "variant": variant, "seed": seed, "scoring": scoring,
                               **_row_metrics(res, cfg.tune_split), "seconds": pass_s if reused else seconds,
                               "train_seconds": train_s if result.get("resumed_from") is None else None,
                               "amp": info["amp"], "steps_trained": result["step"], "network_pass_reused": reused})
                    log(f"{variant} seed {seed} {scoring}: {rows[-1]}")
                if network not in list(networks.values())[i + 1:]:
                    passes.pop(network, None)  # no later scoring needs this pass: free its maps
        baseline_dir = _baseline_folder(cfg, run_dir, models_root, seed)
        for name in cfg.baselines:
            if seed not in cfg.variant_seeds.get(name, cfg.seeds) or (seed != cfg.seeds[0] and name.startswith("floor")):
                continue  # floors have no seed
            learns = name in LEARNED_BASELINES
            baseline_passes: dict[str, tuple[Scorer, float]] = {}  # per residual: one pass, its seconds
            for residual, weight, fusion, median in itertools.product(
                    cfg.baseline_residuals if learns else ("abs",), cfg.baseline_intensity_weights if learns else (0.0,),
                    cfg.baseline_fusions if learns else ("sum",), medians):
                if fusion != "sum" and not weight:
                    continue  # the max fusion combines a fused map with the residual alone: it needs a weight
                key = _baseline_key(name, seed, fingerprint, cfg, base, eval_key, residual, weight, fusion,
                                    median if median != pp_default.median_size else None)
                label = ", ".join(filter(None, ["positive residual" if residual != "abs" else "",
                                                f"+ intensity w={weight:g}" if weight else "",
                                                "max" if fusion != "sum" else "",
                                                f"median {median}x{median}" if median != pp_default.median_size
                                                else ""])) or "-"
                if (row := done(key, label)) is not None:
                    rows.append(row)
                    continue
                t0 = time.perf_counter()
                reused = residual in baseline_passes
                if not reused:
                    ((_, scorer, info),) = baseline_scorers(
                        data, baseline_dir, [name], seed, int(base.get("ae_steps", 1500)),
                        cfg.dae_steps, float(base.get("dae_noise_std", 0.2)), int(base.get("dae_noise_res", 16)), amp,
                        progress, residual)
                    baseline_passes[residual] = (remembering(scorer), 0.0)
                scorer, pass_s = baseline_passes[residual]
                res, _ = evaluate_model(scorer, data, [cfg.tune_split], cfg.slice_stride, fpr,
                                        dataclasses.replace(pp_default, median_size=median), False, None, None,
                                        weight, fusion, cfg.baseline_fusion_quantile)
                seconds = round(time.perf_counter() - t0, 1)
                if not reused:
                    baseline_passes[residual] = (scorer, seconds)
                save(key, {"kind": "baseline", "variant": BASELINE_LABELS[name], "seed": seed, "scoring": label,
                           **_row_metrics(res, cfg.tune_split), "seconds": pass_s if reused else seconds,
                           "network_pass_reused": reused})
                log(f"{BASELINE_LABELS[name]} seed {seed} {label}: {rows[-1]}")
    return rows


def _baseline_key(name: str, seed: int, fingerprint: str, cfg: LeverConfig, base: Mapping[str, Any],
                  eval_key: Mapping[str, Any], residual: str, weight: float, fusion: str = "sum",
                  median: int | None = None) -> dict[str, Any]:
    """What a baseline's result row is cached by. An AE's or DAE's key names its seeded initialisation, so rows
    scored with one whose initial weights came from the process's random state (before it was seeded) are redone.
    ``median``: a filter other than the base's (None: the base's, which the key leaves out as before)."""
    key = {"baseline": name, "seed": seed, "data": fingerprint, "stride": cfg.slice_stride, "dae_steps": cfg.dae_steps,
           "ae_steps": int(base.get("ae_steps", 1500)), **eval_key,
           **_changed(base, ("dae_noise_std", "dae_noise_res"))}
    if name in LEARNED_BASELINES:
        key["init"] = SEEDED_INIT
    if residual != "abs":
        key["residual"] = residual
    if weight:
        key["intensity_weight"] = weight
    if fusion != "sum":
        key.update(fusion=fusion, fusion_quantile=cfg.baseline_fusion_quantile)
    if median is not None:
        key["median_size"] = median
    return key


def _scoring(base: Mapping[str, Any], t_star: int, scoring: Mapping[str, Any]) -> dict[str, Any]:
    """A scoring's full settings: ``scoring_defaults`` overridden by the scoring's own (a weight as a float, so that
    1 and 1.0 are one setting)."""
    sc = {**scoring_defaults(base, t_star), **scoring}
    if "intensity_weight" in sc:
        sc["intensity_weight"] = float(sc["intensity_weight"])
    return sc


def scoring_defaults(base: Mapping[str, Any], t_star: int) -> dict[str, Any]:
    """What a scoring does where it says nothing: the model's t*, and the base parameters' evaluation settings."""
    return {"t_star": t_star, "t_star_ensemble": [], "sample_steps": int(base.get("sample_steps", 25)),
            "draws": int(base.get("draws", 1)), "median_size": int(base.get("median_size", 3)),
            "sampler": str(base.get("sampler", "ddpm"))}


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std, min and max over seeds of each metric per (variant, scoring), best AUPRC first."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["scoring"]), []).append(r)
    out = []
    for (variant, scoring), rs in groups.items():
        entry: dict[str, Any] = {"variant": variant, "scoring": scoring, "kind": rs[0]["kind"], "seeds": len(rs)}
        for m in METRICS:
            vals = np.array([r[m] for r in rs], dtype=float)
            entry[f"{m}_mean"] = float(vals.mean())
            entry[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            entry[f"{m}_min"], entry[f"{m}_max"] = float(vals.min()), float(vals.max())
        entry["seconds_mean"] = float(np.mean([r["seconds"] for r in rs]))
        for key in ("by_host", "by_kind"):
            groups_ = [r.get(key) or {} for r in rs]  # rows cached before per-host/kind metrics have none
            for host in sorted(set(groups_[0]).intersection(*groups_)):
                vals = np.array([h[host]["auprc"] for h in groups_], dtype=float)
                entry[f"auprc@{host}_mean"] = float(vals.mean())
                entry[f"auprc@{host}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return sorted(out, key=lambda e: -e["auprc_mean"])


def summary_hosts(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tuning hosts that the summary's entries have per-host metrics for, in order of first appearance."""
    return list(dict.fromkeys(k[len("auprc@"):-len("_mean")] for e in summary for k in e
                              if k.startswith("auprc@") and k.endswith("_mean")))


def host_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """AUPRC per tuning host (mean ± std over seeds) beside the pooled one, as a Markdown table: whether the hosts of
    a split of several agree on the ranking. Entries without per-host metrics (older cached rows) are left out."""
    hosts = summary_hosts(summary)
    rows = ["| variant | scoring | seeds | AUPRC (pooled) | " + " | ".join(f"AUPRC {h}" for h in hosts) + " |",
            "|---|---|---|---|" + "---|" * len(hosts)]
    for e in summary:
        if not any(f"auprc@{h}_mean" in e for h in hosts):
            continue
        cells = [_mean_std(e, "auprc")] + [_mean_std(e, f"auprc@{h}") if f"auprc@{h}_mean" in e else "–"
                                           for h in hosts]
        rows.append(f"| {_table_name(e)} | {e['scoring']} | {e['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _table_name(entry: Mapping[str, Any]) -> str:
    """A summary entry's variant as a Markdown cell: pipes escaped (a floor's label holds |x - median|), baselines in
    italics."""
    variant = entry["variant"].replace("|", "\\|")
    return f"*{variant}*" if entry["kind"] == "baseline" else variant


def _mean_std(entry: Mapping[str, Any], metric: str) -> str:
    """``mean ± std`` of a summary entry's metric, or the mean alone for one seed."""
    mean = entry[f"{metric}_mean"]
    return f"{mean:.3f} ± {entry[f'{metric}_std']:.3f}" if entry["seeds"] > 1 else f"{mean:.3f}"


def beside_summaries(cfg: LeverConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """The summaries of the campaigns in ``cfg.beside_runs`` (their ``levers/levers.json``), each variant marked with
    its run folder's name, e.g. "coarse12-96 [levers96]"; and the folders that hold no results yet."""
    from .sweep import resolve_param_file

    out, missing = [], []
    for folder in cfg.beside_runs:
        path = resolve_param_file(folder) / "levers" / "levers.json"
        if not path.is_file():
            missing.append(folder)
            continue
        for entry in json.loads(path.read_text())["summary"]:
            out.append({**entry, "variant": f"{entry['variant']} [{Path(folder).name}]"})
    return out, missing


def lever_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table: mean ± std over seeds (and seed count), floors and baselines marked."""
    rows = ["| variant | scoring | seeds | AUROC | AUPRC | Dice @ 5 % FPR | best Dice (tuning) | s per scoring |",
            "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [_mean_std(e, m) for m in METRICS] + [f"{e['seconds_mean']:.0f}"]
        rows.append(f"| {_table_name(e)} | {e['scoring']} | {e['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _colour(i: int) -> Any:
    """The i-th of 20 distinct colours (matplotlib's default cycle repeats after 10, and campaigns have more)."""
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab20")(i % 20)


def plot_levers(summary: Sequence[Mapping[str, Any]]) -> Any:
    """AUROC and AUPRC per (variant, scoring) with the seed range as error bars; floors as horizontal lines."""
    import matplotlib.pyplot as plt

    models = [e for e in summary if e["kind"] != "baseline"]
    base = [e for e in summary if e["kind"] == "baseline"]
    variants = list(dict.fromkeys(e["variant"] for e in models))
    scorings = list(dict.fromkeys(e["scoring"] for e in models))
    fig, axes = plt.subplots(2, 1, figsize=(max(10.0, 0.6 * len(scorings)), 9))
    width = 0.8 / max(len(variants), 1)
    for ax, metric in zip(axes, ("auroc", "auprc")):
        for i, v in enumerate(variants):
            es = {e["scoring"]: e for e in models if e["variant"] == v}
            xs = [k + i * width for k, s in enumerate(scorings) if s in es]
            mean = np.array([es[s][f"{metric}_mean"] for s in scorings if s in es])
            lo = mean - np.array([es[s][f"{metric}_min"] for s in scorings if s in es])
            hi = np.array([es[s][f"{metric}_max"] for s in scorings if s in es]) - mean
            ax.bar(xs, mean, width, yerr=[lo, hi], capsize=2, label=v, color=_colour(i))
        for j, e in enumerate(base):
            label = e["variant"] if e["scoring"] == "-" else f"{e['variant']}, {e['scoring']}"
            ax.axhline(e[f"{metric}_mean"], color=_colour(len(variants) + j), ls="--", lw=1, label=label)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(scorings))], scorings, rotation=60, ha="right",
                      fontsize=7)
        ax.set(title=f"tuning split: {metric.upper()} (bars: mean, whiskers: seed range)", ylabel=metric)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def adversarial_profiles(cfg: LeverConfig, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``diagnostics.adversarial_profile`` of every trained ADDM variant (lambda_adv > 0) of the first seed, at the
    depths ``cfg.adv_profile_t``, on the campaign's training slices; written to ``levers/adv_profile.json``."""
    from .diagnostics import adversarial_profile

    run_dir = Path(cfg.run_dir).resolve()
    own = {f.name for f in dataclasses.fields(TrainConfig)}
    images = PreparedDataset(run_dir / "data").slices("train")["image"][:, None]
    models_root = _models_root(cfg)
    out = []
    for variant, overrides in cfg.variants.items():
        params = {k: v for k, v in {**base, **overrides}.items() if k in own}
        seed = cfg.variant_seeds.get(variant, cfg.seeds)[0]
        ckpt = model_dir(models_root, f"{variant}-s{seed}") / "checkpoint.pt"
        if float(params.get("lambda_adv", 0.05)) <= 0 or not cfg.adv_profile_t or not ckpt.is_file():
            continue
        for row in adversarial_profile(ckpt, images, cfg.adv_profile_t, seed=cfg.seed):
            out.append({"variant": variant, "seed": seed, **row})
    write_json_atomic(run_dir / "levers" / "adv_profile.json", {"rows": out})
    return out


def plot_adv_profile(rows: Sequence[Mapping[str, Any]]) -> Any:
    """||grad lambda L_Adv|| / ||grad L_DDPM|| and D's accuracy against t, one line per variant."""
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, v in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["t"])
        ts = [r["t"] for r in rs]
        ax_r.plot(ts, [r["ratio"] for r in rs], "o-", color=_colour(i), label=f"{v} (λ = {rs[0]['lambda_adv']:g})")
        ax_d.plot(ts, [r["d_acc_real"] for r in rs], "o-", color=_colour(i), label=f"{v}: real")
        ax_d.plot(ts, [r["d_acc_fake"] for r in rs], "s--", color=_colour(i), label=f"{v}: fake")
    ax_r.set(xlabel="t", ylabel="‖∇ λ·L_Adv‖ / ‖∇ L_DDPM‖", yscale="log", title="how hard the adversarial term pulls")
    ax_d.axhline(0.5, color="grey", lw=0.8)
    ax_d.set(xlabel="t", ylabel="D's accuracy", ylim=(0, 1), title="D on real and fake samples (chance 0.5)")
    ax_r.legend(fontsize=7)
    ax_d.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def write_results(run_dir: str | Path, rows: Sequence[Mapping[str, Any]], cfg: LeverConfig,
                  started: dt.datetime | None = None) -> dict[str, Any]:
    """``levers/levers.json`` (rows and summary) and ``levers/summary.csv``, written atomically."""
    import pandas as pd

    folder = Path(run_dir).resolve() / "levers"
    summary = summarise(rows)
    result = {"split": cfg.tune_split, "rows": list(rows), "summary": summary,
              "note": "measured on the tuning split only (lesions inserted into a brain neither trained on nor in "
                      "set B); sets A and B are not used to choose"}
    write_json_atomic(folder / "levers.json", result)
    frame = pd.DataFrame(summary)
    tmp = folder / "summary.csv.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(folder / "summary.csv")
    write_run_record(folder / "run.json", {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, cfg.seed, started)
    return result


def load_campaign_params(cfg: LeverConfig) -> dict[str, Any]:
    """The base (pipeline) parameters of the campaign: its ``base_params`` files (relative to the repository) merged
    in order, then its ``base_overrides``, every name and type checked like a pipeline file, with the campaign's seed
    and threads; every variant's and scoring's keys checked too. Errors are one-line ConfigErrors."""
    from .sweep import resolve_param_file

    base, source = load_yaml_files([resolve_param_file(f) for f in cfg.base_params])
    check_pipeline_parameters(base, source)
    check_pipeline_parameters(cfg.base_overrides, "base_overrides")
    base.update(cfg.base_overrides)
    base.update(seed=cfg.seed, threads=cfg.threads)
    for name, overrides in cfg.variants.items():
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
        if bad:
            raise ConfigError(f"variant {name!r}: {bad} are not training parameters")
        check_pipeline_parameters({**base, **overrides}, f"variant {name!r}")
    for name, overrides in cfg.scorings.items():
        bad = sorted(set(overrides) - set(SCORING_KEYS))
        if bad:
            raise ConfigError(f"scoring {name!r}: {bad} are not scoring parameters ({', '.join(SCORING_KEYS)})")
        validate(EvalConfig, dict(overrides), f"scoring {name!r}")  # types and ranges, before anything runs
    for variant, overrides in cfg.variants.items():
        tcfg = validate(TrainConfig, {k: v for k, v in {**base, **overrides}.items()
                                      if k in {f.name for f in dataclasses.fields(TrainConfig)}}, f"variant {variant!r}")
        for name in cfg.variant_scorings.get(variant, tuple(cfg.scorings)):
            sc = _scoring(base, tcfg.t_star, cfg.scorings[name])
            deepest = max(list(sc["t_star_ensemble"]) or [int(sc["t_star"])])
            if deepest > tcfg.num_steps:
                raise ConfigError(f"scoring {name!r} noises to t* = {deepest} > T = {tcfg.num_steps} of variant "
                                  f"{variant!r}")
            if sc.get("patch_stride", 0) and not tcfg.patch_size:
                raise ConfigError(f"scoring {name!r} sets patch_stride, but variant {variant!r} is not patch-trained")
            if sc.get("eval_noise") == "none" and int(sc["draws"]) != 1:
                raise ConfigError(f"scoring {name!r}: eval_noise 'none' scores the unnoised input, the same every "
                                  f"draw, but draws is {sc['draws']}: set draws 1")
        if tcfg.lambda_adv > 0 and any(t > tcfg.num_steps for t in cfg.adv_profile_t):
            raise ConfigError(f"adv_profile_t {list(cfg.adv_profile_t)} goes beyond T = {tcfg.num_steps} of variant "
                              f"{variant!r}")
    return base


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m addmlib.levers PARAMS.yaml [--run-dir DIR]``: run (or resume) a lever campaign."""
    parser = ArgumentParser(prog="python -m addmlib.levers", description=main.__doc__)
    parser.add_argument("params")
    parser.add_argument("--run-dir")
    args = parser.parse_args(argv)
    return run_main(lambda: _campaign_cli(args.params, args.run_dir))


def _campaign_cli(params_file: str, run_dir: str | None) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    cfg = load_checked(LeverConfig, [params_file], {"run_dir": run_dir} if run_dir else None)
    base = load_campaign_params(cfg)  # everything is checked before anything runs
    rows = run_campaign(cfg, base, log=lambda m: print(m, flush=True))
    result = write_results(cfg.run_dir, rows, cfg, started)
    hosts = summary_hosts(result["summary"])
    for e in result["summary"]:
        per_host = "".join(f" | {h} {_mean_std(e, f'auprc@{h}')}" for h in hosts if f"auprc@{h}_mean" in e)
        print(f"{e['variant']:28s} {e['scoring']:10s} n={e['seeds']} AUROC {e['auroc_mean']:.3f}±{e['auroc_std']:.3f} "
              f"AUPRC {e['auprc_mean']:.3f}±{e['auprc_std']:.3f}" + (per_host if len(hosts) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

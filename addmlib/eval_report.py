"""What notebooks/03_evaluate.ipynb shows of an evaluation: Table-1-style tables with the floors beside every model,
the AnoDDPM protocol table, ROC/PR curves, the set-A montage and the reading of the result in words."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from .data.lesion_kinds import KINDS
from .data.report import SPLIT_TITLES
from .evaluate import BASELINE_LABELS, ScoredVolume, size_classes
from .verdict import verdict
from .visualization.slices import show_slice

Results = Mapping[str, Mapping[str, Any]]


def _is_baseline(label: str) -> bool:
    """A floor's or baseline's row, fused with the intensity or the normative atlas or not (italics, dashed)."""
    return any(label == b or label.startswith((f"{b}, ", f"{b} + ")) for b in BASELINE_LABELS.values())


def _label_cell(label: str) -> str:
    """A map's label as a Markdown cell: pipes escaped (a floor's label holds |x - median|), baselines in italics."""
    escaped = label.replace("|", "\\|")
    return f"*{escaped}*" if _is_baseline(label) else escaped


def _fmt(m: float, s: float | None = None) -> str:
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def metrics_table(results: Results, split: str, fpr: float) -> str:
    """Markdown: one row per model or baseline, pooled metrics at the healthy-calibrated threshold, Dice per volume."""
    rows = ["| model | Dice | AUC | IoU | Precision | Recall | AUPRC | best Dice (test-tuned) | Dice per volume |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        if split not in res:  # a row scored on other sets only (the normative atlas reads the IXI slices)
            continue
        p, v = res[split]["pooled"], res[split]["per_volume_summary"]
        rows.append(f"| {_label_cell(label)} | {_fmt(p['dice'])} | {_fmt(p['auroc'])} | {_fmt(p['iou'])} | "
                    f"{_fmt(p['precision'])} | {_fmt(p['recall'])} | {_fmt(p['auprc'])} | {_fmt(p['best_dice'])} | "
                    f"{_fmt(*v['dice'])} |")
    return (f"**{SPLIT_TITLES.get(split, split)}** — pooled over all scored brain voxels; Dice/IoU/precision/recall "
            f"at the threshold with {fpr:.0%} FPR on healthy brains (set B: on the other host); last column mean ± "
            f"std over volumes; baselines and floors in italics.\n\n" + "\n".join(rows))


def lesion_kind(volume_id: str) -> str:
    """What a volume's lesion is, from its id: ``<host>+synthetic<i>-<polarity>[-draw<k>]`` is "synthetic <polarity>",
    ``<host>+pasted-<donor>[-draw<k>]`` is "pasted <donor>", ``<host>+<kind><i>[-draw<k>]`` and
    ``<subject>+<kind>-d<k>`` (``lesion_kinds``) are the kind; any other id (a real tumour scan) is its own kind."""
    if "+" not in volume_id:
        return volume_id
    lesion = re.sub(r"-draw\d+$", "", volume_id.split("+", 1)[1])
    if lesion.startswith("pasted-"):
        return f"pasted {lesion[len('pasted-'):]}"
    match = re.fullmatch(r"synthetic\d+-(\w+)", lesion)
    if match:
        return f"synthetic {match.group(1)}"
    match = re.fullmatch(r"([a-z]+)(\d+|-d\d+)", lesion)
    return match.group(1) if match and match.group(1) in KINDS else lesion


FLOORS = ("floor_intensity", "floor_dark", "floor_median")
FLOOR_NAMES = {"floor_intensity": "bright", "floor_dark": "dark", "floor_median": "two-sided"}
"""The trivial floors: bright (x), dark (-x), two-sided (|x - brain median|)."""


def best_floor(results: Results, split: str, key: str | None = None) -> tuple[str, float, float] | None:
    """The floor with the highest AUPRC on ``split`` (pooled, or on lesion kind ``key``): (label, AUPRC, AUROC); None
    when no floor was scored."""
    best = None
    for name in FLOORS:
        label = BASELINE_LABELS[name]
        if label not in results or split not in results[label]:
            continue
        res = results[label][split]
        m = res["pooled"] if key is None else res.get("by_kind", {}).get(key)
        if m is not None and (best is None or m["auprc"] > best[1]):
            best = (label, float(m["auprc"]), float(m["auroc"]))
    return best


def kind_table(results: Results, split: str) -> str:
    """Markdown: per map, pooled AUROC and AUPRC and the AUPRC pooled over each lesion kind's volumes (``by_kind``),
    with the best floor of each column (bright, dark or two-sided: whichever is highest there) as the last row; a
    split without lesion kinds (real tumours) gets ``lesion_kind_table``."""
    scored = {label: res for label, res in results.items() if split in res}
    if not scored:
        raise ValueError(f"no result holds the split {split!r}")
    kinds = sorted({k for res in scored.values() for k in res[split].get("by_kind", {})})
    if not kinds:  # real tumours: one kind per scan
        return lesion_kind_table(results, split)
    rows = ["| map | AUROC | AUPRC | " + " | ".join(f"AUPRC {k}" for k in kinds) + " |",
            "|---" * (len(kinds) + 3) + "|"]
    for label, res in scored.items():
        by = res[split].get("by_kind", {})
        rows.append(f"| {_label_cell(label)} | {_fmt(res[split]['pooled']['auroc'])} | "
                    f"{_fmt(res[split]['pooled']['auprc'])} | "
                    + " | ".join(_fmt(by[k]["auprc"]) if k in by else "–" for k in kinds) + " |")
    best = [best_floor(results, split)] + [best_floor(results, split, k) for k in kinds]
    if best[0] is not None:
        short = {BASELINE_LABELS[n]: n for n in FLOORS}
        cells = [f"{_fmt(b[1])} ({FLOOR_NAMES[short[b[0]]]})" if b else "–" for b in best]
        rows.append(f"| **best floor** | {_fmt(best[0][2])} | " + " | ".join(cells) + " |")
    return (f"**{SPLIT_TITLES.get(split, split)}, by lesion kind** — AUPRC pooled over the voxels of each kind's "
            f"slices or volumes; the best floor per column last.\n\n" + "\n".join(rows))


def size_table(results: Results, split: str, metric: str = "auroc") -> str:
    """Markdown: per map, ``metric`` pooled over each lesion kind's volumes of each size class (``by_kind_size``:
    the inserted lesion's drawn diameter, ``evaluate.size_class``), smallest first: which lesions hold a map's pooled
    number down. Empty for a split without inserted lesions (real tumours)."""
    scored = {label: res[split] for label, res in results.items() if split in res}
    if not scored:
        raise ValueError(f"no result holds the split {split!r}")
    kinds = sorted({k for res in scored.values() for k in res.get("by_kind_size", {})})
    if not kinds:
        return ""
    classes = size_classes()
    rows = ["| map | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for label, res in scored.items():
        by = res.get("by_kind_size", {})
        cells = [" / ".join(_fmt(by[k][c][metric]) if c in by.get(k, {}) else "–" for c in classes) for k in kinds]
        rows.append(f"| {_label_cell(label)} | " + " | ".join(cells) + " |")
    return (f"**{SPLIT_TITLES.get(split, split)}, by lesion kind and size** — {metric.upper()} pooled over each "
            f"kind's lesions drawn {' / '.join(classes)} across.\n\n" + "\n".join(rows))


def lesion_kind_table(results: Results, split: str) -> str:
    """Markdown: per map (the results holding ``split``), the mean over volumes of the per-volume AUPRC, by lesion kind
    (``lesion_kind``), and the number of volumes of each kind: which lesions a map finds, where the pooled AUPRC is set
    by the largest ones."""
    scored = {label: res for label, res in results.items() if split in res}
    if not scored:
        raise ValueError(f"no result holds the split {split!r}")
    kinds: dict[str, int] = {}
    for kind in (lesion_kind(v["id"]) for v in next(iter(scored.values()))[split]["per_volume"]):
        kinds[kind] = kinds.get(kind, 0) + 1
    rows = ["| map | " + " | ".join(f"{k} ({n})" for k, n in kinds.items()) + " |", "|---" * (len(kinds) + 1) + "|"]
    for label, res in scored.items():
        by_kind: dict[str, list[float]] = {k: [] for k in kinds}
        for v in res[split]["per_volume"]:
            by_kind.setdefault(lesion_kind(v["id"]), []).append(float(v["auprc"]))
        rows.append(f"| {_label_cell(label)} | " + " | ".join(_fmt(float(np.mean(by_kind[k]))) for k in kinds) + " |")
    return (f"**{SPLIT_TITLES.get(split, split)}, by lesion kind** — mean per-volume AUPRC (volumes of each kind in "
            "brackets).\n\n" + "\n".join(rows))


def anoddpm_table(results: Results, splits: Sequence[str]) -> str:
    """Markdown: AnoDDPM's protocol (squared error >= 0.5, per-slice AUC over lesion slices)."""
    rows = ["| model | set | Dice | IoU | Precision | Recall | per-slice AUC |", "|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        for split in (s for s in splits if s in res):
            a = res[split]["anoddpm"]
            rows.append(f"| {label} | {split} | {_fmt(a['dice'])} | {_fmt(a['iou'])} | {_fmt(a['precision'])} | "
                        f"{_fmt(a['recall'])} | {_fmt(*a['per_slice_auroc'])} |")
    return ("**AnoDDPM protocol** (squared error ≥ 0.5, per-slice AUC over lesion slices; precision and recall as "
            "defined — AnoDDPM's own code swaps them):\n\n" + "\n".join(rows))


def curves_figure(results: Results, splits: Sequence[str]) -> plt.Figure:
    """ROC and precision-recall curves of every model and baseline, one row per split."""
    fig, axes = plt.subplots(len(splits), 2, figsize=(9, 3.6 * len(splits)), squeeze=False)
    for r, split in enumerate(splits):
        for label, res in results.items():
            if split not in res:
                continue
            ls = "--" if _is_baseline(label) else "-"
            fpr_, tpr_ = res[split]["curves"]["roc"]
            rec_, prec_ = res[split]["curves"]["pr"]
            axes[r, 0].plot(fpr_, tpr_, ls, label=f"{label} (AUC {res[split]['pooled']['auroc']:.3f})")
            axes[r, 1].plot(rec_, prec_, ls, label=f"{label} (AP {res[split]['pooled']['auprc']:.3f})")
        axes[r, 0].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[r, 0].set(title=f"{split}: ROC", xlabel="false-positive rate", ylabel="true-positive rate")
        axes[r, 1].set(title=f"{split}: precision–recall", xlabel="recall", ylabel="precision")
        for a in axes[r]:
            a.legend(fontsize=6)
    fig.tight_layout()
    return fig


def montage_figure(scored: Mapping[str, Sequence[ScoredVolume]]) -> plt.Figure | None:
    """Per volume (rows), at its slice with the most lesion: input, ground truth, then reconstruction and map of each
    model (same map colour scale for all); None when nothing was scored."""
    labels = [label for label in scored if scored[label]]
    if not labels:
        return None
    n_vol = len(scored[labels[0]])
    cols = 2 + 2 * len(labels)
    fig, axes = plt.subplots(n_vol, cols, figsize=(1.8 * cols, 1.9 * n_vol), squeeze=False)
    vmax = max(float(np.percentile(v.amap[v.brain], 99.5)) if v.brain.any() else 1.0
               for label in labels for v in scored[label])
    for i in range(n_vol):
        ref = scored[labels[0]][i]
        k = int(np.argmax(ref.lesion.sum((0, 1))))
        show_slice(axes[i, 0], ref.image[:, :, k], title=f"{ref.id}: input" if i == 0 else ref.id)
        show_slice(axes[i, 1], ref.lesion[:, :, k].astype(float), vmin=0, vmax=1, title="ground truth")
        for j, label in enumerate(labels):
            v = scored[label][i]
            short = label.split(" (")[0]
            show_slice(axes[i, 2 + 2 * j], v.reconstruction[:, :, k], title=f"{short}: recon" if i == 0 else None)
            show_slice(axes[i, 3 + 2 * j], v.amap[:, :, k], cmap="inferno", vmin=0, vmax=vmax,
                       title=f"{short}: map" if i == 0 else None, contour=v.lesion[:, :, k], contour_colour="c")
    fig.tight_layout()
    return fig


def reading(results: Results, infos: Mapping[str, Mapping[str, Any]], splits: Sequence[str]) -> str:
    """The result in words: ADDM against DDPM (pooled AUPRC, read against the per-volume spread) and every model
    against the intensity floor."""
    lines = []
    diffusion = [label for label in results if infos[label].get("kind") == "diffusion"]
    addm = [label for label in diffusion if infos[label]["lambda_adv"] > 0]
    ddpm = [label for label in diffusion if infos[label]["lambda_adv"] == 0]
    weight = {label: infos[label].get("intensity_weight", 0.0) for label in diffusion}

    def same_map(a: str, d: str) -> bool:  # the same map against the same map: fusion weight, normative or not
        return weight[a] == weight[d] and ("normative" in infos[a]) == ("normative" in infos[d])

    for split in splits:
        for a in addm:
            for d in (d for d in ddpm if same_map(a, d) and split in results[a] and split in results[d]):
                pa, pd = results[a][split]["pooled"]["auprc"], results[d][split]["pooled"]["auprc"]
                (ma, sa), (md, sd) = (results[x][split]["per_volume_summary"]["auprc"] for x in (a, d))
                word = verdict(pa - pd, max(sa, sd), spread_name="per-volume spread")
                lines.append(f"- {split}: {a} pooled AUPRC {pa:.3f} vs {d} {pd:.3f} → ADDM vs DDPM: **{word}** "
                             f"(per-volume AUPRC {ma:.3f} ± {sa:.3f} vs {md:.3f} ± {sd:.3f}).")
        best = best_floor(results, split)
        if best is None:
            continue
        floor, f_auprc, f_auroc = best
        for label in results:
            if label in (BASELINE_LABELS[n] for n in FLOORS) or split not in results[label]:
                continue
            p = results[label][split]["pooled"]
            beats = "beats" if p["auprc"] > f_auprc else "does **not** beat"
            lines.append(f"- {split}: {label} {beats} the best floor, {floor} (AUPRC {p['auprc']:.3f} vs "
                         f"{f_auprc:.3f}, AUROC {p['auroc']:.3f} vs {f_auroc:.3f}).")
    fused = sorted({w for label in results if (w := infos[label].get("intensity_weight", 0.0))})
    if fused:
        lines.append(f"- A map fused with the intensity (w = {', '.join(f'{w:g}' for w in fused)}) holds the floor's "
                     f"map: it beats the floor only where its residual adds what the intensity lacks. Read it against "
                     f"the same model's residual alone, and against the autoencoders fused at the same weight."
                     + (" By the max rule (`fusion: max`) it is the larger of that fused map and the residual alone, "
                        "each read against the healthy brains." if any(i.get("fusion") == "max" for i in infos.values())
                        else ""))
    return ("One training seed per model, one evaluation seed; the spread is across volumes, not seeds (the ablation "
            "and lever notebooks repeat training over seeds).\n\n" + "\n".join(lines))


def kind_figure(scored: Mapping[str, Sequence[ScoredVolume]], kind: str, examples: int = 3) -> plt.Figure | None:
    """Lesions of one ``kind`` (``meta["lesion_kind"]``), the first ``examples`` volumes with it (rows): the input
    with the lesion outlined, then each map's reconstruction and map at the slice with the most lesion. A healed
    lesion comes back in the reconstruction as the tissue around it; a copied one comes back as it is. None when no
    volume has that kind."""
    labels = [label for label in scored if scored[label]]
    if not labels:
        return None
    picks = [i for i, v in enumerate(scored[labels[0]]) if v.volume.meta.get("lesion_kind") == kind][:examples]
    if not picks:
        return None
    cols = 1 + 2 * len(labels)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 2.0 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        ref = scored[labels[0]][i]
        k = int(np.argmax(ref.lesion.sum((0, 1))))
        show_slice(axes[r, 0], ref.image[:, :, k], title=f"{kind}: {ref.id}", contour=ref.lesion[:, :, k],
                   contour_colour="r")
        for j, label in enumerate(labels):
            v = scored[label][i]
            short = label.split(" (")[0]
            vmax = float(np.percentile(v.amap[v.brain], 99.5)) if v.brain.any() else 1.0
            show_slice(axes[r, 1 + 2 * j], v.reconstruction[:, :, k], title=f"{short}: recon" if r == 0 else None,
                       contour=v.lesion[:, :, k], contour_colour="c")
            show_slice(axes[r, 2 + 2 * j], v.amap[:, :, k], cmap="inferno", vmin=0, vmax=max(vmax, 1e-6),
                       title=f"{short}: map" if r == 0 else None, contour=v.lesion[:, :, k], contour_colour="c")
    fig.tight_layout()
    return fig


def save_kind_figures(shown: Mapping[str, Mapping[str, Sequence[ScoredVolume]]], splits: Sequence[str],
                      folder: Path) -> list[Path]:
    """``kind_figure`` of every lesion kind on each of ``splits`` that was scored (``shown``: row label -> split ->
    scored volumes, as ``evaluate_run`` returns them), saved as ``folder/kind_<split>_<kind>.png``."""
    from .data.lesion_kinds import KINDS

    written = []
    for split in splits:
        volumes = {label: sets.get(split, []) for label, sets in shown.items()}
        for kind in KINDS:
            fig = kind_figure(volumes, kind)
            if fig is not None:
                written.append(folder / f"kind_{split}_{kind}.png")
                fig.savefig(written[-1], dpi=110)
    return written

"""Evaluation protocol: score the prepared sets with one model, calibrate on healthy data, measure, write maps.

For each model:

1. Score the healthy validation brains (never trained on) and post-process their maps exactly like the test maps.
   The decision threshold is the one with a chosen false-positive rate (``fpr``) on those healthy brain voxels
   (the whole brain mask, eroded rim included). Set B's volumes are those same brains with inserted lesions, so a
   set-B volume is thresholded with the calibration of the *other* healthy brains only (leave-one-host-out); set A
   uses all of them. Nothing from an evaluated volume's own brain is used to pick its threshold, nor, with intensity
   fusion (``intensity_weight``), to scale its map.
2. Score every volume of each evaluation set, post-process, and accumulate a streaming histogram of scores of
   lesion and non-lesion brain voxels: pooled AUROC, AUPRC and best-possible Dice (an upper bound, *tuned on the test
   set*, reported as such), and Dice / IoU / precision / recall at the calibrated threshold.
3. Per volume and per lesion slice the same metrics, summarised as mean +- std.
4. Optionally the AnoDDPM protocol: squared error, threshold 0.5, per-slice AUROC averaged over slices holding
   lesion, with precision and recall as defined (AnoDDPM's code swaps them).
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

from .baselines import (ae_error_maps, dae_error_maps, dark_floor, intensity_floor, median_floor, train_autoencoder,
                        train_dae)
from .config import EvalConfig
from .data.prepare import CALIBRATION_SPLIT, PreparedDataset, PreparedVolume
from .data.preprocess import LANDMARK_PERCENTILES
from .detect import fast_denoiser, score_volume, to_native_nifti
from .diffusion import GaussianDiffusion, SamplerName, resolve_steps
from .fileio import write_json_atomic
from .metrics import BinnedScores, calibrate_threshold, confusion, mean_std, overlap_metrics
from .models import build_diffusion, campaign_models_root, load_ema_unet, model_dir, recorded_checkpoint, trained_on
from .noise import noise_from_config, zero_noise
from .normative import POPULATION, Z_UNIT, NormativeAtlas
from .post_processing import (FUSION_QUANTILE, check_fusion_quantile, fuse_intensity, gaussian_filter, intensity_scale,
                              max_fusion, median_filter, remove_small_components, restrict_to_brain)
from .runtime import amp_dtype, resolve_amp

SCORE_RANGE = (0.0, 2.0)  # |x - x_hat| for images in [-1, 1]
FusionRule = Literal["sum", "max"]


@dataclass(frozen=True)
class PostProcessing:
    """Switches for ``post_processing``; erode_mm = 0, median_size <= 1, min_component_voxels <= 1, gaussian_sigma = 0
    turn steps off; ``median_in_plane``: the median window lies in each slice's plane instead of spanning the stack of
    scored slices; ``gaussian_sigma``: an in-plane Gaussian filter (pixels) after the median."""

    erode_mm: float = 3.0
    median_size: int = 3
    min_component_voxels: int = 5
    median_in_plane: bool = False
    gaussian_sigma: float = 0.0

    @classmethod
    def of(cls, cfg: EvalConfig) -> "PostProcessing":
        """The post-processing that ``cfg`` asks for."""
        return cls(cfg.brain_erode_mm, cfg.median_size, cfg.min_component_voxels, cfg.median_in_plane,
                   cfg.gaussian_sigma)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "PostProcessing":
        """The post-processing a ``detector.json`` names (``detector_record``); a key it lacks (a record written
        before the key existed) keeps its default, as such a run was made: ``median_in_plane`` False, the cube;
        ``gaussian_sigma`` 0, no Gaussian."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


@dataclass
class ScoredVolume:
    """A volume's scored slices (compact: N x N x S), after post-processing."""

    id: str
    split: str
    slices: np.ndarray
    image: np.ndarray
    reconstruction: np.ndarray
    amap: np.ndarray
    squared: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray
    volume: PreparedVolume = field(repr=False)
    raw: np.ndarray | None = field(default=None, repr=False)  # the map before post-processing
    spacing: np.ndarray | None = field(default=None, repr=False)  # mm per voxel of the compact stack


Scorer = Callable[[PreparedVolume, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def use_channels_last(setting: str, device: torch.device) -> bool:
    """"on", "off", or "auto": on for CPU scoring, where notebooks/06_benchmark.ipynb measured it faster."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cpu")


def diffusion_scorer(checkpoint: str | Path, t_star: int | Sequence[int], steps: int, sampler: SamplerName,
                     noise: str, draws: int, batch_size: int, seed: int, device: torch.device,
                     channels_last: bool = False, amp: str = "off",
                     patch_stride: int = 0, residual: str = "abs") -> tuple[Scorer, dict[str, Any]]:
    """A scorer (volume, slices) -> (reconstruction, |x - x_hat|, (x - x_hat)^2) for a trained diffusion model.

    ``t_star``: one depth, or several whose maps are averaged (an ensemble); ``amp``: "auto", "off", "bf16", "fp16"
    for the network's forward pass (``runtime.resolve_amp``; the diffusion maths stays fp32). A model trained with
    ``patch_size`` is scored patch-wise (pDDPM) on a grid of ``patch_stride`` (0: half the patch). ``residual``:
    "abs" (|x - x_hat|) or "positive" (max(x - x_hat, 0)). ``noise``: "model" (the noise it was trained with), a noise
    name, or "none": the input enters unnoised (``zero_noise``; deterministic, so one draw)."""
    unet, cfg = load_ema_unet(checkpoint, device)
    amp_choice = resolve_amp(amp, device)
    eps = fast_denoiser(unet, channels_last, amp_dtype(amp_choice))
    diffusion: GaussianDiffusion = build_diffusion(cfg)
    depths = [t_star] if isinstance(t_star, int) else list(t_star)
    bad = [t for t in depths if not 1 <= t <= cfg.num_steps]
    if bad or not depths:
        raise ValueError(f"t_star {bad or depths} is outside [1, T={cfg.num_steps}] of {checkpoint}")
    noise_name = cfg.noise if noise == "model" else noise
    noise_fn = zero_noise if noise_name == "none" else noise_from_config(cfg, noise_name)
    gen = torch.Generator(device=device).manual_seed(seed)
    patch = (cfg.patch_size, patch_stride or max(1, cfg.patch_size // 2)) if cfg.patch_size else None

    def score(vol: PreparedVolume, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = score_volume(eps, diffusion, vol.image, slices, depths, steps, sampler, noise_fn, draws, batch_size,
                         gen, device, patch, residual, cfg.unet_condition_channels > 0)  # type: ignore[arg-type]
        return s.reconstruction, s.abs_error, s.squared_error

    info = {"kind": "diffusion", "checkpoint": str(checkpoint), "T": cfg.num_steps,
            "t_star": depths[0] if len(depths) == 1 else depths, "steps": resolve_steps(steps, max(depths)),
            "sampler": sampler, "noise": noise_name, "draws": draws,
            "lambda_adv": cfg.lambda_adv, "train_seed": cfg.seed, "eval_seed": seed, "channels_last": channels_last,
            "amp": amp_choice, "patch": list(patch) if patch else None, "residual": residual,
            **({"conditioned_on_input": True} if cfg.unet_condition_channels else {})}
    return score, info


MIX_QUANTILE = 0.99
"""The healthy quantile that each map of a mix (``mixed_scorer``) is read against."""
MIX_CALIBRATION = "ixi_calib"
"""The healthy split a mix's scales are set on: the IXI calibration individuals, never the host of an evaluated
volume (set B's hosts are the ``val_healthy`` brains)."""


def mixed_scorer(parts: Sequence[Scorer], scales: Sequence[float], weights: Sequence[float] | None = None,
                 reconstruction_of: int = -1) -> Scorer:
    """The calibrated weighted mean of several maps of one input: m = s_1 sum_i w_i r_i / s_i / sum_i w_i, each map r_i
    read in units of its healthy scale s_i (``mix_scales``), the result in the first map's units; ``weights`` None:
    all 1. The reconstruction and squared error are part ``reconstruction_of``'s (by default the last:
    ``with_deep_map``'s deep estimate, the one that heals). A shallow map (edges, texture, bright lesions) and a deep
    one (healed dark lesions and ring cores) count alike, where their plain mean is ruled by the deep map's larger
    residual everywhere."""
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(parts) != len(scales) or len(parts) != len(weights) or not parts:
        raise ValueError(f"a mix needs one scale and one weight per map: {len(parts)} maps, {len(scales)} scales, "
                         f"{len(weights)} weights")
    if not all(s > 0 for s in scales):
        raise ValueError(f"a mix's scales must be > 0, got {list(scales)}")
    if not all(w >= 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"a mix's weights must be >= 0 and not all 0, got {weights}")

    def score(vol: PreparedVolume, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outs = [part(vol, slices) for part in parts]
        amap = scales[0] * sum(w * o[1] / s for o, s, w in zip(outs, scales, weights)) / sum(weights)
        return outs[reconstruction_of][0], amap.astype(np.float32), outs[reconstruction_of][2]

    return score


def mix_scales(parts: Sequence[Scorer], healthy: Sequence[PreparedVolume], pp: PostProcessing,
               quantile: float = MIX_QUANTILE) -> list[float]:
    """Each map's scale s_i: the ``quantile`` of its raw map over the healthy brains' voxels that the post-processing
    keeps (``pp``: the brain eroded by ``erode_mm``)."""
    vols = list(healthy)
    if not vols:
        raise ValueError(f"no healthy brains to set a mix's scales on: split {MIX_CALIBRATION!r} is empty; a mix "
                         f"(deep_t_star_ensemble) needs the IXI calibration individuals: prepare the data with ixi: "
                         f"benchmark or train")
    scales = []
    for part in parts:
        scored = score_split(part, vols, 1, pp)
        scales.append(float(np.quantile(np.concatenate([v.raw[_kept(v, pp)] for v in scored]), quantile)))
    if not all(s > 0 for s in scales):
        raise ValueError(f"a map of the mix is zero on the healthy brains (scales {scales}): it cannot be calibrated")
    return scales


def with_deep_map(scorer: Scorer, info: Mapping[str, Any], checkpoint: str | Path, depths: Sequence[int],
                  draws: int, batch_size: int, seed: int, device: torch.device, channels_last: bool, amp: str,
                  residual: str, pp: PostProcessing, healthy: Sequence[PreparedVolume] = (),
                  scales: Sequence[float] | None = None) -> tuple[Scorer, dict[str, Any]]:
    """``scorer``'s map mixed (``mixed_scorer``) with the model's deep map: the one-step estimate x0_hat from the
    input noised with the model's noise at each of ``depths``, its residual averaged over depths and ``draws`` (the
    t* ensemble). The scales are given (a detector's record) or set on ``healthy`` (``mix_scales``)."""
    deep, _ = diffusion_scorer(checkpoint, [int(t) for t in depths], 1, "ddpm", "model", draws, batch_size, seed,
                               device, channels_last, amp, 0, residual)
    if scales is None:
        scales = mix_scales([scorer, deep], healthy, pp)
    mixed = mixed_scorer([scorer, deep], scales)
    return mixed, {**info, "mix": {"deep_t_star": [int(t) for t in depths], "deep_draws": draws,
                                   "scales": [float(s) for s in scales], "quantile": MIX_QUANTILE,
                                   "set_on": MIX_CALIBRATION}}


NORMATIVE_SETS = ("ixi_tune", "ixi_test")
"""The evaluation sets whose slices the normative atlas describes (the IXI individuals'; calibrated on
``ixi_calib``)."""


def fit_atlas(data: PreparedDataset, rounds: int = 0, neighbours: int = 0) -> NormativeAtlas:
    """The normative atlas (``normative.NormativeAtlas``, with ``rounds`` of groupwise registration and over the
    ``neighbours`` nearest slices) of the population's training slices: the IXI training individuals' healthy
    mid-axial slices, never an evaluated individual's."""
    ids = [m["id"] for m in data.manifest["volumes"]["train"] if m.get("dataset") == POPULATION]
    if len(ids) < 2:
        raise ValueError(f"the normative atlas is fitted on the {POPULATION} training slices, and the data holds "
                         f"{len(ids)}: prepare it with ixi: train")
    train = data.slices("train", ids)
    return NormativeAtlas.fit(train["image"], train["brain"], rounds=rounds, neighbours=neighbours)


def normative_scorer(atlas: NormativeAtlas, bounded: bool = False) -> Scorer:
    """The atlas as a scorer: reconstruction mu and map z = |x - mu| / max(sigma, sigma_floor), both on the slice's
    grid (``NormativeAtlas.reference``, ``deviation``), squared error z^2; ``bounded``: the map 2 tanh(z / Z_UNIT), z's ranking
    inside the score range (the baseline's row)."""

    def score(vol: PreparedVolume, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        atlas.check_population(vol.id, vol.meta.get("dataset"), vol.image.shape)
        z = atlas.deviation(vol.image)
        rec = atlas.reference(vol.image[:, :, 0])[0][:, :, None].astype(np.float32)  # the same reading, remembered
        return rec, (2.0 * np.tanh(z / Z_UNIT) if bounded else z).astype(np.float32), z ** 2

    return score


def with_normative(scorer: Scorer, info: Mapping[str, Any], atlas: NormativeAtlas, weight: float,
                   healthy: Sequence[PreparedVolume], pp: PostProcessing) -> tuple[Scorer, dict[str, Any]]:
    """``scorer``'s map fused with the atlas's deviation z on the population's slices: m = s_r (r / s_r + w z / s_z) /
    (1 + w), each read in units of its 99th percentile on the ``healthy`` slices (``mix_scales``); the reconstruction
    stays the model's."""
    parts = [scorer, normative_scorer(atlas)]
    scales = mix_scales(parts, healthy, pp)
    return mixed_scorer(parts, scales, [1.0, weight], reconstruction_of=0), {
        **info, "normative": {"weight": weight, "scales": [float(s) for s in scales], "quantile": MIX_QUANTILE,
                              "set_on": MIX_CALIBRATION, "sd_floor": atlas.sd_floor,
                              "fitted_on_slices": int(atlas.count.max()), "fit": atlas.describe()}}


def post_process(amap: np.ndarray, brain: np.ndarray, spacing: np.ndarray, pp: PostProcessing) -> np.ndarray:
    """Median filter, in-plane Gaussian filter, then restriction to the eroded brain (all on the compact stack of
    scored slices)."""
    smoothed = gaussian_filter(median_filter(amap, pp.median_size, pp.median_in_plane), pp.gaussian_sigma)
    return restrict_to_brain(smoothed, brain, pp.erode_mm, tuple(spacing))


def score_split(scorer: Scorer, volumes: Iterable[PreparedVolume], slice_stride: int, pp: PostProcessing,
                progress: Callable[..., Any] | None = None) -> list[ScoredVolume]:
    """Score every ``slice_stride``-th selected slice of each volume and post-process the maps."""
    vols = list(volumes)
    out = []
    for vol in (progress(vols, desc="scoring") if progress else vols):
        slices = vol.slices[::slice_stride]
        rec, err, sq = scorer(vol, slices)
        spacing = np.sqrt((vol.affine[:3, :3] ** 2).sum(0))
        spacing[2] *= slice_stride
        brain = vol.brain[:, :, slices]
        lesion = vol.lesion[:, :, slices] if vol.lesion is not None else np.zeros_like(brain)
        amap = post_process(err[:, :, slices], brain, spacing, pp)
        out.append(ScoredVolume(vol.id, vol.split, slices, vol.image[:, :, slices], rec[:, :, slices], amap,
                                sq[:, :, slices], brain, lesion, vol, err[:, :, slices], spacing))
    return out


def _kept(v: ScoredVolume, pp: PostProcessing) -> np.ndarray:
    """The voxels of ``v`` that the post-processing keeps (its brain eroded by ``pp.erode_mm``)."""
    if v.raw is None or v.spacing is None:
        raise ValueError(f"healthy volume {v.id!r} holds no raw map: score it with score_split")
    return restrict_to_brain(np.ones(v.brain.shape, np.float32), v.brain, pp.erode_mm, tuple(v.spacing)) > 0


def healthy_moments(healthy: list[ScoredVolume], pp: PostProcessing) -> dict[str, np.ndarray]:
    """Per healthy brain, (n, sum r, sum r^2, sum x, sum x^2) of its raw map r and its input x over the voxels the
    post-processing keeps (the brain eroded by ``pp.erode_mm``): the spreads that ``fusion_scale`` needs."""
    out = {}
    for v in healthy:
        kept = _kept(v, pp)
        r, x = v.raw[kept].astype(np.float64), v.image[kept].astype(np.float64)  # type: ignore[index]
        out[v.id] = np.array([r.size, r.sum(), (r * r).sum(), x.sum(), (x * x).sum()])
    return out


def fusion_scale(moments: dict[str, np.ndarray], weight: float, exclude: str | None = None) -> float:
    """c of ``fuse_intensity`` for ``weight``: the standard deviations of the raw map and of the input over the healthy
    brains other than ``exclude`` (a set-B volume's host, as for its threshold)."""
    kept = [m for vid, m in moments.items() if vid != exclude]
    if not kept or sum(m[0] for m in kept) < 2:
        raise ValueError(f"no healthy brain other than {exclude!r} to set the intensity fusion's scale on")
    n, sr, srr, sx, sxx = np.sum(kept, axis=0)
    return intensity_scale(float(np.sqrt(max(srr / n - (sr / n) ** 2, 0.0))),
                           float(np.sqrt(max(sxx / n - (sx / n) ** 2, 0.0))), weight)


@dataclass(frozen=True)
class FusionParams:
    """How a map is fused with its input: ``scale`` (c of ``fuse_intensity``) and, for the max rule, ``anchors``
    ((f_med, f_q), (r_med, r_q)) of ``max_fusion``; None for the sum."""

    scale: float
    anchors: tuple[tuple[float, float], tuple[float, float]] | None = None


def fusion_params(healthy: list[ScoredVolume], moments: dict[str, np.ndarray], weight: float, pp: PostProcessing,
                  rule: FusionRule = "sum", quantile: float = FUSION_QUANTILE,
                  exclude: str | None = None) -> FusionParams:
    """The fusion of a map whose host is ``exclude``, set on the other healthy brains only. "sum": m ranks voxels by
    z(r) + w z(x) (``fuse_intensity``); "max": the larger of that and the residual alone, each read against the healthy
    brains' median and ``quantile`` (``max_fusion``)."""
    scale = fusion_scale(moments, weight, exclude)
    if rule == "sum":
        return FusionParams(scale)
    if rule != "max":
        raise ValueError(f"fusion must be 'sum' or 'max', got {rule!r}")
    check_fusion_quantile(quantile)
    fused, raw = [], []
    for v in healthy:
        if v.id != exclude:
            kept = _kept(v, pp)
            raw.append(v.raw[kept].astype(np.float64))  # type: ignore[index]
            fused.append(fuse_intensity(raw[-1], v.image[kept].astype(np.float64), scale))
    f_med, f_q = np.quantile(np.concatenate(fused), [0.5, quantile])
    r_med, r_q = np.quantile(np.concatenate(raw), [0.5, quantile])
    return FusionParams(scale, ((float(f_med), float(f_q)), (float(r_med), float(r_q))))


def fuse_split(vols: list[ScoredVolume], params: Callable[[str | None], FusionParams], pp: PostProcessing,
               own_brain: bool = False) -> dict[str, float]:
    """In place: each volume's map becomes its raw map fused with its input (``fused_map``), post-processed again.
    ``params(host)``: the fusion set without the volume's host (``meta["host"]``), or with every healthy brain when
    ``own_brain`` (the healthy brains themselves, which are calibration data). Returns the scale used per volume id."""
    scales = {}
    for v in vols:
        fp = params(None if own_brain else v.volume.meta.get("host"))
        v.amap = fused_map(v, fp, pp)
        scales[v.id] = round(fp.scale, 6)
    return scales


def fused_map(v: ScoredVolume, fusion: FusionParams, pp: PostProcessing) -> np.ndarray:
    """The volume's raw map fused with its input (``fuse_intensity``, then ``max_fusion`` for the max rule), then
    post-processed."""
    if v.raw is None or v.spacing is None:
        raise ValueError(f"volume {v.id!r} holds no raw map: score it with score_split")
    amap = fuse_intensity(v.raw, v.image, fusion.scale)
    if fusion.anchors is not None:
        amap = max_fusion(amap, v.raw, *fusion.anchors, high=SCORE_RANGE[1])
    return post_process(amap, v.brain, v.spacing, pp)


def healthy_histograms(healthy: list[ScoredVolume], maps: Mapping[str, np.ndarray] | None = None,
                       ) -> dict[str, BinnedScores]:
    """Per healthy brain, the histogram of its (post-processed) map over its brain voxels (``maps[id]`` in place of
    the volume's own map where given)."""
    out = {}
    for v in healthy:
        hist = BinnedScores(*SCORE_RANGE)
        hist.update(v.amap if maps is None else maps[v.id], np.zeros_like(v.brain), v.brain)
        out[v.id] = hist
    return out


def calibrate(hists: dict[str, BinnedScores], fpr: float, exclude: str | None = None) -> float:
    """Threshold with false-positive rate ``fpr`` on the healthy brains except ``exclude`` (a set-B volume's host)."""
    pooled = BinnedScores(*SCORE_RANGE)
    for vid, hist in hists.items():
        if vid != exclude:
            pooled.merge(hist)
    if pooled.neg.sum() == 0:
        raise ValueError(f"no healthy brain other than {exclude!r} to calibrate on: hold out at least two hosts")
    return calibrate_threshold(pooled, fpr)


SIZE_EDGES_MM = (10.0, 17.0)
"""Where an inserted lesion's drawn diameter changes size class (``size_class``): about a third of the 4-25 mm
lesions in each."""


def size_classes(edges: Sequence[float] = SIZE_EDGES_MM) -> list[str]:
    """The size classes' names, smallest first: "<10 mm", "10-17 mm", ">=17 mm" for ``edges`` (10, 17)."""
    return [f"<{edges[0]:g} mm", *(f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:])), f">={edges[-1]:g} mm"]


def size_class(diameter_mm: float, edges: Sequence[float] = SIZE_EDGES_MM) -> str:
    """The size class (``size_classes``) of a lesion drawn ``diameter_mm`` across; an edge opens the next class."""
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise ValueError(f"a lesion's diameter must be a positive number of mm, got {diameter_mm!r}")
    return size_classes(edges)[bisect.bisect_right(list(edges), diameter_mm)]


def _lesion_diameter(volume: PreparedVolume | None) -> float | None:
    """The drawn diameter of the one lesion inserted into ``volume`` (``meta["lesion"]["diameter_mm"]``); None for
    a real tumour or a volume without one."""
    lesion = volume.meta.get("lesion") if volume is not None else None
    return float(lesion["diameter_mm"]) if isinstance(lesion, Mapping) and "diameter_mm" in lesion else None


def _summary(b: BinnedScores) -> dict[str, Any]:
    return {"auroc": b.auroc(), "auprc": b.auprc(), "best_dice": b.best_dice()[0], "lesion_voxels": int(b.pos.sum())}


def measure(scored: list[ScoredVolume], thresholds: dict[str, float], pp: PostProcessing,
            anoddpm: bool = True) -> dict[str, Any]:
    """Pooled and per-volume/per-slice metrics of one evaluation set, each volume at ``thresholds[id]``; ``by_host``:
    AUROC, AUPRC and best Dice pooled over the volumes of each host brain (lesions inserted into a host; a set whose
    volumes name no host has none), so that a split of several hosts shows whether they agree; ``by_kind`` the same
    per lesion kind (``meta["lesion_kind"]``: hypo, ring, hyper, iso; none for real tumours); ``by_kind_size`` the
    same per kind and per size class of the inserted lesion's drawn diameter (``size_class``), and ``by_size`` per
    size class over all kinds."""
    pooled = BinnedScores(*SCORE_RANGE)
    hosts: dict[str, BinnedScores] = {}
    kinds: dict[str, BinnedScores] = {}
    kind_sizes: dict[str, dict[str, BinnedScores]] = {}
    sizes: dict[str, BinnedScores] = {}
    tp = fp = fn = 0
    per_volume, per_slice_dice, slice_auc, a_counts = [], [], [], [0, 0, 0]
    for v in scored:
        region = v.brain
        pred = remove_small_components((v.amap >= thresholds[v.id]) & region, pp.min_component_voxels)
        c = confusion(pred[region], v.lesion[region])
        tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
        hist = BinnedScores(*SCORE_RANGE, bins=2000)
        hist.update(v.amap, v.lesion, region)
        pooled.update(v.amap, v.lesion, region)
        if v.volume is not None and (host := v.volume.meta.get("host")) is not None:
            hosts.setdefault(host, BinnedScores(*SCORE_RANGE)).update(v.amap, v.lesion, region)
        if v.volume is not None and (kind := v.volume.meta.get("lesion_kind")) is not None:
            kinds.setdefault(kind, BinnedScores(*SCORE_RANGE)).update(v.amap, v.lesion, region)
            if (diameter := _lesion_diameter(v.volume)) is not None:
                size = size_class(diameter)
                kind_sizes.setdefault(kind, {}).setdefault(size, BinnedScores(*SCORE_RANGE)).update(
                    v.amap, v.lesion, region)
                sizes.setdefault(size, BinnedScores(*SCORE_RANGE)).update(v.amap, v.lesion, region)
        per_volume.append({"id": v.id, **overlap_metrics(*c[:3]), "auroc": hist.auroc(), "auprc": hist.auprc(),
                           "best_dice": hist.best_dice()[0], "lesion_voxels": int(v.lesion.sum()),
                           "threshold": thresholds[v.id], "warnings": hist.warnings()})
        for k in range(v.lesion.shape[2]):
            if (v.lesion[:, :, k] & region[:, :, k]).any():
                inside = region[:, :, k]
                c_k = confusion(pred[:, :, k][inside], v.lesion[:, :, k][inside])
                per_slice_dice.append(overlap_metrics(*c_k[:3])["dice"])
        if anoddpm:
            sq_pred = v.squared >= 0.5
            a = confusion(sq_pred & region, v.lesion & region)
            a_counts = [a_counts[0] + a[0], a_counts[1] + a[1], a_counts[2] + a[2]]
            for k in range(v.lesion.shape[2]):
                if v.lesion[:, :, k].any():
                    h = BinnedScores(0.0, 4.0, bins=2000)
                    h.update(v.squared[:, :, k], v.lesion[:, :, k], region[:, :, k])
                    slice_auc.append(h.auroc())
    best, best_thr = pooled.best_dice()
    result: dict[str, Any] = {
        "pooled": {**overlap_metrics(tp, fp, fn), "auroc": pooled.auroc(), "auprc": pooled.auprc(),
                   "best_dice": best, "best_dice_threshold": best_thr,
                   "lesion_voxels": int(pooled.pos.sum()), "healthy_voxels": int(pooled.neg.sum())},
        "per_volume": per_volume,
        "by_host": {h: _summary(b) for h, b in sorted(hosts.items())},
        "by_kind": {k: _summary(b) for k, b in sorted(kinds.items())},
        "by_kind_size": {k: {c: _summary(by[c]) for c in size_classes() if c in by}
                         for k, by in sorted(kind_sizes.items())},
        "by_size": {c: _summary(sizes[c]) for c in size_classes() if c in sizes},
        "per_volume_summary": {k: mean_std([p[k] for p in per_volume])
                               for k in ("dice", "iou", "precision", "recall", "auroc", "auprc", "best_dice")},
        "per_slice_dice": mean_std(per_slice_dice) + (len(per_slice_dice),),
        "curves": {"roc": [a.tolist() for a in _thin(*pooled.roc_curve())],
                   "pr": [a.tolist() for a in _thin(*pooled.pr_curve())]},
    }
    if anoddpm:
        result["anoddpm"] = {**overlap_metrics(*a_counts), "per_slice_auroc": mean_std(slice_auc)}
    return result


def _thin(x: np.ndarray, y: np.ndarray, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of a curve, for plotting and JSON."""
    if len(x) <= n:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return x[idx], y[idx]


def write_maps(scored: ScoredVolume, out_dir: Path, native: bool) -> list[Path]:
    """NIfTI files of one volume on the preprocessed grid (input, reconstruction, map, lesion, brain; unscored slices
    are 0) and, when ``native`` and the volume came from a real scan, the map on the input's own grid."""
    vol = scored.volume
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {name: np.zeros(vol.image.shape, dtype=np.float32) for name in ("recon", "map")}
    full["recon"][:, :, scored.slices] = scored.reconstruction
    full["map"][:, :, scored.slices] = scored.amap
    written = []
    arrays = {"input": vol.image, "recon": full["recon"], "map": full["map"], "brain": vol.brain.astype(np.uint8)}
    if vol.lesion is not None:
        arrays["lesion"] = vol.lesion.astype(np.uint8)
    for name, arr in arrays.items():
        path = out_dir / f"{scored.id}_{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, vol.affine), str(path))
        written.append(path)
    if native and "native_affine" in vol.meta and not vol.meta.get("synthetic"):
        path = out_dir / f"{scored.id}_map_native.nii.gz"
        to_native_nifti(full["map"], vol.affine, np.asarray(vol.meta["native_affine"]),
                        tuple(vol.meta["native_shape"]), path)
        written.append(path)
    return written


def evaluate_model(scorer: Scorer, data: PreparedDataset, eval_sets: Iterable[str], slice_stride: int, fpr: float,
                   pp: PostProcessing, anoddpm: bool, maps_dir: Path | None,
                   progress: Callable[..., Any] | None = None,
                   intensity_weight: float = 0.0, fusion: FusionRule = "sum",
                   fusion_quantile: float = FUSION_QUANTILE) -> tuple[dict[str, Any], dict[str, list[ScoredVolume]]]:
    """Calibrate on each set's healthy split (``CALIBRATION_SPLIT``: ``ixi_calib`` for the IXI sets, else
    ``val_healthy``), then measure each set; returns (metrics, scored volumes per split). The calibration of
    ``val_healthy`` (or, without a set it calibrates, the first one) is at the top level of the metrics
    (``threshold``, ``thresholds_without_host``, ``intensity_fusion``); every calibration is under ``calibration``,
    keyed by its healthy split.

    ``intensity_weight`` w > 0 fuses every map with the input's intensity before post-processing (``fuse_intensity``:
    before the median filter, voxels ranked by z(r) + w z(x), z-scores over the healthy brains); ``fusion`` "max"
    then takes the larger of that and the residual alone, each read against its healthy-brain median and
    ``fusion_quantile`` (``fusion_params``). A set-B volume of host h is fused on the healthy brains other than h, and
    thresholded on those brains fused the same way, so nothing of h's own scan reaches its map's scale or its
    threshold; the other sets (and the healthy maps themselves) use all healthy brains."""
    if fusion != "sum" and not intensity_weight:
        raise ValueError(f"fusion {fusion!r} needs an intensity_weight > 0 (it combines the fused map and the "
                         f"residual)")
    groups: dict[str, list[str]] = {}
    for split in eval_sets:
        groups.setdefault(CALIBRATION_SPLIT.get(split, "val_healthy"), []).append(split)
    results: dict[str, Any] = {"calibration": {}}
    scored: dict[str, list[ScoredVolume]] = {}
    for healthy_split, sets in (groups or {"val_healthy": []}).items():
        res, sc = _evaluate_calibrated(scorer, data, healthy_split, sets, slice_stride, fpr, pp, anoddpm, maps_dir,
                                       progress, intensity_weight, fusion, fusion_quantile)
        calibration = {k: res.pop(k) for k in ("threshold", "fpr_target", "thresholds_without_host",
                                               "intensity_fusion") if k in res}
        results["calibration"][healthy_split] = calibration
        if healthy_split == "val_healthy" or "threshold" not in results:
            results.update(calibration)
        results.update(res)
        scored.update(sc)
    return results, scored


def _evaluate_calibrated(scorer: Scorer, data: PreparedDataset, healthy_split: str, eval_sets: Sequence[str],
                         slice_stride: int, fpr: float, pp: PostProcessing, anoddpm: bool, maps_dir: Path | None,
                         progress: Callable[..., Any] | None, intensity_weight: float, fusion: FusionRule,
                         fusion_quantile: float) -> tuple[dict[str, Any], dict[str, list[ScoredVolume]]]:
    """``evaluate_model`` for the sets that ``healthy_split`` calibrates."""
    healthy = score_split(scorer, data.volumes(healthy_split), slice_stride, pp, progress)
    results: dict[str, Any] = {}
    memo: dict[str | None, FusionParams] = {}

    def params(exclude: str | None) -> FusionParams:
        if exclude not in memo:
            memo[exclude] = fusion_params(healthy, moments, intensity_weight, pp, fusion, fusion_quantile, exclude)
        return memo[exclude]

    if intensity_weight:
        moments = healthy_moments(healthy, pp)
        results["intensity_fusion"] = {"weight": intensity_weight, "rule": fusion,
                                       "scale": round(params(None).scale, 6),
                                       healthy_split: fuse_split(healthy, params, pp, True)}
        if fusion == "max":
            results["intensity_fusion"]["quantile"] = fusion_quantile
    hists = healthy_histograms(healthy)
    threshold = calibrate(hists, fpr)
    # leave-one-host-out: set B's hosts are healthy brains of val_healthy; an IXI set's slices are other individuals
    without_host = {h: calibrate(hists, fpr, exclude=h) for h in hists} if healthy_split == "val_healthy" else {}
    if intensity_weight and without_host:  # each leave-one-host-out threshold on the fusion its set-B volumes get
        for h in hists:
            others = [v for v in healthy if v.id != h]
            without_host[h] = calibrate(healthy_histograms(others, {v.id: fused_map(v, params(h), pp)
                                                                    for v in others}), fpr)
    results.update({"threshold": threshold, "fpr_target": fpr, "thresholds_without_host": without_host})
    scored = {healthy_split: healthy}
    for split in eval_sets:
        vols = score_split(scorer, data.volumes(split), slice_stride, pp, progress)
        if intensity_weight:
            results["intensity_fusion"][split] = fuse_split(vols, params, pp)
        scored[split] = vols
        thresholds = {v.id: without_host.get(v.volume.meta.get("host"), threshold) for v in vols}
        results[split] = measure(vols, thresholds, pp, anoddpm)
        if maps_dir is not None and split not in CALIBRATION_SPLIT:  # NIfTI maps of volumes, not of 2-D slices
            for v in vols:
                write_maps(v, maps_dir / split, native=split == "eval_a")
    if fusion == "max":
        results["intensity_fusion"]["anchors"] = {str(k): v.anchors for k, v in memo.items()}
    return results, scored


BASELINE_LABELS = {"floor_intensity": "intensity floor (x itself)", "floor_dark": "dark floor (−x)",
                   "floor_median": "floor |x − brain median|",
                   "ae": "AE (spatial), ours", "dae": "DAE (coarse noise), ours",
                   "atlas": "normative atlas |x − μ|/σ (IXI training slices)"}
"""Maps folder name -> row label of every non-diffusion baseline."""


def baseline_scorers(data: PreparedDataset, run_dir: str | Path, names: Iterable[str], seed: int = 0,
                     ae_steps: int = 1500, dae_steps: int = 1500, dae_noise_std: float = 0.2,
                     dae_noise_res: int = 16, amp: str = "off", progress: Callable[..., Any] | None = None,
                     residual: str = "abs", atlas: NormativeAtlas | None = None,
                     ) -> list[tuple[str, Scorer, dict[str, Any]]]:
    """(name, scorer, info) for each baseline in ``names`` (keys of ``BASELINE_LABELS``), trained on the training
    slices where they learn (cached in ``run_dir/models/<name>`` by the data's training fingerprint and settings).
    ``atlas``: the normative atlas the baseline "atlas" reads, where the caller has fitted it (else ``fit_atlas``).
    ``residual`` ("abs" or "positive") is the autoencoders' map, as for the diffusion models; the floors are what they
    are."""

    def maps(vol: PreparedVolume, slices: np.ndarray, rec: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, ...]:
        diff = np.zeros_like(err)
        diff[:, :, slices] = vol.image[:, :, slices] - rec[:, :, slices]
        return rec, (np.clip(diff, 0, None) if residual == "positive" else err), diff ** 2

    out = []
    fingerprint = data.training_fingerprint
    for name in names:
        if name == "floor_intensity":
            out.append((name, lambda vol, slices: intensity_floor(vol.image, slices),
                        {"kind": "floor", "map": "x + 1 (the input's intensity)"}))
        elif name == "floor_dark":
            out.append((name, lambda vol, slices: dark_floor(vol.image, slices),
                        {"kind": "floor", "map": "1 - x (dark = anomalous)"}))
        elif name == "floor_median":
            out.append((name, lambda vol, slices: median_floor(vol.image, slices, vol.brain),
                        {"kind": "floor", "map": "|x - median of the brain on the scored slices|"}))
        elif name == "atlas":
            atlas = atlas or fit_atlas(data)
            out.append((name, normative_scorer(atlas, bounded=True),
                        {"kind": "normative", "map": f"2 tanh(z / {Z_UNIT:g}), z = |x - mu| / max(sigma, "
                         f"{atlas.sd_floor:g}) over the population's training slices",
                         "fitted_on_slices": int(atlas.count.max()), "fit": atlas.describe(),
                         "sets": list(NORMATIVE_SETS)}))
        elif name == "ae":
            ae, info = train_autoencoder(data.slices("train")["image"], Path(run_dir) / "models" / "ae", fingerprint,
                                         steps=ae_steps, seed=seed)

            def ae_scorer(vol: PreparedVolume, slices: np.ndarray, ae: Any = ae) -> tuple[np.ndarray, ...]:
                return maps(vol, slices, *ae_error_maps(ae, vol.image, slices))
            out.append((name, ae_scorer, {"kind": "autoencoder", **info}))
        elif name == "dae":
            dtype = amp_dtype(resolve_amp("auto" if amp == "fp16" else amp, torch.device("cpu")))  # the DAE runs on the CPU
            dae, info = train_dae(data.slices("train")["image"], Path(run_dir) / "models" / "dae", fingerprint,
                                  steps=dae_steps, seed=seed, noise_std=dae_noise_std, noise_res=dae_noise_res,
                                  amp=dtype, progress=progress)

            def dae_scorer(vol: PreparedVolume, slices: np.ndarray, dae: Any = dae) -> tuple[np.ndarray, ...]:
                return maps(vol, slices, *dae_error_maps(dae, vol.image, slices, amp=dtype))
            out.append((name, dae_scorer, {"kind": "denoising autoencoder", **info}))
        else:
            raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINE_LABELS)}")
    return out


def remembering(scorer: Scorer) -> Scorer:
    """``scorer``, keeping its maps per volume and slices, so that a second evaluation of the same volumes that differs
    only in post-processing (median, intensity fusion) does not run the network again and sees the same noise draws."""
    memo: dict[tuple[str, str, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def score(vol: PreparedVolume, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (vol.split, vol.id, np.asarray(slices).tobytes())
        if key not in memo:
            memo[key] = scorer(vol, slices)
        return memo[key]

    return score


def fused_label(label: str, weight: float, fusion: FusionRule = "sum") -> str:
    """The row label of a map fused with the intensity at ``weight`` (0: the label itself) by rule ``fusion``."""
    return f"{label}, + intensity w={weight:g}{', max' if fusion == 'max' else ''}" if weight else label


DETECTOR_FILE = "detector.json"
"""What ``evaluate_run`` writes beside metrics.json for ``addmlib.score``: a detector that needs no calibration data."""
DETECTOR_FORMAT = 1


def _calibrated(result: Mapping[str, Any]) -> dict[str, Any]:
    """The threshold calibrated on all healthy brains of a calibration, and the fusion set on all of them."""
    fusion = result.get("intensity_fusion")
    return {"threshold": float(result["threshold"]), "fusion": None if not fusion else {
        "weight": fusion["weight"], "rule": fusion["rule"], "scale": fusion["scale"],
        "anchors": fusion.get("anchors", {}).get("None")}}


def detector_model(run_dir: Path, model_json: Path, result: Mapping[str, Any],
                   mix: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One model's entry of ``detector.json``: its record (relative to the run, so that a copied run scores with its
    own weights), the threshold and fusion of the volumes' calibration (``val_healthy``) and, under
    ``calibrations``, those of every healthy split the run calibrated on (``ixi_calib``: the 2-D slices'); with a
    mix of maps (``with_deep_map``), its scales (``mix_scales``)."""
    entry = {"model_json": os.path.relpath(model_json, run_dir), **_calibrated(result),
             "calibrations": {split: _calibrated(c) for split, c in result.get("calibration", {}).items()}}
    if mix:
        entry["mix_scales"] = list(mix["scales"])
    return entry


def intensity_reference(data: PreparedDataset) -> list[float]:
    """The training brains' intensity deciles that preparation standardised every scan onto (with histogram
    standardisation off: the mean deciles of the prepared training brains, which the scans were left at)."""
    recorded = data.manifest.get("intensity_reference_deciles")
    if recorded is not None:
        return [float(r) for r in recorded]
    deciles = [np.percentile(v.image[v.brain], LANDMARK_PERCENTILES) for v in data.volumes("train")]
    return [round(float(r), 4) for r in np.mean(deciles, axis=0)]


def detector_record(cfg: EvalConfig, data: PreparedDataset, models: Mapping[str, Any]) -> dict[str, Any]:
    """``detector.json``: how the run prepares a scan (its data's settings and intensity reference), how it scores it
    (``cfg``'s scoring and post-processing) and, per model, where its weights are and the threshold and fusion it
    was calibrated with (``detector_model``)."""
    settings = data.manifest["settings"]
    return {"format": DETECTOR_FORMAT, "eval_name": cfg.eval_name, "fpr": cfg.fpr,
            "prepare": {k: settings[k] for k in ("image_size", "strip_margin_mm", "min_brain_fraction",
                                                 "histogram_standardisation", "min_mask_overlap") if k in settings},
            "data_fingerprint": data.manifest.get("fingerprint"),
            "intensity_reference_deciles": intensity_reference(data),
            "scoring": {"t_star": list(cfg.t_star_ensemble) or cfg.t_star, "sample_steps": cfg.sample_steps,
                        "sampler": cfg.sampler, "eval_noise": cfg.eval_noise, "draws": cfg.draws,
                        "residual": cfg.residual, "patch_stride": cfg.patch_stride, "seed": cfg.seed,
                        "eval_batch_size": cfg.eval_batch_size, "amp": cfg.amp, "channels_last": cfg.channels_last,
                        "slice_stride": cfg.slice_stride, "deep_t_star": list(cfg.deep_t_star_ensemble),
                        "deep_draws": cfg.deep_draws},
            "post_processing": asdict(PostProcessing.of(cfg)),
            "models": dict(models)}


def _model_json(cfg: EvalConfig, run_dir: Path, name: str, training_fingerprint: str) -> Path:
    """The record of model ``name``: in the run's own ``models/``, or in the lever campaign of ``cfg.models_from``,
    whose model must have been trained on this run's training data."""
    if not cfg.models_from:
        path = model_dir(run_dir, name) / "model.json"
        if not path.is_file():
            raise FileNotFoundError(f"model {name!r}: {path} not found; train it with notebooks/02_train.ipynb "
                                    f"(model_name = {name!r}) or remove it from `models`")
        return path
    from .sweep import resolve_param_file

    folder = model_dir(campaign_models_root(resolve_param_file(cfg.models_from)), name)
    path, recorded = folder / "model.json", trained_on(folder)
    if not path.is_file() or recorded is None:
        raise FileNotFoundError(f"models_from {cfg.models_from}: model {name!r} ({folder}) has not been trained "
                                f"there; its models are named <variant>-s<seed>")
    if recorded != training_fingerprint:
        raise ValueError(f"models_from {cfg.models_from}: model {name!r} was trained on data {recorded}, this run's "
                         f"training data is {training_fingerprint}: prepare the campaign's data (its tune_hosts too)")
    return path


def evaluate_run(cfg: EvalConfig, data: PreparedDataset, out: Path, device: torch.device,
                 progress: Callable[..., Any] | None = None,
                 log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Evaluate every model of ``cfg.models`` (trained under ``<run_dir>/models/``) and every baseline of
    ``cfg.baselines`` on ``cfg.eval_sets`` with the protocol of ``evaluate_model``; NIfTI maps under ``out/maps``.

    With ``cfg.intensity_weight`` > 0 every model and autoencoder gets two rows from one pass of its network: its map
    fused with the intensity, the row whose maps are written and shown (its info's ``name`` is the model's, and its
    ``wall_time_s`` holds the network pass), and its residual alone (``name`` "<model>-w0"). The floors are what they
    are. With ``cfg.normative_weight`` > 0 every model and autoencoder gets one more row on the IXI sets
    (``NORMATIVE_SETS``) from the same pass: its map fused with the normative atlas's deviation (``with_normative``;
    "<model>-normative"); the baseline "atlas" is that deviation alone, on the same sets. Neither enters
    ``detector.json``: the atlas reads the population's registered slices only. Returns (results, infos, the scored
    volumes of each set per split), each keyed by the row label. What scoring a new scan needs (each model's calibrated
    threshold and fusion, the scoring, post-processing and preparation settings) is written to ``out/detector.json``
    (``detector_record``).
    """
    pp = PostProcessing.of(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    results: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    shown_volumes: dict[str, dict[str, list[ScoredVolume]]] = {}

    def rows(scorer: Scorer, label: str, name: str, info: dict[str, Any], weights: Sequence[float],
             sets: Sequence[str] = cfg.eval_sets, show: bool = True) -> None:
        scorer = remembering(scorer) if len(weights) > 1 else scorer
        for i, weight in enumerate(weights):
            t0 = time.perf_counter()
            shown = i == 0 and show  # the first row's maps are written and shown; the others are tables only
            # a floor's map is the input; the atlas reads 2-D slices, which get no NIfTI maps
            maps = cfg.write_nifti and shown and info["kind"] not in ("floor", "normative")
            res, scored = evaluate_model(scorer, data, sets, cfg.slice_stride, cfg.fpr, pp,
                                         cfg.anoddpm_protocol, out / "maps" / name if maps else None, progress, weight,
                                         cfg.fusion if weight else "sum", cfg.fusion_quantile)
            row = fused_label(label, weight, cfg.fusion)
            results[row] = res
            # name: the maps folder that 05 reads; a row without maps gets a name of its own
            infos[row] = {**info, "name": name if i == 0 else f"{name}-w{weight:g}", "intensity_weight": weight,
                          "fusion": cfg.fusion if weight else None,
                          "wall_time_s": round(time.perf_counter() - t0, 1),
                          "slices_scored": sum(len(v.slices) for vs in scored.values() for v in vs)}
            if shown and info["kind"] not in ("floor", "normative"):  # the figures show reconstructions
                shown_volumes[row] = {split: scored[split] for split in sets}
            log(f"{row}: {infos[row]['slices_scored']} slices in {infos[row]['wall_time_s']} s; threshold "
                f"{res['threshold']:.3f} (set A), leave-one-host-out {res['thresholds_without_host']}")

    weights = (cfg.intensity_weight, 0.0) if cfg.intensity_weight else (0.0,)
    detectors: dict[str, Any] = {}
    normative_sets = [s for s in cfg.eval_sets if s in NORMATIVE_SETS]
    baselines = list(cfg.baselines)
    if (cfg.normative_weight or "atlas" in baselines) and not normative_sets:
        log(f"normative_weight and the baseline 'atlas' read the IXI slices ({', '.join(NORMATIVE_SETS)}), and "
            f"eval_sets {list(cfg.eval_sets)} holds none: no normative rows")
        baselines = [b for b in baselines if b != "atlas"]
    atlas = (fit_atlas(data, cfg.normative_registration, cfg.normative_neighbours)
             if normative_sets and (cfg.normative_weight or "atlas" in baselines) else None)
    fuse = atlas if cfg.normative_weight else None  # the atlas the learned maps are fused with

    def learned_rows(scorer: Scorer, label: str, name: str, info: dict[str, Any]) -> None:
        """A model's or autoencoder's rows and, with ``normative_weight``, its normative row from the same pass."""
        scorer = remembering(scorer) if fuse is not None else scorer
        rows(scorer, label, name, info, weights)
        if fuse is not None:
            fused, fused_info = with_normative(scorer, info, fuse, cfg.normative_weight,
                                               data.volumes(MIX_CALIBRATION), pp)
            rows(fused, f"{label} + normative atlas (w={cfg.normative_weight:g})", f"{name}-normative", fused_info,
                 (0.0,), normative_sets, show=False)

    for name in cfg.models:
        model_json = _model_json(cfg, run_dir, name, data.training_fingerprint)
        scorer, info = diffusion_scorer(recorded_checkpoint(model_json),
                                        list(cfg.t_star_ensemble) or cfg.t_star, cfg.sample_steps, cfg.sampler,
                                        cfg.eval_noise, cfg.draws, cfg.eval_batch_size, cfg.seed, device,
                                        use_channels_last(cfg.channels_last, device), cfg.amp, cfg.patch_stride,
                                        cfg.residual)
        noise = "unnoised input" if info["noise"] == "none" else f"{info['noise']} noise"
        label = (f"{name} (λ={info['lambda_adv']}, T={info['T']}, {noise}, t*={info['t_star']}, "
                 f"{info['steps']} steps)")
        if cfg.deep_t_star_ensemble:
            scorer, info = with_deep_map(scorer, info, recorded_checkpoint(model_json), cfg.deep_t_star_ensemble,
                                         cfg.deep_draws, cfg.eval_batch_size, cfg.seed, device,
                                         use_channels_last(cfg.channels_last, device), cfg.amp, cfg.residual, pp,
                                         data.volumes(MIX_CALIBRATION))
            label = label[:-1] + f", mixed with the noised input's at t*={info['mix']['deep_t_star']})"
        learned_rows(scorer, label, name, info)
        detectors[name] = detector_model(run_dir, model_json, results[fused_label(label, weights[0], cfg.fusion)],
                                         info.get("mix"))
    if detectors:
        write_json_atomic(out / DETECTOR_FILE, detector_record(cfg, data, detectors))
    for name, scorer, info in baseline_scorers(data, run_dir, baselines, cfg.seed, cfg.ae_steps, cfg.dae_steps,
                                               cfg.dae_noise_std, cfg.dae_noise_res, cfg.amp, progress, cfg.residual,
                                               atlas):
        if info["kind"] == "normative":
            rows(scorer, BASELINE_LABELS[name], name, info, (0.0,), normative_sets)
        elif info["kind"] == "floor":
            rows(scorer, BASELINE_LABELS[name], name, info, (0.0,))
        else:  # an autoencoder: its rows like a model's
            learned_rows(scorer, BASELINE_LABELS[name], name, info)
    return results, infos, shown_volumes

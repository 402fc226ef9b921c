"""Score a scan you have with a trained, evaluated run: ``python -m addmlib.score RUN_DIR SCAN [SCAN ...] --out DIR``.

The run's ``<eval_name>/detector.json`` (written by ``evaluate.evaluate_run``) says everything scoring needs: how the
run's data was prepared (image size, skull-stripping margin, slice selection, the training brains' intensity deciles
that every scan was standardised onto), how it scored (t*, steps, noise, residual, fusion, post-processing, the slice
stride the threshold was calibrated with) and, per model, its weights and the threshold calibrated on the healthy
brains. No calibration data is read.

Each scan is prepared exactly as the run's data was (``prepare.prepare_subject``: RAS, 1 mm, brain mask by skull
stripping with deepbet where the skull is on, or the non-background where it is off, crop, percentile normalisation,
N x N axial slices, then histogram standardisation onto the run's reference), every selected slice is scored, and the
maps are post-processed and thresholded as the evaluation did: the slices are split into ``slice_stride``
interleaved stacks, each post-processed like one evaluated volume (its median filter, brain erosion and small
components on a stack of every ``slice_stride``-th slice), so the calibrated threshold means what it meant there.
The map, the flagged mask, the reconstruction and the brain mask are written back onto the scan's own grid
(``detect.to_native_nifti``), with a PNG of the most anomalous slices and ``summary.json``. Each scan's folder is
written whole or not at all (built in a temporary folder, then renamed).

2-D input (a PNG, or a NIfTI with one axial slice) is read and brain-masked as the run's 2-D slices were
(``data/slices2d.py``: a skull-on slice gets its 2-D brain mask, a brain-only one its non-background) and goes through
the same chain with a depth of one slice, post-processed in-plane.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage
from tqdm.auto import tqdm

from . import shipped
from .cli import ArgumentParser, run_main
from .config import ConfigError
from .data.datasets import Subject
from .data.io import MIN_MASK_OVERLAP, VolumeError, check_mask_overlap, read_mask, read_volume
from .data.prepare import EmptyMaskError, PreparedVolume, prepare_subject
from .data.preprocess import Volume, brain_from_background, finish, match_landmarks
from .data.slices2d import SLICE_SUFFIXES, is_slice_file, read_slice, with_brain
from .detect import to_native_nifti
from .evaluate import (DETECTOR_FILE, SCORE_RANGE, FusionParams, PostProcessing,
                       diffusion_scorer, fused_map, post_process, score_split, use_channels_last, with_deep_map)
from .fileio import atomic_path, write_json_atomic
from .metrics import BinnedScores, confusion, overlap_metrics
from .models import CheckpointError, recorded_checkpoint
from .post_processing import remove_small_components
from .runtime import resolve_device, set_threads
from .visualization.volumes import display

Skull = Literal["on", "off", "auto"]

SKULL_HEAD_ML = 2500.0
"""Above this many mL of non-background tissue a 3-D scan is taken to have its skull on (``--skull auto``). Measured
on the embedded scans (docs/own-scan.md): the five brain-only scans hold 1.3-2.1 L, the heads with the skull on
3.1-6.5 L (Colin27, 1.4 L, reads as brain only: its head outside the brain is dark)."""

DEPTH_CONTRAST_LIMIT = 0.1
"""Below this correlation between a prepared brain's intensity and the depth under its surface (up to
``DEPTH_MM``) a scan is warned about as far from the training data. T1 contrast makes the deep white matter brighter
than the cortex: measured on the embedded scans (docs/own-scan.md), the 11 healthy T1 brains give 0.48-0.79 and the 4
contrast-enhanced tumour scans 0.24-0.41, the five brain-only ones with their contrast inverted -0.70 to -0.16. The
intensity histogram cannot tell them apart: preparation standardises it onto the training deciles, and before that
the tumour scans' deciles lie as far from the reference (0.43-0.53 mean absolute difference) as the inverted
scans' (0.45-0.64)."""
DEPTH_MM = 15.0

SKULL_SLICE_CM2 = 250.0
"""Above this many cm² of non-background tissue a 2-D axial slice is taken to have its skull on (``--skull auto``).
Measured: the largest axial slice of each brain-only embedded scan holds 174-219 cm², the IXI mid-axial slices (skull
on) 276-342 cm² (docs/own-scan.md); a skull-on slice near the vertex may read as brain only: ``--skull on``."""

SLICE_CALIBRATION = "ixi_calib"
"""The healthy split that calibrates 2-D slices (``prepare.CALIBRATION_SPLIT``), where the run evaluated one."""
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
TOP_COMPONENTS = 5


class ScoreInputError(ConfigError):
    """A run, scan or mask that cannot be scored; one line naming the file, exit code 2 (``cli.run_main``)."""


@dataclass(frozen=True)
class Detector:
    """A model of a run with everything its evaluation calibrated (``detector.json``)."""

    run_dir: Path
    model: str
    checkpoint: Path
    record: dict[str, Any]

    def calibration(self, flat: bool = False) -> tuple[str, float, FusionParams | None]:
        """(healthy split, threshold, intensity fusion or None) that a scan is thresholded with: for a 2-D slice the
        run's 2-D calibration (``SLICE_CALIBRATION``) where it has one, else the volumes' (``val_healthy``)."""
        entry = self.record["models"][self.model]
        split = SLICE_CALIBRATION if flat and SLICE_CALIBRATION in entry.get("calibrations", {}) else "val_healthy"
        chosen = entry["calibrations"][split] if split == SLICE_CALIBRATION else entry
        f = chosen.get("fusion")
        if not f:
            return split, float(chosen["threshold"]), None
        anchors = tuple(tuple(a) for a in f["anchors"]) if f.get("anchors") else None
        return split, float(chosen["threshold"]), FusionParams(float(f["scale"]), anchors)  # type: ignore[arg-type]

    @property
    def post_processing(self) -> PostProcessing:
        return PostProcessing.from_record(self.record["post_processing"])


def _make_hint(run_dir: Path, notebook: str) -> str:
    """The command that runs ``notebook`` on ``run_dir`` (what makes a missing threshold or model)."""
    return (f"python -m addmlib.pipeline PARAMS.yaml --run-dir {run_dir} --notebooks {notebook} (PARAMS.yaml: the "
            f"parameters the run was made with; make demo makes outputs/demo whole)")


def load_detector(run_dir: str | Path, model: str = "", eval_name: str = "eval") -> Detector:
    """The detector of ``model`` (empty: the first one evaluated) in ``run_dir/eval_name/detector.json``; a
    ScoreInputError saying which command makes what is missing. ``run_dir`` may name a detector shipped with the
    package (``shipped.names()``) instead of a folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() and str(run_dir) in shipped.names():
        try:
            run_dir = shipped.path(str(run_dir))
        except shipped.ShippedDetectorError as exc:
            raise ScoreInputError(str(exc)) from None
    if not run_dir.is_dir():
        raise ScoreInputError(f"{run_dir}: run folder not found (nor a shipped detector: "
                              f"{', '.join(shipped.names()) or 'none'})")
    path = run_dir / eval_name / DETECTOR_FILE
    if not path.is_file():
        raise ScoreInputError(f"{path} not found: the run has no calibrated threshold; evaluate it first: "
                              f"{_make_hint(run_dir, '03_evaluate')}")
    try:
        record = json.loads(path.read_text())
        models = dict(record["models"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ScoreInputError(f"{path}: not a detector record ({exc}); evaluate the run again: "
                              f"{_make_hint(run_dir, '03_evaluate')}") from None
    name = model or next(iter(models), "")
    if name not in models:
        raise ScoreInputError(f"{path}: no model {name!r} was evaluated; it has {', '.join(models) or 'none'}; "
                              f"train and evaluate it: {_make_hint(run_dir, '02_train,03_evaluate')}")
    model_json = run_dir / models[name]["model_json"]
    checkpoint = recorded_checkpoint(model_json) if model_json.is_file() else model_json.parent / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ScoreInputError(f"{checkpoint} not found: model {name!r} has no trained weights in {run_dir}; train "
                              f"it: {_make_hint(run_dir, '02_train')} (model_name: {name})")
    return Detector(run_dir, name, checkpoint, record)


def scan_stem(path: Path) -> str:
    """The file name without its volume or slice suffix."""
    for suffix in VOLUME_SUFFIXES + SLICE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def mask_beside(scan: Path) -> Path | None:
    """``<stem>_mask.nii.gz`` (or .nii, .nrrd, .png) beside the scan, if there is one."""
    for suffix in (".nii.gz", ".nii", ".nrrd", ".png"):
        candidate = scan.with_name(f"{scan_stem(scan)}_mask{suffix}")
        if candidate.is_file():
            return candidate
    return None


def check_input(scan: Path, mask: Path | None, min_overlap: float = MIN_MASK_OVERLAP) -> nib.Nifti1Image:
    """The scan as read (3-D volume or 2-D slice), the mask readable and inside the scan's field of view; a
    VolumeError naming the file(s) otherwise."""
    if not scan.is_file():
        raise VolumeError(f"{scan}: file not found")
    if not scan.name.lower().endswith(VOLUME_SUFFIXES + SLICE_SUFFIXES):
        raise VolumeError(f"{scan}: unknown format (expected .nii, .nii.gz, .nrrd, .nhdr, or .png for a 2-D slice)")
    img = slice_image(scan) if is_slice_file(scan) else read_volume(scan)
    if mask is not None:
        check_mask_overlap(slice_image(mask) if is_slice_file(mask) else read_mask(mask), mask, img, scan, min_overlap)
    return img


def slice_image(path: Path) -> nib.Nifti1Image:
    """A 2-D slice (``slices2d.read_slice``: a PNG on its RAS grid, 1 mm pixels) as an X x Y x 1 NIfTI image: a NIfTI
    slice on its own grid as stored, a PNG on the grid ``read_slice`` gives it."""
    vol = read_slice(path)
    if path.name.lower().endswith(".png"):
        return nib.Nifti1Image(vol.image, vol.affine)
    img = nib.load(str(path))
    shape = img.shape[:2] + (1,) if len(img.shape) == 2 else img.shape[:3]
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32).reshape(shape), img.affine)


def head_volume_ml(img: nib.Nifti1Image) -> float:
    """mL of non-background tissue of a scan (``brain_from_background`` on its own grid): a brain alone is 1-2 L, a
    head with its skull and scalp more (``SKULL_HEAD_ML``)."""
    vol = brain_from_background(Volume(np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, float)))
    return float(vol.brain.sum() * np.prod(vol.spacing) / 1000.0)


@dataclass
class Prepared:
    """A scan prepared as the run's data: the N x N x Z volume before intensity standardisation, and what it came
    from."""

    volume: Volume
    slices: np.ndarray
    native_affine: np.ndarray
    native_shape: tuple[int, ...]
    skull: dict[str, Any]
    warnings: list[str]
    flat: bool


def prepare_scan(scan: Path, img: nib.Nifti1Image, mask: Path | None, det: Detector, skull: Skull) -> Prepared:
    """Prepare ``scan`` as the run's data was prepared: ``prepare.prepare_subject`` for volumes (skull stripped where
    it is on), and for 2-D slices ``slices2d`` (the skull-on slice's 2-D brain mask) and ``finish``, as ``prepare``
    treats a folder of slices."""
    prep = det.record["prepare"]
    size, margin, fraction = int(prep["image_size"]), float(prep["strip_margin_mm"]), float(prep["min_brain_fraction"])
    if is_slice_file(scan):  # as the run's 2-D slices were prepared (data/prepare.py, slices_root)
        vol = read_slice(scan)
        cm2 = float(brain_from_background(vol).brain.sum() * np.prod(vol.spacing[:2]) / 100.0)
        on = skull == "on" or (skull == "auto" and cm2 > SKULL_SLICE_CM2)
        vol = with_brain(vol, on)
        if mask is not None:
            lesion = read_slice(mask).image > 0
            if lesion.shape != vol.image.shape:
                raise ScoreInputError(f"{mask}: shape {lesion.shape[:2]} differs from its slice {scan} "
                                      f"({vol.image.shape[:2]})")
            vol = replace(vol, lesion=lesion & vol.brain)
        info = {"setting": skull, "on": on, "non_background_cm2": round(cm2, 1), "auto_limit_cm2": SKULL_SLICE_CM2}
        return Prepared(finish(vol, size), np.array([0]), np.asarray(img.affine), tuple(img.shape), info, [], True)
    ml = head_volume_ml(img) if skull == "auto" else None
    on = skull == "on" or (ml is not None and ml > SKULL_HEAD_ML)
    info = {"setting": skull, "on": on, "non_background_ml": None if ml is None else round(ml, 1),
            "auto_limit_ml": SKULL_HEAD_ML}
    subject = Subject(scan_stem(scan), "score", scan, "tumour" if mask else "healthy",
                      "deepbet" if on else "background", lesion=mask)
    vol, meta = prepare_subject(subject, size, margin, fraction,
                                min_mask_overlap=float(prep.get("min_mask_overlap", MIN_MASK_OVERLAP)),
                                allow_empty_masks=True)
    return Prepared(vol, np.asarray(meta["slices"], dtype=int), np.asarray(meta["native_affine"]),
                    tuple(meta["native_shape"]), info, list(meta.get("warnings", [])), False)


def depth_contrast(vol: Volume, flat: bool = False) -> float:
    """Correlation of a prepared brain's intensity with the depth under the brain's surface, over the brain up to
    ``DEPTH_MM`` deep (in-plane for a 2-D slice); positive for T1 contrast (``DEPTH_CONTRAST_LIMIT``)."""
    brain, image = (vol.brain[:, :, 0], vol.image[:, :, 0]) if flat else (vol.brain, vol.image)
    spacing = np.sqrt((vol.affine[:3, :3] ** 2).sum(0))[: brain.ndim]
    depth = ndimage.distance_transform_edt(np.pad(brain, 1), sampling=spacing)[(slice(1, -1),) * brain.ndim]
    near = brain & (depth <= DEPTH_MM)
    if near.sum() < 3 or np.ptp(image[near]) == 0:
        return 0.0
    return float(np.corrcoef(image[near], depth[near])[0, 1])


@dataclass
class ScanScore:
    """A scored scan on the prepared grid (N x N x Z): map, flagged voxels, reconstruction; and its metrics."""

    amap: np.ndarray
    flagged: np.ndarray
    recon: np.ndarray
    metrics: dict[str, Any] | None


def score_prepared(det: Detector, scorer: Callable[..., Any], vol: PreparedVolume, flat: bool,
                   progress: Callable[[int], Any] | None = None) -> ScanScore:
    """Score every selected slice of ``vol`` in the run's ``slice_stride`` interleaved stacks, each post-processed,
    fused and thresholded as the evaluation treated one volume; with a lesion mask, Dice at the threshold, AUROC and
    AUPRC over the brain on the scored slices, as the evaluation measures them."""
    stride = int(det.record["scoring"]["slice_stride"])  # a 2-D slice is one stack of one
    pp, (_, thr, fusion) = det.post_processing, det.calibration(flat)
    amap, recon = np.zeros(vol.image.shape, np.float32), np.zeros(vol.image.shape, np.float32)
    flagged = np.zeros(vol.image.shape, bool)
    hist, counts = BinnedScores(*SCORE_RANGE), np.zeros(3, dtype=np.int64)
    for offset in range(min(stride, len(vol.slices))):
        (v,) = score_split(scorer, [replace(vol, slices=vol.slices[offset:])], stride, pp)
        m = fused_map(v, fusion, pp) if fusion is not None else post_process(v.raw, v.brain, v.spacing, pp)
        pred = remove_small_components((m >= thr) & v.brain, pp.min_component_voxels)
        if vol.lesion is not None:
            hist.update(m, v.lesion, v.brain)
            counts += np.asarray(confusion(pred[v.brain], v.lesion[v.brain])[:3])
        ks = v.slices
        amap[:, :, ks], flagged[:, :, ks] = m.reshape(amap[:, :, ks].shape), pred.reshape(flagged[:, :, ks].shape)
        recon[:, :, ks] = v.reconstruction.reshape(recon[:, :, ks].shape)
        if progress is not None:
            progress(len(ks))
    metrics = None
    if vol.lesion is not None:
        metrics = {**overlap_metrics(*map(int, counts)), "auroc": hist.auroc(), "auprc": hist.auprc(),
                   "lesion_voxels_scored": int(hist.pos.sum()), "warnings": hist.warnings(),
                   "computed_on": "the prepared grid, brain on the scored slices (as the evaluation measures)"}
    return ScanScore(amap, flagged, recon, metrics)


def components(flagged: np.ndarray, amap: np.ndarray, affine: np.ndarray, top: int = TOP_COMPONENTS
               ) -> list[dict[str, Any]]:
    """The ``top`` largest connected components (26-connectivity) of a flagged mask on a scan's grid: size (voxels,
    mL), centre of mass in world coordinates (mm, RAS+) and the highest score in it."""
    labels, n = ndimage.label(flagged, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    out = []
    for label in np.argsort(sizes)[::-1][:top] + 1:
        centre = ndimage.center_of_mass(flagged, labels, int(label))
        world = affine @ np.append(np.asarray(centre, dtype=float), 1.0)
        out.append({"voxels": int(sizes[label - 1]), "ml": round(sizes[label - 1] * voxel_ml, 3),
                    "centre_mm_ras": [round(float(c), 1) for c in world[:3]],
                    "peak_score": round(float(amap[labels == label].max()), 4)})
    return out


def slices_figure(image: np.ndarray, amap: np.ndarray, flagged: np.ndarray, threshold: float, title: str,
                  n: int = 4) -> Figure:
    """The ``n`` axial slices (canonical RAS arrays) with the most flagged voxels (without any: the highest map sum):
    the scan, and the scan under the map with the outline of what was flagged (radiological view)."""
    per_slice = flagged.reshape(-1, flagged.shape[2]).sum(0) if flagged.any() else \
        amap.reshape(-1, amap.shape[2]).sum(0)
    chosen = sorted(np.argsort(per_slice)[::-1][:min(n, amap.shape[2])])
    lo, hi = np.percentile(image, [0.5, 99.5])
    top = max(float(amap.max()), threshold, 1e-6)
    fig = Figure(figsize=(max(2.4 * len(chosen), 5.0), 5.0))
    axes = fig.subplots(2, len(chosen), squeeze=False)
    for col, k in enumerate(chosen):
        img, m, f = (display(a[:, :, k], "axial") for a in (image, amap, flagged))
        for row in (0, 1):
            axes[row, col].imshow(img, cmap="gray", vmin=lo, vmax=hi)
            axes[row, col].set_axis_off()
        axes[row, col].imshow(np.ma.masked_less_equal(m, 0), cmap="inferno", vmin=0, vmax=top, alpha=0.6)
        if f.any():
            axes[row, col].contour(f, levels=[0.5], colors="cyan", linewidths=0.8)
        axes[0, col].set_title(f"axial {k}: {int(f.sum())} flagged", fontsize=8)
    fig.suptitle(f"{title}\nthe map over the scan, what was flagged outlined (threshold {threshold:.4g})\n"
                 f"radiological view", fontsize=8)
    fig.tight_layout()
    return fig


def _nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """``data`` as NIfTI at ``path``, atomically."""
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + ".nii.gz")
        nib.save(nib.Nifti1Image(data, affine), str(target))
        target.replace(tmp)


def write_outputs(folder: Path, stem: str, img: nib.Nifti1Image, prep: Prepared, scored: ScanScore,
                  affine: np.ndarray, brain: np.ndarray) -> dict[str, str]:
    """The scan, map, flagged mask, reconstruction, brain mask and, with a mask given, the lesion as prepared, on the
    scan's own grid (same shape and affine as the input); returns kind -> file name."""
    kinds = ("input", "map", "flagged", "recon", "brain") + (("lesion",) if prep.volume.lesion is not None else ())
    files = {kind: f"{stem}_{kind}.nii.gz" for kind in kinds}
    _nifti(np.asarray(img.dataobj, dtype=np.float32).reshape(prep.native_shape), prep.native_affine,
           folder / files["input"])
    arrays = [("map", scored.amap, 1), ("recon", scored.recon, 1), ("flagged", scored.flagged, 0), ("brain", brain, 0)]
    if prep.volume.lesion is not None:
        arrays.append(("lesion", prep.volume.lesion, 0))
    for kind, data, order in arrays:
        to_native_nifti(data.astype(np.float32), affine, prep.native_affine, prep.native_shape, folder / files[kind],
                        order=order)
    return files


def score_scan(det: Detector, scorer: Callable[..., Any], scan: Path, img: nib.Nifti1Image, mask: Path | None,
               out: Path, skull: Skull = "auto") -> dict[str, Any]:
    """Prepare, score and threshold one scan; write ``out/<stem>/`` whole (its files and ``summary.json``) and return
    the summary."""
    t0 = time.perf_counter()
    stem = scan_stem(scan)
    try:
        prep = prepare_scan(scan, img, mask, det, skull)
    except (EmptyMaskError, VolumeError) as exc:
        raise ScoreInputError(str(exc)) from None
    reference = det.record["intensity_reference_deciles"]
    contrast = depth_contrast(prep.volume, prep.flat)
    warnings = list(prep.warnings)
    if contrast < DEPTH_CONTRAST_LIMIT:
        warnings.append(f"{scan}: far from the training data (its deep brain is not brighter than the cortex, as in "
                        f"T1: depth correlation {contrast:.2f} < {DEPTH_CONTRAST_LIMIT}; another contrast or body "
                        f"part?); the map may not mean much")
    vol = match_landmarks(prep.volume, np.asarray(reference)) if det.record["prepare"].get(
        "histogram_standardisation", True) else prep.volume
    pv = PreparedVolume(stem, "score", vol.image, vol.brain, vol.lesion, vol.affine, prep.slices, {})
    calibrated_on, threshold, _ = det.calibration(prep.flat)
    with tqdm(total=len(prep.slices), desc=f"scoring {stem}", unit="slice") as bar:
        scored = score_prepared(det, scorer, pv, prep.flat, bar.update)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out))
    try:
        files = write_outputs(work, stem, img, prep, scored, vol.affine, vol.brain)
        flagged_native = np.asarray(nib.load(str(work / files["flagged"])).dataobj) > 0.5
        map_native = np.asarray(nib.load(str(work / files["map"])).dataobj)
        voxel_ml = float(abs(np.linalg.det(prep.native_affine[:3, :3]))) / 1000.0
        if not prep.flat:
            canon = nib.as_closest_canonical(nib.Nifti1Image(np.stack([np.asarray(img.dataobj, np.float32).reshape(
                prep.native_shape), map_native, flagged_native.astype(np.float32)], -1), prep.native_affine))
            arrays = np.asarray(canon.dataobj)
            fig = slices_figure(arrays[..., 0], arrays[..., 1], arrays[..., 2] > 0.5, threshold,
                                f"{stem} · {det.model} of {det.run_dir.name}")
        else:
            fig = slices_figure(*(a[:, :, None] for a in (vol.image[:, :, 0], scored.amap[:, :, 0],
                                                          scored.flagged[:, :, 0])), threshold,
                                f"{stem} · {det.model} of {det.run_dir.name} (prepared grid)", n=1)
        files["png"] = f"{stem}_slices.png"
        with atomic_path(work / files["png"]) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        summary = {
            "scan": str(scan.resolve()), "mask": str(mask.resolve()) if mask else None,
            "run": str(det.run_dir.resolve()), "model": det.model, "checkpoint": str(det.checkpoint.resolve()),
            "eval_name": det.record.get("eval_name"), "threshold": threshold, "fpr": det.record.get("fpr"),
            "calibrated_on": calibrated_on,
            "input": {"shape": list(prep.native_shape), "two_d": prep.flat,
                      "spacing_mm": [round(float(s), 4) for s in nib.affines.voxel_sizes(prep.native_affine)]},
            "skull": prep.skull, "slices_scored": int(len(prep.slices)),
            "depth_contrast": round(contrast, 4), "depth_contrast_limit": DEPTH_CONTRAST_LIMIT,
            "flagged_ml": round(float(flagged_native.sum()) * voxel_ml, 3),
            "flagged_brain_fraction": round(float(scored.flagged.sum() / max(vol.brain[:, :, prep.slices].sum(), 1)),
                                            5),
            "components": components(flagged_native, map_native, prep.native_affine),
            "metrics": scored.metrics, "warnings": warnings, "files": files,
            "wall_s": round(time.perf_counter() - t0, 2)}
        write_json_atomic(work / "summary.json", summary)
        target = out / stem
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{stem}.old.", dir=out))
            target.replace(old / stem)
            work.replace(target)
            shutil.rmtree(old)
        else:
            work.replace(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return summary


def score_scans(run_dir: str | Path, scans: Sequence[str | Path], out: str | Path, model: str = "",
                eval_name: str = "eval", skull: Skull = "auto", masks: Sequence[str | Path | None] = (),
                device: str = "auto", threads: int = 2) -> list[dict[str, Any]]:
    """Score each scan with ``model`` of the run; every input is checked before anything is written. ``masks``: a
    lesion mask per scan (None: ``<stem>_mask.<ext>`` beside it, if any, ``mask_beside``). Returns the summaries.
    ``run_dir``: a run folder, or the name of a shipped detector (``shipped.names()``)."""
    if skull not in ("on", "off", "auto"):
        raise ScoreInputError(f"--skull must be on, off or auto, got {skull!r}")
    set_threads(threads)
    det = load_detector(run_dir, model, eval_name)
    paths = [Path(s) for s in scans]
    if not paths:
        raise ScoreInputError("no scan given: name at least one scan to score")
    if masks and len(masks) != len(paths):
        raise ScoreInputError(f"{len(masks)} masks for {len(paths)} scans: give one --mask per scan, or none")
    mask_paths = [Path(m) if m else mask_beside(p) for p, m in zip(paths, list(masks) or [None] * len(paths))]
    stems = [scan_stem(p) for p in paths]
    if len(set(stems)) != len(stems):
        raise ScoreInputError(f"two scans share a name ({', '.join(sorted({s for s in stems if stems.count(s) > 1}))}"
                              f"): their outputs would overwrite each other")
    try:
        min_overlap = float(det.record["prepare"].get("min_mask_overlap", MIN_MASK_OVERLAP))
        images = [check_input(p, m, min_overlap) for p, m in zip(paths, mask_paths)]
    except VolumeError as exc:
        raise ScoreInputError(str(exc)) from None
    sc = det.record["scoring"]
    dev = resolve_device(device)
    try:
        scorer, _ = diffusion_scorer(det.checkpoint, sc["t_star"], int(sc["sample_steps"]), sc["sampler"],
                                     sc["eval_noise"], int(sc["draws"]), int(sc["eval_batch_size"]), int(sc["seed"]),
                                     dev, use_channels_last(sc["channels_last"], dev), sc["amp"],
                                     int(sc["patch_stride"]), sc["residual"])
        if sc.get("deep_t_star"):
            scorer, _ = with_deep_map(scorer, {}, det.checkpoint, sc["deep_t_star"], int(sc["deep_draws"]),
                                      int(sc["eval_batch_size"]), int(sc["seed"]), dev,
                                      use_channels_last(sc["channels_last"], dev), sc["amp"], sc["residual"],
                                      det.post_processing, scales=det.record["models"][det.model]["mix_scales"])
    except CheckpointError as exc:
        raise ScoreInputError(f"{exc}; train the model again: {_make_hint(det.run_dir, '02_train')}") from None
    return [score_scan(det, scorer, p, img, m, Path(out), skull) for p, img, m in zip(paths, images, mask_paths)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m addmlib.score RUN_DIR SCAN [SCAN ...] --out DIR``: anomaly map, flagged mask and reconstruction of
    each scan on its own grid, a PNG and summary.json, with a trained and evaluated run's detector."""
    parser = ArgumentParser(prog="python -m addmlib.score", description=main.__doc__)
    parser.add_argument("run_dir", help="a run folder after training and evaluation (e.g. outputs/demo), or the name "
                                        "of a detector shipped with the package (e.g. ixi-2400)")
    parser.add_argument("scans", nargs="+", help="3-D NIfTI/NRRD scans, or 2-D axial slices (PNG, one-slice NIfTI)")
    parser.add_argument("--out", required=True, help="output folder: one sub-folder per scan")
    parser.add_argument("--model", default="", help="the evaluated model to score with (default: the first one)")
    parser.add_argument("--eval-name", default="eval", help="the evaluation whose threshold is used (default eval)")
    parser.add_argument("--skull", default="auto", choices=("on", "off", "auto"),
                        help="is the skull on the scans (auto: by the volume of non-background tissue)")
    parser.add_argument("--mask", action="append", default=[],
                        help="a lesion mask per scan, in order (default: <stem>_mask.nii.gz beside the scan, if any)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    def body() -> int:
        for s in score_scans(args.run_dir, args.scans, args.out, args.model, args.eval_name, args.skull, args.mask,
                             args.device, args.threads):
            print(f"{s['scan']}: {s['flagged_ml']} mL flagged in {len(s['components'])} largest components "
                  f"(threshold {s['threshold']:.4g}) -> {Path(args.out) / scan_stem(Path(s['scan']))}")
        return 0
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

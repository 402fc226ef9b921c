"""Volumes to browse: a scan, its anomaly map and optional reconstruction, lesion and brain masks, on one grid.

Every file is read with ``addmlib.data.io.read_volume`` and turned to the closest canonical orientation (RAS+:
array axis 0 runs to the patient's right, axis 1 anterior, axis 2 superior), so planes mean the same for any input
orientation. Slice indices are indices along those canonical axes.

Display orientation of a 2-D slice: superior (axial: anterior) at the top; radiological convention by default
(the patient's right on the viewer's left, like ``notebooks/03_evaluate.ipynb``'s montage), neurological with
``radiological=False``; sagittal slices show anterior on the left.

``run_volumes`` lists the volumes that ``notebooks/03_evaluate.ipynb`` wrote (``<run>/<eval_name>/maps/<model>/<set>/
<id>_{input,recon,map,lesion,brain}.nii.gz``) with the threshold the evaluation calibrated for each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from ..data.io import VolumeError, read_volume

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Canonical array axis held fixed by each plane."""


@dataclass
class BrowseVolume:
    """One volume and its maps on a common canonical (RAS+) grid.

    ``scored`` is the boolean array over axial slices that were scored (None: all); Dice counts voxels of ``brain``
    on scored slices only (the whole volume when there is no brain mask). ``min_component_voxels`` drops predicted
    components smaller than that, on the stack of scored slices, exactly as the evaluation did (1: off).
    """

    id: str
    image: np.ndarray
    amap: np.ndarray
    affine: np.ndarray
    recon: np.ndarray | None = None
    lesion: np.ndarray | None = None
    brain: np.ndarray | None = None
    threshold: float | None = None
    min_component_voxels: int = 1
    label: str = ""
    scored: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scored is None:
            self.scored = np.ones(self.image.shape[2], dtype=bool)
        self.scored = np.asarray(self.scored, dtype=bool)
        if self.scored.shape != (self.image.shape[2],) or not self.scored.any():
            raise VolumeError(f"{self.id}: scored must flag at least one of the {self.image.shape[2]} axial slices")
        if not self.region.any():
            raise VolumeError(f"{self.id}: the brain mask holds no voxel on the scored slices: nothing to measure")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes."""
        return tuple(float(s) for s in nib.affines.voxel_sizes(self.affine))  # type: ignore[return-value]

    @cached_property
    def intensity_range(self) -> tuple[float, float]:
        """Grey-scale window of the scan: its 0.5th and 99.5th percentiles."""
        lo, hi = (float(v) for v in np.percentile(self.image, [0.5, 99.5]))
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    @cached_property
    def region(self) -> np.ndarray:
        """Voxels that count for Dice: the brain mask (or everything) on scored axial slices."""
        region = self.brain.copy() if self.brain is not None else np.ones(self.image.shape, dtype=bool)
        region[:, :, ~np.asarray(self.scored)] = False
        return region

    def n_slices(self, plane: Plane) -> int:
        return int(self.image.shape[AXIS[plane]])

    def world_mm(self, plane: Plane, index: int) -> float:
        """World coordinate (mm) of a slice along the plane's axis: x for sagittal, y coronal, z axial."""
        centre = (np.asarray(self.image.shape) - 1) / 2.0
        centre[AXIS[plane]] = index
        return float((self.affine @ np.append(centre, 1.0))[AXIS[plane]])


def load_nifti_set(scan: str | Path, amap: str | Path, lesion: str | Path | None = None,
                   recon: str | Path | None = None, brain: str | Path | None = None, *, id: str | None = None,
                   threshold: float | None = None, min_component_voxels: int = 1, label: str = "",
                   scored_from_recon: bool = False) -> BrowseVolume:
    """Read a scan and its anomaly map (and optionally a lesion mask, a reconstruction, a brain mask), check that they
    share one grid, and return them in canonical orientation. Masks are voxels > 0.5. ``scored_from_recon``: axial
    slices whose reconstruction is all zero were not scored (how ``03_evaluate`` writes its maps); otherwise all
    slices count."""
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if min_component_voxels < 1:
        raise ValueError(f"min_component_voxels must be >= 1, got {min_component_voxels}")
    if scored_from_recon and recon is None:
        raise ValueError("scored_from_recon needs a reconstruction")
    ref = nib.as_closest_canonical(read_volume(scan))
    arrays: dict[str, np.ndarray] = {"scan": np.asarray(ref.dataobj, dtype=np.float32)}
    for name, path in (("map", amap), ("lesion", lesion), ("recon", recon), ("brain", brain)):
        if path is None:
            continue
        img = nib.as_closest_canonical(read_volume(path, allow_empty=name in ("map", "lesion")))
        if img.shape[:3] != ref.shape[:3]:
            raise VolumeError(f"{path}: the {name} has shape {img.shape[:3]} but the scan {scan} has {ref.shape[:3]};"
                              f" resample it onto the scan's grid first")
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise VolumeError(f"{path}: the {name} lies on another grid than the scan {scan} (affines differ:"
                              f"\n{np.round(img.affine, 3)}\nvs\n{np.round(ref.affine, 3)}); resample it first")
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(ref.shape[:3])
        arrays[name] = data > 0.5 if name in ("lesion", "brain") else data
    scored = None
    if scored_from_recon:
        scored = np.abs(arrays["recon"]).reshape(-1, ref.shape[2]).max(0) > 0
        if not scored.any():
            raise VolumeError(f"{recon}: the reconstruction is zero on every slice (nothing was scored)")
    vid = id or Path(amap).name.split(".nii")[0].removesuffix("_map")
    return BrowseVolume(vid, arrays["scan"], arrays["map"], ref.affine, arrays.get("recon"), arrays.get("lesion"),
                        arrays.get("brain"), threshold, min_component_voxels, label, scored)


def display(slice2d: np.ndarray, plane: Plane, radiological: bool = True) -> np.ndarray:
    """A canonical 2-D slice turned for display (see the module docstring)."""
    out = slice2d.T[::-1, :]  # rows: superior (axial: anterior) first
    if plane == "sagittal":
        return out[:, ::-1]  # anterior on the left
    return out[:, ::-1] if radiological else out


def extract(volume: np.ndarray, plane: Plane, index: int, radiological: bool = True) -> np.ndarray:
    """Slice ``index`` of a canonical 3-D array in ``plane``, in display orientation."""
    axis = AXIS[plane]
    if not 0 <= index < volume.shape[axis]:
        raise IndexError(f"{plane} slice {index} is outside [0, {volume.shape[axis] - 1}]")
    return display(np.take(volume, index, axis=axis), plane, radiological)


def pixel_spacing(spacing: tuple[float, float, float], plane: Plane) -> tuple[float, float]:
    """(row, column) pixel size in mm of a displayed slice."""
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


@dataclass(frozen=True)
class RunVolume:
    """A volume written by the evaluation notebook: where its files are and what the evaluation said of it."""

    model: str
    split: str
    id: str
    files: dict[str, Path]
    threshold: float | None
    dice: float | None
    lesion_voxels: int | None
    min_component_voxels: int

    @property
    def label(self) -> str:
        return f"{self.model} · {self.split} · {self.id}"

    def load(self) -> BrowseVolume:
        f = self.files
        return load_nifti_set(f["input"], f["map"], f.get("lesion"), f.get("recon"), f.get("brain"), id=self.id,
                              threshold=self.threshold, min_component_voxels=self.min_component_voxels,
                              label=self.label, scored_from_recon="recon" in f)


def _model_names(metrics: dict) -> dict[str, str]:
    """Model folder name -> the result label in metrics.json (``name``, else the checkpoint's folder)."""
    out = {}
    for label, info in metrics.get("models", {}).items():
        name = info.get("name") or Path(info.get("checkpoint", "")).parent.name
        out[name] = label
    return out


def run_volumes(run_dir: str | Path, eval_name: str = "eval") -> list[RunVolume]:
    """Every volume with an anomaly map under ``<run_dir>/<eval_name>/maps``, sorted by model, set and id."""
    root = Path(run_dir) / eval_name
    maps = root / "maps"
    found = sorted(maps.glob("*/*/*_map.nii.gz"))
    if not found:
        raise FileNotFoundError(f"no anomaly maps under {maps}: run notebooks/03_evaluate.ipynb on {run_dir} with "
                                f"write_nifti = True (eval_name = {eval_name!r})")
    metrics = json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").is_file() else {}
    labels = _model_names(metrics)
    min_voxels = int(metrics.get("post_processing", {}).get("min_component_voxels", 1))
    out = []
    for path in found:
        model, split, vid = path.parent.parent.name, path.parent.name, path.name.removesuffix("_map.nii.gz")
        files = {kind: path.with_name(f"{vid}_{kind}.nii.gz") for kind in ("input", "map", "recon", "lesion", "brain")}
        files = {k: p for k, p in files.items() if p.is_file()}
        if "input" not in files:
            raise FileNotFoundError(f"{path}: its scan {path.with_name(vid + '_input.nii.gz')} is missing")
        per_volume = metrics.get("results", {}).get(labels.get(model, ""), {}).get(split, {}).get("per_volume", [])
        row = next((r for r in per_volume if r.get("id") == vid), {})
        out.append(RunVolume(model, split, vid, files, row.get("threshold"), row.get("dice"),
                             row.get("lesion_voxels"), max(min_voxels, 1)))
    return out


def select_volume(volumes: list[RunVolume], model: str, split: str, volume: str = "") -> RunVolume:
    """The entry of ``model`` / ``split`` named ``volume`` (empty: the one with the most lesion voxels); errors list
    what there is."""
    models = sorted({v.model for v in volumes})
    if model not in models:
        raise ValueError(f"browse_model {model!r} has no maps; the run has: {', '.join(models)}")
    same = [v for v in volumes if v.model == model and v.split == split]
    if not same:
        raise ValueError(f"browse_set {split!r} has no maps for model {model!r}; it has: "
                         f"{', '.join(sorted({v.split for v in volumes if v.model == model}))}")
    if not volume:
        return max(same, key=lambda v: v.lesion_voxels or 0)
    match = [v for v in same if v.id == volume]
    if not match:
        raise ValueError(f"browse_volume {volume!r} is not among {model}/{split}'s volumes: "
                         f"{', '.join(v.id for v in same)}")
    return match[0]


@dataclass
class Selection:
    """What ``05_browse`` opens: the entries of the browser, the one to start on, and where figures go."""

    entries: list[RunVolume | BrowseVolume]
    start: int
    chosen: RunVolume | None
    figures: Path


def load_scored(folder: str | Path, threshold: float | None = None) -> BrowseVolume:
    """A scan scored by ``python -m addmlib.score`` (one of its per-scan folders): the scan, its map, reconstruction,
    brain mask and, where a mask was given, the lesion, on the scan's grid, at the threshold the run calibrated (or
    ``threshold``)."""
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: score_dir must be a per-scan folder written by python -m "
                                f"addmlib.score")
    summary = json.loads(path.read_text())
    files = {kind: folder / name for kind, name in summary["files"].items()}
    return load_nifti_set(files["input"], files["map"], files.get("lesion"), files.get("recon"), files.get("brain"),
                          id=folder.name, label=f"{summary['model']} · {folder.name} (scored)",
                          threshold=summary["threshold"] if threshold is None else threshold)


def open_for_browsing(run_dir: str | Path, eval_name: str = "eval", model: str = "addm", split: str = "eval_a",
                      volume: str = "", nifti: dict[str, str] | None = None,
                      threshold: float | None = None, score_dir: str = "") -> Selection:
    """A run's maps, starting on ``model`` / ``split`` / ``volume`` (figures to ``<run>/<eval_name>/figures``), or,
    when ``nifti`` names a ``scan`` and a ``map`` (optionally ``mask``, ``recon``, ``brain``), those files, or, with
    ``score_dir``, a scan scored by ``addmlib.score`` (``load_scored``; figures to ``<run>/browse`` for both)."""
    run_dir = Path(run_dir)
    if score_dir:
        return Selection([load_scored(score_dir, threshold)], 0, None, run_dir / "browse")
    nifti = {k: v for k, v in (nifti or {}).items() if v}
    if nifti:
        vol = load_nifti_set(nifti["scan"], nifti["map"], nifti.get("mask"), nifti.get("recon"), nifti.get("brain"),
                             threshold=threshold)
        return Selection([vol], 0, None, run_dir / "browse")
    entries = run_volumes(run_dir, eval_name)
    chosen = select_volume(entries, model, split, volume)
    return Selection(list(entries), entries.index(chosen), chosen, run_dir / eval_name / "figures")

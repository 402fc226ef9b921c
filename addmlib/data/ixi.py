"""The embedded IXI mid-axial population: 521 healthy individuals, one axial T1 slice each (see ``ixi_midaxial/``).

Each PNG is 197 x 233 pixels at 1 mm on the MNI152NLin2009cSym grid (skull on, rows from anterior to posterior). A
slice becomes a one-slice ``Volume`` (shape 197 x 233 x 1, RAS axes, 1 mm), so the volumes' preprocessing
(crop to the brain, percentile normalisation, histogram standardisation, N x N resize) applies unchanged.

The split by individual is fixed and shipped (``ixi_midaxial/splits.json``): ``train``, ``calib`` (healthy, for
thresholds and fusion scales), ``tune`` (lesions inserted; the only split settings are chosen on) and ``test``
(lesions inserted; scored for the report). No individual is in two splits.

Brain mask (``brain_mask``): the slices are registered to one template level, so a 2-D classical mask works on them:
tissue above a fraction of the head's Otsu level, eroded to cut the brain from the scalp, its large solid components
grown back and closed over the sulci, holes filled (notebook 01 shows it over a sample of the slices).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from .preprocess import Volume
from .slices2d import read_slice, with_brain

IXI_DIR = Path(__file__).with_name("ixi_midaxial")
SPLIT_NAMES = ("train", "calib", "tune", "test")


class IXIError(ValueError):
    """The embedded IXI folder is incomplete or does not match its checksums."""


def _sums() -> dict[str, str]:
    path = IXI_DIR / "SHA256SUMS"
    if not path.is_file():
        raise IXIError(f"{path} not found: the package is installed without its IXI data")
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in path.read_text().splitlines()
                                                         if line.strip())}


def subject_ids() -> list[str]:
    """Every individual, e.g. ``IXI002``, sorted."""
    return sorted(Path(name).stem.removeprefix("sub-") for name in _sums())


def verify() -> int:
    """Check every PNG against ``SHA256SUMS``; returns how many were checked, else an IXIError naming the file."""
    for name, digest in _sums().items():
        path = IXI_DIR / name
        if not path.is_file():
            raise IXIError(f"{path}: listed in SHA256SUMS but missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise IXIError(f"{path}: sha256 differs from SHA256SUMS (a changed or damaged file)")
    return len(_sums())


@lru_cache(maxsize=1)
def splits() -> dict[str, list[str]]:
    """The fixed split by individual (``splits.json``), checked: every id known, none in two splits."""
    path = IXI_DIR / "splits.json"
    data = json.loads(path.read_text())
    known = set(subject_ids())
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for sid in data[name]:
            if sid not in known:
                raise IXIError(f"{path}: {sid} (split {name!r}) has no slice")
            if sid in seen:
                raise IXIError(f"{path}: {sid} is in splits {seen[sid]!r} and {name!r}")
            seen[sid] = name
    return {name: list(data[name]) for name in SPLIT_NAMES}


def read_png(sid: str) -> np.ndarray:
    """The slice as float32 (rows anterior -> posterior, columns as stored), 0..255."""
    from PIL import Image

    path = IXI_DIR / "png" / f"sub-{sid}.png"
    if not path.is_file():
        raise IXIError(f"{path} not found")
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def brain_mask(img: np.ndarray, erode_px: int = 4, close_px: int = 7) -> np.ndarray:
    """A 2-D brain mask of a skull-on T1 slice: tissue brighter than 3/8 of the head's Otsu level (skull and CSF
    fall below), eroded by ``erode_px`` so the brain parts from the scalp, the solid components of at least a tenth
    of the largest (not rings: the scalp) dilated back by one pixel more, closed by ``close_px`` (the sulcal CSF at
    the surface) and hole-filled (the ventricles)."""
    head = img > filters.threshold_otsu(img) * 0.5
    if not head.any():
        raise IXIError("the slice is empty: no head found")
    tissue = img > filters.threshold_otsu(img[head]) * 0.75
    core = ndimage.binary_erosion(tissue, morphology.disk(erode_px))
    labels, n = ndimage.label(core)
    sizes = ndimage.sum_labels(core, labels, np.arange(1, n + 1))
    # a ring (what is left of the scalp) encloses far more than its own area; the brain's parts do not
    solid = [k for k in range(1, n + 1) if ndimage.binary_fill_holes(labels == k).sum() < 3 * sizes[k - 1]]
    if not solid:
        raise IXIError("no brain tissue left after erosion")
    top = max(sizes[k - 1] for k in solid)
    # both hemispheres: large ventricles can part them once eroded
    largest = np.isin(labels, [k for k in solid if sizes[k - 1] >= 0.1 * top])
    mask = ndimage.binary_dilation(largest, morphology.disk(erode_px + 1))
    mask = ndimage.binary_closing(mask, morphology.disk(close_px), border_value=0)
    return ndimage.binary_fill_holes(mask) & ndimage.binary_fill_holes(head)


def load_volume(sid: str) -> Volume:
    """Subject ``sid`` as a one-slice Volume (197 x 233 x 1, 1 mm, RAS), brain-masked (background at 0)."""
    return with_brain(read_slice(IXI_DIR / "png" / f"sub-{sid}.png"), skull=True)

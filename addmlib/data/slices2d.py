"""2-D axial slices as one-slice volumes: PNG (8/16-bit grey) or single-slice NIfTI, skull on or off.

A slice becomes a ``Volume`` of shape X x Y x 1 with RAS axes, so the volumes' preprocessing (crop to the brain,
normalisation, histogram standardisation, N x N resize) and scoring apply unchanged. A PNG carries no geometry: its
rows are read as running from anterior (top) to posterior, its columns as stored, at ``spacing_mm`` per pixel. A
NIfTI slice keeps its affine (reoriented to RAS). The brain mask: ``ixi.brain_mask`` for a skull-on slice, the
non-background pixels for a brain-only one.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .io import VolumeError
from .preprocess import Volume, brain_from_background, to_ras

SLICE_SUFFIXES = (".png", ".nii.gz", ".nii")


def is_slice_file(path: str | Path) -> bool:
    """Whether ``path`` names a 2-D slice this module reads: a PNG, or a NIfTI whose third axis has one voxel."""
    name = Path(path).name.lower()
    if name.endswith(".png"):
        return True
    if name.endswith((".nii", ".nii.gz")):
        try:
            shape = nib.load(str(path)).shape
        except (OSError, ValueError, nib.filebasedimages.ImageFileError):
            return False
        return len(shape) == 2 or (len(shape) >= 3 and shape[2] == 1 and all(s == 1 for s in shape[3:]))
    return False


def read_slice(path: str | Path, spacing_mm: float = 1.0) -> Volume:
    """The slice at ``path`` as an X x Y x 1 RAS volume (image only); a VolumeError names the file when it is not
    a readable 2-D slice."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".png"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                rows = np.asarray(img.convert("I") if img.mode not in ("L", "I;16", "I") else img, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise VolumeError(f"{path}: cannot be read as PNG: {exc}") from None
        if rows.ndim != 2:
            raise VolumeError(f"{path}: expected a grey PNG, got shape {rows.shape}")
        image = np.ascontiguousarray(rows.T[:, ::-1])[:, :, None]  # rows anterior -> posterior: y runs to anterior
        affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    elif name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            raise VolumeError(f"{path}: cannot be read as NIfTI: {exc}") from None
        data = data.reshape(data.shape[:2] + (1,)) if data.ndim == 2 or data.size == np.prod(data.shape[:2]) else data
        if data.ndim != 3 or data.shape[2] != 1:
            raise VolumeError(f"{path}: a slice file must hold one slice, got shape {data.shape}")
        vol = to_ras(Volume(data, np.asarray(img.affine, dtype=float)))
        if vol.image.shape[2] != 1:
            raise VolumeError(f"{path}: its one slice is not axial (shape {vol.image.shape} in RAS axes)")
        image, affine = vol.image, vol.affine
    else:
        raise VolumeError(f"{path}: not a 2-D slice file (expected {', '.join(SLICE_SUFFIXES)})")
    if not np.isfinite(image).all():
        raise VolumeError(f"{path}: contains NaN/Inf pixels")
    if not image.any() or np.ptp(image) == 0:
        raise VolumeError(f"{path}: the slice is constant (an empty image)")
    return Volume(image.astype(np.float32), affine)


def with_brain(vol: Volume, skull: bool) -> Volume:
    """``vol`` with a brain mask (``ixi.brain_mask`` when the skull is on, the non-background pixels when off) and the
    image set to 0 outside it."""
    from .ixi import brain_mask

    if skull:
        image = vol.image[:, :, 0]
        brain = brain_mask(image)[:, :, None]
    else:
        brain = brain_from_background(vol).brain
    return Volume(np.where(brain, vol.image, 0.0).astype(np.float32), vol.affine, brain, vol.lesion)

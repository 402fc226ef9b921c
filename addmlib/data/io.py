"""Reading MRI volumes: NIfTI (nibabel) and NRRD (pynrrd), with clear errors for files that cannot be used.

Every reader returns a ``nibabel.Nifti1Image`` in world (RAS+ mm) coordinates, so the rest of the pipeline only deals
with one kind of object. NRRD's LPS space directions are converted to RAS.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np


class VolumeError(ValueError):
    """A volume file cannot be used; the message names the file and the problem."""


def _check(data: np.ndarray, path: Path, allow_empty: bool = False) -> np.ndarray:
    if data.ndim > 3:
        extra = [s for s in data.shape[3:] if s != 1]
        if extra:
            raise VolumeError(f"{path}: a 4-D volume of shape {data.shape} (only 3-D volumes, or 4-D with a "
                              f"singleton 4th axis, can be used)")
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3-D volume, got {data.ndim}-D with shape {data.shape}")
    if min(data.shape) < 2:
        raise VolumeError(f"{path}: a volume of shape {data.shape} is a single slice, not a 3-D volume")
    if data.size == 0:
        raise VolumeError(f"{path}: the volume is empty (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise VolumeError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    if not allow_empty and not np.any(data):
        raise VolumeError(f"{path}: every voxel is zero (an empty volume)")
    return data


def _read_nifti(path: Path, allow_empty: bool = False) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise VolumeError(f"{path}: cannot be read as NIfTI (corrupt or truncated?): {exc}") from None
    data = _check(np.asarray(data), path, allow_empty)
    return nib.Nifti1Image(data, img.affine)


def _read_nrrd(path: Path, allow_empty: bool = False) -> nib.Nifti1Image:
    import nrrd

    try:
        data, header = nrrd.read(str(path))
    except (nrrd.NRRDError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(f"{path}: cannot be read as NRRD (corrupt or truncated?): {exc}") from None
    data = _check(np.asarray(data), path, allow_empty)
    directions = np.asarray(header.get("space directions"), dtype=float)
    if directions.shape != (3, 3):
        raise VolumeError(f"{path}: NRRD without 3x3 'space directions' cannot be placed in space")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # columns: world step per voxel index
    affine[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise VolumeError(f"{path}: NRRD space {space!r} is not supported (LPS or RAS)")
    return nib.Nifti1Image(data, affine)


def read_volume(path: str | Path, allow_empty: bool = False) -> nib.Nifti1Image:
    """Read a 3-D MRI volume (.nii, .nii.gz, .nrrd, .nhdr) as a NIfTI image with a RAS+ affine (``allow_empty``: an
    all-zero volume is fine, e.g. the lesion mask of a healthy brain)."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path, allow_empty)
    if name.endswith((".nrrd", ".nhdr")):
        return _read_nrrd(path, allow_empty)
    raise VolumeError(f"{path}: unknown volume format (expected .nii, .nii.gz, .nrrd or .nhdr)")


MIN_MASK_OVERLAP = 0.5
"""Default least fraction of a mask's nonzero voxels that must lie inside its scan's field of view."""


def fov_fraction(mask: nib.Nifti1Image, scan: nib.Nifti1Image) -> float:
    """Fraction of the mask's nonzero voxels whose centres (placed in the world, mm, by the mask's affine) lie inside
    the scan's field of view (its whole voxel grid, each voxel's full extent, placed by the scan's affine).

    This is the overlap rule for masks and scans: the mask's *nonzero* voxels count, not its grid, so a lesion mask
    on a larger or coarser grid is fine as long as the lesion itself lies inside the scan. NaN for an empty mask.
    """
    data = np.asarray(mask.dataobj)
    idx = np.argwhere(data.reshape(data.shape[:3]) != 0)
    if not len(idx):
        return float("nan")
    to_scan = np.linalg.inv(np.asarray(scan.affine, dtype=float)) @ np.asarray(mask.affine, dtype=float)
    pos = idx @ to_scan[:3, :3].T + to_scan[:3, 3]
    upper = np.asarray(scan.shape[:3], dtype=float) - 0.5
    return float(np.all((pos >= -0.5) & (pos <= upper), axis=1).mean())


def check_mask_overlap(mask: nib.Nifti1Image, mask_name: str | Path, scan: nib.Nifti1Image, scan_name: str | Path,
                       min_fraction: float = MIN_MASK_OVERLAP) -> float:
    """``fov_fraction`` of the mask in the scan; a VolumeError naming both files when below ``min_fraction``."""
    fraction = fov_fraction(mask, scan)
    if np.isfinite(fraction) and fraction < min_fraction:
        raise VolumeError(f"{mask_name}: only {fraction:.1%} of the mask's nonzero voxels lie inside the field of "
                          f"view of {scan_name} (at least {min_fraction:.0%} needed): its affine places it elsewhere "
                          f"in the world; is it this scan's mask?")
    return fraction


def read_mask(path: str | Path, label: int | None = None) -> nib.Nifti1Image:
    """A label map as a boolean mask: voxels == ``label`` (or > 0 when label is None)."""
    img = read_volume(path)
    data = np.asarray(img.dataobj)
    mask = (np.rint(data) == label) if label is not None else data > 0
    if not mask.any():
        raise VolumeError(f"{path}: the mask is empty" + (f" (no voxel has label {label})" if label is not None
                                                           else ""))
    return nib.Nifti1Image(mask.astype(np.uint8), img.affine)

"""Preprocessing of a 3-D MRI volume into axial N x N slices, each step a small function.

Every geometric step resamples through one helper (``resample``) and updates the voxel-to-world affine exactly, so
the final volume's affine still says where each voxel lies in the scanner's RAS+ space. Writing an anomaly map back
into the input's native space is then one resampling with ``to_native`` (nearest or linear), whatever steps ran.
Masks (brain, lesion) follow the image through every geometric step with nearest-neighbour interpolation.

Order used by ``preprocess``: ``to_ras`` -> ``resample_isotropic`` (1 mm) -> brain mask (given, or ``skull_strip``,
or ``brain_from_background`` for volumes that are brain only) -> ``crop_to_brain`` -> ``normalise_intensity``
(percentiles inside the brain -> [-1, 1]) -> ``to_square_slices`` (pad in-plane to a square, resize to N x N).
Axes after ``to_ras``: (x: left->Right, y: posterior->Anterior, z: inferior->Superior); an axial slice is [:, :, k].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import nibabel as nib
import numpy as np
from scipy import ndimage

from .io import MIN_MASK_OVERLAP, check_mask_overlap


@dataclass
class Volume:
    """A 3-D image with its voxel->world (RAS+ mm) affine and optional masks on the same grid."""

    image: np.ndarray
    affine: np.ndarray
    brain: np.ndarray | None = None
    lesion: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("brain", "lesion"):
            m = getattr(self, name)
            if m is not None and m.shape != self.image.shape:
                raise ValueError(f"{name} mask shape {m.shape} differs from the image shape {self.image.shape}")

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @classmethod
    def from_nifti(cls, img: nib.Nifti1Image, brain: nib.Nifti1Image | None = None,
                   lesion: nib.Nifti1Image | None = None, min_overlap: float = MIN_MASK_OVERLAP,
                   names: Mapping[str, str | Path] | None = None) -> "Volume":
        """From nibabel images; masks are resampled onto the image grid if theirs differs (nearest neighbour).

        A mask with less than ``min_overlap`` of its nonzero voxels inside the image's field of view is refused
        (``io.check_mask_overlap``); ``names`` ("image", "brain", "lesion" -> file name) name them in that error.
        """
        return cls.from_nifti_report(img, brain, lesion, min_overlap, names)[0]

    @classmethod
    def from_nifti_report(cls, img: nib.Nifti1Image, brain: nib.Nifti1Image | None = None,
                          lesion: nib.Nifti1Image | None = None, min_overlap: float = MIN_MASK_OVERLAP,
                          names: Mapping[str, str | Path] | None = None) -> tuple["Volume", dict[str, Any]]:
        """``from_nifti`` and, for each mask given, whether it was resampled (``"lesion_resampled"``,
        ``"brain_resampled"``) and, when it was, the fraction of it inside the image (``"lesion_fov_fraction"``)."""
        label = {"image": "image", "brain": "brain mask", "lesion": "lesion mask", **(names or {})}
        arrays: dict[str, np.ndarray | None] = {"brain": None, "lesion": None}
        report: dict[str, Any] = {}
        for key, m in (("brain", brain), ("lesion", lesion)):
            if m is not None:
                arrays[key], fraction = mask_on_grid(m, img, min_overlap, label[key], label["image"])
                report[f"{key}_resampled"] = fraction is not None
                if fraction is not None:
                    report[f"{key}_fov_fraction"] = round(fraction, 4)
        vol = cls(np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=float), arrays["brain"],
                  arrays["lesion"])
        return vol, report


def mask_on_grid(mask: nib.Nifti1Image, img: nib.Nifti1Image, min_overlap: float = MIN_MASK_OVERLAP,
                 mask_name: str | Path = "mask", image_name: str | Path = "image") -> tuple[np.ndarray, float | None]:
    """The mask (> 0) on the image's grid, and None when it already was on it, else the fraction of its nonzero
    voxels inside the image (it is then resampled, nearest neighbour). Below ``min_overlap``: a VolumeError naming
    both files (a mask whose affine puts it elsewhere would otherwise come out empty, silently)."""
    data = np.asarray(mask.dataobj) > 0
    if data.shape == img.shape[:3] and np.allclose(mask.affine, img.affine, atol=1e-3):
        return data, None
    fraction = check_mask_overlap(mask, mask_name, img, image_name, min_overlap)
    on_grid = to_grid(data.astype(np.float32), mask.affine, img.affine, img.shape[:3], order=0) > 0.5
    return on_grid, fraction if np.isfinite(fraction) else 0.0


def to_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
            order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample ``data`` (on src_affine's grid) onto the grid (dst_affine, dst_shape): dst voxel -> world -> src voxel."""
    m = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=tuple(dst_shape), order=order,
                                    mode="constant", cval=cval, prefilter=order > 1)


def resample(vol: Volume, matrix: np.ndarray, shape: tuple[int, int, int], smooth_sigma: np.ndarray | None = None,
             background: float | None = None) -> Volume:
    """New grid whose voxel v sits at the old voxel ``matrix @ v`` (homogeneous 4x4); affine' = affine @ matrix.

    The image is interpolated linearly (after an optional Gaussian anti-aliasing with ``smooth_sigma`` voxels per
    axis); masks by nearest neighbour. Outside the old grid the image takes ``background`` (default: its minimum).
    """
    img = vol.image
    if smooth_sigma is not None and np.any(np.asarray(smooth_sigma) > 0):
        img = ndimage.gaussian_filter(img, smooth_sigma, mode="nearest")
    fill = float(vol.image.min()) if background is None else background
    out = ndimage.affine_transform(img, matrix[:3, :3], matrix[:3, 3], output_shape=shape, order=1,
                                   mode="constant", cval=fill)

    def mask(m: np.ndarray | None) -> np.ndarray | None:
        if m is None:
            return None
        return ndimage.affine_transform(m.astype(np.uint8), matrix[:3, :3], matrix[:3, 3], output_shape=shape,
                                        order=0, mode="constant", cval=0).astype(bool)
    return Volume(out.astype(np.float32), vol.affine @ matrix, mask(vol.brain), mask(vol.lesion))


def to_ras(vol: Volume) -> Volume:
    """Reorder/flip the array axes so that they run towards Right, Anterior, Superior (no interpolation)."""
    ornt = nib.orientations.io_orientation(vol.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)

    def apply(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(nib.orientations.apply_orientation(a, transform))
    inv = nib.orientations.inv_ornt_aff(transform, vol.image.shape)
    return Volume(apply(vol.image), vol.affine @ inv, apply(vol.brain), apply(vol.lesion))


def resample_isotropic(vol: Volume, spacing: float = 1.0) -> Volume:
    """Resample to ``spacing`` mm along every axis (first voxel centre kept; extent kept to within a voxel)."""
    zooms = vol.spacing
    step = spacing / zooms  # old voxels per new voxel
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(vol.image.shape, step))
    sigma = np.clip((step - 1) / 2, 0, None)  # anti-alias only where we shrink
    return resample(vol, np.diag([*step, 1.0]), shape, smooth_sigma=sigma)


def brain_from_background(vol: Volume, threshold: float | None = None) -> Volume:
    """Brain mask of a volume that is already brain only: non-background voxels, holes filled, largest component."""
    thr = threshold if threshold is not None else float(vol.image.min()) + 0.02 * float(np.ptp(vol.image))
    mask = vol.image > thr
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("no voxel above the background level: is this volume empty?")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    if mask.shape[2] == 1:  # one slice: closed and filled in-plane (across z the array's ends would erode it away)
        mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask[:, :, 0], iterations=2))[:, :, None]
    else:
        mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    return replace(vol, brain=mask)


def grow_mask_mm(mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Dilate a mask by ``margin_mm`` millimetres (Euclidean distance, anisotropic voxels respected)."""
    if margin_mm <= 0:
        return mask
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return mask | (dist <= margin_mm)


def skull_strip(vol: Volume, margin_mm: float = 2.0, threshold: float = 0.5) -> Volume:
    """Brain mask from deepbet (Fisch et al. 2024; weights inside its wheel, runs offline on the CPU).

    ``margin_mm`` grows the mask so that lesions at the brain surface stay inside (SOURCES.md: 76 % -> 90 %+ of the
    surface lesion of pyradiomics brain2 with 2 mm). Voxels outside the mask are set to the image minimum.
    """
    try:
        from deepbet import BrainExtraction
    except ImportError as exc:
        raise ImportError("skull stripping needs deepbet: pip install deepbet==1.0.2") from exc
    import torch

    img = nib.Nifti1Image(vol.image.astype(np.float32), vol.affine)
    with torch.inference_mode():
        _, mask_img, _ = BrainExtraction(no_gpu=not torch.cuda.is_available()).run(img, threshold=threshold)
    mask = np.asarray(mask_img.dataobj).astype(bool).reshape(vol.image.shape)
    if not mask.any():
        raise ValueError("deepbet found no brain in this volume")
    mask = grow_mask_mm(mask, vol.spacing, margin_mm)
    image = np.where(mask, vol.image, vol.image.min()).astype(np.float32)
    return replace(vol, image=image, brain=mask)


def crop_to_brain(vol: Volume, margin: int = 2) -> Volume:
    """Crop to the brain mask's bounding box plus ``margin`` voxels (kept inside the array)."""
    if vol.brain is None or not vol.brain.any():
        raise ValueError("crop_to_brain needs a non-empty brain mask")
    idx = np.argwhere(vol.brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, vol.image.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    return Volume(vol.image[sl].copy(), vol.affine @ shift, vol.brain[sl].copy(),
                  None if vol.lesion is None else vol.lesion[sl].copy())


def normalise_intensity(vol: Volume, low_pct: float = 1.0, high_pct: float = 99.0) -> Volume:
    """Map the [low, high] percentiles of the intensities inside the brain to [-1, 1], clip; background = -1."""
    if vol.brain is None or not vol.brain.any():
        raise ValueError("normalise_intensity needs a non-empty brain mask")
    lo, hi = np.percentile(vol.image[vol.brain], [low_pct, high_pct])
    if hi <= lo:
        raise ValueError(f"brain intensities are constant ({lo}); cannot normalise")
    out = np.clip((vol.image - lo) / (hi - lo) * 2 - 1, -1, 1)
    out[~vol.brain] = -1.0
    return replace(vol, image=out.astype(np.float32))


def to_square_slices(vol: Volume, size: int) -> Volume:
    """Pad each axial slice (x, y) to a centred square and resize it to ``size`` x ``size``; z is unchanged.

    Output voxel o maps to the old voxel (o + 1/2) f - 1/2 - pad in-plane, f = side / size (area-aligned resize).
    """
    nx, ny, nz = vol.image.shape
    side = max(nx, ny)
    f = side / size
    pad_x, pad_y = (side - nx) / 2, (side - ny) / 2
    m = np.array([[f, 0, 0, 0.5 * f - 0.5 - pad_x],
                  [0, f, 0, 0.5 * f - 0.5 - pad_y],
                  [0, 0, 1, 0],
                  [0, 0, 0, 1]], dtype=float)
    sigma = np.array([max((f - 1) / 2, 0), max((f - 1) / 2, 0), 0])
    return resample(vol, m, (size, size, nz), smooth_sigma=sigma, background=-1.0)


def select_slices(brain: np.ndarray, min_fraction: float = 0.25) -> np.ndarray:
    """Axial slice indices whose brain area is at least ``min_fraction`` of the largest axial brain area."""
    area = brain.reshape(-1, brain.shape[2]).sum(0)
    if area.max() == 0:
        raise ValueError("the brain mask is empty: no slice can be selected")
    return np.flatnonzero(area >= min_fraction * area.max())


BrainMaskMethod = Literal["given", "deepbet", "background"]


def standardise(vol: Volume, spacing: float = 1.0) -> Volume:
    """Native volume -> RAS axes at ``spacing`` mm isotropic."""
    return resample_isotropic(to_ras(vol), spacing)


def add_brain_mask(vol: Volume, method: BrainMaskMethod, strip_margin_mm: float = 2.0) -> Volume:
    """Brain mask by ``method``: "given" (the volume's own), "deepbet" (skull stripping) or "background"."""
    if method == "given":
        if vol.brain is None:
            raise ValueError("brain='given' but the volume has no brain mask")
        return replace(vol, image=np.where(vol.brain, vol.image, vol.image.min()).astype(np.float32))
    if method == "deepbet":
        return skull_strip(vol, strip_margin_mm)
    if method == "background":
        return brain_from_background(vol)
    raise ValueError(f"unknown brain mask method {method!r}")


def finish(vol: Volume, size: int, low_pct: float = 1.0, high_pct: float = 99.0) -> Volume:
    """Brain-masked standardised volume -> cropped, normalised N x N axial slices."""
    return to_square_slices(normalise_intensity(crop_to_brain(vol), low_pct, high_pct), size)


def preprocess(vol: Volume, size: int, brain: BrainMaskMethod, spacing: float = 1.0,
               strip_margin_mm: float = 2.0, low_pct: float = 1.0, high_pct: float = 99.0) -> Volume:
    """The full chain from a native-space volume to N x N axial slices (see the module docstring)."""
    return finish(add_brain_mask(standardise(vol, spacing), brain, strip_margin_mm), size, low_pct, high_pct)


def to_native(data: np.ndarray, affine: np.ndarray, native_affine: np.ndarray, native_shape: tuple[int, ...],
              order: int = 1) -> np.ndarray:
    """Resample a map on a preprocessed grid (``affine``) back onto the input's own voxel grid (0 outside)."""
    return to_grid(data.astype(np.float32), affine, native_affine, tuple(native_shape[:3]), order=order)


LANDMARK_PERCENTILES = tuple(range(10, 100, 10))


def brain_landmarks(vol: Volume, percentiles: tuple[int, ...] = LANDMARK_PERCENTILES) -> np.ndarray:
    """Intensity percentiles (default the deciles 10..90) inside the brain mask."""
    if vol.brain is None or not vol.brain.any():
        raise ValueError("brain_landmarks needs a non-empty brain mask")
    return np.percentile(vol.image[vol.brain], percentiles)


def match_landmarks(vol: Volume, reference: np.ndarray) -> Volume:
    """Histogram standardisation (Nyul & Udupa 1999, deciles as landmarks): map the volume's brain deciles piecewise
    linearly onto ``reference`` (extrapolating the end segments), clip to [-1, 1]; background stays -1.

    Deciles 10-90 ignore the brightest 10 %, so a contrast-enhancing tumour or vessels (a few % of the brain) do not
    move the mapping, while the global contrast of a scan from another protocol is brought onto the training data's.
    """
    own = brain_landmarks(vol)
    if np.any(np.diff(own) <= 0):
        raise ValueError("brain intensity deciles are not increasing; cannot standardise this volume")
    x = vol.image
    out = np.interp(x, own, reference)
    lo_slope = (reference[1] - reference[0]) / (own[1] - own[0])
    hi_slope = (reference[-1] - reference[-2]) / (own[-1] - own[-2])
    out = np.where(x < own[0], reference[0] + (x - own[0]) * lo_slope, out)
    out = np.where(x > own[-1], reference[-1] + (x - own[-1]) * hi_slope, out)
    out = np.clip(out, -1.0, 1.0)
    out[~vol.brain] = -1.0
    return replace(vol, image=out.astype(np.float32))

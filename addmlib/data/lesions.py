"""Lesions inserted into healthy host volumes (evaluation set B), each with an exact ground-truth mask.

Both kinds work on a preprocessed ``Volume`` (intensities in [-1, 1], background -1) and use its voxel spacing, so
sizes are in millimetres whatever the in-plane resolution:

* ``synthetic_lesion``: an ellipsoid (random semi-axes and orientation) with a textured interior (smoothed noise),
  hypo- or hyper-intense relative to the surrounding tissue. The mask is the ellipsoid (inside the brain); a rim of
  ``rim_mm`` outside it is blended at most half-way (a partial-volume edge) and is not labelled.
* ``paste_tumour``: a real tumour region (image patch under its mask) cut from a tumour scan, rescaled to the host's
  voxel size, intensity-matched (the donor's peritumoural tissue is mapped onto the host's tissue at the destination
  by mean and standard deviation) and pasted at a random location inside the host's brain.

The mask of an inserted lesion is always restricted to the host's brain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .lesion_kinds import shell_stats
from .preprocess import Volume


@dataclass(frozen=True)
class LesionInfo:
    """What was inserted, for the manifest."""

    kind: str
    centre_vox: tuple[int, int, int]
    voxels: int
    detail: dict


def _random_brain_centre(brain: np.ndarray, rng: np.random.Generator, min_depth_vox: float) -> np.ndarray:
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere(depth >= min_depth_vox)
    if len(candidates) == 0:
        candidates = np.argwhere(brain)
    return candidates[rng.integers(len(candidates))]


def _local_tissue(vol: Volume, region: np.ndarray, shell_mm: float = 6.0) -> tuple[float, float]:
    """Mean and std of brain intensities in a shell of ``shell_mm`` around ``region``."""
    return shell_stats(vol.image, vol.brain, region, vol.spacing, shell_mm)


def synthetic_lesion(vol: Volume, rng: np.random.Generator, radius_mm: tuple[float, float] = (4.0, 14.0),
                     polarity: Literal["hypo", "hyper"] = "hyper", contrast: tuple[float, float] = (0.5, 1.0),
                     rim_mm: float = 2.0) -> tuple[Volume, LesionInfo]:
    """Insert one textured ellipsoid; returns the new volume (lesion mask OR-ed into ``vol.lesion``) and its info."""
    if vol.brain is None:
        raise ValueError("synthetic_lesion needs a brain mask")
    shape = np.array(vol.image.shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    sign = 1.0 if polarity == "hyper" else -1.0
    # Draw sites until the lesion can keep its contrast inside [-1, 1] (a hypo-intense lesion in CSF cannot).
    for _ in range(50):
        radii = rng.uniform(*radius_mm, size=3)
        centre = _random_brain_centre(vol.brain, rng, min_depth_vox=float(radii.min() / vol.spacing.max()))
        local = ((grid - centre) * vol.spacing) @ Rotation.random(random_state=rng).as_matrix()
        mask = (np.sqrt(((local / radii) ** 2).sum(-1)) <= 1.0) & vol.brain
        if not mask.any():
            continue
        mean, std = _local_tissue(vol, mask)
        level = mean + sign * rng.uniform(*contrast)
        if -0.95 <= level <= 0.95:
            break
    else:
        raise ValueError(f"found no site for a {polarity}-intense lesion with contrast {contrast} in 50 draws")
    texture = ndimage.gaussian_filter(rng.standard_normal(vol.image.shape).astype(np.float32),
                                      sigma=1.5 / vol.spacing)
    texture /= texture[mask].std() + 1e-6
    inside = np.clip(level + 0.25 * std * texture, -1.0, 1.0)
    # Soft rim outside the mask: alpha falls from 1/2 at the surface to 0 at rim_mm (partial-volume edge).
    outside_mm = ndimage.distance_transform_edt(~mask, sampling=vol.spacing)
    alpha = np.where(mask, 1.0, np.clip(1.0 - outside_mm / rim_mm, 0.0, 1.0) * 0.5) * vol.brain
    image = (1 - alpha) * vol.image + alpha * inside
    image[~vol.brain] = vol.image[~vol.brain]
    lesion = mask if vol.lesion is None else (vol.lesion | mask)
    info = LesionInfo("synthetic", tuple(int(c) for c in centre), int(mask.sum()),
                      {"polarity": polarity, "radii_mm": [round(float(x), 2) for x in radii],
                       "level": round(float(level), 3), "tissue_mean": round(mean, 3)})
    return replace(vol, image=image.astype(np.float32), lesion=lesion), info


def paste_tumour(host: Volume, donor: Volume, rng: np.random.Generator, donor_name: str = "") -> tuple[Volume,
                                                                                                    LesionInfo]:
    """Paste the donor's tumour (its ``lesion`` mask and the image under it) into ``host`` at a random brain site."""
    if donor.lesion is None or not donor.lesion.any():
        raise ValueError(f"donor {donor_name!r} has no tumour mask")
    if host.brain is None:
        raise ValueError("paste_tumour needs the host's brain mask")
    idx = np.argwhere(donor.lesion)
    lo, hi = idx.min(0), idx.max(0) + 1
    pad = 2
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, donor.image.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    zoom = donor.spacing / host.spacing
    patch = ndimage.zoom(donor.image[sl], zoom, order=1)
    pmask = ndimage.zoom(donor.lesion[sl].astype(np.uint8), zoom, order=0).astype(bool)
    if not pmask.any():
        raise ValueError(f"donor {donor_name!r}: the tumour vanished when resized to the host's voxel size")
    d_mean, d_std = _local_tissue(donor, donor.lesion)
    # Place the patch so that its mask's centre lands on a random deep brain voxel of the host.
    centre = _random_brain_centre(host.brain, rng, min_depth_vox=float(min(pmask.shape)) / 2)
    start = centre - np.round(np.argwhere(pmask).mean(0)).astype(int)
    start = np.clip(start, 0, np.array(host.image.shape) - np.array(pmask.shape))
    dst = tuple(slice(int(s), int(s) + n) for s, n in zip(start, pmask.shape))
    region = np.zeros(host.image.shape, dtype=bool)
    region[dst] = pmask[tuple(slice(0, r.stop - r.start) for r in dst)]
    region &= host.brain
    if not region.any():
        raise ValueError("the pasted tumour fell outside the host's brain")
    h_mean, h_std = _local_tissue(host, region)
    matched = (patch - d_mean) / d_std * h_std + h_mean
    image = host.image.copy()
    pasted = np.full(host.image.shape, np.nan, dtype=np.float32)
    pasted[dst] = matched[tuple(slice(0, r.stop - r.start) for r in dst)]
    image[region] = np.clip(pasted[region], -1.0, 1.0)
    lesion = region if host.lesion is None else (host.lesion | region)
    info = LesionInfo("pasted", tuple(int(c) for c in centre), int(region.sum()),
                      {"donor": donor_name, "donor_tissue": [round(d_mean, 3), round(d_std, 3)],
                       "host_tissue": [round(h_mean, 3), round(h_std, 3)]})
    return replace(host, image=image, lesion=lesion), info

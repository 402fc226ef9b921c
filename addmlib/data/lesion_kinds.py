"""Lesions of both polarities on T1's terms, inserted into a preprocessed image (2-D slice or 3-D volume).

An image here is an N x N x Z array in [-1, 1] (background -1) with its brain mask and voxel spacing in mm, as
``prepare`` stores it, so one generator serves the IXI slices (Z = 1) and the volumes (set B, the tuning hosts).
Each lesion is a *shape* (a region inside the brain) filled by a *kind* (an intensity profile relative to the tissue
around it):

* ``hypo``: towards CSF, level m - u (m - c), u ~ U(0.5, 1) (necrosis, cyst, chronic stroke);
* ``ring``: a dark core (u ~ U(0.4, 0.9)) inside a bright rim 1.5-3 mm thick, m + v (1 - m), v ~ U(0.5, 1)
  (ring enhancement);
* ``hyper``: m + v (1 - m), v ~ U(0.4, 1) (enhancing or haemorrhagic lesion; 1 is the clip of the normalisation);
* ``iso``: the tissue's own mean with a coarse texture 1-2 tissue standard deviations strong (an iso-intense mass).

m is the mean of the brain in a 6 mm shell around the region, c the brain's 2nd percentile (CSF). With
``sites="tissue"`` a lesion replaces parenchyma only (``tissue_mask``): its centre lies in tissue, the ventricles and
sulci inside its outline are left as they are, and m is the tissue's mean around it (a hypointense lesion drawn over a
ventricle would otherwise be CSF painted lighter, and its "lesion" voxels invisible). Every kind gets a fine texture
(``texture`` x the shell's standard deviation, 0.25 by default; 0: smooth lesions, as real tumours are at this
resolution: a fine texture is what a denoiser flags even where it copies the lesion). Shapes: an ellipse/ellipsoid of
diameter ``diameter_mm`` with a smoothly irregular boundary, or a real tumour's mask (``donor``) scaled to that
diameter. The region is blended in with weight 1 inside and at least 1/2 on its boundary voxels, and nothing outside
it changes: the mask is exactly what was changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

KINDS = ("hypo", "ring", "hyper", "iso")
POLARITY = {"hypo": "dark", "ring": "both", "hyper": "bright", "iso": "none"}
DIAMETER_MM = (4.0, 25.0)


@dataclass(frozen=True)
class Inserted:
    """One inserted lesion: the new image, its mask (the voxels that changed) and what was drawn."""

    image: np.ndarray
    mask: np.ndarray
    detail: dict[str, Any]


def _offsets_mm(shape: tuple[int, ...], centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Each voxel's offset from ``centre`` in mm (shape + (3,))."""
    axes = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return (np.stack(axes, -1) - centre.astype(np.float32)) * spacing.astype(np.float32)


def tissue_mask(image: np.ndarray, brain: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The brain's parenchyma: brain voxels whose intensity, smoothed by a 1 mm Gaussian, lies above the midpoint of
    the brain's CSF level (2nd percentile) and its median; the ventricles and sulci fall below it on T1."""
    values = image[brain]
    cut = 0.5 * (float(np.percentile(values, 2)) + float(np.median(values)))
    sigma = [1.0 / s if n > 1 else 0.0 for s, n in zip(spacing, image.shape)]
    return brain & (ndimage.gaussian_filter(image.astype(np.float32), sigma=sigma) > cut)


def _centre(brain: np.ndarray, spacing: np.ndarray, radius_mm: float, rng: np.random.Generator,
            sites: np.ndarray | None = None) -> np.ndarray:
    """A random brain voxel (inside ``sites`` when given) at least ``radius_mm`` from the brain's edge where there is
    one."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    allowed = brain if sites is None else sites & brain
    candidates = np.argwhere((depth >= radius_mm) & allowed)
    if len(candidates) == 0:
        candidates = np.argwhere((depth >= depth[allowed].max() * 0.5) & allowed)
    return candidates[rng.integers(len(candidates))]


def ellipse_region(brain: np.ndarray, spacing: np.ndarray, diameter_mm: float, rng: np.random.Generator,
                   sites: np.ndarray | None = None) -> np.ndarray:
    """An ellipse (ellipsoid) of the given diameter, axes 0.6-1 of it, random orientation, boundary perturbed by
    smooth noise of 15 % of the radius, inside the brain (and ``sites``, where its centre also lies, when given)."""
    ndim = 3 if brain.shape[2] > 1 else 2
    radii = diameter_mm / 2 * np.concatenate([[1.0], rng.uniform(0.6, 1.0, size=2)])
    centre = _centre(brain, spacing, float(radii.min()), rng, sites)
    mm = _offsets_mm(brain.shape, centre, spacing)
    if ndim == 2:
        angle = rng.uniform(0, np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        radii[2] = np.inf  # an in-plane ellipse on the one slice
    else:
        rot = Rotation.random(random_state=rng).as_matrix()
    rho = np.sqrt((((mm @ rot) / radii) ** 2).sum(-1))
    sigma = max(1.0, diameter_mm / 4 / float(spacing.min()))
    wobble = ndimage.gaussian_filter(rng.standard_normal(brain.shape), sigma=sigma)
    wobble /= wobble.std() + 1e-6
    return (rho <= 1.0 + 0.15 * wobble) & (brain if sites is None else sites & brain)


def donor_region(brain: np.ndarray, spacing: np.ndarray, donor: np.ndarray, donor_spacing: np.ndarray,
                 diameter_mm: float, rng: np.random.Generator, sites: np.ndarray | None = None) -> np.ndarray:
    """A real tumour's mask (``donor``, on its own grid) scaled so its equivalent diameter is ``diameter_mm`` and
    placed at a random deep brain site (inside ``sites`` when given, as the region is); for a one-slice ``brain`` the
    donor's largest axial cross-section is used."""
    if not donor.any():
        raise ValueError("the donor mask is empty")
    if brain.shape[2] == 1:
        k = int(np.argmax(donor.reshape(-1, donor.shape[2]).sum(0)))
        donor, donor_spacing = donor[:, :, k:k + 1], np.array([*donor_spacing[:2], spacing[2]])
    idx = np.argwhere(donor)
    lo, hi = idx.min(0), idx.max(0) + 1
    patch = donor[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    ndim = 2 if brain.shape[2] == 1 else 3
    volume_mm = float(patch.sum() * np.prod(donor_spacing[:ndim]))
    own = 2 * (volume_mm / np.pi) ** 0.5 if ndim == 2 else 2 * (3 * volume_mm / (4 * np.pi)) ** (1 / 3)
    zoom = donor_spacing / spacing * (diameter_mm / own)
    if ndim == 2:
        zoom[2] = 1.0
    scaled = ndimage.zoom(patch, zoom, order=1) > 0.5
    if rng.random() < 0.5:
        scaled = scaled[::-1]  # a mirrored copy: more shapes from few tumours
    if not scaled.any():
        scaled = np.ones((1, 1, 1), bool)  # scaled below one voxel: the smallest lesion there is
    centre = _centre(brain, spacing, diameter_mm / 2, rng, sites)
    start = centre - np.round(np.argwhere(scaled).mean(0)).astype(int)
    start = np.clip(start, 0, np.maximum(np.array(brain.shape) - np.array(scaled.shape), 0))
    region = np.zeros(brain.shape, bool)
    dst = tuple(slice(int(s), int(s) + n) for s, n in zip(start, scaled.shape))
    region[dst] = scaled[tuple(slice(0, r.stop - r.start) for r in dst)]
    return region & (brain if sites is None else sites & brain)


def shell_stats(image: np.ndarray, brain: np.ndarray, region: np.ndarray, spacing: np.ndarray,
                shell_mm: float = 6.0) -> tuple[float, float]:
    """Mean and std of the brain's intensities in a shell of ``shell_mm`` around ``region`` (the whole brain's when the
    shell holds 10 voxels or fewer)."""
    dist = ndimage.distance_transform_edt(~region, sampling=spacing)
    shell = (dist > 0) & (dist <= shell_mm) & brain
    vals = image[shell] if shell.sum() > 10 else image[brain]
    return float(vals.mean()), float(vals.std() + 1e-6)


def insert(image: np.ndarray, brain: np.ndarray, region: np.ndarray, kind: str, spacing: np.ndarray,
           rng: np.random.Generator, surround: np.ndarray | None = None, texture: float = 0.25) -> Inserted:
    """Fill ``region`` (inside ``brain``) with lesion ``kind`` (see the module docstring); the tissue level m is taken
    over ``surround`` (default: the brain). Returns the new image, the mask of what changed (the region) and the drawn
    levels."""
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")
    region = region & brain
    if not region.any():
        raise ValueError("the lesion region holds no brain voxel")
    mean, std = shell_stats(image, brain if surround is None else surround & brain, region, spacing)
    csf = float(np.percentile(image[brain], 2))
    fine = ndimage.gaussian_filter(rng.standard_normal(image.shape), sigma=0.7)
    fine /= fine.std() + 1e-6
    detail: dict[str, Any] = {"kind": kind, "polarity": POLARITY[kind], "tissue_mean": round(mean, 3)}
    if kind == "hypo":
        u = rng.uniform(0.5, 1.0)
        level = np.full(image.shape, mean - u * (mean - csf))
        detail["core_level"] = round(float(level.flat[0]), 3)
    elif kind == "hyper":
        v = rng.uniform(0.4, 1.0)
        level = np.full(image.shape, mean + v * (1.0 - mean))
        detail["level"] = round(float(level.flat[0]), 3)
    elif kind == "ring":
        u, v, rim_mm = rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0), rng.uniform(1.5, 3.0)
        inside_mm = ndimage.distance_transform_edt(region, sampling=spacing)
        rim = region & (inside_mm <= max(rim_mm, float(spacing[:2].min())))
        core, bright = mean - u * (mean - csf), mean + v * (1.0 - mean)
        level = np.where(rim, bright, core)
        detail.update(core_level=round(core, 3), rim_level=round(bright, 3), rim_mm=round(rim_mm, 2))
    else:  # iso
        strength = rng.uniform(1.0, 2.0)
        coarse = ndimage.gaussian_filter(rng.standard_normal(image.shape), sigma=1.5)
        coarse /= coarse.std() + 1e-6
        level = mean + strength * std * coarse
        detail["texture_std"] = round(float(strength * std), 3)
    filled = np.clip(level + texture * std * fine, -1.0, 1.0)
    depth = ndimage.distance_transform_edt(region, sampling=spacing)
    alpha = np.where(region, np.clip(0.5 + depth / (2 * float(spacing[:2].max())), 0.5, 1.0), 0.0)
    out = ((1 - alpha) * image + alpha * filled).astype(np.float32)
    changed = region & (out != image)
    return Inserted(np.where(changed, out, image).astype(np.float32), changed, detail)


def draw(image: np.ndarray, brain: np.ndarray, spacing: np.ndarray, index: int, rng: np.random.Generator,
         donors: list[tuple[str, np.ndarray, np.ndarray]] | None = None, sites: str = "brain",
         texture: float = 0.25, diameter_mm: tuple[float, float] = DIAMETER_MM) -> Inserted:
    """Lesion number ``index`` of a benchmark: kind ``KINDS[index % 4]`` (equal proportions), diameter ~
    U(``diameter_mm``) (4-25 mm by default),
    a real tumour's shape for every third group of four when ``donors`` ((name, mask, spacing)) are given, else an
    irregular ellipse; anywhere in the brain (``sites="brain"``) or in its parenchyma only (``"tissue"``,
    ``tissue_mask``). Redrawn (up to 20 times) where the region would hold fewer than 2 voxels."""
    if sites not in ("brain", "tissue"):
        raise ValueError(f"lesion sites must be 'brain' or 'tissue', got {sites!r}")
    if not 0 < diameter_mm[0] <= diameter_mm[1]:
        raise ValueError(f"lesion diameters must be a range (low, high) with 0 < low <= high mm, got {diameter_mm}")
    kind = KINDS[index % len(KINDS)]
    allowed = tissue_mask(image, brain, spacing) if sites == "tissue" else None
    for _ in range(20):
        diameter = float(rng.uniform(*diameter_mm))
        if donors and (index // len(KINDS)) % 3 == 2:
            name, mask, dspacing = donors[(index // (3 * len(KINDS))) % len(donors)]
            region, shape = donor_region(brain, spacing, mask, dspacing, diameter, rng, allowed), f"donor:{name}"
        else:
            region, shape = ellipse_region(brain, spacing, diameter, rng, allowed), "ellipse"
        if region.sum() >= 2:
            out = insert(image, brain, region, kind, spacing, rng, allowed, texture)
            return Inserted(out.image, out.mask, {**out.detail, "shape": shape, "diameter_mm": round(diameter, 2),
                                                  "voxels": int(out.mask.sum())})
    raise ValueError(f"found no site for a {kind} lesion in 20 draws: is the brain mask tiny?")

"""Post-processing of anomaly maps, each step switchable: fusion of a residual with the input's intensity, brain-mask
restriction (eroded), median filter, in-plane Gaussian filter, removal of small connected components from a binary
prediction."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def restrict_to_brain(amap: np.ndarray, brain: np.ndarray, erode_mm: float = 0.0,
                      spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Zero the map outside the brain mask eroded by ``erode_mm`` (the reconstruction error at the brain's edge is
    mostly boundary mismatch, not pathology). An axis one voxel long (a single slice) has no neighbours along it and is
    not eroded: a 2-D slice is eroded in its plane."""
    if amap.shape != brain.shape:
        raise ValueError(f"map shape {amap.shape} differs from brain mask shape {brain.shape}")
    mask = brain.astype(bool)
    if erode_mm > 0:  # pad so that the array's own ends count as outside the brain, along the axes that have ends
        pad = [(1, 1) if n > 1 else (0, 0) for n in mask.shape]
        dist = ndimage.distance_transform_edt(np.pad(mask, pad), sampling=spacing[: mask.ndim])
        mask = dist[tuple(slice(a, a + n) for (a, _), n in zip(pad, mask.shape))] > erode_mm
    return np.where(mask, amap, 0.0).astype(amap.dtype)


def intensity_scale(residual_std: float, image_std: float, weight: float) -> float:
    """c = w * sd(r) / sd(x): the mixing constant with which ``fuse_intensity`` ranks voxels as z(r) + w * z(x)."""
    if weight < 0 or residual_std < 0 or image_std <= 0:
        raise ValueError(f"need weight >= 0, residual_std >= 0 and image_std > 0; got {weight}, {residual_std}, "
                         f"{image_std}")
    return weight * residual_std / image_std


def fuse_intensity(residual: np.ndarray, image: np.ndarray, scale: float) -> np.ndarray:
    """The residual map fused with the input's intensity: m = (r + c (x + 1)) / (1 + c).

    x + 1 (x in [-1, 1]) is the intensity floor's map, so m is a weighted mean of the residual and the floor, and stays
    in [0, 2] as both do. With c = ``intensity_scale(sd(r), sd(x), w)`` (healthy-brain standard deviations) m is an
    increasing affine function of z(r) + w * z(x): each term counts in units of its spread on healthy brains (before
    any median filter, which then acts on m).
    ``scale`` 0 returns the residual unchanged."""
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    if scale == 0:
        return residual
    return ((residual + scale * (image + 1.0)) / (1.0 + scale)).astype(residual.dtype)


FUSION_QUANTILE = 0.999
"""The healthy-brain quantile by which ``max_fusion`` aligns the residual with the fused map, by default."""


def check_fusion_quantile(quantile: float, name: str = "fusion_quantile") -> None:
    """Refuse a quantile outside (0.5, 1): ``max_fusion`` needs a q-quantile above the median."""
    if not 0.5 < quantile < 1:
        raise ValueError(f"{name} must be in (0.5, 1) (the healthy-brain quantile that the max fusion aligns), got "
                         f"{quantile}")


def max_fusion(fused: np.ndarray, residual: np.ndarray, fused_anchors: tuple[float, float],
               residual_anchors: tuple[float, float], high: float = 2.0) -> np.ndarray:
    """The larger of the fused map and the residual alone: m = min(max(f, g(r)), high).

    g is the affine map that puts the residual on the fused map's scale by two healthy-brain quantiles,
    g(r_med) = f_med and g(r_q) = f_q (``*_anchors`` = (median, q-quantile)). A voxel thus scores high when either
    detector, read against its own healthy-brain distribution, calls it anomalous: the fused map finds the bright
    lesions, the residual alone also the lesions no brighter than healthy tissue. ``high``: the top of the score range,
    where the metrics' histograms clip too."""
    (f_med, f_q), (r_med, r_q) = fused_anchors, residual_anchors
    if not (f_q > f_med and r_q > r_med):
        raise ValueError(f"the healthy quantiles must exceed the medians; got fused {fused_anchors}, residual "
                         f"{residual_anchors}")
    mapped = f_med + (f_q - f_med) * (residual - r_med) / (r_q - r_med)
    return np.minimum(np.maximum(fused, mapped), high).astype(fused.dtype)


def median_filter(amap: np.ndarray, size: int = 3, in_plane: bool = False) -> np.ndarray:
    """Median filter over ``size`` voxels along every axis (a cubic window), or with ``in_plane`` over size x size
    voxels of each slice alone (the window is one voxel long along the last axis, the stack of slices); size <= 1:
    unchanged. A single slice is filtered in its plane either way."""
    if size <= 1:
        return amap
    window = (size,) * (amap.ndim - 1) + (1,) if in_plane else (size,) * amap.ndim
    return ndimage.median_filter(amap, size=window, mode="nearest")


def gaussian_filter(amap: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian filter of standard deviation ``sigma`` pixels in each slice's plane (none along the last axis, the
    stack of scored slices); sigma <= 0: unchanged. Unlike a median window it keeps a lesion smaller than the window, as a
    lower, wider peak."""
    if sigma <= 0:
        return amap
    return ndimage.gaussian_filter(amap, sigma=(sigma,) * (amap.ndim - 1) + (0,), mode="nearest").astype(amap.dtype)


def remove_small_components(pred: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop connected components (26-connectivity in 3-D, 8 in 2-D) smaller than ``min_voxels``."""
    pred = pred.astype(bool)
    if min_voxels <= 1 or not pred.any():
        return pred
    labels, n = ndimage.label(pred, structure=np.ones((3,) * pred.ndim))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]

"""Threshold -> binary prediction -> Dice, for a browsed volume, computed the way the evaluation computes it.

prediction = remove_small_components((map >= threshold) & region) on the stack of scored axial slices, region = brain
mask on scored slices (``BrowseVolume.region``); Dice = 2TP / (2TP + FP + FN) over the region (``metrics``), per
volume or per displayed slice. At the evaluation's calibrated threshold the volume Dice equals the ``dice`` of that
volume in ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import confusion, overlap_metrics
from ..post_processing import remove_small_components
from .volumes import AXIS, BrowseVolume, Plane


def predict(vol: BrowseVolume, threshold: float) -> np.ndarray:
    """Boolean prediction over the whole volume (False outside ``vol.region``)."""
    region = vol.region
    k = np.flatnonzero(vol.scored)
    compact = (vol.amap[:, :, k] >= threshold) & region[:, :, k]
    out = np.zeros(vol.amap.shape, dtype=bool)
    out[:, :, k] = remove_small_components(compact, vol.min_component_voxels)
    return out


@dataclass(frozen=True)
class Overlap:
    """Counts and Dice of a prediction against the lesion mask within a region."""

    tp: int
    fp: int
    fn: int

    @property
    def dice(self) -> float:
        return overlap_metrics(self.tp, self.fp, self.fn)["dice"]


def overlap(vol: BrowseVolume, pred: np.ndarray, plane: Plane | None = None, index: int | None = None) -> Overlap | None:
    """Overlap of ``pred`` with the lesion mask over the region, for the whole volume or one slice; None without a
    lesion mask."""
    if vol.lesion is None:
        return None
    region = vol.region
    if plane is not None:
        if index is None:
            raise ValueError("a slice overlap needs both plane and index")
        take = (lambda a: np.take(a, index, axis=AXIS[plane]))
        pred, lesion, region = take(pred), take(vol.lesion), take(region)
    else:
        lesion = vol.lesion
    tp, fp, fn, _ = confusion(pred[region], lesion[region])
    return Overlap(tp, fp, fn)


def largest_slice(mask: np.ndarray, plane: Plane, weights: np.ndarray | None = None) -> int | None:
    """Index of the slice in ``plane`` holding the most of ``mask`` (or the largest sum of ``weights`` within it);
    None if ``mask`` is empty."""
    if not mask.any():
        return None
    values = np.where(mask, 1.0 if weights is None else weights, 0.0)
    other = tuple(a for a in range(3) if a != AXIS[plane])
    return int(np.argmax(values.sum(axis=other)))


def starting_threshold(vol: BrowseVolume, given: float | None = None) -> tuple[float, str]:
    """(threshold, where it came from): ``given``, else the volume's calibrated one, else the 99th percentile of the
    map over the region (not calibrated: a view, not a result)."""
    if given is not None:
        return float(given), "given"
    if vol.threshold is not None:
        return float(vol.threshold), "calibrated on healthy brains"
    return float(np.percentile(vol.amap[vol.region], 99)), "99th percentile of this map, not calibrated"

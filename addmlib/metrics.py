"""Segmentation and detection metrics for anomaly maps, memory-safe for whole datasets.

* Overlap metrics from a binary prediction: Dice, IoU, precision = TP/(TP+FP), recall = TP/(TP+FN).
  (AnoDDPM's evaluation code swaps precision and recall; ours follows the definitions above.)
* Threshold-free metrics from a streaming histogram of scores for positive and negative voxels (``BinnedScores``):
  pixel AUROC, AUPRC (average precision) and the best Dice over thresholds. Memory is two histograms, whatever the
  number of voxels; the error against the exact (sorted) values shrinks with the number of bins and is checked in
  the tests against scikit-learn.
* ``calibrate_threshold``: the threshold with a chosen false-positive rate on *healthy* voxels.

Contract for single-class inputs (a volume without lesion voxels, or with nothing but lesion):

* AUROC and AUPRC rank lesion against non-lesion voxels: they are **undefined, NaN**, unless both classes are present
  (``BinnedScores.auroc``/``auprc``). ``BinnedScores.warnings`` says why, for the per-volume tables.
* Dice and IoU of an empty prediction against an empty ground truth are **1** (nothing to find, nothing claimed), in
  ``overlap_metrics`` and in ``BinnedScores.best_dice`` alike: without lesion voxels the best Dice is 1, reached by
  predicting nothing (the threshold returned is ``high``, the top of the histogram's range). Any false alarm on such
  a volume gives Dice 0.
* Summaries over volumes or slices (``mean_std``) leave NaN out: the mean and spread are over the volumes where the
  metric is defined (all NaN: NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two boolean arrays of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn, int(pred.size - tp - fp - fn)


def overlap_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN).

    Conventions for empty denominators: Dice and IoU are 1 when both prediction and ground truth are empty;
    precision is 1 when nothing is predicted (no false alarm), recall is 1 when there is nothing to find.
    """
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0,
        "iou": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
        "precision": tp / (tp + fp) if (tp + fp) else 1.0,
        "recall": tp / (tp + fn) if (tp + fn) else 1.0,
    }


@dataclass
class BinnedScores:
    """Histograms of scores of positive and negative voxels over fixed bins on [low, high] (outside: clipped)."""

    low: float = 0.0
    high: float = 2.0
    bins: int = 10000
    pos: np.ndarray = field(init=False)
    neg: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if not self.high > self.low or self.bins < 2:
            raise ValueError(f"need high > low and bins >= 2, got [{self.low}, {self.high}], {self.bins}")
        self.pos = np.zeros(self.bins, dtype=np.int64)
        self.neg = np.zeros(self.bins, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        """Lower edge of each bin (a voxel in bin i is predicted positive at any threshold <= edges[i])."""
        return self.low + (self.high - self.low) * np.arange(self.bins) / self.bins

    def _index(self, scores: np.ndarray) -> np.ndarray:
        idx = np.floor((scores - self.low) / (self.high - self.low) * self.bins).astype(np.int64)
        return np.clip(idx, 0, self.bins - 1)

    def update(self, scores: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add voxels (``mask`` restricts which ones count, e.g. the brain)."""
        scores = np.asarray(scores, dtype=np.float64)
        gt = np.asarray(gt, dtype=bool)
        if scores.shape != gt.shape:
            raise ValueError(f"scores shape {scores.shape} differs from ground truth shape {gt.shape}")
        if mask is not None:
            scores, gt = scores[mask], gt[mask]
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or Inf")
        idx = self._index(scores.ravel())
        gt = gt.ravel()
        self.pos += np.bincount(idx[gt], minlength=self.bins)
        self.neg += np.bincount(idx[~gt], minlength=self.bins)

    def merge(self, other: "BinnedScores") -> None:
        if (other.low, other.high, other.bins) != (self.low, self.high, self.bins):
            raise ValueError("cannot merge histograms with different bins")
        self.pos += other.pos
        self.neg += other.neg

    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        """TP and FP when thresholding at each bin's lower edge, from the highest threshold down (plus the start 0)."""
        tp = np.concatenate([[0], np.cumsum(self.pos[::-1])])
        fp = np.concatenate([[0], np.cumsum(self.neg[::-1])])
        return tp, fp

    def warnings(self) -> list[str]:
        """Why a ranking metric of these voxels is undefined (see the module's contract); empty when both classes
        are present."""
        if self.pos.sum() == 0:
            return ["no lesion voxels: AUROC/AUPRC undefined (NaN); Dice/IoU are 1 only if nothing is predicted"]
        if self.neg.sum() == 0:
            return ["no non-lesion voxels: AUROC/AUPRC undefined (NaN)"]
        return []

    def auroc(self) -> float:
        """Area under the ROC curve (trapezoids between bin thresholds; ties within a bin count as half); NaN
        unless both classes are present."""
        p, n = self.pos.sum(), self.neg.sum()
        if p == 0 or n == 0:
            return float("nan")
        tp, fp = self._curve()
        return float(np.trapezoid(tp / p, fp / n))

    def auprc(self) -> float:
        """Average precision: sum over thresholds of (R_k - R_{k-1}) P_k (scikit-learn's definition); NaN unless both
        classes are present (with lesion voxels only it would be a trivial 1)."""
        p = self.pos.sum()
        if p == 0 or self.neg.sum() == 0:
            return float("nan")
        tp, fp = self._curve()
        tp, fp = tp[1:], fp[1:]
        keep = np.concatenate([[True], np.diff(tp + fp) > 0])[: len(tp)] & ((tp + fp) > 0)
        tp, fp = tp[keep], fp[keep]
        precision = tp / (tp + fp)
        recall = tp / p
        return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))

    def best_dice(self) -> tuple[float, float]:
        """(best Dice over all bin thresholds, that threshold). Without lesion voxels: (1.0, ``high``): predicting
        nothing matches the empty ground truth (Dice 1, as ``overlap_metrics`` says of empty vs empty)."""
        p = self.pos.sum()
        if p == 0:
            return 1.0, float(self.high)
        tp = np.cumsum(self.pos[::-1])[::-1]  # voxels >= edge i that are positive
        fp = np.cumsum(self.neg[::-1])[::-1]
        fn = p - tp
        denom = 2 * tp + fp + fn
        dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        i = int(np.argmax(dice))
        return float(dice[i]), float(self.edges[i])

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = self._curve()
        return fp / max(self.neg.sum(), 1), tp / max(self.pos.sum(), 1)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = self._curve()
        ok = (tp + fp) > 0
        return tp[ok] / max(self.pos.sum(), 1), tp[ok] / (tp + fp)[ok]


def calibrate_threshold(healthy: BinnedScores, fpr: float) -> float:
    """Smallest bin threshold whose false-positive rate on healthy voxels is <= ``fpr``.

    ``healthy`` holds healthy voxels as negatives (no positives needed). Nothing from the evaluation sets is used.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    n = healthy.neg.sum()
    if n == 0:
        raise ValueError("no healthy voxels to calibrate on")
    above = np.cumsum(healthy.neg[::-1])[::-1] / n  # fraction >= edge i
    ok = np.flatnonzero(above <= fpr)
    return float(healthy.edges[ok[0]]) if len(ok) else float(healthy.high)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, ignoring NaN."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return (float(arr.mean()), float(arr.std())) if len(arr) else (float("nan"), float("nan"))

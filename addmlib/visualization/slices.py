"""Matplotlib panels of prepared axial slices (canonical N x N arrays, as ``addmlib.data.prepare`` stores them) for the
notebooks, turned for display with ``volumes.display``: anterior at the top, radiological (the patient's right on the
viewer's left)."""

from __future__ import annotations

from typing import Collection, Literal, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..data.prepare import PreparedVolume
from .volumes import display


def show_slice(ax: plt.Axes, img: np.ndarray, cmap: str = "gray", vmin: float = -1.0, vmax: float = 1.0,
               title: str | None = None, contour: np.ndarray | None = None, contour_colour: str = "r") -> None:
    """Draw one canonical axial slice on ``ax`` in display orientation, with the outline of ``contour`` (a mask on
    the same grid) when it holds any voxel; no axes, the title small."""
    ax.imshow(display(np.asarray(img), "axial"), cmap=cmap, vmin=vmin, vmax=vmax)
    if contour is not None and contour.any():
        ax.contour(display(np.asarray(contour, dtype=float), "axial"), levels=[0.5], colors=contour_colour,
                   linewidths=0.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)


def slice_rows(rows: Mapping[str, np.ndarray], maps: Collection[str] = (), size: float = 2.0) -> plt.Figure:
    """One row of panels per entry: an (n, H, W) or (n, 1, H, W) stack of canonical axial slices, the row's name over
    its first panel. Intensities in gray on [-1, 1]; the rows named in ``maps`` (error maps) in inferno on [0, 1]."""
    stacks = {name: np.asarray(a)[:, 0] if np.ndim(a) == 4 else np.asarray(a) for name, a in rows.items()}
    cols = max(len(s) for s in stacks.values())
    fig, axes = plt.subplots(len(stacks), cols, figsize=(size * cols, size * len(stacks)), squeeze=False)
    for r, (name, stack) in enumerate(stacks.items()):
        for c, ax in enumerate(axes[r]):
            if c < len(stack):
                show_slice(ax, stack[c], *(("inferno", 0.0, 1.0) if name in maps else ("gray", -1.0, 1.0)))
            ax.axis("off")
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def pick_slice(vol: PreparedVolume, pick: Literal["middle", "lesion"]) -> int:
    """The axial slice to show of ``vol``: the middle of its selected slices, or the one with the most lesion."""
    if pick == "middle":
        return int(vol.slices[len(vol.slices) // 2])
    if pick == "lesion":
        if vol.lesion is None:
            raise ValueError(f"{vol.id} has no lesion mask to pick a slice by")
        return int(np.argmax(vol.lesion.sum((0, 1))))
    raise ValueError(f"pick must be 'middle' or 'lesion', got {pick!r}")


def _panels(n: int, columns: int, size: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``n`` panels, ``columns`` per row, each ``size`` inches (width, height), axes hidden."""
    cols = min(n, columns)
    n_rows = -(-n // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(size[0] * cols, size[1] * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def volume_montage(volumes: Sequence[PreparedVolume], pick: Literal["middle", "lesion"] = "middle",
                   columns: int = 9, title: str | None = None) -> plt.Figure:
    """One panel per volume (``columns`` per row): the slice ``pick_slice`` chooses, titled with the volume's id and
    the slice index, the lesion outlined in red where the slice has one."""
    if not volumes:
        raise ValueError("no volume to show")
    fig, axes = _panels(len(volumes), columns, (2.0, 2.3))
    for ax, v in zip(axes.flat, volumes):
        k = pick_slice(v, pick)
        show_slice(ax, v.image[:, :, k], contour=None if v.lesion is None else v.lesion[:, :, k],
                   title=f"{v.id}\nz={k}")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def ixi_mask_montage(ids: Sequence[str], columns: int = 8) -> plt.Figure:
    """The raw IXI slices of ``ids`` (as stored, anterior up) with their 2-D brain mask (``ixi.brain_mask``) outlined:
    the mask checked by eye."""
    from ..data import ixi

    fig, axes = _panels(len(ids), columns, (1.8, 2.1))
    for ax, sid in zip(axes.flat, ids):
        img = ixi.read_png(sid)
        ax.imshow(img, cmap="gray")
        ax.contour(ixi.brain_mask(img), levels=[0.5], colors="r", linewidths=0.7)
        ax.set_title(sid, fontsize=7)
    fig.suptitle("IXI slices and their 2-D brain masks", fontsize=9)
    fig.tight_layout()
    return fig

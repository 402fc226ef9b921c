"""Static figures of a browsed volume that need no kernel: a matplotlib montage and a plotly figure with a slice slider.

The plotly figure holds one precomputed image per slice (the same panels as the live browser, PNG-encoded) and a
slider that shows one at a time, so it keeps working on the static site. ``use_offline_plotly`` makes notebooks emit
plotly's JSON (for JupyterLab) plus HTML whose plotly.js is embedded once per notebook and which loads nothing from
the internet (plotly's own "notebook" renderer adds a MathJax script from a CDN to every figure).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import HtmlRenderer

from .overlay import View, compose, map_range, panels, png
from ..fileio import atomic_path
from .prediction import overlap, predict
from .volumes import AXIS, BrowseVolume, Plane

OFFLINE_RENDERER = "addm_offline"


def pick_slices(vol: BrowseVolume, plane: Plane, n: int) -> list[int]:
    """``n`` slice indices evenly over the lesion's extent in ``plane`` (the scored brain's without a lesion)."""
    if n < 1:
        raise ValueError(f"the number of slices must be >= 1, got {n}")
    mask = vol.lesion & vol.region if vol.lesion is not None and (vol.lesion & vol.region).any() else vol.region
    other = tuple(a for a in range(3) if a != AXIS[plane])
    present = np.flatnonzero(mask.any(axis=other))  # never empty: the region is not (BrowseVolume checks)
    picks = np.unique(np.linspace(0, present.size - 1, min(n, present.size)).round().astype(int))
    return [int(present[i]) for i in picks]


def _prepare(vol: BrowseVolume, threshold: float, plane: Plane, n: int, slices: Sequence[int] | None,
             view: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    """The prediction and the checked slice list of a figure; one colour scale (``map_max``) for all its slices."""
    view.setdefault("map_max", map_range(vol))
    chosen = list(slices) if slices is not None else pick_slices(vol, plane, n)
    if not chosen:
        raise ValueError("no slices to show: slices is empty")
    bad = [k for k in chosen if not 0 <= k < vol.n_slices(plane)]
    if bad:
        raise ValueError(f"{plane} slices {bad} are outside [0, {vol.n_slices(plane) - 1}]")
    return predict(vol, threshold), chosen


def slice_title(vol: BrowseVolume, pred: np.ndarray, plane: Plane, index: int) -> str:
    """'<plane> slice k (z = .. mm) · slice Dice ..' for one slice; "not scored" when no voxel of it counts, "n/a"
    when it holds neither lesion nor prediction."""
    ax = "xyz"[AXIS[plane]]
    text = f"{plane} slice {index} ({ax} = {vol.world_mm(plane, index):.1f} mm)"
    if not np.take(vol.region, index, axis=AXIS[plane]).any():
        return text + " · not scored"
    o = overlap(vol, pred, plane, index)
    if o is None:
        return text + f" · {int(np.take(pred, index, axis=AXIS[plane]).sum())} voxels predicted"
    dice = "n/a" if o.tp + o.fp + o.fn == 0 else f"{o.dice:.3f}"
    return text + f" · slice Dice {dice} (TP {o.tp}, FP {o.fp}, FN {o.fn})"


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def montage(vol: BrowseVolume, threshold: float, plane: Plane = "axial", n: int = 4,
            slices: Sequence[int] | None = None, **view: Any) -> plt.Figure:
    """One row of panels per slice (input, reconstruction, map, ground truth, overlay, prediction)."""
    pred, chosen = _prepare(vol, threshold, plane, n, slices, view)
    rows = [panels(vol, View(plane, k, threshold, **view), pred) for k in chosen]
    cols = len(rows[0])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 1.8 * len(rows)), squeeze=False)
    for r, (k, row) in enumerate(zip(chosen, rows)):
        for c, (title, rgb) in enumerate(row):
            axes[r, c].imshow(rgb)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=7)
        axes[r, 0].text(-0.08, 0.5, f"{plane} {k}", transform=axes[r, 0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=7)
    fig.suptitle(f"{vol.label or vol.id} (threshold {threshold:.4g})", fontsize=8)
    fig.tight_layout()
    return fig


def slice_figure(vol: BrowseVolume, threshold: float, plane: Plane = "axial", n: int = 24,
                 slices: Sequence[int] | None = None, **view: Any) -> go.Figure:
    """A plotly figure whose slider steps through precomputed slices (one image trace per slice)."""
    pred, chosen = _prepare(vol, threshold, plane, n, slices, view)
    fig = go.Figure()
    titles = []
    for i, k in enumerate(chosen):
        rgb = compose(panels(vol, View(plane, k, threshold, **view), pred))
        uri = "data:image/png;base64," + base64.b64encode(png(rgb)).decode("ascii")
        fig.add_trace(go.Image(source=uri, name=f"{plane} {k}", hoverinfo="skip"))
        titles.append(slice_title(vol, pred, plane, k))
    focus = vol.lesion & vol.region if vol.lesion is not None else pred
    sizes = [int(np.take(focus, k, axis=AXIS[plane]).sum()) for k in chosen]
    first = int(np.argmax(sizes))  # start on the slice with the most lesion (or prediction)
    for i, trace in enumerate(fig.data):
        trace.visible = i == first
    steps = [{"method": "update", "label": str(k),
              "args": [{"visible": [j == i for j in range(len(chosen))]}, {"title.text": titles[i]}]}
             for i, k in enumerate(chosen)]
    height = int(rgb.shape[0]) + 170
    fig.update_layout(title={"text": titles[first], "font": {"size": 13}}, height=height,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      sliders=[{"active": first, "steps": steps, "currentvalue": {"prefix": f"{plane} slice "},
                                "pad": {"t": 30}}])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return fig


class OfflineNotebookRenderer(HtmlRenderer):
    """plotly's "notebook" renderer without its per-figure MathJax script from a CDN: plotly.js is embedded once
    (when activated), hidden from an AMD loader (require.js, which the site loads for widgets) so it sets
    ``window.Plotly``."""

    def __init__(self) -> None:
        super().__init__(connected=False, full_html=False, global_init=True, include_plotlyjs=False)

    def activate(self) -> None:
        from IPython.display import display_html
        from plotly.offline import get_plotlyjs

        display_html("<script>(function (define) {" + get_plotlyjs() + "\n}).call(window, undefined);</script>",
                     raw=True)

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        html = pio.to_html(fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
                           full_html=False, default_width="100%", default_height=525, validate=False)
        return {"text/html": html}


def use_offline_plotly() -> None:
    """Register the offline renderer and make ``plotly_mimetype+addm_offline`` the default (call once per notebook)."""
    if OFFLINE_RENDERER not in pio.renderers:
        pio.renderers[OFFLINE_RENDERER] = OfflineNotebookRenderer()
    pio.renderers.default = f"plotly_mimetype+{OFFLINE_RENDERER}"

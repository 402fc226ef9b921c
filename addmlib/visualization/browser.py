"""``SliceBrowser``: an ipywidgets browser of anomaly maps for a live kernel.

Controls: volume (from a run, or any NIfTI set), plane, one slice slider per plane (moving one shows its plane),
threshold, overlay opacity and colour map, ground-truth outline, jumps to the slice with the most predicted voxels
or the most lesion. The readout gives the slice's and the volume's Dice at the threshold, computed as the evaluation
computes them (``prediction``). The image is the panel row of ``overlay.panels`` as PNG.
"""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import numpy as np

from .figures import slice_title
from .overlay import COLORMAPS, View, compose, map_range, panels, png
from .prediction import Overlap, largest_slice, overlap, predict, starting_threshold
from .volumes import PLANES, BrowseVolume, Plane, RunVolume


class SliceBrowser:
    """Browse volumes (``RunVolume`` entries are loaded on first view; ``BrowseVolume`` as they are).

    ``threshold``: the starting threshold; None takes each volume's calibrated threshold (``BrowseVolume.threshold``)
    or, without one, the 99th percentile of its map over the region (said so in the readout).
    """

    KEEP_LOADED = 4
    """Volumes read from files kept in memory at once."""

    def __init__(self, volumes: Sequence[RunVolume | BrowseVolume], start: int = 0, plane: Plane = "axial",
                 threshold: float | None = None, opacity: float = 0.5, cmap: str = "inferno",
                 radiological: bool = True, height: int = 192) -> None:
        if not volumes:
            raise ValueError("nothing to browse: the list of volumes is empty")
        if not 0 <= start < len(volumes):
            raise ValueError(f"start {start} is outside [0, {len(volumes) - 1}] (the volumes' indices)")
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
        if cmap not in COLORMAPS:
            raise ValueError(f"cmap must be one of {COLORMAPS}, got {cmap!r}")
        self._entries = list(volumes)
        self._loaded: dict[int, BrowseVolume] = {}
        self._fixed_threshold = threshold
        self.radiological, self.height = radiological, height
        self._pred_key: tuple[int, float] | None = None
        self._pred: np.ndarray | None = None
        self._total: Overlap | None = None
        self._quiet = False

        labels = [(e.label or e.id, i) for i, e in enumerate(self._entries)]
        self.volume_w = widgets.Dropdown(options=labels, value=start, description="volume",
                                         layout=widgets.Layout(width="420px"))
        wide = {"description_width": "initial"}
        self.plane_w = widgets.ToggleButtons(options=list(PLANES), value=plane, description="plane",
                                             style={"button_width": "80px"})
        self.slice_w = {p: widgets.IntSlider(value=0, min=0, max=1, description=p, continuous_update=False)
                        for p in PLANES}
        self.threshold_w = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.001, readout_format=".4g",
                                               description="threshold", continuous_update=False)
        self.opacity_w = widgets.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05, description="opacity",
                                             continuous_update=False)
        self.cmap_w = widgets.Dropdown(options=list(COLORMAPS), value=cmap, description="colour map", style=wide,
                                       layout=widgets.Layout(width="220px"))
        self.contour_w = widgets.Checkbox(value=True, description="ground-truth outline", indent=False)
        self.jump_anomaly_w = widgets.Button(description="largest anomaly", tooltip="slice with most predicted voxels")
        self.jump_lesion_w = widgets.Button(description="largest tumour", tooltip="slice with most lesion voxels")
        self.readout_w = widgets.HTML()
        self.image_w = widgets.Image(format="png")

        self.volume_w.observe(lambda _: self._open(), "value")
        self.plane_w.observe(lambda _: self.refresh(), "value")
        for p, w in self.slice_w.items():
            w.observe(lambda _, p=p: self._slice_moved(p), "value")
        for w in (self.threshold_w, self.opacity_w, self.cmap_w, self.contour_w):
            w.observe(lambda _: self.refresh(), "value")
        self.jump_anomaly_w.on_click(lambda _: self.jump("anomaly"))
        self.jump_lesion_w.on_click(lambda _: self.jump("lesion"))

        self.widget = widgets.VBox([
            widgets.HBox([self.volume_w, self.plane_w]),
            widgets.HBox([widgets.VBox(list(self.slice_w.values())),
                          widgets.VBox([self.threshold_w, self.opacity_w, self.cmap_w]),
                          widgets.VBox([self.contour_w, self.jump_anomaly_w, self.jump_lesion_w])]),
            self.readout_w, self.image_w])
        self._open()

    # --- state ---------------------------------------------------------------------------------------------
    @property
    def volume(self) -> BrowseVolume:
        i = int(self.volume_w.value)
        if i not in self._loaded:
            entry = self._entries[i]
            self._loaded[i] = entry.load() if isinstance(entry, RunVolume) else entry
            for old in [k for k in self._loaded if k != i][:-self.KEEP_LOADED + 1 or None]:
                if isinstance(self._entries[old], RunVolume):
                    del self._loaded[old]  # files are re-read when needed; user-given volumes stay
        return self._loaded[i]

    @property
    def plane(self) -> Plane:
        return self.plane_w.value

    @property
    def index(self) -> int:
        return int(self.slice_w[self.plane].value)

    def prediction(self) -> np.ndarray:
        """The volume's prediction at the current threshold, and its volume overlap, cached per volume and threshold
        (a slice, opacity or colour change redraws without recomputing them)."""
        key = (int(self.volume_w.value), float(self.threshold_w.value))
        if key != self._pred_key:
            self._pred = predict(self.volume, key[1])
            self._total, self._pred_key = overlap(self.volume, self._pred), key
        assert self._pred is not None
        return self._pred

    # --- actions -------------------------------------------------------------------------------------------
    def _open(self) -> None:
        vol = self.volume
        self._quiet = True
        try:
            self._map_max = map_range(vol)
            start, self._threshold_source = starting_threshold(vol, self._fixed_threshold)
            low = min(0.0, float(vol.amap.min()), start)
            high = max(float(vol.amap.max()) * 1.05, start, low + 1e-6)
            self.threshold_w.min, self.threshold_w.max = -1e12, 1e12  # widen first: min and max clamp each other
            self.threshold_w.min, self.threshold_w.max = low, high
            self.threshold_w.step = (high - low) / 1000
            self.threshold_w.value = start
            focus = vol.lesion & vol.region if vol.lesion is not None and vol.lesion.any() else vol.region
            for p, w in self.slice_w.items():
                w.max = vol.n_slices(p) - 1
                best = largest_slice(focus, p)
                w.value = best if best is not None else vol.n_slices(p) // 2
            self.jump_lesion_w.disabled = vol.lesion is None or not vol.lesion.any()
        finally:
            self._quiet = False
        self.refresh()

    def _slice_moved(self, plane: Plane) -> None:
        if self._quiet:
            return
        if self.plane_w.value != plane:
            self.plane_w.value = plane  # triggers refresh
        else:
            self.refresh()

    def set_slice(self, plane: Plane, index: int) -> None:
        """Show slice ``index`` of ``plane``."""
        self.slice_w[plane].value = index
        self.plane_w.value = plane

    def set_threshold(self, value: float) -> None:
        self.threshold_w.value = value

    def jump(self, target: str) -> int | None:
        """Go to the slice of the current plane with the most predicted voxels ("anomaly") or lesion ("lesion")."""
        vol, plane = self.volume, self.plane
        if target == "anomaly":
            pred = self.prediction()
            k = largest_slice(pred, plane) if pred.any() else largest_slice(vol.region, plane, vol.amap)
        elif target == "lesion":
            k = largest_slice(vol.lesion, plane) if vol.lesion is not None else None
        else:
            raise ValueError(f"jump target must be 'anomaly' or 'lesion', got {target!r}")
        if k is not None:
            self.slice_w[plane].value = k
        return k

    def view(self) -> View:
        return View(self.plane, self.index, float(self.threshold_w.value), float(self.opacity_w.value),
                    self.cmap_w.value, bool(self.contour_w.value), self._map_max, self.radiological, self.height)

    def refresh(self) -> None:
        """Redraw the panels and the readout."""
        if self._quiet:
            return
        vol, pred = self.volume, self.prediction()
        self.image_w.value = png(compose(panels(vol, self.view(), pred)))
        total = self._total
        thr = float(self.threshold_w.value)
        lines = [f"<b>{slice_title(vol, pred, self.plane, self.index)}</b>"]
        if total is not None:
            lines.append(f"volume Dice <b>{total.dice:.3f}</b> (TP {total.tp}, FP {total.fp}, FN {total.fn}) "
                         f"at threshold {thr:.4g}")
        else:
            lines.append(f"{int(pred.sum())} voxels predicted at threshold {thr:.4g} (no ground truth)")
        lines.append(f"starting threshold: {self._threshold_source}; voxels counted: brain on scored slices "
                     f"({int(vol.scored.sum())} of {vol.scored.size} axial); "
                     f"{'radiological' if self.radiological else 'neurological'} view")
        self.readout_w.value = "<div class='addm-readout'>" + "<br>".join(lines) + "</div>"

    @property
    def readout(self) -> str:
        return self.readout_w.value

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

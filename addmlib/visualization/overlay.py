"""Arrays for display: grey scans, colour-mapped anomaly maps, overlays, outlines, and the labelled panel row.

All functions take and return ``uint8`` RGB arrays (H x W x 3) or boolean masks in display orientation; nothing
here draws on screen, so the same pixels feed the live browser, the montage and the site's plotly figure.

* overlay = (1 - a) * scan + a * colormap(map), a = opacity where map > 0 (the map is 0 outside the eroded brain)
* prediction panel: true positives green, false positives red, false negatives blue (lesion not found)
* outlines: mask & ~erode(mask), one pixel wide at display resolution
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .prediction import predict
from .volumes import BrowseVolume, Plane, extract, pixel_spacing

TP, FP, FN = (40, 200, 70), (230, 40, 40), (60, 120, 255)
CONTOUR = (0, 230, 230)
COLORMAPS = ("inferno", "hot", "magma", "viridis", "jet", "gray")


def gray(img: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Grey RGB of ``img`` with [vmin, vmax] mapped to [0, 255]."""
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got [{vmin}, {vmax}]")
    v = np.clip((img - vmin) / (vmax - vmin), 0, 1)
    return np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def colormap(values: np.ndarray, vmin: float, vmax: float, name: str = "inferno") -> np.ndarray:
    """RGB of ``values`` through matplotlib colour map ``name`` over [vmin, vmax]."""
    if name not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {name!r} (matplotlib's names, e.g. {', '.join(COLORMAPS)})")
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got [{vmin}, {vmax}]")
    lut = (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    idx = (np.clip((values - vmin) / (vmax - vmin), 0, 1) * 255).round().astype(int)
    return lut[idx]


def blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(1 - alpha) * base + alpha * top, alpha per pixel (H x W) or scalar, in [0, 1]."""
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0, 1)
    if a.ndim == 2:
        a = a[..., None]
    return ((1 - a) * base + a * top).round().astype(np.uint8)


def paint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 1.0) -> np.ndarray:
    """``rgb`` with ``mask`` pixels blended towards ``colour``."""
    out = rgb.copy()
    out[mask] = blend(rgb[mask], np.asarray(colour, dtype=np.uint8), alpha)
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of a 2-D mask."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def upscale(a: np.ndarray, row_mm: float, col_mm: float, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D (or H x W x C) array to ``height`` rows and square pixels in mm."""
    rows, cols = a.shape[:2]
    width = max(1, int(round(height * (cols * col_mm) / (rows * row_mm))))
    r = np.minimum((np.arange(height) + 0.5) * rows / height, rows - 1).astype(int)
    c = np.minimum((np.arange(width) + 0.5) * cols / width, cols - 1).astype(int)
    return a[r][:, c]


@dataclass(frozen=True)
class View:
    """What the panels show: slice, threshold and display settings."""

    plane: Plane
    index: int
    threshold: float
    opacity: float = 0.5
    cmap: str = "inferno"
    contour: bool = True
    map_max: float | None = None
    radiological: bool = True
    height: int = 192


def map_range(vol: BrowseVolume) -> float:
    """Upper end of the colour scale: the 99.5th percentile of the map over the region (positive), else its max."""
    top = float(np.percentile(vol.amap[vol.region], 99.5))  # the region is never empty (BrowseVolume checks)
    return top if top > 0 else max(float(vol.amap.max()), 1e-6)


def panels(vol: BrowseVolume, view: View, pred: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """(title, RGB) of each panel of one slice: input, reconstruction, map, ground truth, overlay, prediction."""
    if pred is None:
        pred = predict(vol, view.threshold)
    row_mm, col_mm = pixel_spacing(vol.spacing, view.plane)

    def take(a: np.ndarray) -> np.ndarray:
        return upscale(extract(a, view.plane, view.index, view.radiological), row_mm, col_mm, view.height)

    lo, hi = vol.intensity_range
    scan = gray(take(vol.image), lo, hi)
    amap = take(vol.amap)
    heat = colormap(amap, 0.0, view.map_max if view.map_max is not None else map_range(vol), view.cmap)
    lesion = take(vol.lesion) if vol.lesion is not None else None
    ring = outline(lesion) if (lesion is not None and view.contour) else None

    def with_ring(rgb: np.ndarray) -> np.ndarray:
        return paint(rgb, ring, CONTOUR) if ring is not None else rgb

    out = [("input", scan)]
    unscored = view.plane == "axial" and not np.asarray(vol.scored)[view.index]
    note = " (not scored)" if unscored else ""
    if vol.recon is not None:
        scored = take(np.broadcast_to(np.asarray(vol.scored), vol.recon.shape))
        out.append(("reconstruction" + note, np.where(scored[..., None], gray(take(vol.recon), lo, hi), scan // 4)))
    out.append(("anomaly map" + note, heat))
    if lesion is not None:
        out.append(("ground truth", paint(scan, lesion, CONTOUR, 0.6)))
    out.append((f"overlay ({view.opacity:.0%})", with_ring(blend(scan, heat, view.opacity * (amap > 0)))))
    p = take(pred)
    if lesion is not None:
        lesion = lesion & take(vol.region)  # what Dice counts
        shown = paint(paint(paint(scan, p & lesion, TP, 0.8), p & ~lesion, FP, 0.8), ~p & lesion, FN, 0.8)
    else:
        shown = paint(scan, p, FP, 0.8)
    out.append((f"map >= {view.threshold:.4g}", shown))
    return out


def compose(tiles: list[tuple[str, np.ndarray]], columns: int = 3, gap: int = 4, title_px: int = 14) -> np.ndarray:
    """Tiles in a grid on a dark background, each with its title above (PIL's built-in bitmap font)."""
    h = max(t.shape[0] for _, t in tiles)
    w = max(t.shape[1] for _, t in tiles)
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    canvas = Image.new("RGB", (cols * (w + gap) + gap, rows * (h + title_px + gap) + gap), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    for n, (title, tile) in enumerate(tiles):
        x = gap + (n % columns) * (w + gap)
        y = gap + (n // columns) * (h + title_px + gap)
        draw.text((x + 2, y + 1), title, fill=(235, 235, 235))
        canvas.paste(Image.fromarray(tile), (x, y + title_px))
    return np.asarray(canvas)


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()

"""Looking at anomaly maps: volumes on a canonical grid (``volumes``), threshold -> prediction -> Dice
(``prediction``), display arrays and panels (``overlay``), static figures for notebooks and the site (``figures``),
and the live ipywidgets ``SliceBrowser`` (``browser``)."""

from .browser import SliceBrowser
from .figures import montage, slice_figure, use_offline_plotly
from .prediction import overlap, predict
from .volumes import BrowseVolume, RunVolume, load_nifti_set, run_volumes

__all__ = ["SliceBrowser", "montage", "slice_figure", "use_offline_plotly", "overlap", "predict", "BrowseVolume",
           "RunVolume", "load_nifti_set", "run_volumes"]

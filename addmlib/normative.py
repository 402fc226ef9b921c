"""A normative model of a registered population: each pixel's healthy mean and spread, and an image's deviation from it.

The IXI mid-axial slices are one level of MNI-registered brains, each cropped to its brain and resized to N x N
(``data/ixi.py``), so a pixel is about the same place in every individual. Over the population's healthy training
slices, at each pixel p,

    mu(p) = mean of x_i(p),   sigma(p) = standard deviation of x_i(p)   (over the slices whose brain holds p),

and an image's deviation is z(p) = |x(p) - mu(p)| / max(sigma(p), sigma_floor): how unusual its intensity is *for that
place* (white-matter brightness where the population has grey matter or CSF). It knows nothing of a lesion's shape
and reads only slices of the population it was fitted on: a slice at another level, or a 3-D volume, is refused.
``evaluate`` fuses it with a diffusion model's map on those slices and scores it alone as a strong simple baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SD_FLOOR = 0.1
"""sigma_floor: the least spread a pixel is read against (images in [-1, 1]); keeps z finite where the population
barely varies (the background, the brain's edge in few slices)."""
POPULATION = "ixi_midaxial"
"""The dataset (``meta["dataset"]``) whose slices the atlas is fitted on and reads."""
Z_UNIT = 4.0
"""The baseline's map is 2 tanh(z / Z_UNIT): z bounded into the score range [0, 2] without changing its ranking."""


@dataclass(frozen=True)
class NormativeAtlas:
    """mu, sigma (N x N) of a population's healthy slices, and how many slices held each pixel in their brain."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    sd_floor: float = SD_FLOOR

    @classmethod
    def fit(cls, images: np.ndarray, brains: np.ndarray, sd_floor: float = SD_FLOOR) -> NormativeAtlas:
        """The atlas of ``images`` (n x N x N, healthy, registered) over their brain masks ``brains``: at each pixel
        the mean and (population) standard deviation of the slices whose brain holds it; 0 where none does."""
        if images.ndim != 3 or images.shape != brains.shape or len(images) < 2:
            raise ValueError(f"a normative atlas needs at least two registered healthy slices (n x N x N) with brain "
                             f"masks of the same shape; got images {images.shape}, brains {brains.shape}")
        if not sd_floor > 0:
            raise ValueError(f"sd_floor must be > 0, got {sd_floor}")
        inside = brains.astype(bool)
        x = np.where(inside, images, 0.0).astype(np.float64)
        count = inside.sum(0)
        n = np.maximum(count, 1)
        mean = x.sum(0) / n
        var = np.maximum((x * x).sum(0) / n - mean ** 2, 0.0)
        return cls(mean.astype(np.float32), np.sqrt(var).astype(np.float32), count.astype(np.int32), float(sd_floor))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def deviation(self, image: np.ndarray) -> np.ndarray:
        """z = |x - mu| / max(sigma, sigma_floor) of an N x N image (or N x N x Z, slice by slice)."""
        if image.shape[:2] != self.shape:
            raise ValueError(f"image of {image.shape[:2]} pixels; the atlas holds {self.shape}")
        mean, spread = self.mean, np.maximum(self.std, self.sd_floor)
        if image.ndim == 3:
            mean, spread = mean[:, :, None], spread[:, :, None]
        return (np.abs(image - mean) / spread).astype(np.float32)

    def check_population(self, volume_id: str, dataset: str | None, shape: tuple[int, ...]) -> None:
        """Refuse what the atlas does not describe: anything but a single slice of its population, at its size."""
        if dataset != POPULATION or len(shape) != 3 or shape[2] != 1 or shape[:2] != self.shape:
            raise ValueError(f"{volume_id}: the normative atlas reads single {self.shape[0]} x {self.shape[1]} slices "
                             f"of the {POPULATION} population it was fitted on; got dataset {dataset!r}, shape "
                             f"{list(shape)}")

"""A normative model of a registered population: each pixel's healthy mean and spread, and an image's deviation from it.

The IXI mid-axial slices are one level of MNI-registered brains, each cropped to its brain and resized to N x N
(``data/ixi.py``), so a pixel is about the same place in every individual. Over the population's healthy training
slices, at each pixel p,

    mu(p) = mean of x_i(p),   sigma(p) = standard deviation of x_i(p)   (over the slices whose brain holds p),

and an image's deviation is z(p) = |x(p) - mu(p)| / max(sigma(p), sigma_floor): how unusual its intensity is *for that
place* (white-matter brightness where the population has grey matter or CSF). It knows nothing of a lesion's shape
and reads only slices of the population it was fitted on: a slice at another level, or a 3-D volume, is refused.
``evaluate`` fuses it with a diffusion model's map on those slices and scores it alone as a strong simple baseline.

Crop-and-resize leaves the ventricles and the cortex a few pixels apart between individuals, which blurs mu and
widens sigma exactly where lesions must be told from anatomy. Two options sharpen it:

* ``rounds`` of groupwise registration: every training slice is warped onto the current mean by a smooth dense
  deformation (TV-L1 optical flow, ``skimage.registration.optical_flow_tvl1``, each component smoothed by a Gaussian
  of ``smooth_px``), and mu and sigma are refitted on the warped slices. An image is then read in its own space: the
  template is warped onto it by the same kind of deformation, mu and sigma with it.
* ``neighbours`` k: mu and sigma are taken over the k training slices nearest the image (sum of squared differences
  over their brains, in the template's space): the healthy variation of brains shaped like this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.registration import optical_flow_tvl1
from skimage.transform import warp

SD_FLOOR = 0.1
"""sigma_floor: the least spread a pixel is read against (images in [-1, 1]); keeps z finite where the population
barely varies (the background, the brain's edge in few slices)."""
POPULATION = "ixi_midaxial"
"""The dataset (``meta["dataset"]``) whose slices the atlas is fitted on and reads."""
Z_UNIT = 4.0
"""The baseline's map is 2 tanh(z / Z_UNIT): z bounded into the score range [0, 2] without changing its ranking."""
SMOOTH_PX = 2.0
"""The Gaussian (pixels) each component of a registration's displacement is smoothed by: the deformation follows the
ventricles and the brain's outline, not a lesion a few pixels across."""


def displacement(reference: np.ndarray, moving: np.ndarray, smooth_px: float = SMOOTH_PX) -> np.ndarray:
    """The smooth dense displacement u (2 x N x N, rows then columns) with moving(p + u(p)) ~ reference(p): TV-L1
    optical flow (attachment 15, tightness 0.3), each component smoothed by a Gaussian of ``smooth_px`` pixels."""
    flow = optical_flow_tvl1(reference.astype(np.float32), moving.astype(np.float32), attachment=15, tightness=0.3)
    return np.stack([ndimage.gaussian_filter(c, smooth_px) for c in flow]) if smooth_px > 0 else flow


def warped(image: np.ndarray, u: np.ndarray, order: int = 1) -> np.ndarray:
    """image(p + u(p)): ``image`` resampled onto the reference grid of ``displacement`` (edges extended)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in image.shape], indexing="ij"))
    return warp(image, grid + u, order=order, mode="edge", preserve_range=True).astype(np.float32)


def _moments(images: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: mean and (population) standard deviation over the slices whose brain holds it, and their count."""
    x = np.where(inside, images, 0.0).astype(np.float64)
    count = inside.sum(0)
    n = np.maximum(count, 1)
    mean = x.sum(0) / n
    var = np.maximum((x * x).sum(0) / n - mean ** 2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32), count.astype(np.int32)


@dataclass(frozen=True)
class NormativeAtlas:
    """mu, sigma (N x N) of a population's healthy slices and how many slices held each pixel in their brain; with
    ``rounds`` > 0 in the template space of a groupwise registration, with ``neighbours`` > 0 also the registered
    slices and brains (n x N x N) the nearest ones are drawn from."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    sd_floor: float = SD_FLOOR
    rounds: int = 0
    neighbours: int = 0
    smooth_px: float = SMOOTH_PX
    slices: np.ndarray | None = None
    brains: np.ndarray | None = None
    _read: dict[bytes, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)

    @classmethod
    def fit(cls, images: np.ndarray, brains: np.ndarray, sd_floor: float = SD_FLOOR, rounds: int = 0,
            neighbours: int = 0, smooth_px: float = SMOOTH_PX) -> NormativeAtlas:
        """The atlas of ``images`` (n x N x N, healthy, registered) over their brain masks ``brains``: at each pixel
        the mean and (population) standard deviation of the slices whose brain holds it; 0 where none does. With
        ``rounds``: each round warps every slice (and its brain) onto the current mean (``displacement``) and refits.
        ``neighbours``: 0 (all slices) or the k >= 2 nearest an image that ``reference`` reads it against."""
        if images.ndim != 3 or images.shape != brains.shape or len(images) < 2:
            raise ValueError(f"a normative atlas needs at least two registered healthy slices (n x N x N) with brain "
                             f"masks of the same shape; got images {images.shape}, brains {brains.shape}")
        if not sd_floor > 0:
            raise ValueError(f"sd_floor must be > 0, got {sd_floor}")
        if rounds < 0 or smooth_px < 0:
            raise ValueError(f"rounds and smooth_px must be >= 0, got {rounds}, {smooth_px}")
        if neighbours and not 2 <= neighbours <= len(images):
            raise ValueError(f"neighbours must be 0 (all slices) or between 2 and the {len(images)} slices, got "
                             f"{neighbours}")
        x, inside = images.astype(np.float32), brains.astype(bool)
        mean, std, count = _moments(x, inside)
        for _ in range(rounds):
            moves = [displacement(mean, s, smooth_px) for s in images]
            x = np.stack([warped(s, u) for s, u in zip(images, moves)])
            inside = np.stack([warped(b.astype(np.float32), u, order=0) > 0.5 for b, u in zip(brains, moves)])
            mean, std, count = _moments(x, inside)
        keep = neighbours > 0
        return cls(mean, std, count, float(sd_floor), int(rounds), int(neighbours), float(smooth_px),
                   x if keep else None, inside if keep else None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def describe(self) -> str:
        """How the atlas was fitted, in words (recorded as "fit" in its rows' information)."""
        parts = [f"{self.rounds} rounds of groupwise registration"] if self.rounds else []
        parts += [f"the {self.neighbours} nearest slices"] if self.neighbours else []
        return ", ".join(parts) or "aligned by crop and resize"

    def reference(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mu and max(sigma, sigma_floor) on the grid of the N x N ``image``: the atlas's own, or with ``rounds`` the
        template's warped onto the image, over the ``neighbours`` slices nearest it where that is set."""
        if image.shape != self.shape:
            raise ValueError(f"image of {image.shape[:2]} pixels; the atlas holds {self.shape}")
        if not (self.rounds or self.neighbours):
            return self.mean, np.maximum(self.std, self.sd_floor)
        key = np.ascontiguousarray(image, dtype=np.float32).tobytes()
        if key not in self._read:  # registration and the neighbour search, once per image: every row reuses them
            self._read[key] = self._reference(image)
        return self._read[key]

    def _reference(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.mean, self.std
        if self.neighbours:
            assert self.slices is not None and self.brains is not None
            own = warped(image, displacement(self.mean, image, self.smooth_px)) if self.rounds else image
            sq = (np.where(self.brains, self.slices - own[None], 0.0) ** 2).reshape(len(self.slices), -1).sum(1)
            near = np.argsort(sq, kind="stable")[: self.neighbours]
            mean, std, _ = _moments(self.slices[near], self.brains[near])
        spread = np.maximum(std, self.sd_floor)
        if self.rounds:
            onto = displacement(image, self.mean, self.smooth_px)
            mean, spread = warped(mean, onto), warped(spread, onto)
        return mean, spread

    def deviation(self, image: np.ndarray) -> np.ndarray:
        """z = |x - mu| / max(sigma, sigma_floor) of an N x N image (or N x N x Z, slice by slice)."""
        if image.shape[:2] != self.shape:
            raise ValueError(f"image of {image.shape[:2]} pixels; the atlas holds {self.shape}")
        if image.ndim == 3:
            return np.stack([self.deviation(image[:, :, k]) for k in range(image.shape[2])], -1)
        mean, spread = self.reference(image)
        return (np.abs(image - mean) / spread).astype(np.float32)

    def check_population(self, volume_id: str, dataset: str | None, shape: tuple[int, ...]) -> None:
        """Refuse what the atlas does not describe: anything but a single slice of its population, at its size."""
        if dataset != POPULATION or len(shape) != 3 or shape[2] != 1 or shape[:2] != self.shape:
            raise ValueError(f"{volume_id}: the normative atlas reads single {self.shape[0]} x {self.shape[1]} slices "
                             f"of the {POPULATION} population it was fitted on; got dataset {dataset!r}, shape "
                             f"{list(shape)}")

"""The normative atlas of a registered population (addmlib.normative) and its use in the evaluation: the per-pixel
statistics, the location-aware deviation, what it refuses, the weighted mix it is fused by, and its parameters."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from addmlib.config import ConfigError, EvalConfig, validate
from addmlib.evaluate import mixed_scorer, normative_scorer
from addmlib.normative import NormativeAtlas


def _population(n: int = 40, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Registered healthy slices: dark (-0.5) in the left half, bright (0.5) in the right, a little noise; the brain
    is all but the first row."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(size)[None, :] < size // 2, -0.5, 0.5) * np.ones((size, 1))
    images = (base[None] + rng.normal(0, 0.05, (n, size, size))).astype(np.float32)
    brains = np.ones_like(images, bool)
    brains[:, 0] = False
    return images, brains


def test_the_atlas_holds_each_pixels_mean_and_spread_over_the_brains_that_hold_it() -> None:
    images, brains = _population()
    brains[:5, 3, 3] = False  # five slices lack this pixel
    atlas = NormativeAtlas.fit(images, brains)
    assert atlas.count[3, 3] == 35 and atlas.count[0, 0] == 0 and atlas.count[5, 5] == 40
    assert atlas.mean[3, 3] == pytest.approx(images[5:, 3, 3].mean(), abs=1e-6)
    assert atlas.std[3, 3] == pytest.approx(images[5:, 3, 3].std(), abs=1e-6)
    assert atlas.mean[0, 0] == 0 and atlas.std[0, 0] == 0  # no slice holds it: read against the floor alone
    with pytest.raises(ValueError, match="at least two registered healthy slices"):
        NormativeAtlas.fit(images[:1], brains[:1])
    with pytest.raises(ValueError, match="sd_floor must be > 0"):
        NormativeAtlas.fit(images, brains, sd_floor=0.0)


def test_the_deviation_is_read_for_the_place_not_the_intensity() -> None:
    """The same bright patch is anomalous where the population is dark and ordinary where it is bright."""
    images, brains = _population()
    atlas = NormativeAtlas.fit(images, brains, sd_floor=0.1)
    probe = images[0].copy()
    probe[4:6, 1:3] = 0.5  # bright in the dark half
    probe[4:6, 5:7] = 0.5  # bright in the bright half (as usual)
    z = atlas.deviation(probe)
    assert z[4:6, 1:3].min() > 8  # |0.5 - (-0.5)| / max(~0.05, 0.1) = 10
    assert z[4:6, 5:7].max() < 1.5
    assert np.allclose(z, np.abs(probe - atlas.mean) / np.maximum(atlas.std, 0.1))
    assert np.allclose(atlas.deviation(probe[:, :, None])[:, :, 0], z)  # N x N x Z, slice by slice
    with pytest.raises(ValueError, match=r"image of \(4, 4\) pixels; the atlas holds \(8, 8\)"):
        atlas.deviation(np.zeros((4, 4)))


def _shifted_population(n: int = 24, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Healthy slices whose anatomy lies a few pixels apart: a bright smooth blob (a ventricle's opposite) on a dark
    brain, its centre moved by up to 3 pixels from one individual to the next."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images = []
    for _ in range(n):
        cy, cx = size / 2 + rng.uniform(-3, 3, 2)
        images.append(-0.5 + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2)))
    images = np.array(images, np.float32) + rng.normal(0, 0.01, (n, size, size)).astype(np.float32)
    return images, np.ones_like(images, bool)


def test_groupwise_registration_sharpens_the_atlas_and_still_finds_a_lesion() -> None:
    """Crop-and-resize leaves anatomy a few pixels apart: the plain atlas's sigma is wide along the blob's flank and
    a healthy individual reads as deviant there. Registered, the spread shrinks, a healthy slice reads ordinary, and a
    lesion (a dark patch in the blob) still stands out."""
    images, brains = _shifted_population()
    plain = NormativeAtlas.fit(images[1:], brains[1:])
    reg = NormativeAtlas.fit(images[1:], brains[1:], rounds=2)
    assert reg.rounds == 2 and reg.slices is None  # the registered slices are kept only for neighbours
    assert reg.std[8:24, 8:24].mean() < 0.5 * plain.std[8:24, 8:24].mean()
    healthy = images[0]
    assert reg.deviation(healthy).max() < 0.6 * plain.deviation(healthy).max()
    lesion = healthy.copy()
    cy, cx = np.unravel_index(np.argmax(healthy), healthy.shape)
    lesion[cy - 2:cy + 3, cx - 2:cx + 3] = -0.5  # the blob's core erased: 5 x 5 pixels
    z = reg.deviation(lesion)
    assert z[cy - 1:cy + 2, cx - 1:cx + 2].min() > 2 * np.percentile(reg.deviation(healthy), 99)
    mean, spread = reg.reference(healthy)  # the template warped onto the image: its blob where the image's is
    assert np.unravel_index(np.argmax(mean), mean.shape) == pytest.approx((cy, cx), abs=1)
    assert spread.min() >= reg.sd_floor - 1e-6 and "2 rounds of groupwise registration" in reg.describe()


def test_the_nearest_slices_give_the_spread_of_brains_like_this_one() -> None:
    """Two kinds of healthy brains (bright on the right, or mirrored): over the k nearest, an image is read against its
    own kind, and a patch bright where its kind is dark stands out; over all of them the mixture's spread hides it."""
    images, brains = _population(n=40, size=8)
    images[20:] = images[20:, :, ::-1]  # half the population mirrored: bright on the left
    atlas = NormativeAtlas.fit(images[1:], brains[1:], neighbours=10)
    assert atlas.slices is not None and atlas.slices.shape == (39, 8, 8) and "the 10 nearest" in atlas.describe()
    mean, _ = atlas.reference(images[0])
    assert np.allclose(mean[1:], images[1:20, 1:].mean(0), atol=0.06)  # dark left, bright right: its own kind
    probe = images[0].copy()
    probe[4:6, 1:3] = 0.5  # bright where its kind is dark (and the other kind bright)
    assert atlas.deviation(probe)[4:6, 1:3].min() > 6
    assert NormativeAtlas.fit(images[1:], brains[1:]).deviation(probe)[4:6, 1:3].max() < 2
    for k in (1, 40):
        with pytest.raises(ValueError, match=f"neighbours must be 0 .all slices. or between 2 and the 39 slices, got "
                                             f"{k}"):
            NormativeAtlas.fit(images[1:], brains[1:], neighbours=k)
    with pytest.raises(ValueError, match="rounds and smooth_px must be >= 0"):
        NormativeAtlas.fit(images, brains, rounds=-1)


def _slice(vid: str, image: np.ndarray, dataset: str = "ixi_midaxial") -> SimpleNamespace:
    return SimpleNamespace(id=vid, image=image[:, :, None] if image.ndim == 2 else image, meta={"dataset": dataset},
                           slices=np.array([0]))


def test_the_atlas_scorer_reads_only_single_slices_of_its_population() -> None:
    images, brains = _population()
    atlas = NormativeAtlas.fit(images, brains)
    score = normative_scorer(atlas)
    rec, z, sq = score(_slice("IXI013+hypo-d0", images[0]), np.array([0]))
    assert np.allclose(rec[:, :, 0], atlas.mean) and np.allclose(sq, z ** 2)
    _, bounded, _ = normative_scorer(atlas, bounded=True)(_slice("IXI013+hypo-d0", images[0]), np.array([0]))
    assert np.allclose(bounded, 2 * np.tanh(z / 4)) and bounded.max() < 2
    for vid, image, dataset in (("colin27+hypo00", np.zeros((8, 8, 5), np.float32), "ixi_midaxial"),
                                ("scan", images[0], "packaged"),
                                ("small", np.zeros((4, 4), np.float32), "ixi_midaxial")):
        with pytest.raises(ValueError, match=re.escape(f"{vid}: the normative atlas reads single 8 x 8 slices")):
            score(_slice(vid, image, dataset), np.array([0]))


def test_a_weighted_mix_reads_each_map_in_its_healthy_units() -> None:
    """m = s_1 (w_1 r_1 / s_1 + w_2 r_2 / s_2) / (w_1 + w_2); the reconstruction is the chosen part's."""
    vol = _slice("v", np.zeros((2, 2), np.float32))
    r1, r2 = np.full((2, 2, 1), 0.4, np.float32), np.full((2, 2, 1), 6.0, np.float32)
    part1 = lambda v, s: (np.full_like(r1, 1.0), r1, r1 ** 2)  # noqa: E731
    part2 = lambda v, s: (np.full_like(r2, 2.0), r2, r2 ** 2)  # noqa: E731
    rec, m, _ = mixed_scorer([part1, part2], [0.2, 3.0], [1.0, 0.25], reconstruction_of=0)(vol, vol.slices)
    assert np.allclose(m, 0.2 * (0.4 / 0.2 + 0.25 * 6.0 / 3.0) / 1.25) and np.allclose(rec, 1.0)
    _, plain, _ = mixed_scorer([part1, part2], [0.2, 3.0])(vol, vol.slices)
    assert np.allclose(plain, 0.2 * (0.4 / 0.2 + 6.0 / 3.0) / 2)  # equal weights by default
    with pytest.raises(ValueError, match="weights must be >= 0 and not all 0"):
        mixed_scorer([part1, part2], [0.2, 3.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="one scale and one weight per map: 2 maps, 2 scales, 1 weights"):
        mixed_scorer([part1, part2], [0.2, 3.0], [1.0])


def test_the_normative_settings_are_validated_by_name() -> None:
    base = {"run_dir": "x", "eval_sets": ["ixi_test"]}
    cfg = validate(EvalConfig, {**base, "normative_weight": 0.25, "baselines": ["atlas"]}, "p")
    assert cfg.normative_weight == 0.25 and cfg.baselines == ("atlas",)
    with pytest.raises(ConfigError, match="normative_weight must be a finite number >= 0"):
        validate(EvalConfig, {**base, "normative_weight": -1.0}, "p")
    cfg = validate(EvalConfig, {**base, "normative_registration": 2, "normative_neighbours": 100}, "p")
    assert (cfg.normative_registration, cfg.normative_neighbours) == (2, 100)
    with pytest.raises(ConfigError, match="normative_registration must be >= 0"):
        validate(EvalConfig, {**base, "normative_registration": -1}, "p")
    with pytest.raises(ConfigError, match="normative_neighbours must be 0 .all training slices. or >= 2, got 1"):
        validate(EvalConfig, {**base, "normative_neighbours": 1}, "p")
    with pytest.raises(ConfigError, match=r"baselines \['atlsa'\] unknown"):
        validate(EvalConfig, {**base, "baselines": ["atlsa"]}, "p")


@pytest.mark.slow
@pytest.mark.registry
def test_an_evaluation_without_ixi_slices_has_no_normative_rows_and_says_so(ci_run, tmp_path):
    """The demo's normative settings layered under a report of volumes only: the atlas has nothing to read there, so
    the run scores the volumes as before, says why no normative row exists, and never fits the atlas."""
    import json
    import shutil

    from addmlib import pipeline

    from .conftest import ROOT

    folder = tmp_path / "run"
    shutil.copytree(ci_run, folder, ignore=shutil.ignore_patterns("notebooks", "maps", "figures"))
    volumes_only = {"sample_steps": 1, "eval_noise": "none", "baselines": ["floor_intensity", "atlas"],
                    "eval_sets": ["eval_a"], "write_nifti": False, "intensity_weight": 0, "fusion": "sum"}
    pipeline.run(ROOT / "params" / "ci" / "ci.yaml", folder, notebooks=["03_evaluate"], overrides=volumes_only,
                 cell_timeout=600)
    results = json.loads((folder / "eval" / "metrics.json").read_text())["results"]
    assert not any("normative" in label for label in results) and len(results) == 2  # addm and the floor
    executed = (folder / "notebooks" / "03_evaluate.ipynb").read_text()
    assert "eval_sets ['eval_a'] holds none: no normative rows" in executed


def test_a_registered_atlas_reads_each_image_once():
    """Every row that fuses or shows the atlas reads the same slices: registration and the neighbour search run once
    per image, and the remembered reading is the one computed afresh."""
    images, brains = _shifted_population(n=10, size=16)
    atlas = NormativeAtlas.fit(images[1:], brains[1:], rounds=1, neighbours=4)
    first = atlas.reference(images[0])
    assert atlas.reference(images[0].copy()) is first and len(atlas._read) == 1
    fresh = NormativeAtlas.fit(images[1:], brains[1:], rounds=1, neighbours=4)._reference(images[0])
    assert all(np.array_equal(a, b) for a, b in zip(first, fresh))
    assert np.allclose(atlas.deviation(images[0][:, :, None])[:, :, 0], np.abs(images[0] - first[0]) / first[1])

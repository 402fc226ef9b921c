"""Simplex noise: shape, moments, spatial correlation, batch independence, reproducibility."""

import numpy as np
import pytest
import torch

from addmlib.noise import SimplexNoise, make_noise


def _lag1(f):
    return float((f[..., 1:] * f[..., :-1]).mean() / (f * f).mean())


@pytest.fixture(scope="module")
def fields():
    return SimplexNoise()(torch.zeros(16, 1, 64, 64), torch.Generator().manual_seed(0))


def test_shape_dtype_and_standardisation(fields):
    assert fields.shape == (16, 1, 64, 64) and fields.dtype == torch.float32
    per_sample = fields.flatten(1)
    assert torch.allclose(per_sample.mean(1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(per_sample.std(1), torch.ones(16), atol=1e-4)


def test_spatially_correlated_unlike_white_noise(fields):
    white = torch.randn(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert _lag1(fields) > 0.5 > abs(_lag1(white)) + 0.4


def test_independent_across_the_batch():
    # many features per field (wavelength 16 px on 128 px) so that sample correlations are small when independent
    fields = SimplexNoise(frequency=16.0)(torch.zeros(16, 1, 128, 128), torch.Generator().manual_seed(0))
    corr = np.corrcoef(fields.flatten(1).numpy())
    off = corr[np.triu_indices(16, 1)]
    assert abs(off.mean()) < 0.05 and np.abs(off).mean() < 0.1 and np.abs(off).max() < 0.4


def test_same_seed_same_field_and_new_draws_differ():
    n = SimplexNoise()
    a = n(torch.zeros(2, 1, 32, 32), torch.Generator().manual_seed(3))
    b = n(torch.zeros(2, 1, 32, 32), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    c1, c2 = n(torch.zeros(2, 1, 32, 32), g), n(torch.zeros(2, 1, 32, 32), g)
    assert torch.equal(a, b)
    assert not torch.allclose(c1, c2)


def test_independent_of_diffusion_time():
    """AnoDDPM issue #10: the field must not depend on t. Our sampler has no t argument at all; the same generator
    state gives the same field whatever step is being taken."""
    d_noise = make_noise("simplex")
    a = d_noise(torch.zeros(1, 1, 32, 32), torch.Generator().manual_seed(5))
    b = d_noise(torch.zeros(1, 1, 32, 32), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_octaves_add_detail():
    one = SimplexNoise(octaves=1)(torch.zeros(8, 1, 64, 64), torch.Generator().manual_seed(0))
    six = SimplexNoise(octaves=6)(torch.zeros(8, 1, 64, 64), torch.Generator().manual_seed(0))
    assert _lag1(six) < _lag1(one)


def test_bad_arguments():
    with pytest.raises(ValueError, match="octaves"):
        SimplexNoise(octaves=0)
    with pytest.raises(ValueError, match="persistence"):
        SimplexNoise(persistence=1.5)
    with pytest.raises(ValueError, match="B, C, H, W"):
        SimplexNoise()(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="unknown noise"):
        make_noise("perlin")

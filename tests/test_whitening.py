"""Whitening: log-determinant, exact Gaussian case, scale robustness, multimodality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from numpyro_cds.diffusion import standard_normal_logdensity
from numpyro_cds.whitening import (
    AffineWhitening,
    WhiteningConfig,
    check_proper,
    fit_whitening,
    whitening_from_spec,
)


def _gaussian(loc, scale):
    def logdensity(x):
        z = (x - loc) / scale
        return (
            -0.5 * jnp.sum(z**2)
            - jnp.sum(jnp.log(scale))
            - 0.5 * x.size * jnp.log(2 * jnp.pi)
        )

    return logdensity


def test_log_det_and_exact_gaussian():
    loc, scale = jnp.array([1.0, -3.0, 1e4]), jnp.array([0.5, 2.0, 2e4])
    w = AffineWhitening(loc, scale)
    np.testing.assert_allclose(w.log_det, jnp.log(0.5 * 2.0 * 2e4), rtol=1e-6)
    whitened = w.whitened_logdensity(_gaussian(loc, scale))
    for z in (jnp.zeros(3), jnp.array([0.3, -1.2, 2.0])):
        np.testing.assert_allclose(
            whitened(z), standard_normal_logdensity(z), rtol=1e-5
        )
    np.testing.assert_allclose(
        w.whiten(w.unwhiten(jnp.ones(3))), jnp.ones(3), rtol=1e-5
    )


def test_fit_recovers_badly_scaled_gaussian():
    loc, scale = jnp.array([2.5e4, -3.0, 0.01]), jnp.array([2e4, 1e2, 1e-3])
    starts = jax.random.uniform(jax.random.key(0), (4, 3), minval=-2, maxval=2)
    w = fit_whitening(jax.random.key(1), _gaussian(loc, scale), starts)
    np.testing.assert_allclose(w.marginal_scale / scale, 1.0, atol=0.15)
    np.testing.assert_allclose((w.loc - loc) / scale, 0.0, atol=0.15)


def _correlated_gaussian(dim, seed):
    """A Gaussian with correlations near +-1 and sds from 1e-3 to 1e4."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(dim, dim))
    correlation = factor @ factor.T / dim + 1e-2 * np.eye(dim)
    sd = 10.0 ** rng.uniform(-3, 4, dim)
    covariance = correlation * np.outer(sd, sd)
    loc = rng.normal(size=dim) * sd
    precision = jnp.asarray(np.linalg.inv(covariance), jnp.float32)
    centre = jnp.asarray(loc, jnp.float32)
    return (lambda x: -0.5 * (x - centre) @ precision @ (x - centre)), loc, covariance


def test_full_rank_map_log_det_and_inverse():
    factor = jnp.array([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-3.0, 0.2, 4.0]])
    w = AffineWhitening(jnp.array([1.0, -2.0, 0.5]), factor)
    assert w.full_rank
    np.testing.assert_allclose(w.log_det, jnp.linalg.slogdet(factor)[1], rtol=1e-6)
    z = jax.random.normal(jax.random.key(0), (5, 3))
    np.testing.assert_allclose(w.whiten(w.unwhiten(z)), z, atol=1e-5)
    np.testing.assert_allclose(w.unwhiten(z[0]), w.loc + factor @ z[0], rtol=1e-6)
    np.testing.assert_allclose(
        w.marginal_scale, jnp.sqrt(jnp.diagonal(factor @ factor.T)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="square matrix"):
        AffineWhitening(jnp.zeros(3), jnp.ones((3, 2)))


def test_full_rank_fit_makes_a_correlated_badly_scaled_gaussian_isotropic():
    """Whitened covariance S^-1 Sigma S^-T must be the identity (eigenvalues ~1)."""
    logdensity, loc, covariance = _correlated_gaussian(26, seed=0)
    starts = jax.random.uniform(jax.random.key(0), (4, 26), minval=-2, maxval=2)
    w = fit_whitening(jax.random.key(1), logdensity, starts)
    assert w.full_rank
    root = np.linalg.solve(
        np.asarray(w.scale, np.float64), np.linalg.cholesky(covariance)
    )
    eigenvalues = np.linalg.eigvalsh(root @ root.T)
    assert 0.9 < eigenvalues.min() and eigenvalues.max() < 1.1
    z_loc = np.linalg.solve(np.asarray(w.scale, np.float64), loc - np.asarray(w.loc))
    assert np.abs(z_loc).max() < 0.1


def test_mean_field_above_the_full_rank_dimension():
    loc, scale = jnp.array([1.0, -3.0, 5.0]), jnp.array([0.5, 2.0, 10.0])
    config = WhiteningConfig(full_rank_max_dim=2)
    w = fit_whitening(
        jax.random.key(1), _gaussian(loc, scale), jnp.zeros((2, 3)), config
    )
    assert not w.full_rank and w.scale.shape == (3,)
    np.testing.assert_allclose(w.scale / scale, 1.0, atol=0.15)
    np.testing.assert_allclose((w.loc - loc) / scale, 0.0, atol=0.15)
    with pytest.raises(ValueError, match="full_rank_max_dim"):
        WhiteningConfig(full_rank_max_dim=-1)


def test_fit_does_not_collapse_onto_one_mode():
    """Two well-separated modes at +-6: a single-mode fit would have scale ~1."""

    def mixture(x):
        return logsumexp(
            jnp.array([-0.5 * jnp.sum((x - 6.0) ** 2), -0.5 * jnp.sum((x + 6.0) ** 2)])
        )

    starts = jnp.linspace(-2.0, 2.0, 8)[:, None]
    w = fit_whitening(jax.random.key(0), mixture, starts)
    assert abs(float(w.loc[0])) < 2.0
    assert 4.5 < float(w.marginal_scale[0]) < 7.5


def test_spec_accepts_scalars_lists_and_arrays():
    w = whitening_from_spec((0.0, 40.0), 2)
    np.testing.assert_array_equal(w.scale, [40.0, 40.0])
    w = whitening_from_spec(([1.0, 2.0], np.array([3.0, 4.0])), 2)
    np.testing.assert_array_equal(w.loc, [1.0, 2.0])
    w = whitening_from_spec([0.0, [1.0, 2.0]], 2)
    np.testing.assert_array_equal(w.scale, [1.0, 2.0])


@pytest.mark.parametrize(
    "spec, match",
    [
        ((0.0, [1.0, 2.0, 3.0]), r"shape \(2,\)"),
        ((0.0, -1.0), "positive"),
        ((0.0, jnp.nan), "finite"),
        ((0.0,), "pair"),
        ("whiten", "pair"),
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        whitening_from_spec(spec, 2)


def test_an_improper_posterior_is_refused():
    """Flat in the first coordinate: the fit's variance never settles."""

    def logdensity(x):
        return -0.5 * x[1] ** 2

    with pytest.raises(ValueError, match="looks improper.*proper prior"):
        fit_whitening(jax.random.key(0), logdensity, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="max_variance_growth"):
        WhiteningConfig(max_variance_growth=1.0)
    with pytest.raises(ValueError, match="max_scale"):
        WhiteningConfig(max_scale=0.0)


@pytest.mark.parametrize("seed", range(4))
def test_check_proper_refuses_a_ridge_for_a_given_whitening(seed):
    """Only ``x0 + x1`` is identified: the fit runs off along ``x0 - x1`` (to float
    overflow, where the last-quarter growth alone can look settled).
    """

    def logdensity(x):
        return -0.5 * (x[0] + x[1] - 1.0) ** 2

    identity = AffineWhitening(jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="looks improper.*proper prior"):
        check_proper(jax.random.key(seed), logdensity, identity, jnp.zeros((2, 2)))


def test_check_proper_accepts_a_proper_posterior_far_from_the_whitening():
    def logdensity(x):
        return -0.5 * jnp.sum(((x - 50.0) / 30.0) ** 2)

    whitening = AffineWhitening(jnp.zeros(3), jnp.full(3, 0.5))
    starts = jax.random.uniform(jax.random.key(1), (4, 3), minval=-2, maxval=2)
    check_proper(jax.random.key(0), logdensity, whitening, starts)

"""CDSInference importance weights: log evidence of conjugate models, k-hat warnings."""

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.stats import multivariate_normal

from numpyro_cds import CDSInference, UnreliableDrawsWarning

SMALL = dict(num_train_steps=300, batch_size=64, num_sde_steps=16, progress_bar=False)


def normal_mean(y):
    """y_i ~ N(mu, 1), mu ~ N(0, 1): y ~ N(0, I + 11^T)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def linear_regression(features, y):
    """w ~ N(0, I), y ~ N(X w, 0.5^2 I): y ~ N(0, 0.25 I + X X^T)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([features.shape[1]]))
    numpyro.sample("y", dist.Normal(features @ w, 0.5), obs=y)


def _normal_mean_data():
    y = 0.7 + jax.random.normal(jax.random.key(10), (20,))
    cov = jnp.eye(20) + jnp.ones((20, 20))
    return (y,), float(multivariate_normal.logpdf(y, jnp.zeros(20), cov))


def _regression_data():
    features = jax.random.normal(jax.random.key(11), (30, 3))
    y = features @ jnp.array([1.0, -0.5, 0.3]) + 0.5 * jax.random.normal(
        jax.random.key(12), (30,)
    )
    cov = 0.25 * jnp.eye(30) + features @ features.T
    return (features, y), float(multivariate_normal.logpdf(y, jnp.zeros(30), cov))


@pytest.fixture(scope="module")
def trained_regression():
    """The linear regression, trained once for the evidence tests."""
    args, log_z = _regression_data()
    cds = CDSInference(linear_regression, num_samples=4000, **SMALL)
    cds.run(jax.random.key(0), *args)
    return cds, args, log_z


def _check_evidence(cds, log_z, allowance=1e-3):
    """log Z within 3 se, up to the prior truncation's known bias.

    The draws start from a box that leaves out ``PRIOR_MASS_LEFT_OUT`` of the prior,
    so the estimate lies between ``log Z + log(1 - that mass)`` (a sampler matching
    the target on the box's image) and ``log Z`` on average.
    """
    from numpyro_cds.consistency import PRIOR_MASS_LEFT_OUT

    estimate, standard_error = cds.log_evidence()
    assert isinstance(estimate, float) and isinstance(standard_error, float)
    truncation = float(np.log1p(-PRIOR_MASS_LEFT_OUT))
    assert estimate > log_z + truncation - 3 * standard_error - allowance
    assert estimate < log_z + 3 * standard_error + allowance
    assert standard_error < 0.5
    assert cds.weights_summary.elbo <= estimate + 3 * standard_error


def test_log_evidence_of_a_normal_mean():
    args, log_z = _normal_mean_data()
    cds = CDSInference(normal_mean, num_samples=4000, **SMALL)
    cds.run(jax.random.key(0), *args)
    _check_evidence(cds, log_z)


def test_log_evidence_of_a_linear_regression(trained_regression):
    cds, _, log_z = trained_regression
    assert cds.log_det_method == "exact"
    _check_evidence(cds, log_z)


def _sharp_posterior(y):
    """Prior N(0, 1), 50 observations of sd 1: posterior N(mean(y) 50/51, 1/51)."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(x, 1.0), obs=y)


SHARP_Y = 3.0 + jax.random.normal(jax.random.key(13), (50,))


def test_khat_warning_fires_on_an_under_trained_sampler():
    cds = CDSInference(
        _sharp_posterior,
        num_samples=2000,
        whitening=None,
        **{**SMALL, "num_train_steps": 2},
    )
    with pytest.warns(UnreliableDrawsWarning, match="k-hat"):
        cds.run(jax.random.key(1), SHARP_Y)
    assert cds.weights_summary.pareto_k > 0.7


def test_khat_warning_is_quiet_on_a_trained_sampler():
    cds = CDSInference(_sharp_posterior, num_samples=2000, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableDrawsWarning)
        cds.run(jax.random.key(2), SHARP_Y)
    # Its weights are all but equal (k-hat, the shape of their tail, is then moot).
    assert cds.weights_summary.reliable and cds.weights_summary.ess > 0.9


def test_log_weight_is_an_extra_field_and_arviz_sample_stat(trained_eight_schools):
    cds = trained_eight_schools
    extra = cds.get_extra_fields(group_by_chain=True)
    assert extra["log_weight"].shape == (cds.num_chains, cds.num_samples)
    idata = az.from_numpyro(cds)
    assert "log_weight" in idata.sample_stats


@pytest.fixture(scope="module")
def under_trained():
    """Two training iterations, whitening around 2 instead of the posterior's 2.9."""
    cds = CDSInference(
        _sharp_posterior,
        num_samples=4000,
        whitening=(2.0, 1.0),
        correction=None,
        **{**SMALL, "num_train_steps": 2},
    )
    cds.run(jax.random.key(3), SHARP_Y)
    return cds


EXACT_MEAN, EXACT_SD = float(jnp.sum(SHARP_Y) / 51.0), float(1 / np.sqrt(51.0))


def test_resampling_corrects_an_under_trained_sampler(under_trained):
    plain_error = abs(float(np.mean(under_trained.get_samples()["x"])) - EXACT_MEAN)
    under_trained.correction = "resample"
    under_trained.run(jax.random.key(3), SHARP_Y)  # draws again, no retraining
    resampled = under_trained.get_samples()["x"]
    assert abs(float(np.mean(resampled)) - EXACT_MEAN) < 0.05 < plain_error


def test_bad_correction_is_refused():
    with pytest.raises(ValueError, match="correction"):
        CDSInference(normal_mean, correction="exact")
    with pytest.raises(ValueError, match="correction_pool"):
        CDSInference(normal_mean, correction="resample", correction_pool=0)


def test_mcmc_correction_makes_an_under_trained_sampler_exact(under_trained):
    cds = under_trained
    cds.correction, cds.correction_steps = "mcmc", 200
    cds.run(jax.random.key(4), SHARP_Y)
    # The weights come from the whole resampling pool.
    assert cds.weights_summary.num_draws == cds.correction_pool * 4000
    x = np.asarray(cds.get_samples()["x"])
    assert np.mean(x) == pytest.approx(EXACT_MEAN, abs=0.01)
    assert np.std(x) == pytest.approx(EXACT_SD, rel=0.05)
    info = cds.correction_info
    assert 0.3 < info["acceptance_rate"] < 0.9
    assert info["gradient_evaluations"] == 4000 * (cds.correction_steps + 1)


def test_sample_returns_log_weights_on_request(trained_eight_schools):
    cds = trained_eight_schools
    samples, log_weights = cds.sample(jax.random.key(5), 100, 2, log_weights=True)
    assert samples["mu"].shape == (100,) and log_weights.shape == (100,)
    again = cds.sample(jax.random.key(5), 100, 2)
    # The weighted draw runs each step inside a Jacobian computation, which XLA may
    # round differently in float32: the same draws up to that rounding.
    np.testing.assert_allclose(again["mu"], samples["mu"], rtol=1e-5, atol=1e-5)


def test_stochastic_log_dets_above_the_threshold(monkeypatch, trained_regression):
    """With the exact threshold lowered, the 5-D regression gets stochastic weights.

    Unbiased log-determinants make log w unbiased, not w: the noise biases log mean w
    up by about half its variance (small here), hence the 0.05 allowance.
    """
    cds, args, log_z = trained_regression
    monkeypatch.setattr("numpyro_cds.trained.EXACT_LOG_DET_MAX_DIM", 2)
    cds.run(jax.random.key(6), *args)  # draws again, no retraining
    assert cds.log_det_method == "stochastic"
    _check_evidence(cds, log_z, allowance=0.05)


def _eight_schools_log_evidence_by_quadrature():
    """log Z of eight schools: theta integrated out in closed form, then a grid over
    (mu, log tau) (trapezoid rule; 2001 x 2001 points)."""
    from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y
    from scipy.special import logsumexp
    from scipy.stats import cauchy, norm

    y, sigma = np.asarray(EIGHT_SCHOOLS_Y), np.asarray(EIGHT_SCHOOLS_SIGMA)
    mu = np.linspace(-40.0, 50.0, 2001)[:, None]
    log_tau = np.linspace(-15.0, 9.0, 2001)[None, :]
    tau = np.exp(log_tau)
    scale = np.sqrt(sigma[:, None, None] ** 2 + tau[None] ** 2)
    log_likelihood = norm.logpdf(y[:, None, None], mu[None], scale).sum(0)
    # HalfCauchy(5) density of tau times the Jacobian of log tau.
    log_prior = norm.logpdf(mu, 0.0, 5.0) + np.log(2.0) + cauchy.logpdf(tau, 0, 5.0)
    integrand = log_likelihood + log_prior + log_tau
    cell = (mu[1, 0] - mu[0, 0]) * (log_tau[0, 1] - log_tau[0, 0])
    weights = np.ones_like(integrand)
    weights[[0, -1], :] *= 0.5
    weights[:, [0, -1]] *= 0.5
    return float(logsumexp(integrand, b=weights) + np.log(cell))


def test_eight_schools_log_evidence_matches_quadrature(trained_eight_schools):
    """The README model at a tiny budget: log Z within 3 standard errors."""
    exact = _eight_schools_log_evidence_by_quadrature()
    assert exact == pytest.approx(-31.3113, abs=1e-3)  # method.md Part C, item 5
    estimate, standard_error = trained_eight_schools.log_evidence()
    assert 0 < standard_error < 0.2
    assert abs(estimate - exact) < 3 * standard_error

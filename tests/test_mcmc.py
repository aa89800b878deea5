"""MALA moves: the target stays invariant; chains started off target converge."""

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_cds.mcmc import mala_move

SD = jnp.array([1.0, 2.0])
COVARIANCE = jnp.array([[1.0, 0.8], [0.8, 1.0]]) * SD[:, None] * SD[None, :]
PRECISION = jnp.linalg.inv(COVARIANCE)


def _logdensity(x):
    return -0.5 * x @ PRECISION @ x


def test_exact_draws_stay_exact():
    start = jax.random.multivariate_normal(
        jax.random.key(0), jnp.zeros(2), COVARIANCE, (20000,)
    )
    moved, info = mala_move(jax.random.key(1), _logdensity, start, 20, 20)
    np.testing.assert_allclose(np.cov(moved.T), COVARIANCE, atol=0.1)
    assert 0.45 < float(info.acceptance_rate) < 0.7
    # The chains moved: a position changed for most of them.
    assert np.mean(np.any(moved != start, axis=1)) > 0.9


def test_chains_started_in_the_wrong_place_converge():
    start = 3.0 + 0.1 * jax.random.normal(jax.random.key(2), (4000, 2))
    moved, _ = mala_move(jax.random.key(3), _logdensity, start, 100, 200)
    np.testing.assert_allclose(np.mean(moved, 0), 0.0, atol=0.1)
    np.testing.assert_allclose(np.cov(moved.T), COVARIANCE, atol=0.2)


def test_non_finite_proposals_are_rejected():
    def half_line(x):
        return jnp.where(x[0] > 0, -0.5 * x @ x, -jnp.inf)

    start = jnp.abs(jax.random.normal(jax.random.key(4), (2000, 2))) + 0.1
    moved, _ = mala_move(jax.random.key(5), half_line, start, 20, 20)
    assert bool(jnp.all(moved[:, 0] > 0))


def test_funnel_draws_stay_exact_and_neck_chains_take_smaller_steps():
    """Neal's funnel: v ~ N(0, 3^2), x | v ~ N(0, e^v); exact draws must stay exact."""

    def funnel(z):
        v, x = z
        return -0.5 * (v / 3.0) ** 2 - 0.5 * x**2 * jnp.exp(-v) - 0.5 * v

    v_key, x_key = jax.random.split(jax.random.key(6))
    v = 3.0 * jax.random.normal(v_key, (4000,))
    start = jnp.stack([v, jnp.exp(v / 2) * jax.random.normal(x_key, (4000,))], 1)
    moved, info = mala_move(jax.random.key(7), funnel, start, 50, 50)
    quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)
    np.testing.assert_allclose(
        np.quantile(moved[:, 0], quantiles), np.quantile(v, quantiles), atol=0.3
    )
    # Each chain adapted its own step size: the narrow neck (small v) gets small ones.
    correlation = np.corrcoef(moved[:, 0], np.log(info.step_size))[0, 1]
    assert correlation > 0.5

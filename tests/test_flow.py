"""The k-step flow's log density against linear maps with known log-determinants.

At initialisation the control network's output is zero and its gate is one, so with a
Gaussian target of precision ``A`` the probability-flow drift is linear,
``b(x, t) = beta(t) t (I - A) x / 2``, and each Euler step multiplies by
``I + dt beta(t) t (I - A) / 2``: the flow's log-determinant and density are known.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

from numpyro_cds.flow import (
    exact_log_abs_det,
    folded_steps,
    run_flow,
    stochastic_log_abs_det,
    truncated_normal_logdensity,
)
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule

DIM = 3
BOUND = 3.89


def _precision():
    basis = jax.random.normal(jax.random.key(0), (DIM, DIM))
    return basis @ basis.T / DIM + 0.5 * jnp.eye(DIM)


def _linear_flow_matrix(precision, num_steps):
    schedule = LinearSchedule()
    dt = 1.0 / num_steps
    matrix = jnp.eye(DIM)
    for j in range(num_steps):
        t = j * dt
        step = jnp.eye(DIM) + dt * schedule.beta(t) * t * (jnp.eye(DIM) - precision) / 2
        matrix = step @ matrix
    return matrix


@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_flow_log_density_of_a_linear_map(num_steps):
    precision = _precision()
    network = ControlNetwork(DIM, width=8, depth=2, key=jax.random.key(1))
    x0 = jax.random.truncated_normal(jax.random.key(2), -BOUND, BOUND, (50, DIM))
    draws = run_flow(
        network,
        LinearSchedule(),
        lambda x: -precision @ x,
        x0,
        num_steps,
        jnp.asarray(1e6),
        prior_bound=BOUND,
    )
    matrix = _linear_flow_matrix(precision, num_steps)
    np.testing.assert_allclose(draws.x, x0 @ matrix.T, rtol=1e-4, atol=1e-5)
    # q = truncated N(0, I) pushed through x -> M x: a Gaussian N(0, M M^T) restricted
    # to the image of the box, renormalised by the box's mass.
    truncation = truncated_normal_logdensity(x0[0], BOUND) - multivariate_normal.logpdf(
        x0[0], jnp.zeros(DIM), jnp.eye(DIM)
    )
    expected = (
        multivariate_normal.logpdf(draws.x, jnp.zeros(DIM), matrix @ matrix.T)
        + truncation
    )
    np.testing.assert_allclose(draws.log_density, expected, rtol=1e-4, atol=1e-4)
    assert draws.step_signs.shape == (num_steps, 50)
    assert folded_steps(draws.step_signs) == []


def test_a_folding_step_is_reported():
    """Score -10 x^3: the second of two steps is x + 0.63 (x - 10 x^3), not monotone."""
    network = ControlNetwork(1, width=8, depth=2, key=jax.random.key(1))
    x0 = jax.random.normal(jax.random.key(3), (100, 1))
    draws = run_flow(
        network,
        LinearSchedule(),
        lambda x: -10.0 * x**3,
        x0,
        2,
        jnp.asarray(1e6),
        prior_bound=BOUND,
    )
    assert folded_steps(draws.step_signs) == [2]


def test_flow_without_density_matches_with_density():
    precision = _precision()
    network = ControlNetwork(DIM, width=8, depth=2, key=jax.random.key(1))
    x0 = jax.random.normal(jax.random.key(4), (7, DIM))
    args = (network, LinearSchedule(), lambda x: -precision @ x, x0, 4, 1e6)
    plain = run_flow(*args)
    assert plain.log_density is None
    np.testing.assert_allclose(plain.x, run_flow(*args, prior_bound=BOUND).x)


def test_stochastic_log_det_is_unbiased():
    """Mean of 8000 estimates within 4 standard errors of the exact log |det J|."""
    matrix = jax.random.normal(jax.random.key(5), (10, 10)) / np.sqrt(10)

    def step(x):
        return 1.2 * x + 0.3 * jnp.tanh(matrix @ x)

    x = jax.random.normal(jax.random.key(6), (10,))
    exact, _ = exact_log_abs_det(step, x)
    keys = jax.random.split(jax.random.key(7), 8000)
    estimates = jax.jit(jax.vmap(lambda k: stochastic_log_abs_det(k, step, x)[0]))(keys)
    error = float(jnp.mean(estimates) - exact)
    assert abs(error) < 4 * float(jnp.std(estimates)) / np.sqrt(len(keys))
    assert float(jnp.std(estimates)) > 0.0


def test_flow_with_stochastic_log_dets_averages_to_the_exact_density():
    precision = _precision()
    network = ControlNetwork(DIM, width=8, depth=2, key=jax.random.key(1))
    x0 = jnp.tile(jax.random.normal(jax.random.key(8), (1, DIM)), (2000, 1))
    args = (network, LinearSchedule(), lambda x: -precision @ x, x0, 4, 1e6, BOUND)
    exact = run_flow(*args).log_density[0]
    noisy = run_flow(*args, log_det="stochastic", rng_key=jax.random.key(9))
    spread = float(jnp.std(noisy.log_density)) / np.sqrt(2000)
    assert abs(float(jnp.mean(noisy.log_density)) - float(exact)) < 4 * spread

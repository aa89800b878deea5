"""Known answers for the VP schedule and the two discretised steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_cds.sde import (
    LinearSchedule,
    euler_maruyama_step,
    probability_flow_step,
)


def test_linear_schedule_endpoints_and_monotone():
    schedule = LinearSchedule()
    t = jnp.linspace(0.0, 1.0, 65)
    beta = schedule.beta(t)
    assert float(beta[0]) == pytest.approx(10.0)
    assert float(beta[-1]) == pytest.approx(0.1, rel=1e-5)
    assert bool(jnp.all(jnp.diff(beta) < 0))
    np.testing.assert_allclose(schedule.sigma(t) ** 2, beta, rtol=1e-6)


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="beta_min"):
        LinearSchedule(beta_min=2.0, beta_max=1.0)


def test_prior_control_keeps_prior_marginal():
    """With u = -sigma x the SDE is an OU process whose stationary law is N(0, I)."""
    schedule = LinearSchedule()
    num_steps, n = 256, 20000
    dt = 1.0 / num_steps
    key = jax.random.key(0)
    x = jax.random.normal(key, (n, 2))

    def step(x, inputs):
        t, k = inputs
        noise = jnp.sqrt(dt) * jax.random.normal(k, x.shape)
        u = -schedule.sigma(t) * x
        return euler_maruyama_step(schedule, x, t, dt, u, noise), None

    keys = jax.random.split(jax.random.key(1), num_steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(num_steps) * dt, keys))
    # Euler-Maruyama bias of the variance is O(beta dt) ~ 1e-2; MC error ~ 1e-2.
    np.testing.assert_allclose(jnp.var(x, 0), 1.0, atol=0.05)
    np.testing.assert_allclose(jnp.mean(x, 0), 0.0, atol=0.03)


def test_probability_flow_is_identity_under_prior_control():
    schedule = LinearSchedule()
    x = jnp.array([0.3, -2.0, 1.5])
    for t, dt in [(0.0, 1.0), (0.25, 0.5), (0.9, 0.1)]:
        u = -schedule.sigma(t) * x
        np.testing.assert_allclose(
            probability_flow_step(schedule, x, t, dt, u), x, atol=1e-6
        )


def test_probability_flow_step_of_linear_drift():
    """Euler step of dx/dt = beta(t) x / 2 with zero control: x (1 + dt beta / 2)."""
    schedule = LinearSchedule()
    x = jnp.array([1.0, -2.0])
    out = probability_flow_step(schedule, x, 0.0, 0.1, jnp.zeros(2))
    np.testing.assert_allclose(out, x * (1 + 0.1 * 10.0 / 2), rtol=1e-6)

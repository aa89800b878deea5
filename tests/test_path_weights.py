"""Euler-Maruyama path weights: validity, the discrete-time floor, CDSInference wiring.

With an untrained control network the control is the Langevin-preconditioned
interpolated score; for the target ``N(0, I)`` that is ``u = -sigma x``, the
continuous-time optimal control.  The path weight is then a quadratic form in the
Gaussian path, whose moments are known in closed form.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_cds import CDSInference
from numpyro_cds.importance import log_evidence
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.path_weights import dis_constant_offset, run_sde
from numpyro_cds.sde import LinearSchedule

BOUND = 6.0
CLIP = 1e6
KEY = jax.random.key(0)


@eqx.filter_jit
def _draw(network, logdensity_fn, dim, num_steps, num_samples, key):
    """Final states and path log weights ``log rho(x_k) - log_density`` of SDE draws."""
    prior_key, noise_key = jax.random.split(key)
    x0 = jax.random.truncated_normal(prior_key, -BOUND, BOUND, (num_samples, dim))
    draws = run_sde(
        noise_key,
        network,
        LinearSchedule(),
        jax.grad(logdensity_fn),
        x0,
        num_steps,
        CLIP,
        BOUND,
    )
    return draws.x, jax.vmap(logdensity_fn)(draws.x) - draws.log_density


def _standard_normal(x):
    return -0.5 * jnp.sum(x**2)


@functools.cache
def _perturbed_network(dim, scale=0.1):
    """An untrained network with every parameter perturbed: an arbitrary control."""
    network = ControlNetwork(dim, width=8, depth=2, key=jax.random.key(1))
    params, static = eqx.partition(network, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


PRECISION = jnp.array([[1.5, 0.3], [0.3, 0.8]])
MEAN = jnp.array([0.5, -0.3])
LOG_Z = 0.7 + np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(PRECISION)[1]


def _correlated_gaussian(x):
    return -0.5 * (x - MEAN) @ PRECISION @ (x - MEAN) + 0.7


@pytest.mark.parametrize("num_steps", [4, 16])
def test_path_weights_are_valid_for_an_arbitrary_control(num_steps):
    """log mean w is within 3 standard errors of log Z of a correlated Gaussian."""
    _, log_weights = _draw(
        _perturbed_network(2), _correlated_gaussian, 2, num_steps, 20_000, KEY
    )
    estimate, standard_error = log_evidence(log_weights)
    assert abs(estimate - LOG_Z) < 3 * standard_error
    # DIS's evaluation constant would be rejected: the test has the power to see it.
    offset = dis_constant_offset(LinearSchedule(), 2, num_steps)
    assert abs(estimate + offset - LOG_Z) > 3 * standard_error


def _optimal_control_moments(num_steps):
    """Exact mean and variance of log w per dimension; target N(0, 1), u = -sigma x.

    With ``h_n = beta_n dt``, ``x_{n+1} = (1 - h_n / 2) x_n + sqrt(h_n) xi_n``, so the
    path is linear in ``z = (x_0, xi_0, ..., xi_{k-1}) ~ N(0, I)`` (the truncation at
    6 is negligible) and ``log w = z^T M z + c``: mean ``tr M + c``, variance
    ``2 tr(M^2)``, and ``E[w] = exp(c) det(I - 2 M)^(-1/2)``.
    """
    dt = 1.0 / num_steps
    h = np.asarray(LinearSchedule().beta(np.arange(num_steps) * dt), np.float64) * dt
    size = num_steps + 1
    paths = np.zeros((size, size))  # row n: x_n as a linear function of z
    paths[0, 0] = 1.0
    for n in range(num_steps):
        paths[n + 1] = (1 - 0.5 * h[n]) * paths[n]
        paths[n + 1, n + 1] += np.sqrt(h[n])
    form = np.zeros((size, size))
    form[0, 0] = 0.5  # - log q_0(x_0)
    form -= 0.5 * np.outer(paths[-1], paths[-1])  # log rho(x_k)
    for n in range(num_steps):
        noise = np.eye(size)[n + 1]
        cross = np.outer(paths[n], noise)
        # -|u|^2 dt / 2 - u dW with u = -sqrt(beta) x, dW = sqrt(dt) xi
        form += -0.5 * h[n] * np.outer(paths[n], paths[n])
        form += 0.5 * np.sqrt(h[n]) * (cross + cross.T)
    constant = np.sum(np.log1p(0.5 * h))
    log_mean_weight = constant - 0.5 * np.linalg.slogdet(np.eye(size) - 2 * form)[1]
    return np.trace(form) + constant, 2 * np.trace(form @ form), log_mean_weight


def test_prior_target_at_the_optimal_control_has_the_discrete_time_floor():
    """Target = prior: E[w] = 1 exactly, Var(log w) = D (h^2 / 2 summed + O(dt^2)).

    Zero variance holds only as k -> infinity; at k = 256, D = 2 the variance is
    0.135 and ELBO, variance and log Z match the closed form.
    """
    dim, num_steps = 2, 256
    mean, variance, log_mean_weight = _optimal_control_moments(num_steps)
    assert abs(log_mean_weight) < 1e-10  # the weight is exact, not only as dt -> 0
    network = ControlNetwork(dim, width=8, depth=2, key=jax.random.key(1))
    _, log_weights = _draw(network, _standard_normal, dim, num_steps, 4000, KEY)
    log_weights = np.asarray(log_weights) - dim * 0.5 * np.log(2 * np.pi)  # Z = 1
    standard_error = np.sqrt(dim * variance / log_weights.size)
    assert abs(np.mean(log_weights) - dim * mean) < 3 * standard_error
    assert np.var(log_weights) == pytest.approx(dim * variance, rel=0.1)
    assert dim * variance < 0.15
    estimate, estimate_error = log_evidence(log_weights)
    assert abs(estimate) < 3 * estimate_error


def test_sde_draws_are_deterministic_given_the_key():
    """Same key, same draws and weights (the compiled draw of the validity test)."""
    first, again, other = (
        _draw(_perturbed_network(2), _correlated_gaussian, 2, 16, 20_000, key)
        for key in (KEY, KEY, jax.random.key(1))
    )
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.allclose(first[0], other[0])


def _near_prior():
    """Normalised (log Z = 0) and close to the prior, so one iteration suffices."""
    numpyro.sample("x", dist.Normal(0.3, 1.2).expand([2]))


@pytest.fixture(scope="module")
def sde_inference():
    cds = CDSInference(
        _near_prior,
        num_samples=2000,
        method="scds",
        num_steps=16,
        sampling="sde",
        correction=None,
        num_train_steps=1,
        chunk_size=1,
        batch_size=16,
        num_sde_steps=16,
        whitening=(0.3, 1.2),  # the exact whitening: the untrained control is optimal
        progress_bar=False,
    )
    cds.run(jax.random.key(0))
    return cds


def test_cds_inference_with_sde_sampling(sde_inference, capsys):
    cds = sde_inference
    log_weight = cds.get_extra_fields()["log_weight"]
    assert log_weight.shape == (2000,) and bool(jnp.all(jnp.isfinite(log_weight)))
    estimate, standard_error = cds.log_evidence()
    assert abs(estimate) < 3 * standard_error
    cds.print_summary()
    out = capsys.readouterr().out
    assert "Euler-Maruyama path weights" in out and "log-determinants" not in out


def test_cds_inference_sample_with_both_samplings(sde_inference):
    """Same key, same draws, with or without weights; the flow draws differ."""
    cds = sde_inference
    key = jax.random.key(5)
    samples, log_weights = cds.sample(key, 2000, 16, log_weights=True)
    assert samples["x"].shape == (2000, 2) and log_weights.shape == (2000,)
    np.testing.assert_array_equal(cds.sample(key, 2000, 16)["x"], samples["x"])
    again, again_weights = cds.sample(key, 2000, 16, log_weights=True)
    np.testing.assert_array_equal(again_weights, log_weights)
    cds.sampling = "flow"
    try:
        flow, flow_weights = cds.sample(key, 2000, 1, log_weights=True)
    finally:
        cds.sampling = "sde"
    assert flow_weights.shape == (2000,)
    assert not np.allclose(flow["x"], samples["x"])


def test_bad_sampling_is_refused():
    with pytest.raises(ValueError, match="sampling must be 'flow'.*or 'sde'"):
        CDSInference(_near_prior, sampling="ode")

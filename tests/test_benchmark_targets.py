"""Benchmark targets: known normalising constants, exact samplers, model densities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from benchmarks.targets import SUITES, make_target, one_dimensional_sampler
from numpyro_cds.target import target_from_model


def test_one_dimensional_sampler_of_a_gaussian():
    sample, log_normaliser = one_dimensional_sampler(lambda x: -0.5 * x**2, -10, 10)
    assert log_normaliser == pytest.approx(0.5 * np.log(2 * np.pi), abs=1e-6)
    draws = sample(jax.random.key(0), (200_000,))
    assert np.mean(draws) == pytest.approx(0.0, abs=0.01)
    assert np.var(draws) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    "name, log_z",
    [
        # Published values (method.md Part B §7): quadrature of the reference code.
        ("mw54", -0.541),
        ("mw52", 42.82),
        ("many_well_32", 164.70),
        ("gmm_grid", 0.0),
        ("funnel", 0.0),
    ],
)
def test_log_z_matches_the_published_value(name, log_z):
    assert make_target(name).log_z == pytest.approx(log_z, abs=0.01)


def _unnormalised_logdensity(target):
    return target_from_model(jax.random.key(0), target.model, target.model_args)


def test_gmm_grid_log_z_by_importance_sampling():
    target = make_target("gmm_grid")
    model = _unnormalised_logdensity(target)
    scale = 6.0
    proposal = scale * jax.random.normal(jax.random.key(1), (400_000, 2))
    log_q = jnp.sum(
        -0.5 * (proposal / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi),
        axis=1,
    )
    log_w = jax.vmap(model.logdensity_fn)(proposal) - log_q
    estimate = jax.scipy.special.logsumexp(log_w) - jnp.log(log_w.size)
    assert float(estimate) == pytest.approx(target.log_z, abs=0.02)


@pytest.mark.parametrize(
    "name, well, num_wells, num_gaussian",
    [
        ("mw54", lambda x: -((x**2 - 4) ** 2), 5, 0),
        ("mw52", lambda x: -((x**2 - 2) ** 2), 5, 45),
        ("many_well_32", lambda x: -(x**4) + 6 * x**2 + 0.5 * x, 16, 16),
    ],
)
def test_many_well_log_z_by_adaptive_quadrature(name, well, num_wells, num_gaussian):
    """log Z from SciPy's adaptive quadrature of one well, and the model's density."""
    target = make_target(name)
    one_well = np.log(quad(lambda x: np.exp(well(x)), -np.inf, np.inf)[0])
    expected = num_wells * one_well + 0.5 * num_gaussian * np.log(2 * np.pi)
    assert target.log_z == pytest.approx(expected, abs=1e-4)
    model = _unnormalised_logdensity(target)
    x = np.asarray(target.exact_sampler(jax.random.key(2), 3))
    if name == "many_well_32":
        wells, gaussian = x[:, 0::2], x[:, 1::2]
    else:
        wells, gaussian = x[:, :num_wells], x[:, num_wells:]
    by_hand = np.sum(well(wells), 1) - 0.5 * np.sum(gaussian**2, 1)
    by_model = np.asarray(jax.vmap(model.logdensity_fn)(jnp.asarray(x)))
    np.testing.assert_allclose(by_model, by_hand, rtol=1e-4, atol=1e-3)


def test_funnel_exact_draws_have_the_right_first_coordinate():
    draws = make_target("funnel").exact_sampler(jax.random.key(3), 50_000)
    assert np.std(draws[:, 0]) == pytest.approx(3.0, rel=0.02)
    standardised = draws[:, 1:] * np.exp(-0.5 * draws[:, :1])
    assert np.median(np.abs(standardised)) == pytest.approx(0.6745, rel=0.02)


def test_mw54_exact_draws_fill_all_32_modes_evenly():
    draws = make_target("mw54").exact_sampler(jax.random.key(4), 64_000)
    signs = (draws > 0).astype(int) @ (2 ** np.arange(5))
    counts = np.bincount(signs, minlength=32)
    assert counts.min() > 0.8 * 2000 and counts.max() < 1.2 * 2000


def test_all_named_targets_build_and_have_finite_densities():
    for name in SUITES["paper"] + SUITES["extended"]:
        if name == "lgcp":
            continue  # 1600-D; built in its own test
        target = make_target(name)
        model = _unnormalised_logdensity(target)
        assert model.dim == target.dim
        assert np.isfinite(float(model.logdensity_fn(model.init_positions[0])))


def test_lgcp_builds_with_1600_dimensions():
    target = make_target("lgcp")
    assert target.dim == 1600
    assert target.model_args[1].shape == (1600,)


def test_unknown_target_names_the_known_ones():
    with pytest.raises(ValueError, match="gmm_grid"):
        make_target("nope")

"""Importance estimates against closed forms; PSIS k-hat; resampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_cds.flow import run_flow
from numpyro_cds.importance import (
    importance_ess,
    log_evidence,
    pareto_khat,
    psis_resample,
    summarize_weights,
)
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule

DIM, SCALE, BOUND = 3, 1.5, 6.0
# rho(x) = exp(-|x|^2 / (2 s^2)): Z = (2 pi s^2)^(D / 2).
LOG_Z = 0.5 * DIM * np.log(2 * np.pi * SCALE**2)


@jax.jit
@jax.vmap
def _flow_log_weights(seed, num_samples=2000, num_steps=4):
    """Log weights of the 4-step flow of an untrained network on a Gaussian target."""
    network = ControlNetwork(DIM, width=8, depth=2, key=jax.random.key(0))
    x0 = jax.random.truncated_normal(
        jax.random.key(seed), -BOUND, BOUND, (num_samples, DIM)
    )
    draws = run_flow(
        network,
        LinearSchedule(),
        lambda x: -x / SCALE**2,
        x0,
        num_steps,
        jnp.asarray(1e6),
        prior_bound=BOUND,
    )
    log_rho = -0.5 * jnp.sum(draws.x**2, axis=1) / SCALE**2
    return log_rho - draws.log_density


def test_log_evidence_of_a_gaussian_is_calibrated_over_50_seeds():
    log_weights = np.asarray(_flow_log_weights(jnp.arange(50)))
    results = np.array([log_evidence(lw) for lw in log_weights])
    z = (results[:, 0] - LOG_Z) / results[:, 1]
    assert np.all(np.abs(z) < 3.0)
    assert np.mean(np.abs(z) < 2.0) >= 0.9
    assert 0.0 < np.mean(results[:, 1]) < 0.05


def test_elbo_is_below_log_z_and_ess_below_one():
    summary = summarize_weights(np.asarray(_flow_log_weights(jnp.arange(1)))[0])
    assert summary.elbo < LOG_Z < summary.log_evidence + 3 * summary.standard_error
    assert 0.3 < summary.ess < 1.0
    assert summary.pareto_k < 0.7


def test_exact_proposal_has_zero_error_and_full_ess():
    estimate, standard_error = log_evidence(np.full(100, 2.5))
    assert estimate == pytest.approx(2.5) and standard_error == 0.0
    assert importance_ess(np.full(100, 2.5)) == pytest.approx(1.0)


def test_log_evidence_of_known_weights():
    # Weights 1 and 3: mean 2, sd (ddof 1) sqrt(2), relative se sqrt(2) / (sqrt(2) 2).
    estimate, standard_error = log_evidence(np.log([1.0, 3.0]))
    assert estimate == pytest.approx(np.log(2.0))
    assert standard_error == pytest.approx(0.5)


def test_zero_weights_are_valid_and_nan_weights_are_errors():
    log_weights = np.zeros(10)
    log_weights[:5] = -np.inf
    assert log_evidence(log_weights)[0] == pytest.approx(np.log(0.5))
    with pytest.raises(ValueError, match="NaN"):
        log_evidence(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="zero"):
        log_evidence(np.full(3, -np.inf))


def test_pareto_khat_separates_light_and_heavy_tails():
    rng = np.random.default_rng(0)
    light = rng.normal(size=4000) * 0.3
    # Log of Pareto(alpha = 1) variables: weights with infinite mean, k = 1.
    heavy = -np.log(rng.uniform(size=4000))
    assert pareto_khat(light) < 0.5
    assert pareto_khat(heavy) > 0.7


def test_a_heavy_tail_of_all_but_equal_weights_is_not_a_warning():
    """k-hat measures the tail's shape, whatever its size: weights within 1 % of
    each other with a heavy-shaped tail (a sampler almost exactly the target, and
    float rounding) have k-hat > 0.7, but nothing to warn about."""
    rng = np.random.default_rng(2)
    pareto = rng.uniform(size=4000) ** (-1 / 0.9)  # Pareto(alpha = 0.9): k = 1.1
    all_but_equal = summarize_weights(np.log1p(1e-6 * pareto))
    assert all_but_equal.pareto_k > 0.7 and all_but_equal.max_weight_ratio < 1.05
    assert all_but_equal.reliable
    heavy = summarize_weights(np.log(pareto))
    assert heavy.pareto_k > 0.7 and heavy.max_weight_ratio > 10 and not heavy.reliable


def test_psis_resampling_reproduces_weighted_means():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=20000)
    # Weights N(1, 1) / N(0, 1): resampled draws follow N(1, 1).
    log_weights = draws - 0.5
    index = psis_resample(jax.random.key(0), log_weights, 20000)
    resampled = draws[np.asarray(index)]
    assert np.mean(resampled) == pytest.approx(1.0, abs=0.05)
    assert np.std(resampled) == pytest.approx(1.0, abs=0.05)


def test_auto_correction_moves_only_when_the_weights_ask_for_it():
    from numpyro_cds.correction import auto_correction

    rng = np.random.default_rng(0)
    healthy = summarize_weights(0.1 * rng.normal(size=4000))
    assert auto_correction(healthy, 1000)[0] == "resample"
    # Too few effective draws for the draws asked for: ESS about 0.14 of 4000.
    wide = summarize_weights(1.4 * rng.normal(size=4000))
    choice, why = auto_correction(wide, 1000)
    assert choice == "mcmc" and ("ESS" in why or "k-hat" in why)
    heavy = summarize_weights(rng.standard_cauchy(4000))
    assert heavy.pareto_k > 0.7
    assert auto_correction(heavy, 10)[0] == "mcmc"

"""The stochastic-volatility benchmark: data, model dimension, reference loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.stochastic_volatility import (
    SV_NUM_DAYS,
    reference_draws,
    simulate_returns,
    stochastic_volatility,
)
from numpyro_cds.target import target_from_model


def test_simulated_returns_are_deterministic():
    y = simulate_returns()
    assert y.shape == (SV_NUM_DAYS,) and y.dtype == np.float64
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, simulate_returns(seed=0))
    assert not np.array_equal(y, simulate_returns(seed=1))
    assert simulate_returns(seed=3, num_days=7).shape == (7,)
    with pytest.raises(ValueError):
        simulate_returns(num_days=0)


@pytest.fixture(scope="module")
def target():
    return target_from_model(
        jax.random.key(0), stochastic_volatility, (simulate_returns(),), {}, num_inits=2
    )


def test_model_dimension_and_sites(target):
    assert target.dim == 3 + SV_NUM_DAYS == 103
    sites = target.postprocess_fn(target.init_positions[0])
    assert sites["h_std"].shape == (SV_NUM_DAYS,)
    assert sites["h"].shape == (SV_NUM_DAYS,)
    assert -1.0 < float(sites["phi"]) < 1.0 and float(sites["sigma"]) > 0.0


def test_log_density_is_finite(target):
    value_and_grad = jax.jit(jax.value_and_grad(target.logdensity_fn))
    for x in (target.init_positions[0], jnp.zeros(target.dim)):
        value, grad = value_and_grad(x)
        assert bool(jnp.isfinite(value))
        assert bool(jnp.all(jnp.isfinite(grad)))


def test_reference_loads_npz_without_running_nuts(tmp_path):
    path = tmp_path / "reference.npz"
    draws = {"mu": np.linspace(-1.0, 0.0, 5), "h_std[1]": np.arange(5.0)}
    np.savez_compressed(path, **draws)
    loaded = reference_draws(str(path))
    assert sorted(loaded) == ["h_std[1]", "mu"]
    for name, value in draws.items():
        np.testing.assert_array_equal(loaded[name], value)


def test_reference_refuses_pickled_arrays(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, mu=np.array([{"not": "numbers"}], dtype=object))
    with pytest.raises(ValueError):
        reference_draws(str(path))

"""SCDS: self-consistency known answer, sampling shapes, determinism, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numpyro_cds.consistency import (
    ConsistencyConfig,
    consistency_sampler,
    path_starts,
    self_consistency_loss,
)
from numpyro_cds.diffusion import (
    sample_prior,
    simulate_paths,
    standard_normal_logdensity,
    target_score_fn,
)
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule

CONFIG = ConsistencyConfig(num_sde_steps=8, batch_size=16, width=16)


def _algorithm(logdensity=standard_normal_logdensity, dim=3):
    return consistency_sampler(logdensity, dim, CONFIG, optax.adam(1e-3))


def _consistency_loss_at_init(logdensity, dim):
    """Self-consistency loss of an untrained network, teacher = student."""
    schedule = LinearSchedule()
    net = ControlNetwork(dim, width=16, key=jax.random.key(0))
    paths = simulate_paths(
        jax.random.key(1),
        net,
        schedule,
        logdensity,
        batch_size=32,
        dim=dim,
        num_steps=8,
        clip=10.0,
        prior_bound=3.89,
    )
    return self_consistency_loss(
        net,
        net,
        schedule,
        target_score_fn(logdensity),
        path_starts(jax.random.key(2), paths.states, paths.target_scores),
        8,
        10.0,
    )[0]


def test_self_consistency_loss_is_zero_when_flow_is_identity():
    """Target = prior at initialisation: every probability-flow step is the identity."""
    assert float(_consistency_loss_at_init(standard_normal_logdensity, 3)) < 1e-10


def test_self_consistency_loss_positive_for_nonlinear_flow():
    loss = _consistency_loss_at_init(lambda x: -jnp.sum(x**4), 2)
    assert float(loss) > 1e-4


@pytest.mark.parametrize("num_steps", [1, 2, 8])
def test_untrained_sampler_for_target_prior_returns_prior_draws(num_steps):
    algo = _algorithm()
    state, static = algo.init(jax.random.key(0))
    xs = algo.sample(jax.random.key(5), state.params, static, 100, num_steps)
    expected = sample_prior(jax.random.key(5), (100, 3), CONFIG.drawing_bound(3))
    np.testing.assert_allclose(xs, expected, atol=1e-5)


def test_sampling_shapes_and_determinism():
    algo = _algorithm(lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))
    state, static = algo.init(jax.random.key(0))
    state, info = jax.jit(algo.step, static_argnums=2)(jax.random.key(1), state, static)
    assert int(state.iteration) == 1
    assert bool(jnp.isfinite(info.diffusion_loss)) and bool(
        jnp.isfinite(info.consistency_loss)
    )
    for k in (1, 2, 4, 8):
        a = algo.sample(jax.random.key(3), state.ema_params, static, 7, k)
        b = algo.sample(jax.random.key(3), state.ema_params, static, 7, k)
        c = algo.sample(jax.random.key(4), state.ema_params, static, 7, k)
        assert a.shape == (7, 3)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_sampling_rejects_non_power_of_two():
    algo = _algorithm()
    state, static = algo.init(jax.random.key(0))
    with pytest.raises(ValueError, match="power of two"):
        algo.sample(jax.random.key(3), state.params, static, 7, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_sde_steps": 48}, "power of two"),
        ({"batch_size": 0}, "batch_size"),
        ({"width": 2.5}, "width"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"initial_clip": -1.0}, "initial_clip"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConsistencyConfig(**kwargs)


def test_clip_schedule():
    steps = (0, 199, 200, 400, 10**6)
    config = ConsistencyConfig(clip_milestones=(200, 400))
    clips = [float(config.clip(jnp.asarray(i))) for i in steps]
    assert clips == [10.0, 10.0, 50.0, 250.0, 250.0]
    # The default: the initial clip throughout.
    default = ConsistencyConfig()
    assert [float(default.clip(jnp.asarray(i))) for i in steps] == [10.0] * 5


def _quartic(x):
    return -jnp.sum(x**4)


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_untrained_large_steps_without_the_target_score_are_the_identity(num_steps):
    """Steps above target_score_max_step see only the prior score: identity at init,
    whatever the target, and no target gradient is evaluated."""
    config = ConsistencyConfig(num_sde_steps=8, batch_size=16, width=16)
    assert not config.uses_target_score(num_steps)

    def no_gradient(x):
        return jax.lax.stop_gradient(jnp.nan) * jnp.sum(x)

    algo = consistency_sampler(no_gradient, 3, config, optax.adam(1e-3))
    state, static = algo.init(jax.random.key(0))
    draws = algo.sample(jax.random.key(5), state.params, static, 50, num_steps, "exact")
    expected = sample_prior(jax.random.key(5), (50, 3), config.drawing_bound(3))
    np.testing.assert_allclose(draws.x, expected, atol=1e-5)
    assert np.all(np.asarray(draws.step_signs) == 1.0)


def test_steps_with_the_target_score_move_an_untrained_flow():
    """At k = N (the training paths' step) the Langevin term holds the target score."""
    config = ConsistencyConfig(num_sde_steps=8, batch_size=16, width=16)
    assert config.uses_target_score(8)
    paper = ConsistencyConfig(num_sde_steps=8, target_score_max_step=None)
    assert paper.uses_target_score(1) and paper.uses_target_score(2)
    algo = consistency_sampler(_quartic, 2, config, optax.adam(1e-3))
    state, static = algo.init(jax.random.key(0))
    xs = algo.sample(jax.random.key(5), state.params, static, 50, 8)
    prior = sample_prior(jax.random.key(5), (50, 2), config.drawing_bound(2))
    assert float(jnp.max(jnp.abs(xs - prior))) > 1e-2


def test_default_prior_bound_leaves_out_a_fixed_mass():
    from scipy.stats import norm

    from numpyro_cds.consistency import PRIOR_MASS_LEFT_OUT, default_prior_bound

    for dim in (1, 10, 1600):
        left_out = dim * 2 * norm.sf(default_prior_bound(dim))
        assert left_out == pytest.approx(PRIOR_MASS_LEFT_OUT, rel=1e-6)
    config = ConsistencyConfig()
    assert config.drawing_bound(10) == config.training_bound(10)
    assert ConsistencyConfig(sampling_prior_bound=6.0).drawing_bound(10) == 6.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_score_max_step": 3}, "target_score_max_step"),
        ({"teacher": "student"}, "teacher"),
        ({"consistency_space": "time"}, "consistency_space"),
        ({"prior_bound": -1.0}, "prior_bound"),
        ({"pairs_per_path": 0}, "pairs_per_path"),
        ({"save_memory": 1}, "save_memory"),
    ],
)
def test_new_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConsistencyConfig(**kwargs)

"""CDDS: the consistency function, the distillation loss, one network evaluation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import perturbed_network

from numpyro_cds import networks
from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.diffusion import target_score_fn
from numpyro_cds.distillation import (
    consistency_function,
    distillation_sampler,
    draw_consistency,
    teacher_pairs,
)
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule
from numpyro_cds.train import fit

MEAN, SCALE = jnp.array([1.0, -0.5]), jnp.array([0.7, 1.3])


def gaussian_logdensity(x):
    return -0.5 * jnp.sum(((x - MEAN) / SCALE) ** 2)


def random_network(key, dim=2):
    """A control network with every weight random (none left at its zero init)."""
    network = ControlNetwork(dim, width=8, depth=1, key=key)
    params, static = eqx.partition(network, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [0.5 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


def test_the_consistency_function_is_the_identity_at_the_end():
    network = random_network(jax.random.key(0))
    xs = 3.0 * jax.random.normal(jax.random.key(1), (16, 2))
    scores = jax.random.normal(jax.random.key(2), (16, 2))
    ends = jax.vmap(
        lambda x, s: consistency_function(
            network, LinearSchedule(), x, s, jnp.float32(1.0), jnp.float32(10.0)
        )
    )(xs, scores)
    np.testing.assert_array_equal(ends, xs)
    # ... and not elsewhere: the network does move states before the end.
    moved = jax.vmap(
        lambda x, s: consistency_function(
            network, LinearSchedule(), x, s, jnp.float32(0.5), jnp.float32(10.0)
        )
    )(xs, scores)
    assert float(jnp.max(jnp.abs(moved - xs))) > 0.1


def test_distilling_a_linear_probability_flow_reproduces_its_flow_map():
    """An untrained teacher on a Gaussian target has a linear control, so its Euler
    probability flow is an affine map; the distilled one-step map must match it.
    """
    config = ConsistencyConfig(
        num_sde_steps=8,
        batch_size=64,
        width=32,
        depth=2,
        ema_decay=0.9,
        target_score_max_step=None,
    )
    teacher = ControlNetwork(2, width=32, depth=2, key=jax.random.key(0))
    algorithm = distillation_sampler(
        gaussian_logdensity, teacher, config, optax.adam(3e-3), gap=1
    )
    state, static = algorithm.init(jax.random.key(1))
    state, info = fit(
        jax.random.key(2),
        algorithm.step,
        state,
        static,
        1500,
        chunk_size=500,
        progress_bar=False,
        loss_name="distillation_loss",
    )
    assert np.all(info.kept_fraction == 1.0)
    # Whole trajectories: the prior draw (step 0) and the flow map's image (step 8).
    pairs = teacher_pairs(
        jax.random.key(3),
        teacher,
        LinearSchedule(),
        target_score_fn(gaussian_logdensity),
        jnp.zeros(512, jnp.int32),
        gap=8,
        dim=2,
        num_steps=8,
        clip=jnp.float32(10.0),
        prior_bound=3.0,
    )
    states = (pairs.first, pairs.second)
    teacher_map = states[-1]
    student = eqx.combine(state.ema_params, static)
    one_step = jax.vmap(
        lambda x, s: consistency_function(
            student, LinearSchedule(), x, s, jnp.float32(0.0), jnp.float32(10.0)
        )
    )(states[0], jax.vmap(target_score_fn(gaussian_logdensity))(states[0]))
    initial = jax.vmap(
        lambda x, s: consistency_function(
            teacher, LinearSchedule(), x, s, jnp.float32(0.0), jnp.float32(10.0)
        )
    )(states[0], jax.vmap(target_score_fn(gaussian_logdensity))(states[0]))
    error = float(jnp.sqrt(jnp.mean((one_step - teacher_map) ** 2)))
    before = float(jnp.sqrt(jnp.mean((initial - teacher_map) ** 2)))
    spread = float(jnp.sqrt(jnp.mean(jnp.var(teacher_map, axis=0))))
    assert before > 0.2 * spread  # one big Euler step is far from the flow map...
    assert error < 0.05 * spread  # ... and the distilled step is on it


def test_a_one_step_draw_evaluates_the_network_once(monkeypatch):
    """Counted at run time: a callback in the network's output records every draw."""
    calls = []
    original = networks.ControlNetwork.output

    def counted(self, x, embedding):
        jax.debug.callback(lambda row: calls.append(row.shape), x)
        return original(self, x, embedding)

    monkeypatch.setattr(networks.ControlNetwork, "output", counted)
    config = ConsistencyConfig(num_sde_steps=8, batch_size=4, width=8)
    teacher = ControlNetwork(2, width=8, depth=1, key=jax.random.key(0))
    cdds = distillation_sampler(gaussian_logdensity, teacher, config, optax.adam(1e-3))
    state, static = cdds.init(jax.random.key(1))
    for num_steps in (1, 2):
        calls.clear()
        draws = cdds.sample(jax.random.key(0), state.ema_params, static, 32, num_steps)
        jax.block_until_ready(draws)
        jax.effects_barrier()
        evaluations = sum(int(np.prod(shape[:-1], dtype=int)) for shape in calls)
        assert evaluations == 32 * num_steps


def test_gap_must_divide_the_teacher_steps():
    config = ConsistencyConfig(num_sde_steps=8, batch_size=4, width=8)
    teacher = ControlNetwork(2, width=8, depth=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="gap must be a positive divisor"):
        distillation_sampler(
            gaussian_logdensity, teacher, config, optax.adam(1e-3), gap=3
        )


@pytest.mark.parametrize("num_steps", [2, 8])
def test_multistep_consistency_weights_are_unbiased(num_steps):
    """Re-noised consistency steps with the auxiliary backward kernels: E[w] = Z."""
    mean, sd = jnp.array([1.0, -0.5]), 0.7

    def logdensity(x):
        return -0.5 * jnp.sum(((x - mean) / sd) ** 2)

    log_z = 2 * 0.5 * np.log(2 * np.pi * sd**2)
    config = ConsistencyConfig(num_sde_steps=16, width=16, prior_bound=6.0)
    network = perturbed_network(2, 0.05, jax.random.key(3))
    draws = draw_consistency(
        jax.random.key(4), network, logdensity, config, 100_000, num_steps, "exact"
    )
    assert draws.step_signs.shape == (num_steps, 100_000)
    assert np.all(np.abs(np.mean(draws.step_signs, axis=1)) == 1)  # no fold
    log_weights = np.asarray(jax.vmap(logdensity)(draws.x) - draws.log_density)
    shift = log_weights.max()
    w = np.exp(log_weights - shift)
    estimate, se = np.log(w.mean()) + shift, w.std() / w.mean() / np.sqrt(w.size)
    assert np.std(log_weights) > 0.5 and se < 0.01
    assert abs(estimate - log_z) < 3 * se


def test_one_consistency_step_is_the_one_step_flow():
    from numpyro_cds.consistency import draw_network

    config = ConsistencyConfig(num_sde_steps=8, width=16)
    network = perturbed_network(3, 0.05, jax.random.key(0))

    def logdensity(x):
        return -0.5 * jnp.sum(x**2)

    flow = draw_network(jax.random.key(1), network, logdensity, config, 50, 1, "exact")
    steps = draw_consistency(
        jax.random.key(1), network, logdensity, config, 50, 1, "exact"
    )
    np.testing.assert_array_equal(flow.x, steps.x)
    np.testing.assert_allclose(flow.log_density, steps.log_density, rtol=1e-6)


def test_teacher_pairs_keep_the_trajectory_states_at_each_paths_steps():
    """Random start steps pick the same states as whole trajectories have there."""
    teacher = ControlNetwork(2, width=8, depth=1, key=jax.random.key(0))

    def pairs(start, gap):
        return teacher_pairs(
            jax.random.key(1),
            teacher,
            LinearSchedule(),
            target_score_fn(gaussian_logdensity),
            start,
            gap=gap,
            dim=2,
            num_steps=8,
            clip=jnp.float32(10.0),
            prior_bound=3.0,
        )

    every = jnp.stack([pairs(jnp.full(16, n), 0).first for n in range(9)])
    start = 2 * jax.random.randint(jax.random.key(2), (16,), 0, 4)
    chosen = pairs(start, 2)
    rows = jnp.arange(16)
    np.testing.assert_allclose(chosen.first, every[start, rows], rtol=1e-6)
    np.testing.assert_allclose(chosen.second, every[start + 2, rows], rtol=1e-6)
    assert not np.allclose(every[0], every[8])

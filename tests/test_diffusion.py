"""Log-variance loss: known optimum for target = prior, and the EM paths it uses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numpyro_cds.diffusion import (
    log_variance_loss,
    sample_prior,
    simulate_paths,
    standard_normal_logdensity,
)
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule

SCHEDULE = LinearSchedule()


def _loss(network, logdensity, num_steps, batch=512, dim=2, seed=0):
    paths = simulate_paths(
        jax.random.key(seed),
        network,
        SCHEDULE,
        logdensity,
        batch_size=batch,
        dim=dim,
        num_steps=num_steps,
        clip=1e4,
        prior_bound=10.0,
    )
    return log_variance_loss(network, SCHEDULE, paths, clip=1e4)


def test_paths_shapes_and_prior_density():
    net = ControlNetwork(3, width=8, key=jax.random.key(0))
    paths = simulate_paths(
        jax.random.key(1),
        net,
        SCHEDULE,
        standard_normal_logdensity,
        batch_size=4,
        dim=3,
        num_steps=8,
        clip=10.0,
        prior_bound=3.89,
    )
    assert paths.states.shape == (8, 4, 3)
    assert paths.final_states.shape == (4, 3)
    np.testing.assert_allclose(
        paths.log_prior,
        jax.vmap(standard_normal_logdensity)(paths.states[0]),
        rtol=1e-6,
    )


def test_prior_draws_are_truncated():
    x = sample_prior(jax.random.key(0), (10000, 2), 1.5)
    assert float(jnp.max(jnp.abs(x))) <= 1.5


def test_log_variance_loss_vanishes_at_optimal_control_for_target_prior():
    """For target = prior the initial control is the optimal -sigma x.

    The path log-RND is then zero up to the Euler-Maruyama error, whose variance
    shrinks like 1/N: the loss halves when N doubles and is small at N = 512.
    """
    net = ControlNetwork(2, width=8, key=jax.random.key(0))
    losses = {
        n: float(_loss(net, standard_normal_logdensity, n)[0]) for n in (128, 256, 512)
    }
    assert losses[512] < 0.05
    assert 1.5 < losses[128] / losses[256] < 2.7
    assert 1.5 < losses[256] / losses[512] < 2.7


def test_log_variance_loss_detects_wrong_control():
    """Adding a constant 1 to the optimal control makes the path weights vary."""
    import equinox as eqx

    net = ControlNetwork(2, width=8, key=jax.random.key(0))
    wrong_net = eqx.tree_at(lambda n: n.output_layer.bias, net, jnp.ones(2))
    wrong, kept = _loss(wrong_net, standard_normal_logdensity, 128)
    right, _ = _loss(net, standard_normal_logdensity, 128)
    assert float(kept) == 1.0
    assert float(wrong) > 0.5 and float(wrong) > 5 * float(right)


def test_log_variance_loss_penalises_non_finite_target():
    """Paths ending where log rho is -inf count as the batch's worst, not dropped."""
    net = ControlNetwork(2, width=8, key=jax.random.key(0))

    def half_infinite(x):
        return jnp.where(x[0] > 0, -jnp.inf, standard_normal_logdensity(x))

    loss, kept = _loss(net, half_infinite, 16)
    baseline, _ = _loss(net, standard_normal_logdensity, 16)
    assert bool(jnp.isfinite(loss))
    assert float(kept) == 1.0
    assert float(loss) > 2 * float(baseline)


def _compiled_step(algorithm, state, static):
    return (
        jax.jit(lambda key, s: algorithm.step(key, s, static))
        .lower(jax.random.key(0), state)
        .compile()
    )


def _algorithm(method, num_steps, save_memory, batch_size=32, optimizer=None):
    from numpyro_cds.consistency import ConsistencyConfig, consistency_sampler
    from numpyro_cds.reference import reference_sampler
    from numpyro_cds.train import TrainConfig, default_optimizer

    config = ConsistencyConfig(
        num_sde_steps=num_steps,
        batch_size=batch_size,
        width=16,
        save_memory=save_memory,
    )
    if optimizer is None:
        optimizer = default_optimizer(TrainConfig(num_train_steps=10))
    if method == "dds":
        return reference_sampler(gaussian_target, 2, config, optimizer, "dds")
    return consistency_sampler(gaussian_target, 2, config, optimizer)


@pytest.mark.parametrize("method", ["scds", "dds"])
def test_save_memory_keeps_nothing_per_step(method):
    """With ``save_memory`` a step's memory is flat in ``N``; without, it grows.

    SCDS's step is also the same step (same loss and gradient, up to rounding).
    """
    memory, results = {}, {}
    for save_memory in (False, True):
        for num_steps in (16, 256):
            algo = _algorithm(method, num_steps, save_memory)
            state, static = algo.init(jax.random.key(0))
            step = _compiled_step(algo, state, static)
            results[save_memory, num_steps] = step(jax.random.key(1), state)
            memory[save_memory, num_steps] = step.memory_analysis().temp_size_in_bytes
    if method == "scds":
        for num_steps in (16, 256):
            saved, kept = results[True, num_steps], results[False, num_steps]
            for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(kept), strict=True):
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    # Kept per step without save_memory: at least the states, 32 paths x 2 floats;
    # with it, only the step's PRNG key (8 bytes) in each of the two passes.
    growth = {k: memory[k, 256] - memory[k, 16] for k in (False, True)}
    assert growth[False] > 240 * 32 * 2 * 4
    assert growth[True] <= 240 * 2 * 8


def test_save_memory_dds_estimates_the_pathwise_gradient():
    """DDS's likelihood-ratio gradient on detached paths agrees with the pathwise one.

    Both estimate the gradient of the same KL; with one SGD step of rate 1 the
    parameters move by minus the batch's gradient, averaged here over 8192 paths.
    """
    moves = {}
    for save_memory in (False, True):
        algo = _algorithm("dds", 8, save_memory, 8192, optax.sgd(1.0))
        state, static = algo.init(jax.random.key(0))
        new_state, _ = _compiled_step(algo, state, static)(jax.random.key(1), state)
        moves[save_memory] = jnp.concatenate(
            [
                (a - b).ravel()
                for a, b in zip(
                    jax.tree.leaves(new_state.params),
                    jax.tree.leaves(state.params),
                    strict=True,
                )
            ]
        )
    pathwise, detached = moves[False], moves[True]
    cosine = jnp.dot(pathwise, detached) / (
        jnp.linalg.norm(pathwise) * jnp.linalg.norm(detached)
    )
    print(
        "cosine",
        float(cosine),
        float(jnp.linalg.norm(detached) / jnp.linalg.norm(pathwise)),
    )
    assert float(cosine) > 0.9
    np.testing.assert_allclose(
        jnp.linalg.norm(detached), jnp.linalg.norm(pathwise), rtol=0.2
    )


def gaussian_target(x):
    return -0.5 * jnp.sum(((x - 1.0) / 0.5) ** 2)

"""Log-variance loss: known optimum for target = prior, and the EM paths it uses."""

import jax
import jax.numpy as jnp
import numpy as np

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

"""Volume consistency of SCDS: known log-volume changes, the Hessian term, config.

With ``num_sde_steps = 2`` the self-consistency loss has one big step only (``t = 0``,
``d = 1``, half steps of 0.5 from ``t = 0`` and ``t = 0.5``), so its value is known.
At initialisation the network's output is zero and its gate one, so with the target
``N(m, s^2 I)`` the probability-flow drift is affine, ``b(x, t) = a(t) x + c(t)`` with
``a(t) = beta(t) t (1 - 1 / s^2) / 2``, and a step of size ``dt`` from ``t`` changes
log-volume by ``dim log|1 + dt a(t)|``; the ``1 / s^2`` part is the target's Hessian,
which enters through the Langevin input of the control.

All targets are one log density with array parameters, so the loss compiles once.
"""

import equinox as eqx
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
from numpyro_cds.diffusion import target_score_fn
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule

DIM = 3
# Two time slices of states; with two SDE steps only the first is used.
STATES = jax.random.normal(jax.random.key(1), (2, 16, DIM))
NETWORK = ControlNetwork(DIM, width=8, key=jax.random.key(0))


def _target(mean=0.0, precision=None, quartic=0.0):
    """Parameters of ``-quartic sum(x^4) / 4 - (x - m)' P (x - m) / 2``."""
    precision = jnp.eye(DIM) if precision is None else precision
    return jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (DIM,)), precision, quartic


def _logdensity(target, x):
    mean, precision, quartic = target
    centred = x - mean
    return -0.25 * quartic * jnp.sum(x**4) - 0.5 * centred @ precision @ centred


@eqx.filter_jit
def _losses(network, teacher, target, volume=True):
    score_fn = target_score_fn(lambda x: _logdensity(target, x))
    return self_consistency_loss(
        network,
        teacher,
        LinearSchedule(),
        score_fn,
        path_starts(jax.random.key(2), STATES, jax.vmap(jax.vmap(score_fn))(STATES)),
        2,
        jnp.asarray(1e6),
        volume=volume,
    )


def _perturbed(network, key):
    """The network with a random output layer and gate, so that its output is not 0."""
    weight_key, gate_key = jax.random.split(jax.random.key(key))
    weight = 0.3 * jax.random.normal(weight_key, network.output_layer.weight.shape)
    network = eqx.tree_at(lambda n: n.output_layer.weight, network, weight)
    gate = network.gate.layers[-1]
    gate_weight = 0.05 * jax.random.normal(gate_key, gate.weight.shape)
    return eqx.tree_at(lambda n: n.gate.layers[-1].weight, network, gate_weight)


def test_log_volume_of_a_linear_drift_has_a_closed_form():
    variance = 4.0
    target = _target(precision=jnp.eye(DIM) / variance)
    state_loss, volume_loss = _losses(NETWORK, NETWORK, target)
    # Student: one step from t = 0, where a(0) = 0; teacher: a(0) = 0, then a(0.5).
    a_half = 0.5 * LinearSchedule().beta(0.5) * 0.5 * (1.0 - 1.0 / variance)
    teacher_log_volume = DIM * jnp.log(1.0 + 0.5 * a_half)
    np.testing.assert_allclose(volume_loss, (teacher_log_volume / DIM) ** 2, rtol=1e-5)
    expected_state_loss = jnp.mean((0.5 * a_half * STATES[0]) ** 2) / DIM
    np.testing.assert_allclose(state_loss, expected_state_loss, rtol=1e-5)
    # Leaving out the Hessian (OSDS's stopped Langevin input) would give about 0.24.
    without_hessian = jnp.log(1.0 + 0.25 * LinearSchedule().beta(0.5))
    assert abs(float(volume_loss) - float(without_hessian**2)) > 0.05
    # Without the volume term: the same state loss, and no volume loss.
    state_only, no_volume = _losses(NETWORK, NETWORK, target, volume=False)
    np.testing.assert_allclose(state_only, state_loss, rtol=1e-6)
    assert np.isnan(no_volume)


def _explicit_log_volume(network, target, t, dt, x):
    """``log |det(I + dt db/dx)|`` written out, with the target's Hessian."""
    schedule = LinearSchedule()
    embedding, gate = network.conditioning(t, dt)
    sigma = schedule.sigma(t)
    output_jacobian = jax.jacfwd(lambda y: network.output(y, embedding))(x)
    hessian = jax.hessian(lambda y: _logdensity(target, y))(x)
    langevin_jacobian = -(1.0 - t) * jnp.eye(DIM) + t * hessian
    drift_jacobian = 0.5 * schedule.beta(t) * jnp.eye(DIM) + 0.5 * sigma * (
        output_jacobian + sigma * gate * langevin_jacobian
    )
    return jnp.linalg.slogdet(jnp.eye(DIM) + dt * drift_jacobian)[1]


def _explicit_step(network, target, t, dt, x):
    schedule = LinearSchedule()
    embedding, gate = network.conditioning(t, dt)
    langevin = -(1.0 - t) * x + t * jax.grad(lambda y: _logdensity(target, y))(x)
    u = network.output(x, embedding) + schedule.sigma(t) * gate * langevin
    return x + dt * (0.5 * schedule.beta(t) * x + 0.5 * schedule.sigma(t) * u)


def test_log_volume_includes_the_target_hessian():
    """A nonlinear network and target: the loss against the Jacobian written out."""
    target = _target(precision=jnp.array([[1.0, -1.0, 0], [-1.0, 2.0, 0], [0, 0, 1]]))
    target = target[:2] + (1.0,)
    student = _perturbed(NETWORK, 10)
    teacher = _perturbed(ControlNetwork(DIM, width=8, key=jax.random.key(1)), 11)
    _, volume_loss = _losses(student, teacher, target)

    @jax.jit
    @jax.vmap
    def explicit(x):
        mid = _explicit_step(teacher, target, 0.0, 0.5, x)
        goal = _explicit_log_volume(teacher, target, 0.0, 0.5, x)
        goal = goal + _explicit_log_volume(teacher, target, 0.5, 0.5, mid)
        return goal - _explicit_log_volume(student, target, 0.0, 1.0, x)

    expected = jnp.mean(explicit(STATES[0]) ** 2) / DIM**2
    assert float(expected) > 1e-3
    np.testing.assert_allclose(volume_loss, expected, rtol=1e-4)


@eqx.filter_jit
def _volume_value_and_gradient(target):
    params, static = eqx.partition(NETWORK, eqx.is_inexact_array)

    def losses(params):
        state_loss, volume_loss = _losses(eqx.combine(params, static), NETWORK, target)
        return volume_loss, state_loss

    return jax.value_and_grad(losses, has_aux=True)(params)


@pytest.mark.parametrize(
    "mean, state_consistent",
    [(0.0, True), (2.0, False)],
    ids=["identity", "translation"],
)
def test_volume_loss_and_gradient_vanish_for_volume_preserving_steps(
    mean, state_consistent
):
    """Teacher = student with steps of unit Jacobian: the identity (target = prior)
    and time-dependent translations, whose half steps miss the big step."""
    (volume_loss, state_loss), grads = _volume_value_and_gradient(_target(mean))
    assert float(volume_loss) < 1e-12
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-6
    assert (float(state_loss) < 1e-10) == state_consistent


def test_training_reports_the_volume_loss():
    config = ConsistencyConfig(
        num_sde_steps=2, batch_size=4, width=4, depth=1, volume_weight=1.0
    )
    algorithm = consistency_sampler(
        lambda x: -0.125 * jnp.sum((x - 1.0) ** 2), 2, config, optax.sgd(1e-3)
    )
    state, static = algorithm.init(jax.random.key(0))
    info = eqx.filter_jit(algorithm.step)(jax.random.key(1), state, static)[1]
    assert np.isfinite(info.volume_loss) and float(info.volume_loss) > 0


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_volume_weight_must_be_non_negative(weight):
    with pytest.raises(ValueError, match="volume_weight must be non-negative"):
        ConsistencyConfig(volume_weight=weight)


def test_volume_weight_is_off_by_default():
    assert ConsistencyConfig().volume_weight == 0.0

"""The control at initialisation is the Langevin-preconditioned interpolated score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_cds.diffusion import batched_control, control
from numpyro_cds.networks import ControlNetwork, TimeEmbedding
from numpyro_cds.sde import LinearSchedule


def test_network_output_zero_and_gate_one_at_init():
    net = ControlNetwork(3, key=jax.random.key(0))
    for t, d in [(0.0, 1.0), (0.5, 0.25), (0.99, 1 / 64)]:
        output, gate = net(jnp.array([1.0, -2.0, 3.0]), t, d)
        assert output.tolist() == [0.0, 0.0, 0.0]
        assert float(gate) == pytest.approx(1.0)


def test_control_at_init_equals_langevin_term():
    schedule = LinearSchedule()
    net = ControlNetwork(2, key=jax.random.key(1))
    x = jnp.array([0.5, -1.0])
    score = jnp.array([2.0, 0.25])
    for t in [0.0, 0.3, 1.0]:
        u = control(net, schedule, x, t, 0.5, score, 1e4)
        expected = schedule.sigma(t) * ((1 - t) * (-x) + t * score)
        np.testing.assert_allclose(u, expected, rtol=1e-6)


def test_control_clips_langevin_term_elementwise():
    schedule = LinearSchedule()
    net = ControlNetwork(2, key=jax.random.key(1))
    x = jnp.array([50.0, 0.5])
    u = control(net, schedule, x, 0.0, 1.0, jnp.zeros(2), 10.0)
    np.testing.assert_allclose(
        u, schedule.sigma(0.0) * jnp.array([-10.0, -0.5]), rtol=1e-6
    )


def test_batched_control_matches_single():
    schedule = LinearSchedule()
    net = ControlNetwork(3, width=16, key=jax.random.key(2))
    net = jax.tree.map(lambda a: a + 0.1 if isinstance(a, jax.Array) else a, net)
    xs = jax.random.normal(jax.random.key(3), (5, 3))
    scores = jax.random.normal(jax.random.key(4), (5, 3))
    batched = batched_control(net, schedule, xs, 0.4, 0.125, scores, 10.0)
    single = jax.vmap(lambda x, s: control(net, schedule, x, 0.4, 0.125, s, 10.0))(
        xs, scores
    )
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_time_embedding_needs_two_layers():
    with pytest.raises(ValueError, match="num_layers"):
        TimeEmbedding(4, 1, key=jax.random.key(0))


def test_state_scale_adds_a_multiple_of_the_state():
    """Zero at initialisation like the rest; then ``s(h) * x`` on top of the output."""
    import equinox as eqx

    key = jax.random.key(0)
    plain = ControlNetwork(3, width=8, key=key)
    scaled = ControlNetwork(3, width=8, state_scale=True, key=key)
    x = jnp.array([1.0, -2.0, 3.0])
    assert scaled(x, 0.5, 0.25)[0].tolist() == [0.0, 0.0, 0.0]
    # The same other layers; a scale layer of bias (1, 2, 3) and zero weights.
    plain = jax.tree.map(lambda a: a + 0.1 if eqx.is_array(a) else a, plain)
    scaled = eqx.tree_at(
        lambda n: n.scale_layer.bias, scaled, jnp.array([1.0, 2.0, 3.0])
    )
    scaled = eqx.tree_at(
        lambda n: (n.input_layer, n.hidden_layers, n.output_layer),
        scaled,
        (plain.input_layer, plain.hidden_layers, plain.output_layer),
    )
    scaled = eqx.tree_at(
        lambda n: (n.time_embedding, n.step_embedding),
        scaled,
        (plain.time_embedding, plain.step_embedding),
    )
    np.testing.assert_allclose(
        scaled(x, 0.5, 0.25)[0],
        plain(x, 0.5, 0.25)[0] + jnp.array([1.0, 2.0, 3.0]) * x,
        rtol=1e-6,
    )

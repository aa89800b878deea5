"""PIS and DDS: reference-process path weights, KL training, the driver's dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    EIGHT_SCHOOLS_SIGMA,
    EIGHT_SCHOOLS_Y,
    eight_schools,
    perturbed_network,
)
from scipy.special import erf

from numpyro_cds import CDSInference
from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.diffusion import control, gated_deviation
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.reference import (
    GATE_BIAS,
    ReferenceProcess,
    draw_reference,
    reference_sampler,
)
from numpyro_cds.sde import LinearSchedule, probability_flow_drift
from numpyro_cds.teachers import resolve_teacher
from numpyro_cds.train import fit
from numpyro_cds.trained import TrainedSampler
from numpyro_cds.whitening import AffineWhitening

MEAN, SD, DIM = jnp.array([1.0, -0.5]), 0.7, 2
#: ``log Z`` of the unnormalised Gaussian ``exp(-|x - MEAN|^2 / (2 SD^2))``.
LOG_Z = DIM * 0.5 * np.log(2 * np.pi * SD**2)


def gaussian(x):
    return -0.5 * jnp.sum(((x - MEAN) / SD) ** 2)


def log_mean_exp_with_se(log_weights):
    """``log mean w`` and its delta-method standard error."""
    log_weights = np.asarray(log_weights, np.float64)
    shift = log_weights.max()
    w = np.exp(log_weights - shift)
    mean = w.mean()
    return np.log(mean) + shift, w.std() / mean / np.sqrt(w.size)


@pytest.mark.parametrize("kind", ["pis", "dds"])
@pytest.mark.parametrize("num_steps", [16, 4])
def test_path_weights_are_unbiased_for_an_arbitrary_control(kind, num_steps):
    config = ConsistencyConfig(num_sde_steps=16, width=16, prior_bound=6.0)
    network = perturbed_network(DIM, 0.1, jax.random.key(3), gate_bias=GATE_BIAS)
    draws = draw_reference(
        jax.random.key(4),
        network,
        ReferenceProcess(kind),
        gaussian,
        config,
        100_000,
        num_steps,
    )
    log_weights = jax.vmap(gaussian)(draws.x) - draws.log_density
    estimate, se = log_mean_exp_with_se(log_weights)
    assert np.std(log_weights) > 1.0  # the control is far from the optimum
    assert se < 0.01
    assert abs(estimate - LOG_Z) < 3 * se


@pytest.mark.parametrize("kind", ["pis", "dds"])
@pytest.mark.parametrize("num_steps", [1, 4, 128])
def test_the_reference_chain_ends_at_its_computed_gaussian(kind, num_steps):
    """With a zero control the draws are the reference chain's: for the target
    ``N(0, v_N I)`` every weight is the prior truncation's mass, exactly."""
    process = ReferenceProcess(kind)
    variance = float(process.terminal_variance(num_steps))
    network = ControlNetwork(DIM, width=8, gate_bias=0.0, key=jax.random.key(0))
    config = ConsistencyConfig(num_sde_steps=128, width=8, prior_bound=3.0)

    def terminal(x):
        return -0.5 * jnp.sum(x**2) / variance - 0.5 * DIM * np.log(
            2 * np.pi * variance
        )

    draws = draw_reference(
        jax.random.key(1), network, process, terminal, config, 2000, num_steps
    )
    log_weights = jax.vmap(terminal)(draws.x) - draws.log_density
    expected = 0.0 if kind == "pis" else DIM * np.log(erf(3.0 / np.sqrt(2.0)))
    np.testing.assert_allclose(log_weights, expected, atol=2e-4)
    assert np.var(draws.x) == pytest.approx(variance, rel=0.1)


@pytest.mark.parametrize(
    "kind, save_memory", [("pis", False), ("dds", False), ("dds", True)]
)
def test_kl_training_finds_a_gaussian_target(kind, save_memory):
    """Pathwise gradients, and with ``save_memory`` likelihood-ratio ones."""
    config = ConsistencyConfig(
        num_sde_steps=16, batch_size=128, width=16, save_memory=save_memory
    )
    algorithm = reference_sampler(gaussian, DIM, config, optax.adam(5e-3), kind)
    state, static = algorithm.init(jax.random.key(0))

    def effective_fraction(params):
        draws = algorithm.sample(jax.random.key(9), params, static, 4000, 16, "path")
        log_weights = np.asarray(jax.vmap(gaussian)(draws.x) - draws.log_density)
        w = np.exp(log_weights - log_weights.max())
        return w.sum() ** 2 / (w.size * (w**2).sum()), log_mean_exp_with_se(log_weights)

    before, _ = effective_fraction(state.ema_params)
    state, info = fit(
        jax.random.key(1),
        algorithm.step,
        state,
        static,
        400,
        chunk_size=200,
        progress_bar=False,
        loss_name="log_variance",
    )
    after, (log_z, se) = effective_fraction(state.ema_params)
    assert before < 0.5 < after
    assert np.mean(info.log_variance[-50:]) < np.mean(info.log_variance[:50])
    assert abs(log_z - LOG_Z) < max(3 * se, 0.02)


def test_pis_through_the_driver_saves_and_loads_its_method(tmp_path):
    cds = CDSInference(
        eight_schools,
        method="pis",
        num_train_steps=10,
        batch_size=16,
        num_sde_steps=4,
        chunk_size=10,
        num_samples=40,
        correction=None,
        progress_bar=False,
    )
    assert (cds.num_steps, cds.sampling) == (4, "sde")
    cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert set(cds.training_losses) == {"kl_loss", "log_variance", "kept_fraction"}
    assert cds.trained.method == "pis"
    assert np.isfinite(cds.log_evidence()[0])
    path = str(tmp_path / "pis.cds")
    cds.save(path)
    loaded = CDSInference.load(path, eight_schools, num_samples=40, correction=None)
    loaded.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert loaded.trained.method == "pis" and loaded.method == "pis"
    np.testing.assert_array_equal(
        loaded.get_extra_fields()["log_weight"], cds.get_extra_fields()["log_weight"]
    )


def test_pis_and_dds_refuse_flow_draws_and_teaching():
    with pytest.raises(ValueError, match="draws with its SDE"):
        CDSInference(eight_schools, method="dds", sampling="flow")
    network = ControlNetwork(DIM, width=8, key=jax.random.key(0))
    whitening = AffineWhitening(jnp.zeros(DIM), jnp.ones(DIM))
    config = ConsistencyConfig(num_sde_steps=4, width=8)
    with pytest.raises(ValueError, match="score_form must be one of"):
        ControlNetwork(DIM, score_form="score", key=jax.random.key(0))
    with pytest.raises(ValueError, match="sampling must be 'sde'"):
        TrainedSampler(network, whitening, config, "flow", method="pis")
    teacher = TrainedSampler(network, whitening, config, "sde", method="pis")
    with pytest.raises(ValueError, match="cannot be a CDDS teacher"):
        resolve_teacher(teacher, None, None, None)


def test_a_dds_network_gives_the_dds_drifts_through_the_common_control():
    """The gated score form in the DIS convention ``u = delta - sigma x``: the SDE
    drift is DDS's ``f x + sigma (g x + delta)``, the flow drift ``sigma delta / 2``."""
    network = perturbed_network(
        DIM, 0.3, jax.random.key(5), gate_bias=GATE_BIAS, score_form="gated"
    )
    process, schedule = ReferenceProcess("dds"), LinearSchedule()
    x = jax.random.normal(jax.random.key(6), (DIM,))
    score, clip, dt = jax.grad(gaussian)(x), jnp.asarray(10.0), 1.0 / 16
    for t in (0.0, 0.3, 0.9):
        embedding, gate = network.conditioning(t, dt)
        delta = gated_deviation(network, x, embedding, gate, score, clip)
        assert float(jnp.abs(delta).max()) > 0.1  # the network's part is not zero
        f, sigma, g = process.coefficients(t)
        u = control(network, schedule, x, t, dt, score, clip)
        np.testing.assert_allclose(
            0.5 * schedule.beta(t) * x + schedule.sigma(t) * u,
            f * x + sigma * (g * x + delta),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            probability_flow_drift(schedule, x, t, u),
            0.5 * sigma * delta,
            rtol=1e-5,
            atol=1e-6,
        )

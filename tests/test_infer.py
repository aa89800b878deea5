"""CDSInference: the MCMC-like contract, ArviZ, Predictive, errors, resume, recovery."""

import pickle

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools
from numpyro.infer import MCMC, Predictive

import numpyro_cds.session
from numpyro_cds import CDSInference
from numpyro_cds.checkpoint import read_header
from numpyro_cds.monitor import MonitorConfig

TINY = dict(
    num_train_steps=20,
    batch_size=16,
    num_sde_steps=4,
    chunk_size=10,
    progress_bar=False,
    correction=None,  # API tests; the default correction is tested with the weights
)


def _interrupting_fit(*args, on_chunk, **kwargs):
    """``fit`` that raises KeyboardInterrupt after its first chunk, like a Ctrl-C."""

    def interrupt(state, info):
        on_chunk(state, info)
        raise KeyboardInterrupt

    return _ORIGINAL_FIT(*args, on_chunk=interrupt, **kwargs)


_ORIGINAL_FIT = numpyro_cds.session.fit


def test_is_an_mcmc_with_the_attributes_arviz_reads(trained_eight_schools):
    cds = trained_eight_schools
    assert isinstance(cds, MCMC)
    assert (cds.num_chains, cds.num_samples, cds.thinning) == (2, 50, 1)
    assert cds.sampler.model is eight_schools
    assert cds._args == (EIGHT_SCHOOLS_SIGMA,)
    assert set(cds._kwargs) == {"y"}


def test_mcmc_chain_state_and_pickling_fail_clearly(trained_eight_schools):
    cds = trained_eight_schools
    for name in ("last_state", "post_warmup_state"):
        with pytest.raises(AttributeError, match=f"no MCMC chain state \\({name}\\)"):
            getattr(cds, name)
    with pytest.raises(AttributeError, match="cds.sample"):
        cds.post_warmup_state = None
    with pytest.raises(TypeError, match="cannot be pickled.*cds.save.*checkpoint=path"):
        pickle.dumps(cds)


def test_transfer_states_to_host_keeps_the_draws(trained_eight_schools):
    cds = trained_eight_schools
    before = np.asarray(cds.get_samples()["mu"])
    cds.transfer_states_to_host()
    assert isinstance(cds.get_samples()["mu"], np.ndarray)
    np.testing.assert_array_equal(cds.get_samples()["mu"], before)
    assert cds.get_extra_fields(group_by_chain=True)["log_weight"].shape == (2, 50)


def test_run_takes_mcmc_keywords_and_never_passes_them_to_the_model():
    def model(scale=1.0):
        numpyro.sample("x", dist.Normal(0.0, scale))

    cds = CDSInference(model, num_samples=10, **TINY)
    cds.run(jax.random.key(0), extra_fields=("lp", "log_weight"), scale=2.0)
    assert set(cds.get_extra_fields()) == {"lp", "log_q", "log_weight", "diverging"}
    assert cds._kwargs == {"scale": 2.0}
    with pytest.raises(ValueError, match=r"no extra fields \['accept_prob'\]"):
        cds.run(jax.random.key(0), extra_fields=("accept_prob",))
    with pytest.raises(ValueError, match="takes no init_params"):
        cds.run(jax.random.key(0), init_params={"x": 0.0})


def test_samples_and_extra_fields_shapes(trained_eight_schools):
    cds = trained_eight_schools
    flat, grouped = cds.get_samples(), cds.get_samples(group_by_chain=True)
    assert set(flat) == {"mu", "tau", "theta_tilde", "theta"}
    assert flat["theta"].shape == (100, 8)
    assert grouped["theta"].shape == (2, 50, 8)
    np.testing.assert_array_equal(grouped["mu"].reshape(-1), flat["mu"])
    extra = cds.get_extra_fields(group_by_chain=True)
    assert extra["lp"].shape == (2, 50)
    assert not bool(jnp.any(extra["diverging"]))
    x = jax.vmap(lambda s: jax.flatten_util.ravel_pytree(s)[0])(
        {
            "mu": flat["mu"],
            "tau": jnp.log(flat["tau"]),
            "theta_tilde": flat["theta_tilde"],
        }
    )
    np.testing.assert_allclose(
        cds.get_extra_fields()["lp"], jax.vmap(cds.target.logdensity_fn)(x), rtol=1e-4
    )


def test_arviz_round_trip(trained_eight_schools):
    idata = az.from_numpyro(trained_eight_schools)
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in idata.groups()
    assert idata.posterior.sizes["chain"] == 2
    assert idata.posterior.sizes["draw"] == 50
    assert idata.posterior["theta"].shape == (2, 50, 8)
    assert idata.sample_stats["lp"].shape == (2, 50)
    assert idata.log_likelihood["y"].shape == (2, 50, 8)
    summary = az.summary(idata, var_names=["mu", "tau"])
    assert list(summary.index) == ["mu", "tau"]


def test_inference_data_carries_the_importance_weights(trained_eight_schools):
    cds = trained_eight_schools
    idata = cds.to_inference_data()
    for name in ("lp", "log_q", "log_weight"):
        assert idata.sample_stats[name].shape == (2, 50)
    extra = cds.get_extra_fields()
    # Before the MCMC moves, log_weight = lp - log_q of the drawn (resampled) draws.
    assert np.all(np.isfinite(extra["log_q"]))
    attrs = idata.posterior.attrs
    log_z, se = cds.log_evidence()
    assert (attrs["log_evidence"], attrs["log_evidence_se"]) == (log_z, se)
    assert attrs["pareto_k"] == cds.weights_summary.pareto_k
    assert 0 < attrs["importance_ess"] <= 1
    assert idata.sample_stats.attrs["num_steps"] == 1
    with pytest.warns(UserWarning):  # eight schools: LOO's own Pareto k warning
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_predictive(trained_eight_schools):
    predictive = Predictive(eight_schools, trained_eight_schools.get_samples())
    y = predictive(jax.random.key(0), EIGHT_SCHOOLS_SIGMA)["y"]
    assert y.shape == (100, 8)


def test_print_summary(trained_eight_schools, capsys):
    trained_eight_schools.print_summary()
    out = capsys.readouterr().out
    assert "mu" in out and "tau" in out and "theta_tilde[0]" in out
    assert "theta[0]" not in out
    # The default CDDS: its DDS teacher's training, then the student's.
    assert "a DDS teacher trained for 20 iterations" in out
    assert "then 20 distillation iterations" in out
    trained_eight_schools.print_summary(exclude_deterministic=False)
    assert "theta[0]" in capsys.readouterr().out


def test_sample_more_without_retraining(trained_eight_schools):
    cds = trained_eight_schools
    a = cds.sample(jax.random.key(3), 30, num_steps=2)
    b = cds.sample(jax.random.key(3), 30, num_steps=2)
    assert a["theta"].shape == (30, 8)
    np.testing.assert_array_equal(a["mu"], b["mu"])
    assert cds.training_losses["distillation_loss"].shape == (20,)
    with pytest.raises(ValueError, match="power of two no larger than"):
        cds.sample(jax.random.key(3), 30, num_steps=8)


def test_same_key_same_draws():
    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0))

    draws = []
    for _ in range(2):
        cds = CDSInference(model, num_samples=20, **TINY)
        cds.run(jax.random.PRNGKey(3))  # legacy keys are accepted
        draws.append(cds.get_samples()["x"])
    np.testing.assert_array_equal(*draws)


def test_each_training_traces_its_chunk_once(monkeypatch):
    """Later chunks run the first chunk's compiled program: no retracing in the loop."""
    traces_at_each_chunk = []

    def counting_fit(rng_key, step, *args, on_chunk, **kwargs):
        traces, seen = [0], []
        traces_at_each_chunk.append(seen)

        def counted_step(*step_args):
            traces[0] += 1  # runs only while JAX traces the step
            return step(*step_args)

        def observe(state, info):
            seen.append(traces[0])
            return on_chunk(state, info)

        return _ORIGINAL_FIT(rng_key, counted_step, *args, on_chunk=observe, **kwargs)

    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0))

    monkeypatch.setattr(numpyro_cds.session, "fit", counting_fit)
    settings = dict(TINY, num_train_steps=15, chunk_size=5)
    CDSInference(model, num_samples=10, **settings).run(jax.random.key(0))
    # The default CDDS trains twice (teacher, student), three chunks each.
    assert len(traces_at_each_chunk) == 2
    for seen in traces_at_each_chunk:
        assert len(seen) == 3 and seen[0] > 0 and seen == [seen[0]] * 3, seen


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 3}, ValueError, "power of two"),
        ({"num_samples": "10"}, TypeError, "num_samples must be an int"),
        ({"num_chains": 0}, ValueError, "num_chains must be at least 1"),
        ({"whitening": "pca"}, ValueError, "whitening must be"),
        ({"num_train_steps": -5}, ValueError, "num_train_steps"),
        ({"num_train_steps": "long"}, ValueError, 'integer or "auto"'),
        ({"max_time": 0}, ValueError, "max_time"),
        ({"correction": "moves"}, ValueError, "correction must be"),
        ({"batch_size": 1}, ValueError, "batch_size"),
        ({"num_sde_steps": 100}, ValueError, "power of two"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        CDSInference(eight_schools, **kwargs)


def test_bad_run_inputs():
    cds = CDSInference(eight_schools, whitening=(0.0, [1.0, 2.0]), **TINY)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    with pytest.raises(TypeError, match="rng_key"):
        cds.run(42, EIGHT_SCHOOLS_SIGMA)
    with pytest.raises(TypeError, match="model must be"):
        CDSInference(None)
    with pytest.raises(RuntimeError, match="run"):
        CDSInference(eight_schools, **TINY).sample(jax.random.key(0), 3)


def _flat(name):
    return numpyro.sample(name, dist.ImproperUniform(dist.constraints.real, (), ()))


def _ridge(y):
    """Flat priors, one data point: only ``a + b`` is identified."""
    numpyro.sample("y", dist.Normal(_flat("a") + _flat("b"), 1.0), obs=y)


def _no_data():
    _flat("a")
    numpyro.sample("b", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "model, args, whitening",
    [
        (_ridge, (1.0,), "auto"),
        (_ridge, (1.0,), None),
        (_no_data, (), None),
        (_no_data, (), (0.0, [1.0, 2.0])),
    ],
)
def test_an_improper_posterior_is_refused_before_training(model, args, whitening):
    cds = CDSInference(model, whitening=whitening, **TINY)
    with pytest.raises(ValueError, match="looks improper.*proper prior"):
        cds.run(jax.random.key(0), *args)
    assert cds.training_losses == {}


def test_interrupted_training_resumes_to_the_same_result(monkeypatch, capsys):
    def model():
        numpyro.sample("x", dist.Normal(1.0, 2.0))

    reference = CDSInference(model, num_samples=20, **TINY)
    reference.run(jax.random.key(0))

    cds = CDSInference(model, num_samples=20, **TINY)
    monkeypatch.setattr(numpyro_cds.session, "fit", _interrupting_fit)
    with pytest.raises(KeyboardInterrupt):
        cds.run(jax.random.key(0))
    assert "interrupted at iteration 10" in capsys.readouterr().out
    monkeypatch.setattr(numpyro_cds.session, "fit", _ORIGINAL_FIT)
    cds.run(jax.random.key(0))
    np.testing.assert_array_equal(cds.get_samples()["x"], reference.get_samples()["x"])
    assert cds.training_losses["distillation_loss"].shape == (20,)


def test_end_to_end_recovers_moments():
    """2-D Gaussian, no whitening: training must move and reshape the prior's mass.

    The untrained one-step sampler is the identity (mean 0, sd 1), far outside these
    tolerances; they allow for the small training budget (600 iterations).
    """
    mean, sd = jnp.array([1.0, -0.5]), jnp.array([0.7, 1.2])

    def model():
        numpyro.sample("x", dist.Normal(mean, sd))

    cds = CDSInference(
        model,
        num_samples=8000,
        num_train_steps=600,
        batch_size=128,
        num_sde_steps=16,
        whitening=None,
        progress_bar=False,
    )
    cds.run(jax.random.key(0))
    x = np.asarray(cds.get_samples()["x"])
    np.testing.assert_allclose(x.mean(0), mean, atol=0.2)
    np.testing.assert_allclose(np.log(x.std(0) / sd), 0.0, atol=0.2)


def test_checkpoint_resumes_in_a_new_object(monkeypatch, tmp_path):
    def model():
        numpyro.sample("x", dist.Normal(1.0, 2.0))

    reference = CDSInference(model, num_samples=20, **TINY)
    reference.run(jax.random.key(0))

    path = tmp_path / "cds.ckpt"
    monkeypatch.setattr(numpyro_cds.session, "fit", _interrupting_fit)
    with pytest.raises(KeyboardInterrupt):
        CDSInference(model, num_samples=20, checkpoint=path, **TINY).run(
            jax.random.key(0)
        )
    monkeypatch.setattr(numpyro_cds.session, "fit", _ORIGINAL_FIT)
    # Interrupted while the default CDDS trained its teacher: the teacher's file.
    teacher_path = tmp_path / "cds.ckpt.teacher"
    assert teacher_path.exists() and not path.exists()
    seconds_before = read_header(str(teacher_path))["timings"]["training"]
    assert seconds_before > 0
    fresh = CDSInference(model, num_samples=20, checkpoint=path, **TINY)
    fresh.run(jax.random.key(0))
    # The training clock counts the interrupted process's seconds too.
    assert fresh.timings["teacher_training"] > seconds_before
    assert path.exists()  # and the student's, once it trained
    np.testing.assert_array_equal(
        fresh.get_samples()["x"], reference.get_samples()["x"]
    )
    assert fresh.training_losses["distillation_loss"].shape == (20,)
    assert fresh.training_losses["teacher_kl_loss"].shape == (20,)

    def other_model():
        numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0))

    with pytest.raises(ValueError, match=r"dim \(file: 1, now: 3\)"):
        CDSInference(other_model, checkpoint=path, **TINY).run(jax.random.key(0))
    wider = dict(TINY, batch_size=16)
    from numpyro_cds import ConsistencyConfig

    with pytest.raises(ValueError, match=r"settings\.consistency\.width"):
        CDSInference(
            model, checkpoint=path, consistency=ConsistencyConfig(width=8), **wider
        ).run(jax.random.key(0))
    with pytest.raises(ValueError, match="rng_key"):
        CDSInference(model, checkpoint=path, **TINY).run(jax.random.key(1))
    with pytest.raises(ValueError, match=r"settings\.train\.learning_rate"):
        CDSInference(model, checkpoint=path, learning_rate=1e-3, **TINY).run(
            jax.random.key(0)
        )


def test_a_checkpoint_for_other_data_is_refused(tmp_path):
    def model(y):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    path = tmp_path / "cds.ckpt"
    options = dict(TINY, num_train_steps=10)
    CDSInference(model, num_samples=5, checkpoint=path, **options).run(
        jax.random.key(0), jnp.ones(3)
    )
    with pytest.raises(ValueError, match="model_arguments_sha256"):
        CDSInference(model, num_samples=5, checkpoint=path, **options).run(
            jax.random.key(0), jnp.zeros(3)
        )


def test_a_checkpoint_of_another_model_of_the_same_dimension_is_refused(tmp_path):
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    def other():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    path = tmp_path / "cds.ckpt"
    options = dict(TINY, num_train_steps=10)
    CDSInference(model, num_samples=5, checkpoint=path, **options).run(
        jax.random.key(0)
    )
    with pytest.raises(ValueError, match=r"not resumed.*sites"):
        CDSInference(other, num_samples=5, checkpoint=path, **options).run(
            jax.random.key(0)
        )


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_a_pickled_checkpoint_runs_no_code(tmp_path):
    """A crafted pickle (or a numpyro_cds 0.1 checkpoint) is refused, not loaded."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(str(marker))))

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="not a numpyro_cds checkpoint"):
        CDSInference(model, checkpoint=path, **TINY).run(jax.random.key(0))
    assert not marker.exists()


def test_an_auto_training_resumed_from_its_checkpoint_stops_where_it_would_have(
    monkeypatch, tmp_path
):
    """The plateau mark is kept in the checkpoint: the same stop, the same draws."""

    def model():
        numpyro.sample("x", dist.Normal(1.0, 2.0))

    auto = dict(
        TINY,
        num_train_steps="auto",
        max_train_steps=200,
        monitor=MonitorConfig(plateau_iterations=20, num_draws=64),
    )
    reference = CDSInference(model, num_samples=20, **auto)
    reference.run(jax.random.key(0))
    # The whitening is this Gaussian posterior: nothing improves by 10 %.
    assert reference.training_iterations == 20

    path = tmp_path / "auto.ckpt"
    monkeypatch.setattr(numpyro_cds.session, "fit", _interrupting_fit)
    with pytest.raises(KeyboardInterrupt):
        CDSInference(model, num_samples=20, checkpoint=path, **auto).run(
            jax.random.key(0)
        )
    monkeypatch.setattr(numpyro_cds.session, "fit", _ORIGINAL_FIT)
    resumed = CDSInference(model, num_samples=20, checkpoint=path, **auto)
    resumed.run(jax.random.key(0))
    for name, losses in reference.training_losses.items():
        assert resumed.training_losses[name].shape == losses.shape, name
    np.testing.assert_array_equal(
        resumed.get_samples()["x"], reference.get_samples()["x"]
    )

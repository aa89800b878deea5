"""The methods: DIS against its analytic optimum, CDDS from given and own teachers."""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, ROOT, eight_schools

from numpyro_cds import CDSInference
from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.diffusion import control, target_score_fn
from numpyro_cds.sde import LinearSchedule
from numpyro_cds.session import sampler_algorithm
from numpyro_cds.train import fit

#: The settings of the session's ``trained_eight_schools`` (a teacher must match).
TEACHER = dict(batch_size=16, num_sde_steps=4, chunk_size=10, progress_bar=False)
TINY = dict(TEACHER, num_train_steps=10, num_samples=40, correction=None)


def test_the_trained_dis_control_is_the_analytic_optimum_on_a_gaussian():
    """For a Gaussian target the noising process has Gaussian marginals ``p_t`` and the
    DIS optimum is ``u*(x, t) = sigma(t) grad log p_t(x)`` (Nelson's relation).
    """
    mean, sd, num_steps = 1.0, 0.5, 64
    schedule = LinearSchedule()

    def logdensity(x):
        return -0.5 * jnp.sum(((x - mean) / sd) ** 2)

    def marginal(t):
        """Mean factor and sd of ``p_t``: the target noised for time ``1 - t``."""
        tau = 1.0 - t
        integral = schedule.beta_min * tau
        integral += (schedule.beta_max - schedule.beta_min) * tau**2 / 2
        alpha = np.exp(-integral / 2)
        return alpha, np.sqrt(alpha**2 * sd**2 + 1 - alpha**2)

    config = ConsistencyConfig(num_sde_steps=num_steps, batch_size=128, width=32)
    settings_like = type("S", (), {"consistency": config, "method": "dis"})
    algorithm = sampler_algorithm(settings_like, logdensity, 1, optax.adam(3e-3))

    def relative_errors(params):
        network = eqx.combine(params, static)
        errors = []
        for t in (0.25, 0.5, 0.75, 1 - 1 / num_steps):
            alpha, marginal_sd = marginal(t)
            xs = alpha * mean + marginal_sd * jnp.linspace(-2.0, 2.0, 21)[:, None]
            learned = jax.vmap(
                lambda x, t=t: control(
                    network,
                    schedule,
                    x,
                    t,
                    1.0 / num_steps,
                    target_score_fn(logdensity)(x),
                    jnp.float32(10.0),
                )
            )(xs)
            optimum = -schedule.sigma(t) * (xs - alpha * mean) / marginal_sd**2
            errors.append(
                float(jnp.linalg.norm(learned - optimum) / jnp.linalg.norm(optimum))
            )
        return np.array(errors)

    state, static = algorithm.init(jax.random.key(0))
    assert relative_errors(state.ema_params).max() > 0.5  # the start is far off
    state, info = fit(
        jax.random.key(1),
        algorithm.step,
        state,
        static,
        1000,
        chunk_size=500,
        progress_bar=False,
    )
    assert np.all(np.isnan(info.consistency_loss))  # DIS: no self-consistency update
    assert relative_errors(state.ema_params).max() < 0.06


def test_dis_draws_with_its_sde_by_default():
    cds = CDSInference(eight_schools, method="dis", **TINY)
    assert (cds.num_steps, cds.sampling) == (4, "sde")
    cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert np.all(np.isnan(cds.training_losses["consistency_loss"]))
    assert np.isfinite(cds.log_evidence()[0])
    assert cds.trained_teacher is None  # only a distillation trains a teacher


def test_cdds_draws_with_consistency_steps_only():
    with pytest.raises(ValueError, match="draws with consistency steps"):
        CDSInference(eight_schools, method="cdds", sampling="sde", **TEACHER)
    with pytest.raises(ValueError, match="method must be one of"):
        CDSInference(eight_schools, method="nuts")


def test_cdds_distils_a_given_teacher(trained_eight_schools):
    # The session's sampler is the default CDDS: its DDS teacher teaches again.
    teacher = trained_eight_schools.trained_teacher
    assert teacher.method == "dds"
    cds = CDSInference(eight_schools, method="cdds", teacher=teacher, **TINY)
    cds.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert cds.whitening is teacher.whitening  # the teacher's coordinates
    assert cds.training_iterations == 10
    assert set(cds.training_losses) == {"distillation_loss", "kept_fraction"}
    assert np.isfinite(cds.log_evidence()[0])
    # Two consistency steps, re-noised in between, with their auxiliary weights.
    _, log_weights = cds.sample(jax.random.key(2), 40, 2, True)
    assert np.all(np.isfinite(log_weights))
    student = CDSInference(
        eight_schools, method="cdds", teacher=trained_eight_schools.trained, **TINY
    )
    with pytest.raises(ValueError, match="A CDDS sampler cannot be a CDDS teacher"):
        student.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)


def test_a_teacher_of_other_settings_or_another_dimension_is_refused(
    trained_eight_schools,
):
    teacher = trained_eight_schools.trained_teacher
    wider = CDSInference(
        eight_schools, method="cdds", teacher=teacher, **dict(TINY, num_sde_steps=8)
    )
    with pytest.raises(ValueError, match=r"num_sde_steps 4 \(student: 8\)"):
        wider.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)

    def one_site():
        import numpyro
        import numpyro.distributions as dist

        numpyro.sample("x", dist.Normal(0.0, 1.0))

    other = CDSInference(one_site, method="cdds", teacher=teacher, **TINY)
    with pytest.raises(ValueError, match="samples 10 dimensions"):
        other.run(jax.random.key(1))
    with pytest.raises(TypeError, match="teacher= a TrainedSampler"):
        CDSInference(eight_schools, method="cdds", teacher=3, **TINY).run(
            jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y
        )


_DISTIL_SAVED_TEACHER = """
import sys
import jax, numpy as np
sys.path.insert(0, {examples!r})
from eight_schools import SIGMA, Y, model
from numpyro_cds import CDSInference
cds = CDSInference(model, method="cdds", teacher={path!r}, num_train_steps=10,
                   batch_size=16, num_sde_steps=4, chunk_size=10, num_samples=40,
                   correction=None, progress_bar=False)
cds.run(jax.random.key(1), SIGMA, y=Y)
np.save({out!r}, cds.get_extra_fields()["log_weight"])
"""


def test_a_saved_teacher_is_distilled_in_a_new_process_and_checked(tmp_path):
    path, out = str(tmp_path / "teacher.cds"), str(tmp_path / "log_weights.npy")
    teacher = CDSInference(eight_schools, method="dis", **TINY)
    teacher.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    teacher.save(path)
    script = _DISTIL_SAVED_TEACHER.format(
        examples=os.path.join(ROOT, "examples"), path=path, out=out
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    in_memory = CDSInference(
        eight_schools, method="cdds", teacher=teacher.trained, **TINY
    )
    in_memory.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    np.testing.assert_array_equal(
        np.load(out), in_memory.get_extra_fields()["log_weight"]
    )
    other_data = CDSInference(eight_schools, method="cdds", teacher=path, **TINY)
    with pytest.raises(ValueError, match="not loaded.*model_arguments_sha256"):
        other_data.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y + 1)


def test_cdds_trains_a_dis_teacher_first_when_asked():
    cds = CDSInference(eight_schools, method="cdds", teacher_method="dis", **TINY)
    cds.run(jax.random.key(2), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert cds.is_trained and cds.training_iterations == 10
    assert np.all(np.isnan(cds.training_losses["teacher_consistency_loss"]))
    assert len(cds.training_losses["teacher_diffusion_loss"]) == 10
    assert {"teacher_training", "training", "sampling"} <= set(cds.timings)
    assert np.isfinite(cds.log_evidence()[0])


def test_cdds_trains_a_dds_teacher_when_asked_and_keeps_its_score_form(
    tmp_path, capsys
):
    cds = CDSInference(
        eight_schools, method="cdds", teacher_method="dds", whitening=None, **TINY
    )
    cds.run(jax.random.key(2), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert len(cds.training_losses["teacher_kl_loss"]) == 10
    cds.print_summary()
    assert "CDS: a DDS teacher trained for 10 iterations" in capsys.readouterr().out
    # The student is a copy of the DDS network: its gated score form draws.
    assert cds.trained.network.score_form == "gated"
    assert np.isfinite(cds.log_evidence()[0])
    path = str(tmp_path / "cdds.cds")
    cds.save(path)
    loaded = CDSInference.load(path, eight_schools, num_samples=40, correction=None)
    loaded.run(jax.random.key(2), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert loaded.trained.network.score_form == "gated"
    assert loaded.teacher_method == "dds"
    np.testing.assert_array_equal(
        loaded.get_extra_fields()["log_weight"], cds.get_extra_fields()["log_weight"]
    )
    with pytest.raises(ValueError, match="teacher_method must be one of"):
        CDSInference(eight_schools, method="cdds", teacher_method="pis")
    with pytest.raises(ValueError, match="and a teacher="):
        CDSInference(
            eight_schools, method="cdds", teacher=cds.trained, teacher_method="dds"
        )
    with pytest.raises(ValueError, match="only with method='cdds'"):
        CDSInference(eight_schools, method="scds", teacher_method="dds")

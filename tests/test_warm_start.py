"""Warm starts (``init=``): a refit on new data from an earlier fit, checked."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools

from numpyro_cds import CDSInference
from numpyro_cds.teachers import sampler_fingerprint

PRIOR_SD = 10.0
TINY = dict(
    num_train_steps=20,
    batch_size=16,
    num_sde_steps=4,
    chunk_size=10,
    num_samples=1000,
    progress_bar=False,
)


def normal_mean(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact_posterior(y):
    """Mean and sd of ``mu`` given ``y`` (conjugate normal)."""
    precision = 1.0 / PRIOR_SD**2 + y.size
    return float(jnp.sum(y) / precision), float(precision**-0.5)


Y = 1.0 + jax.random.normal(jax.random.key(3), (20,))


@pytest.fixture(scope="module")
def earlier_fit():
    cds = CDSInference(normal_mean, **TINY)
    cds.run(jax.random.key(0), Y)
    return cds


def test_a_reliable_earlier_sampler_draws_on_new_data_without_training(
    earlier_fit, tmp_path, capsys
):
    path = tmp_path / "earlier.cds"
    earlier_fit.save(path)
    new_y = Y + 0.1  # a small change of the data: the posterior moves 0.45 sd
    mean, sd = exact_posterior(new_y)
    for init in (earlier_fit.trained, path):
        refit = CDSInference(normal_mean, init=init, **TINY)
        refit.run(jax.random.key(1), new_y)
        assert refit.training_iterations == 0
        capsys.readouterr()
        refit.print_summary()
        assert (
            "Training of the sampler skipped: the warm start's"
            in capsys.readouterr().out
        )
        assert refit.whitening is earlier_fit.trained.whitening or init is path
        draws = np.asarray(refit.get_samples()["mu"])
        assert abs(draws.mean() - mean) < 0.1 * sd
        assert abs(np.log(draws.std() / sd)) < 0.1


def test_an_earlier_fit_far_from_the_new_posterior_trains_from_it(earlier_fit):
    """From the earlier CDSInference: its student and its teacher start the new ones."""
    init = earlier_fit.trained
    refit = CDSInference(normal_mean, init=earlier_fit, **TINY)
    refit.run(jax.random.key(1), Y + 10.0)  # 45 posterior sd away: unreliable
    assert refit.training_iterations == TINY["num_train_steps"]
    # No whitening fit: the teacher and the student train in the earlier coordinates.
    np.testing.assert_array_equal(refit.whitening.loc, init.whitening.loc)
    assert refit.trained_teacher.whitening is init.whitening
    session = refit._session
    starts = {
        "teacher": session.teacher_session._identity["init_sha256"],
        "student": session.student._identity["init_sha256"],
    }
    assert starts == {
        "teacher": sampler_fingerprint(earlier_fit.trained_teacher),
        "student": sampler_fingerprint(init),
    }


def test_an_init_of_another_kind_is_refused(earlier_fit):
    def refit(init, model=normal_mean, args=(Y,), **settings):
        CDSInference(model, init=init, **(TINY | settings)).run(
            jax.random.key(1), *args
        )

    with pytest.raises(TypeError, match="init is the earlier fit"):
        refit(3)
    with pytest.raises(ValueError, match="method 'dds' \\(this fit: 'cdds'\\)"):
        refit(earlier_fit.trained_teacher)
    with pytest.raises(ValueError, match="num_sde_steps 4 \\(this fit: 8\\)"):
        refit(earlier_fit.trained, num_sde_steps=8)
    with pytest.raises(ValueError, match="init samples 1 dimensions"):
        refit(
            earlier_fit.trained,
            eight_schools,
            (EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y),
        )

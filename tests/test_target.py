"""Model -> flat log density -> constrained draws, and the errors for bad models."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools
from numpyro.infer import MCMC, NUTS

from numpyro_cds.target import target_from_model


def test_logdensity_is_log_joint_plus_jacobian():
    target = target_from_model(
        jax.random.key(0), eight_schools, (EIGHT_SCHOOLS_SIGMA,), {"y": EIGHT_SCHOOLS_Y}
    )
    assert target.dim == 10
    x = jnp.linspace(-1.0, 1.0, 10)
    sites = target.unravel_fn(x)
    mu, log_tau, tt = sites["mu"], sites["tau"], sites["theta_tilde"]
    tau = jnp.exp(log_tau)
    expected = (
        dist.Normal(0.0, 5.0).log_prob(mu)
        + dist.HalfCauchy(5.0).log_prob(tau)
        + log_tau  # log |d tau / d log tau|
        + dist.Normal(0.0, 1.0).log_prob(tt).sum()
        + dist.Normal(mu + tau * tt, EIGHT_SCHOOLS_SIGMA)
        .log_prob(EIGHT_SCHOOLS_Y)
        .sum()
    )
    np.testing.assert_allclose(target.logdensity_fn(x), expected, rtol=1e-5)


def test_postprocess_matches_mcmc_sites():
    target = target_from_model(
        jax.random.key(0), eight_schools, (EIGHT_SCHOOLS_SIGMA,), {"y": EIGHT_SCHOOLS_Y}
    )
    mcmc = MCMC(NUTS(eight_schools), num_warmup=3, num_samples=3, progress_bar=False)
    mcmc.run(jax.random.key(1), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    reference = mcmc.get_samples()
    draws = jax.vmap(target.postprocess_fn)(target.init_positions[:3])
    assert set(draws) == set(reference) == {"mu", "tau", "theta_tilde", "theta"}
    for name in reference:
        assert draws[name].shape == reference[name].shape
    x = target.init_positions[0]
    one = target.postprocess_fn(x)
    np.testing.assert_allclose(
        one["tau"], jnp.exp(target.unravel_fn(x)["tau"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        one["theta"], one["mu"] + one["tau"] * one["theta_tilde"], rtol=1e-5
    )


def test_init_positions_are_finite_and_distinct():
    target = target_from_model(
        jax.random.key(0),
        eight_schools,
        (EIGHT_SCHOOLS_SIGMA,),
        {"y": EIGHT_SCHOOLS_Y},
        num_inits=4,
    )
    assert target.init_positions.shape == (4, 10)
    assert bool(
        jnp.all(jnp.isfinite(jax.vmap(target.logdensity_fn)(target.init_positions)))
    )
    assert len({tuple(np.asarray(p).round(6)) for p in target.init_positions}) == 4


def test_discrete_latent_site_is_rejected():
    def model():
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.3)

    with pytest.raises(ValueError, match="'z' is discrete.*enumerate"):
        target_from_model(jax.random.key(0), model)


def test_model_without_latent_sites_is_rejected():
    def model(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        target_from_model(jax.random.key(0), model, (jnp.ones(3),))


def test_non_finite_log_density_names_the_site():
    def model(counts):
        rate = numpyro.sample("rate", dist.Exponential(1.0))
        numpyro.sample("counts", dist.Poisson(rate), obs=counts)

    with pytest.warns(UserWarning, match="Out-of-support"):
        with pytest.raises(ValueError, match=r"not finite at site\(s\) \['counts'\]"):
            target_from_model(jax.random.key(0), model, (jnp.array([-1.0, 2.0]),))


def test_nan_factor_names_the_site():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("broken", jnp.nan)

    with pytest.raises(ValueError, match=r"\['broken'\]"):
        target_from_model(jax.random.key(0), model)


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="callable"):
        target_from_model(jax.random.key(0), "not a model")
    with pytest.raises(TypeError, match=r"not Python lists \(positional argument 0\)"):
        target_from_model(jax.random.key(0), eight_schools, ([15.0, 10.0],))
    with pytest.raises(TypeError, match="Check the arguments"):
        target_from_model(jax.random.key(0), eight_schools, ())
    with pytest.raises(TypeError, match="model_args must be a tuple"):
        target_from_model(jax.random.key(0), eight_schools, EIGHT_SCHOOLS_SIGMA)


def _regression(x, y=None):
    slope = numpyro.sample("slope", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


def test_observed_data_as_a_list_names_the_site():
    with pytest.raises(TypeError, match=r"Site 'y'.*Python list.*jnp.asarray"):
        target_from_model(jax.random.key(0), _regression, (1.0,), {"y": [1.0, 2.0]})


def test_data_of_mismatched_shapes_names_the_site():
    with pytest.raises(ValueError, match=r"Site 'y'.*shape \(4,\).*batch shape \(3,\)"):
        target_from_model(
            jax.random.key(0), _regression, (np.ones(3),), {"y": np.ones(4)}
        )


def test_subsampling_is_refused_in_this_librarys_words():
    def model(y):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", len(y), subsample_size=2) as index:
            numpyro.sample("y", dist.Normal(loc, 1.0), obs=y[index])

    with pytest.raises(ValueError, match="Plate 'data' subsamples.*subsample_size"):
        target_from_model(jax.random.key(0), model, (np.ones(5),))

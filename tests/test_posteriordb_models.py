"""posteriordb translations: Stan site names and a finite log density, on toy data."""

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import init_to_uniform
from numpyro.infer.util import initialize_model, log_density

from benchmarks.posteriordb import (
    MODELS,
    POSTERIOR_NAMES,
    load_posterior,
    model_args_from_data,
)

RNG = np.random.default_rng(0)
N = 6

# Same keys, types and shapes as posteriordb's data files, with a few rows.
TOY_DATA = {
    "eight_schools-eight_schools_noncentered": {
        "J": 3,
        "y": [28, 8, -3],
        "sigma": [15, 10, 16],
    },
    "earnings-earn_height": {
        "N": N,
        "earn": RNG.integers(1000, 50000, N).tolist(),
        "height": RNG.integers(60, 75, N).tolist(),
        "male": RNG.integers(0, 2, N).tolist(),
    },
    "low_dim_gauss_mix-low_dim_gauss_mix": {"N": N, "y": RNG.normal(size=N).tolist()},
    "arK-arK": {"K": 2, "T": N, "y": RNG.normal(size=N).tolist()},
    "garch-garch11": {"T": N, "y": RNG.normal(5.0, 1.0, N).tolist(), "sigma1": 0.5},
    "sblrc-blr": {
        "N": N,
        "D": 3,
        "X": RNG.normal(size=(N, 3)).tolist(),
        "y": RNG.normal(size=N).tolist(),
    },
    "diamonds-diamonds": {
        "N": N,
        "K": 4,
        "X": np.column_stack([np.ones(N), RNG.normal(size=(N, 3))]).tolist(),
        "Y": RNG.normal(8.0, 1.0, N).tolist(),
        "prior_only": 0,
    },
    "nes2000-nes": {
        "N": N,
        **{
            key: RNG.integers(1, 5, N).tolist()
            for key in ("age_discrete", "educ1", "income", "partyid7", "real_ideo")
        },
        "gender": RNG.integers(1, 3, N).tolist(),
        "race_adj": RNG.uniform(1.0, 2.0, N).tolist(),
        "year": [2000] * N,
    },
    "bball_drive_event_0-hmm_drive_0": {
        "N": N,
        "K": 2,
        "u": RNG.uniform(0.1, 0.3, N).tolist(),
        "v": RNG.uniform(1.0, 50.0, N).tolist(),
        "alpha": [[4, 2], [2, 4]],
    },
}
TOY_DATA["eight_schools-eight_schools_centered"] = TOY_DATA[
    "eight_schools-eight_schools_noncentered"
]

# Stan's parameters and their shapes for the toy data above.
STAN_PARAMETERS = {
    "eight_schools-eight_schools_noncentered": {
        "theta_trans": (3,),
        "mu": (),
        "tau": (),
    },
    "eight_schools-eight_schools_centered": {"theta": (3,), "mu": (), "tau": ()},
    "earnings-earn_height": {"beta": (2,), "sigma": ()},
    "low_dim_gauss_mix-low_dim_gauss_mix": {"mu": (2,), "sigma": (2,), "theta": ()},
    "arK-arK": {"alpha": (), "beta": (2,), "sigma": ()},
    "garch-garch11": {"mu": (), "alpha0": (), "alpha1": (), "beta1": ()},
    "sblrc-blr": {"beta": (3,), "sigma": ()},
    "diamonds-diamonds": {"b": (3,), "Intercept": (), "sigma": ()},
    "nes2000-nes": {"beta": (9,), "sigma": ()},
    "bball_drive_event_0-hmm_drive_0": {
        "theta1": (2,),
        "theta2": (2,),
        "phi": (2,),
        "lambda": (2,),
    },
}


def test_every_posterior_has_toy_data():
    assert set(TOY_DATA) == set(STAN_PARAMETERS) == set(MODELS) == set(POSTERIOR_NAMES)


@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_model_has_stan_parameters_and_finite_log_density(name):
    model = MODELS[name]
    model_args = model_args_from_data(name, TOY_DATA[name])
    init = handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_uniform)
    trace = handlers.trace(init).get_trace(*model_args)
    latent = {
        site_name: np.shape(site["value"])
        for site_name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    assert latent == STAN_PARAMETERS[name]
    params = {site_name: trace[site_name]["value"] for site_name in latent}
    log_joint, _ = log_density(model, model_args, {}, params)
    assert np.isfinite(log_joint)


def test_noncentered_eight_schools_exposes_theta():
    name = "eight_schools-eight_schools_noncentered"
    model_args = model_args_from_data(name, TOY_DATA[name])
    params = {"theta_trans": np.ones(3), "mu": 1.0, "tau": 2.0}
    trace = handlers.trace(handlers.substitute(MODELS[name], data=params)).get_trace(
        *model_args
    )
    np.testing.assert_allclose(trace["theta"]["value"], 3.0)


def test_garch_beta1_is_flat_below_one_minus_alpha1():
    name = "garch-garch11"
    model = MODELS[name]
    model_args = model_args_from_data(name, TOY_DATA[name])
    params = {"mu": 5.0, "alpha0": 1.0, "alpha1": 0.4, "beta1": 0.5}
    trace = handlers.trace(handlers.substitute(model, data=params)).get_trace(
        *model_args
    )
    np.testing.assert_allclose(trace["beta1"]["fn"].support.upper_bound, 0.6)
    # Without the likelihood, the log density does not depend on beta1.
    prior = handlers.block(model, hide=["y"])
    log_priors = [
        log_density(prior, model_args, {}, {**params, "beta1": b})[0]
        for b in (0.1, 0.5)
    ]
    np.testing.assert_allclose(log_priors, 0.0, atol=1e-6)


def test_garch_draws_of_beta1_use_the_current_alpha1():
    # NumPyro only replays the model in postprocessing for some dynamic supports.
    name = "garch-garch11"
    model_args = model_args_from_data(name, TOY_DATA[name])
    init = initialize_model(jax.random.key(0), MODELS[name], model_args=model_args)
    z = {**init.param_info.z, "alpha1": 2.0, "beta1": 0.0}
    params = init.postprocess_fn(z)
    np.testing.assert_allclose(params["beta1"], (1 - params["alpha1"]) / 2, rtol=1e-6)


def test_unknown_posterior_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="known posteriors"):
        load_posterior(str(tmp_path), "nope-nope")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="garch-garch11.json"):
        load_posterior(str(tmp_path), "garch-garch11")


def test_diamonds_centres_predictors_and_drops_intercept():
    name = "diamonds-diamonds"
    Xc, Y = model_args_from_data(name, TOY_DATA[name])
    assert Xc.shape == (N, 3) and Y.shape == (N,)
    np.testing.assert_allclose(np.mean(Xc, axis=0), 0.0, atol=1e-6)


def test_arK_lags_match_stan_indexing():
    y = np.arange(1.0, N + 1)
    y_lagged, y_target = model_args_from_data("arK-arK", {"K": 2, "T": N, "y": y})
    # Stan: y[t] ~ normal(alpha + beta[1] * y[t - 1] + beta[2] * y[t - 2], sigma).
    np.testing.assert_array_equal(y_target, y[2:])
    np.testing.assert_array_equal(y_lagged[:, 0], y[1:-1])
    np.testing.assert_array_equal(y_lagged[:, 1], y[:-2])

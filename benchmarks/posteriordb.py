"""Posteriors of posteriordb as NumPyro models, with their reference draws.

Each model translates the Stan program of stan-dev/posteriordb
(``posterior_database/models/stan/<model>.stan``) so that its posterior is exactly
Stan's:

- latent sites carry Stan's parameter names and shapes, so that
  :func:`numpyro_cds.diagnostics.flatten_samples` gives the reference draws' keys
  (transformed parameters are ``numpyro.deterministic`` sites);
- a bounded parameter with a prior statement gets the NumPyro distribution with that
  support, one with no prior statement a flat density on its support
  (:class:`~numpyro.distributions.ImproperUniform`);
- ``target +=`` terms that are not a distribution over one site are
  ``numpyro.factor`` sites, and mixtures are marginalised as in Stan;
- Stan's ``transformed data`` is computed by :func:`model_args_from_data`.

``gp_pois_regr-gp_pois_regr`` (its 1e-10 jitter needs float64) and
``hudson_lynx_hare-lotka_volterra`` (an ODE solver) are not translated.

Example::

    posterior = load_posterior("../shared/data/posteriordb", "garch-garch11")
    mcmc = MCMC(NUTS(posterior.model), num_warmup=1000, num_samples=1000)
    mcmc.run(jax.random.key(0), *posterior.model_args)
    errors = standardized_errors(
        flatten_samples(mcmc.get_samples()), posterior.reference
    )
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "MODELS",
    "POSTERIOR_NAMES",
    "Posterior",
    "arK",
    "blr",
    "diamonds",
    "earn_height",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "garch11",
    "hmm_drive_0",
    "load_posterior",
    "low_dim_gauss_mix",
    "model_args_from_data",
    "nes",
]


def _flat(support, event_shape=()):
    """Stan's density for a parameter with no prior statement: flat on its support."""
    return dist.ImproperUniform(support, (), event_shape)


def eight_schools_noncentered(sigma, y):
    """Non-centred eight schools (``eight_schools_noncentered.stan``).

    Args:
        sigma: standard errors of the eight estimates, shape ``(J,)``.
        y: estimated treatment effects, shape ``(J,)``.
    """
    theta_trans = numpyro.sample(
        "theta_trans", dist.Normal(jnp.zeros_like(sigma), 1.0).to_event(1)
    )
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def eight_schools_centered(sigma, y):
    """Centred eight schools (``eight_schools_centered.stan``).

    Args:
        sigma: standard errors of the eight estimates, shape ``(J,)``.
        y: estimated treatment effects, shape ``(J,)``.
    """
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    theta = numpyro.sample(
        "theta", dist.Normal(mu, tau).expand(sigma.shape).to_event(1)
    )
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def earn_height(height, earn):
    """Earnings on height with flat priors (``earn_height.stan``).

    Args:
        height: heights, shape ``(N,)``.
        earn: earnings, shape ``(N,)``.
    """
    beta = numpyro.sample("beta", _flat(constraints.real_vector, (2,)))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    mean = beta[0] + beta[1] * height
    numpyro.sample("earn", dist.Normal(mean, sigma).to_event(1), obs=earn)


def low_dim_gauss_mix(y):
    """Two-component normal mixture with ordered means (``low_dim_gauss_mix.stan``).

    ``ordered[2] mu`` is flat on the ordered vectors, with its ``normal(0, 2)``
    statement added as a factor; the component label is summed out (Stan's
    ``log_mix``).

    Args:
        y: observations, shape ``(N,)``.
    """
    mu = numpyro.sample("mu", _flat(constraints.ordered_vector, (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand((2,)).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=jnp.stack([theta, 1.0 - theta])),
        dist.Normal(mu, sigma),
    )
    numpyro.sample("y", mixture.expand(y.shape).to_event(1), obs=y)


def arK(y_lagged, y):
    """Autoregression of order K (``arK.stan``).

    Args:
        y_lagged: ``y_lagged[i, k] = y[t - k - 1]`` for the i-th modelled time
            ``t = K + i`` (0-based), shape ``(T - K, K)``.
        y: the modelled values ``y[K:]``, shape ``(T - K,)``.
    """
    order = y_lagged.shape[-1]
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand((order,)).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = alpha + y_lagged @ beta
    numpyro.sample("y", dist.Normal(mean, sigma).to_event(1), obs=y)


def garch11(sigma1, y):
    """GARCH(1, 1) volatility model with flat priors (``garch11.stan``).

    ``beta1`` is declared ``real<lower=0, upper=(1 - alpha1)>`` with no prior
    statement, so its density is flat (one, not ``1 / (1 - alpha1)``) on that
    parameter-dependent interval: it is drawn from ``Uniform(0, 1 - alpha1)`` and a
    factor ``log(1 - alpha1)`` cancels that density. Its unconstraining transform
    brings the Jacobian ``1 - alpha1``, as Stan's does. (``ImproperUniform`` on the
    interval has the right density, but NumPyro's postprocessing only replays the
    model for dynamic supports that are bare intervals, so it would map the draws
    of ``beta1`` back with the initial ``alpha1``.)

    Args:
        sigma1: volatility at the first time, scalar.
        y: the series, shape ``(T,)``.
    """
    mu = numpyro.sample("mu", _flat(constraints.real))
    alpha0 = numpyro.sample("alpha0", _flat(constraints.positive))
    alpha1 = numpyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    beta1 = numpyro.sample("beta1", dist.Uniform(0.0, 1.0 - alpha1))
    numpyro.factor("beta1_flat", jnp.log1p(-alpha1))

    def volatility(sigma_previous, y_previous):
        variance = alpha0 + alpha1 * (y_previous - mu) ** 2 + beta1 * sigma_previous**2
        sigma_next = jnp.sqrt(variance)
        return sigma_next, sigma_next

    _, sigma_rest = jax.lax.scan(volatility, sigma1, y[:-1])
    sigma = jnp.concatenate([jnp.reshape(sigma1, (1,)), sigma_rest])
    numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)


def blr(X, y):
    """Bayesian linear regression (``blr.stan``).

    Args:
        X: design matrix, shape ``(N, D)``.
        y: responses, shape ``(N,)``.
    """
    beta = numpyro.sample(
        "beta", dist.Normal(0.0, 10.0).expand((X.shape[-1],)).to_event(1)
    )
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    numpyro.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)


def diamonds(Xc, Y):
    """Linear regression of log price on 24 predictors, by brms (``diamonds.stan``).

    ``sigma``'s ``student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10)``
    is the half-t density, the folded Student t.

    Args:
        Xc: column-centred design matrix without its intercept column,
            shape ``(N, K - 1)``.
        Y: responses, shape ``(N,)``.
    """
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand((Xc.shape[-1],)).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample(
        "sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0))
    )
    mean = intercept + Xc @ b
    numpyro.sample("Y", dist.Normal(mean, sigma).to_event(1), obs=Y)


def nes(design, partyid7):
    """Party identification on eight predictors, flat priors (``nes.stan``).

    Args:
        design: columns ``real_ideo, race_adj, age30_44, age45_64, age65up, educ1,
            gender, income``, shape ``(N, 8)``.
        partyid7: responses, shape ``(N,)``.
    """
    beta = numpyro.sample("beta", _flat(constraints.real_vector, (9,)))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    mean = beta[0] + design @ beta[1:]
    numpyro.sample("partyid7", dist.Normal(mean, sigma).to_event(1), obs=partyid7)


def _hmm_log_likelihood(log_transition, log_emission):
    """Stan's forward algorithm (no initial-state term): log p(observations).

    Args:
        log_transition: ``log_transition[j, k] = log p(k | j)``, shape ``(K, K)``.
        log_emission: log density of each time's observations under each state,
            shape ``(N, K)``.
    """

    def forward(gamma, log_emission_t):
        gamma = (
            jax.nn.logsumexp(gamma[:, None] + log_transition, axis=0) + log_emission_t
        )
        return gamma, None

    gamma, _ = jax.lax.scan(forward, log_emission[0], log_emission[1:])
    return jax.nn.logsumexp(gamma)


def hmm_drive_0(alpha, u, v):
    """Two-state hidden Markov model of basketball drives (``hmm_drive_0.stan``).

    ``positive_ordered`` ``phi`` and ``lambda`` are flat on their support, with their
    normal ``target +=`` statements added as factors; the hidden states are summed
    out by the forward algorithm.

    Args:
        alpha: Dirichlet concentrations of the transition rows, shape ``(2, 2)``.
        u: inverse speeds, shape ``(N,)``.
        v: distances to the hoop, shape ``(N,)``.
    """
    theta1 = numpyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(alpha[1]))
    phi = numpyro.sample("phi", _flat(constraints.positive_ordered_vector, (2,)))
    lam = numpyro.sample("lambda", _flat(constraints.positive_ordered_vector, (2,)))
    prior_means = jnp.array([0.0, 3.0])
    numpyro.factor("phi_prior", dist.Normal(prior_means, 1.0).log_prob(phi).sum())
    numpyro.factor("lambda_prior", dist.Normal(prior_means, 1.0).log_prob(lam).sum())
    log_emission = dist.Exponential(phi).log_prob(u[:, None])
    log_emission += dist.Exponential(lam).log_prob(v[:, None])
    log_transition = jnp.log(jnp.stack([theta1, theta2]))
    numpyro.factor("uv", _hmm_log_likelihood(log_transition, log_emission))


MODELS: dict[str, Callable] = {
    "eight_schools-eight_schools_noncentered": eight_schools_noncentered,
    "eight_schools-eight_schools_centered": eight_schools_centered,
    "earnings-earn_height": earn_height,
    "low_dim_gauss_mix-low_dim_gauss_mix": low_dim_gauss_mix,
    "arK-arK": arK,
    "garch-garch11": garch11,
    "sblrc-blr": blr,
    "diamonds-diamonds": diamonds,
    "nes2000-nes": nes,
    "bball_drive_event_0-hmm_drive_0": hmm_drive_0,
}

POSTERIOR_NAMES: tuple[str, ...] = tuple(MODELS)


def _array(values):
    """A float32 JAX array (the data files hold integers and float64)."""
    return jnp.asarray(np.asarray(values, dtype=np.float32))


def _eight_schools_args(data):
    return _array(data["sigma"]), _array(data["y"])


def _arK_args(data):
    y = np.asarray(data["y"], dtype=np.float32)
    order = int(data["K"])
    lagged = np.stack([y[order - k : len(y) - k] for k in range(1, order + 1)], axis=1)
    return jnp.asarray(lagged), jnp.asarray(y[order:])


def _diamonds_args(data):
    if data["prior_only"]:
        raise ValueError("diamonds data with prior_only = 1 is not supported")
    X = np.asarray(data["X"], dtype=np.float64)[:, 1:]
    return _array(X - X.mean(axis=0)), _array(data["Y"])


def _nes_args(data):
    age = np.asarray(data["age_discrete"])
    columns = [
        data["real_ideo"],
        data["race_adj"],
        age == 2,
        age == 3,
        age == 4,
        data["educ1"],
        data["gender"],
        data["income"],
    ]
    return _array(np.stack(columns, axis=1)), _array(data["partyid7"])


_ARGS_FROM_DATA: dict[str, Callable[[dict], tuple]] = {
    "eight_schools-eight_schools_noncentered": _eight_schools_args,
    "eight_schools-eight_schools_centered": _eight_schools_args,
    "earnings-earn_height": lambda d: (_array(d["height"]), _array(d["earn"])),
    "low_dim_gauss_mix-low_dim_gauss_mix": lambda d: (_array(d["y"]),),
    "arK-arK": _arK_args,
    "garch-garch11": lambda d: (_array(d["sigma1"]), _array(d["y"])),
    "sblrc-blr": lambda d: (_array(d["X"]), _array(d["y"])),
    "diamonds-diamonds": _diamonds_args,
    "nes2000-nes": _nes_args,
    "bball_drive_event_0-hmm_drive_0": lambda d: tuple(
        _array(d[key]) for key in ("alpha", "u", "v")
    ),
}


def _check_name(name):
    if name not in MODELS:
        known = ", ".join(POSTERIOR_NAMES)
        raise ValueError(f"unknown posterior {name!r}; known posteriors: {known}")


def model_args_from_data(name: str, data: dict) -> tuple:
    """The model's positional arguments, built from posteriordb's data dict.

    Args:
        name: posteriordb posterior name, one of :data:`POSTERIOR_NAMES`.
        data: the posterior's data JSON, as loaded.

    Returns:
        Float32 arrays, in the order of the model's arguments (Stan's transformed
        data, such as centred or lagged design matrices, already computed).

    Raises:
        ValueError: ``name`` is not a known posterior.
    """
    _check_name(name)
    return _ARGS_FROM_DATA[name](data)


@dataclass(frozen=True)
class Posterior:
    """A posteriordb posterior, ready for inference.

    Attributes:
        name: posteriordb name, e.g. ``"garch-garch11"``.
        model: the NumPyro model.
        model_args: its positional arguments.
        reference: flat Stan-named reference draws, shape ``(10000,)`` each
            (``None`` where posteriordb has none).
    """

    name: str
    model: Callable
    model_args: tuple
    reference: dict[str, np.ndarray] | None


def _read_json(path):
    """A JSON file, or the single JSON file inside a ``.zip``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"posteriordb file not found: {path}")
    if not path.endswith(".zip"):
        with open(path) as file:
            return json.load(file)
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(archive.namelist()[0]))


def _reference_draws(root, reference_name):
    """Reference chains of ``reference_name``, concatenated per parameter."""
    path = os.path.join(
        root, "reference_posteriors", "draws", "draws", f"{reference_name}.json.zip"
    )
    chains = _read_json(path)
    return {
        key: np.concatenate([np.asarray(chain[key]) for chain in chains])
        for key in chains[0]
    }


def load_posterior(root: str, name: str) -> Posterior:
    """Load a posterior's model, data and reference draws from posteriordb.

    Args:
        root: path of the ``posterior_database`` folder (posteriors/, data/, ...).
        name: posteriordb posterior name, one of :data:`POSTERIOR_NAMES`.

    Returns:
        The :class:`Posterior`. Its reference is the draws posteriordb names for it
        (centred eight schools uses the non-centred reference).

    Raises:
        ValueError: ``name`` is not a known posterior.
        FileNotFoundError: a posteriordb file is missing (its path is named).
    """
    _check_name(name)
    info = _read_json(os.path.join(root, "posteriors", f"{name}.json"))
    data = _read_json(
        os.path.join(root, "data", "data", f"{info['data_name']}.json.zip")
    )
    reference_name = info.get("reference_posterior_name")
    reference = _reference_draws(root, reference_name) if reference_name else None
    return Posterior(name, MODELS[name], model_args_from_data(name, data), reference)

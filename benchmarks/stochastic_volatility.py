"""A 103-dimensional stochastic-volatility posterior with a NUTS reference.

Usage (from the repository root)::

    python -m benchmarks.stochastic_volatility --out results/sv_reference.npz

Model.  The standard stochastic-volatility model of daily returns ``y_t``, with a
latent AR(1) log-volatility ``h_t``::

    h_1 ~ Normal(mu, sigma / sqrt(1 - phi^2))
    h_t = mu + phi (h_{t-1} - mu) + sigma eps_t,   eps_t ~ Normal(0, 1)
    y_t ~ Normal(0, exp(h_t / 2))

with priors ``mu ~ Normal(-1, 1)``, ``phi ~ Uniform(-1, 1)`` and
``sigma ~ HalfNormal(0.5)``.  :func:`stochastic_volatility` writes it in the
non-centred parameterisation: the latent site ``h_std`` holds the standardised
innovations (one site of shape ``(num_days,)``) and ``h`` is a deterministic site built
from them by :func:`jax.lax.scan`, so that NUTS does not meet the funnel between
``sigma`` and ``h``.  The unconstrained dimension is ``3 + num_days`` (103 for the
default data).

Data.  :func:`simulate_returns` draws ``SV_NUM_DAYS = 100`` returns from the model with
the true parameters ``mu = -1``, ``phi = 0.95``, ``sigma = 0.25`` (module constants
``SV_TRUE_MU``, ``SV_TRUE_PHI``, ``SV_TRUE_SIGMA``), using
:func:`numpy.random.default_rng` with a fixed seed, so the data are the same on every
machine.

Reference.  :func:`reference_draws` runs NumPyro's NUTS (4 sequential chains, 2000
warmup and 2500 kept iterations each) on the simulated data and accepts the draws only
if every latent site has split R-hat below 1.01 and effective sample size above 400 in
:func:`numpyro.diagnostics.summary`, and at most 0.5% of the transitions diverged.
With 100 days ``phi`` is weakly identified (posterior sd about 0.46) and reaches close
to 1, where ``h_1``'s stationary scale ``sigma / sqrt(1 - phi^2)`` makes a funnel
between ``phi`` and ``h_std[1]``: at target acceptance 0.9 about 1% of NUTS
transitions diverge there, so the reference uses target acceptance 0.99 (smaller
steps).  Chains start from NumPyro's ``init_to_uniform(radius=0.5)``: with the default
radius 2 a chain can start at ``sigma`` near 7, where its step size collapses in warmup
and it never moves.  The draws are returned flat and named Stan-style as
:func:`numpyro_cds.diagnostics.flatten_samples` names them (``mu``, ``phi``,
``sigma``, ``h_std[1]`` ... ``h_std[100]``; latent sites only, not the deterministic
``h``), so that ``standardized_errors(flatten_samples(cds.get_samples()), reference)``
compares a sampler with the reference.  They can be cached in an ``.npz`` file, which is read with
``allow_pickle=False`` (loading a reference never executes code).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS, init_to_uniform

from numpyro_cds.diagnostics import flatten_samples

__all__ = [
    "SV_NUM_DAYS",
    "SV_TRUE_MU",
    "SV_TRUE_PHI",
    "SV_TRUE_SIGMA",
    "LATENT_SITES",
    "simulate_returns",
    "stochastic_volatility",
    "run_reference_nuts",
    "reference_draws",
]

SV_NUM_DAYS = 100
SV_TRUE_MU = -1.0
SV_TRUE_PHI = 0.95
SV_TRUE_SIGMA = 0.25
LATENT_SITES = ("mu", "phi", "sigma", "h_std")
MAX_R_HAT = 1.01
MIN_N_EFF = 400.0
MAX_DIVERGENCE_FRACTION = 0.005
TARGET_ACCEPT_PROB = 0.99


def simulate_returns(seed: int = 0, num_days: int = SV_NUM_DAYS) -> np.ndarray:
    """Daily returns simulated from the SV model with the true parameters.

    Args:
        seed: seed of :func:`numpy.random.default_rng`.
        num_days: number of days (returns).

    Returns:
        Float64 array of shape ``(num_days,)``.

    Raises:
        ValueError: ``num_days`` is below 1.

    Example:
        >>> simulate_returns(seed=1, num_days=5).shape
        (5,)
    """
    if num_days < 1:
        raise ValueError(f"num_days must be at least 1, got {num_days}.")
    rng = np.random.default_rng(seed)
    mu, phi, sigma = SV_TRUE_MU, SV_TRUE_PHI, SV_TRUE_SIGMA
    h = np.empty(num_days, dtype=np.float64)
    h[0] = mu + sigma / np.sqrt(1.0 - phi**2) * rng.standard_normal()
    for t in range(1, num_days):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * rng.standard_normal()
    return np.exp(h / 2.0) * rng.standard_normal(num_days)


def stochastic_volatility(y) -> None:
    """NumPyro model of the SV posterior, non-centred in the log-volatilities.

    Latent sites ``mu``, ``phi``, ``sigma`` (scalars) and ``h_std`` (shape
    ``(num_days,)``, one site); deterministic site ``h`` (the log-volatilities);
    observed site ``y``.

    Args:
        y: returns, shape ``(num_days,)``.
    """
    y = jnp.asarray(y)
    num_days = y.shape[0]
    mu = numpyro.sample("mu", dist.Normal(-1.0, 1.0))
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
    h_std = numpyro.sample(
        "h_std", dist.Normal(0.0, 1.0).expand([num_days]).to_event(1)
    )
    h_first = mu + sigma / jnp.sqrt(1.0 - phi**2) * h_std[0]

    def step(h_previous, innovation):
        h_t = mu + phi * (h_previous - mu) + sigma * innovation
        return h_t, h_t

    _, h_rest = jax.lax.scan(step, h_first, h_std[1:])
    h = numpyro.deterministic("h", jnp.concatenate([h_first[None], h_rest]))
    numpyro.sample("y", dist.Normal(0.0, jnp.exp(h / 2.0)).to_event(1), obs=y)


def _check_diagnostics(site_summary: dict) -> dict[str, dict[str, float]]:
    """Worst R-hat and n_eff of each latent site; raise if one fails the thresholds."""
    worst = {}
    for name in LATENT_SITES:
        stats = site_summary[name]
        worst[name] = {
            "max_r_hat": float(np.max(stats["r_hat"])),
            "min_n_eff": float(np.min(stats["n_eff"])),
        }
    for name, stats in worst.items():
        if not stats["max_r_hat"] < MAX_R_HAT or not stats["min_n_eff"] > MIN_N_EFF:
            raise RuntimeError(
                f"NUTS reference failed its diagnostics at site {name!r}: max R-hat "
                f"{stats['max_r_hat']:.4f} (needs < {MAX_R_HAT}), min n_eff "
                f"{stats['min_n_eff']:.0f} (needs > {MIN_N_EFF:.0f}). Run more warmup "
                "or samples."
            )
    return worst


def run_reference_nuts(
    num_chains: int = 4,
    num_warmup: int = 2000,
    num_samples: int = 2500,
    seed: int = 0,
    target_accept_prob: float = TARGET_ACCEPT_PROB,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run NUTS on the simulated data and check its diagnostics.

    Args:
        num_chains: number of chains (run sequentially).
        num_warmup: warmup iterations per chain.
        num_samples: kept iterations per chain.
        seed: seed of the NUTS key (the data always come from
            ``simulate_returns(seed=0)``).
        target_accept_prob: NUTS's target acceptance probability.

    Returns:
        ``(draws, info)``: the flat draws (as :func:`reference_draws`) and a dict with
        ``sites`` (latent site -> ``max_r_hat``, ``min_n_eff``), ``num_divergences``,
        ``target_accept_prob``, ``seconds`` and ``num_draws``.

    Raises:
        RuntimeError: a latent site has max R-hat >= 1.01 or min n_eff <= 400, or
            more than 0.5% of the transitions diverged.
    """
    y = simulate_returns()
    # NumPyro's default init_to_uniform(radius=2) can start a chain at sigma ~ 7
    # (log sigma up to 2) with a wildly varying h, where the step size collapses during
    # warmup and the chain never moves; radius 0.5 keeps the starts dispersed but sane.
    kernel = NUTS(
        stochastic_volatility,
        target_accept_prob=target_accept_prob,
        init_strategy=init_to_uniform(radius=0.5),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.key(seed), y, extra_fields=("diverging",))
    by_chain = mcmc.get_samples(group_by_chain=True)
    by_chain = {name: np.asarray(by_chain[name], np.float64) for name in LATENT_SITES}
    seconds = time.perf_counter() - start
    sites = _check_diagnostics(summary(by_chain, group_by_chain=True))
    num_divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    if num_divergences > MAX_DIVERGENCE_FRACTION * num_chains * num_samples:
        raise RuntimeError(
            f"NUTS reference failed: {num_divergences} of {num_chains * num_samples} "
            f"transitions diverged (at most {MAX_DIVERGENCE_FRACTION:.1%} allowed). "
            "Raise target_accept_prob."
        )
    draws = flatten_samples(
        {name: value.reshape(-1, *value.shape[2:]) for name, value in by_chain.items()}
    )
    info = {
        "sites": sites,
        "num_divergences": num_divergences,
        "target_accept_prob": target_accept_prob,
        "seconds": seconds,
        "num_draws": num_chains * num_samples,
    }
    return draws, info


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name], np.float64) for name in data.files}


def _save(path: str, draws: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    np.savez_compressed(path, **draws)


def reference_draws(
    path: str | None = None,
    num_chains: int = 4,
    num_warmup: int = 2000,
    num_samples: int = 2500,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Reference draws of the SV posterior, flat and named Stan-style.

    Args:
        path: optional ``.npz`` cache.  If it exists the draws are loaded from it
            (with ``allow_pickle=False``; no NUTS run, the other arguments are
            ignored); otherwise NUTS runs and the draws are saved there.
        num_chains: number of NUTS chains (run sequentially).
        num_warmup: warmup iterations per chain.
        num_samples: kept iterations per chain.
        seed: seed of the NUTS key.

    Returns:
        Dict from ``mu``, ``phi``, ``sigma``, ``h_std[1]`` ... ``h_std[num_days]``
        to float64 arrays of shape ``(num_chains * num_samples,)``.

    Raises:
        RuntimeError: NUTS failed its diagnostics (see :func:`run_reference_nuts`).
        ValueError: the ``.npz`` file holds object arrays (pickles), which are refused.
    """
    if path is not None and os.path.exists(path):
        return _load(path)
    draws, _ = run_reference_nuts(num_chains, num_warmup, num_samples, seed)
    if path is not None:
        _save(path, draws)
    return draws


def _print_report(draws: dict[str, np.ndarray], info: dict) -> None:
    print(
        f"NUTS: {info['num_draws']} draws in {info['seconds']:.1f} s, "
        f"{info['num_divergences']} divergences "
        f"(target_accept_prob {info['target_accept_prob']})"
    )
    print(f"{'site':<8} {'max R-hat':>10} {'min n_eff':>10}")
    for name, stats in info["sites"].items():
        print(f"{name:<8} {stats['max_r_hat']:>10.4f} {stats['min_n_eff']:>10.0f}")
    print(f"{'param':<8} {'mean':>10} {'sd':>10}")
    for name in ("mu", "phi", "sigma"):
        print(f"{name:<8} {draws[name].mean():>10.4f} {draws[name].std():>10.4f}")


def main(argv: list[str] | None = None) -> None:
    """Build the NUTS reference, print its diagnostics and save it."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stochastic_volatility",
        description="Build the NUTS reference draws of the 103-D stochastic-"
        "volatility posterior (overwrites --out).",
    )
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0, help="seed of the NUTS key")
    parser.add_argument("--target-accept-prob", type=float, default=TARGET_ACCEPT_PROB)
    args = parser.parse_args(argv)
    draws, info = run_reference_nuts(
        args.num_chains,
        args.num_warmup,
        args.num_samples,
        args.seed,
        args.target_accept_prob,
    )
    _print_report(draws, info)
    _save(args.out, draws)
    print(f"saved {len(draws)} parameters to {args.out}")


if __name__ == "__main__":
    main()

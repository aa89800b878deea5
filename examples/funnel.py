"""Example: Neal's Funnel
======================

Neal's funnel in 10 dimensions: ``x0 ~ N(0, 3^2)`` and ``x1..x9 | x0 ~ N(0, exp(x0))``.
The neck (``x0`` below about -3) is where NUTS's step size is too large and where
diffusion samplers usually fail.  The exact quantiles of ``x0`` are known
(1 %: -6.98, 50 %: 0, 99 %: 6.98), so the example prints them beside the sampler's.

The density is written as a user encodes an unnormalised target: an improper flat site
plus ``numpyro.factor``, so the model has nothing that could be sampled forward.

References:
    Neal, R. M. (2003). Slice sampling. Annals of Statistics.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from numpyro_cds import CDSInference
from numpyro_cds.diagnostics import plot_marginals

EXACT_X0_QUANTILES = 3.0 * np.array([-2.3263479, 0.0, 2.3263479])


def funnel_logdensity(x):
    """Normalised log density of the funnel."""
    first = dist.Normal(0.0, 3.0).log_prob(x[0])
    rest = dist.Normal(0.0, jnp.exp(0.5 * x[0])).log_prob(x[1:])
    return first + jnp.sum(rest)


def model(dim=10):
    """The funnel as an improper flat site plus a factor."""
    x = numpyro.sample(
        "x", dist.ImproperUniform(dist.constraints.real, (), event_shape=(dim,))
    )
    numpyro.factor("funnel", funnel_logdensity(x))


def run_inference(model, args, rng_key, *model_args):
    """Train the consistent sampler and draw."""
    cds = CDSInference(
        model,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        num_steps=args.num_steps,
        num_train_steps=args.num_train_steps,
        batch_size=args.batch_size,
        num_sde_steps=args.num_sde_steps,
        progress_bar=not args.no_progress_bar,
    )
    cds.run(rng_key, *model_args)
    return cds


def x0_quantiles(x):
    """The 1 %, 50 % and 99 % quantiles of the first coordinate."""
    return np.percentile(np.asarray(x)[:, 0], [1, 50, 99])


def main(args):
    """Run the example."""
    start = time.perf_counter()
    cds = run_inference(model, args, jax.random.key(args.seed), args.dim)
    print(f"CDSInference: {time.perf_counter() - start:.1f} s in total")
    cds.print_summary()
    print(f"exact x0 quantiles (1, 50, 99 %): {np.round(EXACT_X0_QUANTILES, 2)}")
    print(f"CDS {cds.num_steps}-step: {np.round(x0_quantiles(cds.get_samples()['x']), 2)}")
    draws = {"CDS": {"x0": np.asarray(cds.get_samples()["x"][:, 0])}}
    if args.compare_nuts:
        start = time.perf_counter()
        mcmc = MCMC(NUTS(model), num_warmup=args.num_nuts_samples,
                    num_samples=args.num_nuts_samples, num_chains=2,
                    chain_method="sequential", progress_bar=not args.no_progress_bar)
        mcmc.run(jax.random.key(args.seed + 1), args.dim)
        print(f"NUTS: {time.perf_counter() - start:.1f} s in total")
        mcmc.print_summary()
        nuts_x = mcmc.get_samples()["x"]
        print(f"NUTS: {np.round(x0_quantiles(nuts_x), 2)}")
        draws["NUTS"] = {"x0": np.asarray(nuts_x[:, 0])}
    if args.plot and len(draws) > 1:
        exact = np.random.default_rng(0).normal(0.0, 3.0, 100_000)
        draws["exact"] = {"x0": exact}
        plot_marginals(draws, args.plot)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Neal's funnel with CDSInference")
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--num-chains", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=1)
    parser.add_argument("--num-train-steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-sde-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--compare-nuts", action="store_true")
    parser.add_argument("--num-nuts-samples", type=int, default=1000,
                        help="NUTS warm-up and draws per chain (2 chains)")
    parser.add_argument("--plot", default="funnel.png")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args()
    numpyro.set_platform(args.device)
    main(args)

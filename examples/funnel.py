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

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _common import parse, parser_with_common_flags, run_inference, run_nuts

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


def x0_quantiles(x):
    """The 1 %, 50 % and 99 % quantiles of the first coordinate."""
    return np.percentile(np.asarray(x)[:, 0], [1, 50, 99])


def main(args):
    """Run the example."""
    cds = run_inference(model, args, jax.random.key(args.seed), args.dim)
    cds.print_summary()
    print(f"exact x0 quantiles (1, 50, 99 %): {np.round(EXACT_X0_QUANTILES, 2)}")
    print(
        f"CDS {cds.num_steps}-step: {np.round(x0_quantiles(cds.get_samples()['x']), 2)}"
    )
    draws = {"CDS": {"x0": np.asarray(cds.get_samples()["x"][:, 0])}}
    if args.compare_nuts:
        mcmc = run_nuts(model, args, args.dim)
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
    parser = parser_with_common_flags(
        "Neal's funnel with CDSInference", num_samples=10000
    )
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--plot", default="funnel.png")
    main(parse(parser))

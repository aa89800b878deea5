"""Example: Eight Schools
======================

The classic hierarchical model of Rubin (1981): the effects of coaching programmes in
eight schools, partially pooled through a population mean ``mu`` and scale ``tau``.
It is written in the non-centered parameterisation (``theta = mu + tau * theta_tilde``),
as in posteriordb's ``eight_schools_noncentered``.

``CDSInference`` fits a whitening, trains a diffusion sampler, distils it into a
consistency function and draws with one network evaluation per sample.
``--compare-nuts`` runs NUTS on the same model and saves a plot of both;
``--posteriordb PATH`` compares both with posteriordb's reference draws.
``--refit SCALE`` then refits on a new measurement of every school
(``y + SCALE * sigma * z``), warm-started from the first fit (``init=cds``).

References:
    Rubin, D. B. (1981). Estimation in parallel randomized experiments.
    Jutras-Dube et al. (2025). Single-Step Consistent Diffusion Samplers.
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _common import parse, parser_with_common_flags, run_inference, run_nuts

from numpyro_cds.diagnostics import flatten_samples, plot_marginals, standardized_errors

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def model(sigma, y=None):
    """Non-centered eight schools."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def reference_draws(posteriordb):
    """Posteriordb's reference draws of eight_schools_noncentered, flattened."""
    name = "eight_schools-eight_schools_noncentered"
    path = os.path.join(posteriordb, "reference_posteriors", "draws", "draws", name)
    with zipfile.ZipFile(path + ".json.zip") as archive:
        chains = json.load(archive.open(name + ".json"))
    return {k: np.concatenate([np.asarray(c[k]) for c in chains]) for k in chains[0]}


def main(args):
    """Run the example."""
    cds = run_inference(model, args, jax.random.key(args.seed), SIGMA, Y)
    cds.print_summary(exclude_deterministic=False)
    draws = {"CDS": flatten_samples(cds.get_samples())}
    if args.compare_nuts:
        mcmc = run_nuts(model, args, SIGMA, Y)
        mcmc.print_summary(exclude_deterministic=False)
        draws["NUTS"] = flatten_samples(mcmc.get_samples())
    if args.posteriordb:
        reference = reference_draws(args.posteriordb)
        draws["reference"] = reference
        for method in ("CDS", "NUTS"):
            if method in draws:
                errors = standardized_errors(draws[method], reference).values()
                mean_error = max(abs(e[0]) for e in errors)
                sd_error = max(abs(e[1]) for e in errors)
                print(
                    f"{method}: max |mean error| / ref sd = {mean_error:.3f}, "
                    f"max |log sd ratio| = {sd_error:.3f}"
                )
    if args.refit is not None:
        noise = jax.random.normal(jax.random.key(args.seed + 2), Y.shape)
        new_y = Y + args.refit * SIGMA * noise
        print(f"Refit on new data y + {args.refit} sigma z, from the first fit:")
        refit = run_inference(
            model, args, jax.random.key(args.seed + 3), SIGMA, new_y, init=cds
        )
        refit.print_summary()
    if args.plot and len(draws) > 1:
        plot_marginals(
            draws, args.plot, names=["mu", "tau"] + [f"theta[{i}]" for i in range(1, 9)]
        )
        print(f"saved {args.plot}")


if __name__ == "__main__":
    parser = parser_with_common_flags(
        "Eight schools with CDSInference", num_samples=4000
    )
    parser.add_argument(
        "--plot",
        default="eight_schools.png",
        help="PNG path for the comparison plot ('' for none)",
    )
    parser.add_argument(
        "--posteriordb",
        default=None,
        help="path to posteriordb (e.g. ../shared/data/posteriordb)",
    )
    parser.add_argument(
        "--refit",
        type=float,
        default=None,
        metavar="SCALE",
        help="then refit on new data y + SCALE * sigma * z, warm-started from the "
        "first fit (docs/warm_start.rst)",
    )
    main(parse(parser))

"""Example: Eight Schools
======================

The classic hierarchical model of Rubin (1981): the effects of coaching programmes in
eight schools, partially pooled through a population mean ``mu`` and scale ``tau``.
It is written in the non-centered parameterisation (``theta = mu + tau * theta_tilde``),
as in posteriordb's ``eight_schools_noncentered``.

``CDSInference`` fits a whitening, trains a self-consistent diffusion sampler and draws
with one network evaluation per sample.  ``--compare-nuts`` runs NUTS on the same model
and saves a plot of both; ``--posteriordb PATH`` compares both with posteriordb's
reference draws.

References:
    Rubin, D. B. (1981). Estimation in parallel randomized experiments.
    Jutras-Dube et al. (2025). Single-Step Consistent Diffusion Samplers.
"""

import argparse
import json
import os
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from numpyro_cds import CDSInference
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


def reference_draws(posteriordb):
    """posteriordb's reference draws of eight_schools_noncentered, flattened."""
    name = "eight_schools-eight_schools_noncentered"
    path = os.path.join(posteriordb, "reference_posteriors", "draws", "draws", name)
    with zipfile.ZipFile(path + ".json.zip") as archive:
        chains = json.load(archive.open(name + ".json"))
    return {k: np.concatenate([np.asarray(c[k]) for c in chains]) for k in chains[0]}


def main(args):
    """Run the example."""
    start = time.perf_counter()
    cds = run_inference(model, args, jax.random.key(args.seed), SIGMA, Y)
    print(f"CDSInference: {time.perf_counter() - start:.1f} s in total")
    cds.print_summary(exclude_deterministic=False)
    draws = {"CDS": flatten_samples(cds.get_samples())}
    if args.compare_nuts:
        start = time.perf_counter()
        mcmc = MCMC(NUTS(model), num_warmup=args.num_nuts_samples,
                    num_samples=args.num_nuts_samples, num_chains=2,
                    chain_method="sequential", progress_bar=not args.no_progress_bar)
        mcmc.run(jax.random.key(args.seed + 1), SIGMA, Y)
        print(f"NUTS: {time.perf_counter() - start:.1f} s in total")
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
                print(f"{method}: max |mean error| / ref sd = {mean_error:.3f}, "
                      f"max |log sd ratio| = {sd_error:.3f}")
    if args.plot and len(draws) > 1:
        plot_marginals(draws, args.plot, names=["mu", "tau"] + [
            f"theta[{i}]" for i in range(1, 9)])
        print(f"saved {args.plot}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Eight schools with CDSInference")
    parser.add_argument("--num-samples", type=int, default=4000)
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
    parser.add_argument("--plot", default="eight_schools.png",
                        help="PNG path for the comparison plot ('' for none)")
    parser.add_argument("--posteriordb", default=None,
                        help="path to posteriordb (e.g. ../shared/data/posteriordb)")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args()
    numpyro.set_platform(args.device)
    main(args)

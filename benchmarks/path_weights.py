"""Flow weights against Euler-Maruyama path weights at 1, 8 and N steps.

Usage (from the repository root)::

    python -m benchmarks.path_weights [--num-train-steps 1000] [--num-draws 10000]

Trains one sampler (``CDSInference`` defaults apart from the training budget) on a
10-D Bayesian linear regression, whose posterior is a correlated Gaussian and whose
evidence ``log Z`` is known in closed form, then draws with ``k = 1, 8, N`` steps
(``N = num_sde_steps = 64``) twice from the same network: probability-flow steps with
exact change-of-variables weights (``sampling="flow"``) and Euler-Maruyama steps with
path weights (``sampling="sde"``).  For each it reports the normalised ESS, the Pareto
k-hat and ``log Z`` with its standard error against the exact value; for the SDE also
the estimate that DIS's evaluation constant (``D beta_bar dt / 2`` in place of
``D log(1 + beta dt / 2)``) would give.  Raw output goes to ``results/path-weights/``.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import multivariate_normal

from numpyro_cds import CDSInference
from numpyro_cds.importance import summarize_weights
from numpyro_cds.path_weights import dis_constant_offset
from numpyro_cds.sde import LinearSchedule

from .report import machine_info

DIM, NUM_DATA, NOISE = 10, 40, 0.5


def model(features, y):
    """Weights w ~ N(0, I_10), y ~ N(X w, 0.5^2 I); marginally y ~ N(0, 0.25 I + X X^T)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([DIM]))
    numpyro.sample("y", dist.Normal(features @ w, NOISE), obs=y)


def regression_data():
    """Correlated features (so is the posterior), data and the exact ``log Z``."""
    key_mixing, key_features, key_w, key_noise = jax.random.split(jax.random.key(42), 4)
    mixing = jnp.eye(DIM) + 0.5 * jax.random.normal(key_mixing, (DIM, DIM)) / 3
    features = jax.random.normal(key_features, (NUM_DATA, DIM)) @ mixing
    w = jax.random.normal(key_w, (DIM,))
    y = features @ w + NOISE * jax.random.normal(key_noise, (NUM_DATA,))
    cov = NOISE**2 * jnp.eye(NUM_DATA) + features @ features.T
    log_z = float(multivariate_normal.logpdf(y, jnp.zeros(NUM_DATA), cov))
    return (features, y), log_z


def main(args):
    """Train once, then print and save the weight summaries of both samplings."""
    data, log_z = regression_data()
    cds = CDSInference(model, num_train_steps=args.num_train_steps, progress_bar=False)
    start = time.perf_counter()
    cds.warmup(jax.random.key(args.seed), *data)
    train_seconds = time.perf_counter() - start
    num_sde_steps = cds.consistency.num_sde_steps
    rows = []
    machine = machine_info()
    lines = [
        "## Flow weights against Euler-Maruyama path weights (issue 4)",
        "",
        "Command: `python -m benchmarks.path_weights " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {machine['processor']}, {machine['cores']} cores, JAX "
        f"{machine['jax']} ({machine['backend']}), {machine['date']}. 10-D linear "
        f"regression, exact log Z = {log_z:.4f}; {args.num_train_steps} training "
        f"iterations ({train_seconds:.0f} s); {args.num_draws} draws per row.",
        "",
        "| sampling | k | ESS | k-hat | log Z - exact | se | DIS-constant error |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    for sampling in ("flow", "sde"):
        cds.sampling = sampling
        for num_steps in (1, 8, num_sde_steps):
            key = jax.random.fold_in(jax.random.key(args.seed + 1), num_steps)
            start = time.perf_counter()
            _, log_weights = cds.sample(
                key, args.num_draws, num_steps, log_weights=True
            )
            seconds = time.perf_counter() - start
            summary = summarize_weights(log_weights)
            error = summary.log_evidence - log_z
            dis_error = (
                error + dis_constant_offset(LinearSchedule(), DIM, num_steps)
                if sampling == "sde"
                else None
            )
            rows.append(
                dict(
                    sampling=sampling,
                    num_steps=num_steps,
                    seconds=seconds,
                    log_z_error=error,
                    dis_constant_log_z_error=dis_error,
                    **summary._asdict(),
                )
            )
            dis_text = "" if dis_error is None else f"{dis_error:+.3f}"
            lines.append(
                f"| {sampling} | {num_steps} | {summary.ess:.4f} | "
                f"{summary.pareto_k:.2f} | {error:+.3f} | "
                f"{summary.standard_error:.3f} | {dis_text} |"
            )
            print(lines[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "path_weights.json"), "w") as f:
        json.dump(
            dict(
                log_z=log_z,
                dim=DIM,
                num_train_steps=args.num_train_steps,
                train_seconds=train_seconds,
                seed=args.seed,
                rows=rows,
            ),
            f,
            indent=1,
        )
    with open(os.path.join(args.out, "section.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train-steps", type=int, default=1000)
    parser.add_argument("--num-draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("results", "path-weights"))
    main(parser.parse_args())

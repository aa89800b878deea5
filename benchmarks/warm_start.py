"""A refit on new data: cold against warm-started from the earlier fit (``init=``).

Eight schools (posteriordb, non-centred): the default ``CDSInference`` is fitted on
the original data (the earlier fit), then on new data twice, cold and with
``init=earlier`` (student and teacher), timed in one process.  The new data are a new
measurement of every school, ``y + scale * sigma * z`` (``z`` standard normal, fixed
seed), at each ``--scales`` value: 0.3 (a small change), 1 (a new replicate).  Both
refits are
scored against a long NUTS run on the new data (4 chains x 5000 draws after 1000
warm-up; R-hat reported): corrected draws and raw one-step draws (importance ESS and
k-hat), wall time and target-gradient evaluations.

    python -m benchmarks.warm_start --posteriordb ../shared/data/posteriordb

writes ``results/warm_start/warm_start.json`` and ``.md`` (``--out``); about 15
minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

from numpyro_cds import CDSInference
from numpyro_cds.diagnostics import flatten_samples

from .report import docstring_parser, machine_info
from .vs_nuts import machine_line, scored_fit

TARGET = "eight_schools-eight_schools_noncentered"
REFERENCE_NUTS = dict(num_warmup=1000, num_samples=5000, num_chains=4)


def new_data(model_args, scale: float, seed: int):
    """``(sigma, y + scale * sigma * z)``: a new measurement of every school."""
    sigma, y = model_args
    z = jax.random.normal(jax.random.key(seed), y.shape)
    return sigma, y + scale * sigma * z


def reference_draws(model, model_args, seed: int):
    """Flat NUTS draws on ``model_args`` and the largest R-hat."""
    mcmc = MCMC(
        NUTS(model), chain_method="sequential", progress_bar=False, **REFERENCE_NUTS
    )
    mcmc.run(jax.random.key(seed), *model_args)
    stats = summary(mcmc.get_samples(group_by_chain=True))
    r_hat = max(float(np.max(s["r_hat"])) for s in stats.values())
    return flatten_samples(mcmc.get_samples()), r_hat


def fit(model, model_args, rng_key, reference, **settings) -> tuple[CDSInference, dict]:
    """The default ``CDSInference`` run, timed and scored; raw draws beside."""
    start = time.perf_counter()
    cds = CDSInference(model, num_samples=1000, num_chains=2, **settings)
    cds.run(rng_key, *model_args)
    return cds, scored_fit(cds, time.perf_counter() - start, rng_key, reference)


def render(results: dict) -> str:
    """The comparison table."""
    lines = [
        machine_line(results)
        + f"  Earlier fit (original data): {results['earlier']['seconds']:.1f} s.",
        "",
        "| new data | fit | s | warm / cold s | iterations | grads | correction "
        "| corrected mean / sd err | raw 1-step (ESS, k-hat) | reference R-hat |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, row in results["refits"].items():
        for kind in ("cold", "warm"):
            fit_row = row[kind]
            ratio = fit_row["seconds"] / row["cold"]["seconds"]
            lines.append(
                f"| y + {scale} sigma z | {kind} | {fit_row['seconds']:.1f} "
                f"| {ratio:.2f} | {fit_row['iterations']} "
                f"| {fit_row['gradient_evaluations']:.3g} | {fit_row['correction']} "
                f"| {fit_row['max_mean_error']:.3f} / "
                f"{fit_row['max_log_sd_ratio']:.3f} "
                f"| {fit_row['raw_max_mean_error']:.3f} / "
                f"{fit_row['raw_max_log_sd_ratio']:.3f} "
                f"({fit_row['raw_ess']:.2f}, {fit_row['raw_pareto_k']:.2f}) "
                f"| {row['reference_r_hat']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Command-line entry point."""
    from .posteriordb import load_posterior

    parser = docstring_parser(__doc__)
    parser.add_argument("--posteriordb", required=True, help="posteriordb folder")
    parser.add_argument("--scales", nargs="*", type=float, default=[0.3, 1.0])
    parser.add_argument("--out", default=os.path.join("results", "warm_start"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    posterior = load_posterior(args.posteriordb, TARGET)
    key = jax.random.key(args.seed)
    print("earlier fit ...", flush=True)
    earlier, earlier_row = fit(
        posterior.model, posterior.model_args, key, posterior.reference
    )
    results = {
        "command": "python -m benchmarks.warm_start "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "earlier": earlier_row,
        "refits": {},
    }
    for index, scale in enumerate(args.scales):
        model_args = new_data(posterior.model_args, scale, args.seed + 1 + index)
        print(f"scale {scale}: reference NUTS ...", flush=True)
        reference, r_hat = reference_draws(posterior.model, model_args, args.seed)
        refit_key = jax.random.fold_in(key, 10 + index)
        row = {"reference_r_hat": r_hat}
        print(f"scale {scale}: cold fit ...", flush=True)
        row["cold"] = fit(posterior.model, model_args, refit_key, reference)[1]
        print(f"scale {scale}: warm fit ...", flush=True)
        row["warm"] = fit(
            posterior.model, model_args, refit_key, reference, init=earlier
        )[1]
        results["refits"][str(scale)] = row
        with open(os.path.join(args.out, "warm_start.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(os.path.join(args.out, "warm_start.md"), "w") as f:
            f.write(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()

r"""A user's swap, timed: ``CDSInference(model)`` against ``MCMC(NUTS(model))``.

For each posteriordb posterior, in one process on one machine: NUTS with NumPyro's
defaults (2 chains x 1000 warm-up + 1000 draws, sequential, compilation included), and
the default ``CDSInference`` end to end (whitening, training, draws, correction:
exactly ``CDSInference(model, num_samples=1000, num_chains=2).run(key, *args)``).  Both
are scored against posteriordb's reference draws (worst standardised mean error, worst
log sd ratio), with their wall time and target-gradient evaluations; the CDS row also
shows its raw one-step draws, their importance ESS and k-hat, beside the corrected ones.

    python -m benchmarks.vs_nuts --posteriordb ../shared/data/posteriordb \\
        --out results/vs_nuts [--targets NAME ...] [--set num_train_steps=2000 ...]

writes ``vs_nuts.json`` and ``vs_nuts.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import jax
import numpy as np

from numpyro_cds import CDSInference
from numpyro_cds.diagnostics import flatten_samples
from numpyro_cds.importance import summarize_weights
from numpyro_cds.report import UnreliableDrawsWarning

from . import metrics
from .methods import run_nuts, training_gradient_evaluations
from .report import docstring_parser, machine_info
from .run import parse_settings

DEFAULT_TARGETS = ("eight_schools-eight_schools_noncentered",)
NUTS_SETTINGS = dict(num_warmup=1000, num_samples=1000, num_chains=2)


def _errors(samples, reference) -> dict:
    return metrics.max_standardized_errors(flatten_samples(samples), reference)


def time_nuts(posterior, rng_key) -> dict:
    """NUTS with defaults, timed from the call to its draws."""
    start = time.perf_counter()
    mcmc, info = run_nuts(posterior.model, posterior.model_args, rng_key, NUTS_SETTINGS)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "gradient_evaluations": info["gradient_evaluations"],
        "divergences": info["divergences"],
        **_errors(mcmc.get_samples(), posterior.reference),
    }


def time_cds(posterior, rng_key, settings: dict) -> dict:
    """The default CDSInference end to end, then its raw one-step draws apart."""
    start = time.perf_counter()
    cds = CDSInference(posterior.model, num_samples=1000, num_chains=2, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnreliableDrawsWarning)
        cds.run(rng_key, *posterior.model_args)
    seconds = time.perf_counter() - start
    return {
        **scored_fit(cds, seconds, rng_key, posterior.reference),
        "warnings": [str(w.message) for w in caught],
    }


def scored_fit(cds: CDSInference, seconds: float, rng_key, reference) -> dict:
    """A finished run's costs and errors, and those of its raw one-step draws.

    The raw draws are 2000 more with ``fold_in(rng_key, 1)``, scored with their
    importance ESS and k-hat.
    """
    correction = cds.correction_info or {}
    raw, log_weights = cds.sample(jax.random.fold_in(rng_key, 1), 2000, 1, True)
    weights = summarize_weights(np.asarray(log_weights))
    raw_errors = _errors(raw, reference)
    return {
        "seconds": seconds,
        "timings": dict(cds.timings),
        "gradient_evaluations": training_gradient_evaluations(cds)
        + int(correction.get("gradient_evaluations", 0)),
        "correction_gradient_evaluations": int(
            correction.get("gradient_evaluations", 0)
        ),
        "correction": correction.get("applied"),
        "iterations": int(cds.training_iterations),
        **_errors(cds.get_samples(), reference),
        "raw_max_mean_error": raw_errors["max_mean_error"],
        "raw_max_log_sd_ratio": raw_errors["max_log_sd_ratio"],
        "raw_ess": weights.ess,
        "raw_pareto_k": weights.pareto_k,
    }


def machine_line(results: dict) -> str:
    """The command and machine lines above a table."""
    machine = results["machine"]
    return (
        f"Command: `{results['command']}`\n\nMachine: {machine['processor']}, "
        f"{machine['cores']} cores, {machine['device']}, JAX {machine['jax']}; "
        f"{machine['date']}."
    )


def render(results: dict) -> str:
    """The comparison table."""
    lines = [
        machine_line(results),
        "",
        "| posterior | NUTS s | CDS s | CDS / NUTS | NUTS grads | CDS grads "
        "| NUTS mean / sd err | CDS corrected | CDS raw 1-step (ESS, k-hat) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["targets"].items():
        nuts, cds = row["nuts"], row["cds"]
        lines.append(
            f"| {name} | {nuts['seconds']:.1f} | {cds['seconds']:.1f} "
            f"| {cds['seconds'] / nuts['seconds']:.1f} "
            f"| {nuts['gradient_evaluations']:.3g} | {cds['gradient_evaluations']:.3g} "
            f"| {nuts['max_mean_error']:.3f} / {nuts['max_log_sd_ratio']:.3f} "
            f"| {cds['max_mean_error']:.3f} / {cds['max_log_sd_ratio']:.3f} "
            f"| {cds['raw_max_mean_error']:.3f} / {cds['raw_max_log_sd_ratio']:.3f} "
            f"({cds['raw_ess']:.2f}, {cds['raw_pareto_k']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Command-line entry point."""
    from .posteriordb import load_posterior

    parser = docstring_parser(__doc__)
    parser.add_argument("--posteriordb", required=True, help="posteriordb folder")
    parser.add_argument("--targets", nargs="*", default=list(DEFAULT_TARGETS))
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="CDSInference keywords over the defaults (numbers as numbers)",
    )
    parser.add_argument("--out", default=os.path.join("results", "vs_nuts"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = parse_settings(parser, args.set)
    os.makedirs(args.out, exist_ok=True)
    results = {
        "command": "python -m benchmarks.vs_nuts "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "settings": settings,
        "targets": {},
    }
    for name in args.targets:
        posterior = load_posterior(args.posteriordb, name)
        key = jax.random.key(args.seed)
        print(f"{name}: NUTS ...", flush=True)
        nuts = time_nuts(posterior, key)
        print(f"{name}: CDSInference ...", flush=True)
        cds = time_cds(posterior, key, settings)
        results["targets"][name] = {"nuts": nuts, "cds": cds}
        with open(os.path.join(args.out, "vs_nuts.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(os.path.join(args.out, "vs_nuts.md"), "w") as f:
            f.write(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
